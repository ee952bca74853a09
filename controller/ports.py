"""The seams between the use cases and the outside world. Adapters implement these; tests use real ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Protocol, runtime_checkable

from controller.core.alerts import Alert
from controller.core.canary import DeploymentStatus, RolloutStatus
from controller.core.policy import Decision, PolicyState
from controller.core.runs import Phase, Run, Transition
from controller.core.state import AuditEntry, Look, ModelAuditEntry, ModelControl

__all__ = ["DeploymentStatus", "RolloutStatus"]  # Rollout's answers are core types, re-exported for adapters


class Clock(Protocol):
    def now(self) -> datetime: ...


class StoreUnavailable(Exception):
    """The store could not make a write durable (locked, disk full, read-only). Callers answer 503."""


@dataclass(frozen=True)
class NotificationRecord:
    received_at: datetime
    body: str
    group_key: str
    receiver: str
    status: str
    truncated_alerts: int
    external_url: str = ""


class IntakeStore(Protocol):
    async def policy_state(
        self, episodes: list[str], models: list[str], now: datetime, window_start: datetime, dry_run: bool,
        recent_limit: Mapping[str, int] | None = None,
    ) -> PolicyState:
        """`recent_limit` (a model's daily budget): its newest `limit` starts in the window when there are that
        many, else none: all the rate limit needs. Without it, every start in the window (for pages)."""
        ...

    async def record_notification(
        self,
        record: NotificationRecord,
        alerts: list[Alert],
        decisions: list[Decision],
        new_runs: list[tuple[Run, Transition]],
    ) -> int: ...

    async def prune(self, before: datetime) -> int:
        """Forget notifications and decisions older than `before`; returns how many decisions went."""
        ...


class RunStore(Protocol):
    async def get_run(self, run_id: str) -> Run | None: ...

    async def runs_in(self, phases: frozenset[Phase]) -> list[Run]: ...

    async def run_by_pipeline(self, pipeline_id: str) -> Run | None: ...

    async def first_delivery(self, key: str, at: datetime) -> bool:
        """Remember a webhook delivery; False if this key was seen before (a replay)."""
        ...

    async def apply(self, run: Run, transition: Transition, look: Look | None = None) -> bool:
        """Save a transition if the stored run is still in `transition.from_phase`; False if it moved on.
        `look`, the canary look that decided it, is appended to the run's looks in the same commit."""
        ...

    async def update_run(self, run: Run, look: Look | None = None) -> bool:
        """Save fields of a run whose phase did not change (pipeline ref, image, canary state), and append
        `look`, in one commit; False if the phase moved."""
        ...


class ReadStore(Protocol):
    async def list_runs(self, limit: int, model: str | None = None, phase: str | None = None) -> list[Run]: ...

    async def history(self, run_id: str) -> list[Transition]: ...

    async def list_decisions(
        self, limit: int, model: str | None = None, run_id: str | None = None
    ) -> list[dict[str, object]]: ...

    async def counts_by_phase(self) -> dict[str, int]: ...


class OpsStore(Protocol):
    """Operator actions: runs started by hand, model pauses, and the audit trails of both."""

    async def create_run(self, run: Run, transition: Transition, audit: AuditEntry | None = None) -> None:
        """A run started by an operator, with its first transition and the action's audit entry, in one commit."""
        ...

    async def audit_run(self, run_id: str, entry: AuditEntry) -> None: ...

    async def model_controls(self) -> dict[str, ModelControl]: ...

    async def set_model_paused(
        self, model: str, paused: bool, by: str, reason: str, at: datetime
    ) -> tuple[bool, ModelControl]:
        """(changed, the control now); audited whether or not it changed."""
        ...

    async def audit_model(self, model: str, action: str, by: str, reason: str, at: datetime,
                          run_id: str | None = None, changed: bool = True) -> None: ...  # fmt: skip


class ViewStore(Protocol):
    """What the page, the API and the CLI read beyond ReadStore."""

    async def run_audit(self, run_id: str) -> list[AuditEntry]: ...

    async def run_looks(self, run_id: str, limit: int = 500) -> list[Look]:
        """The run's newest `limit` canary looks, oldest first."""
        ...

    async def model_audit(self, model: str, limit: int = 20) -> list[ModelAuditEntry]: ...

    async def last_run_in(self, model: str, phases: frozenset[Phase]) -> Run | None: ...

    async def list_runs_page(self, limit: int, offset: int = 0, model: str | None = None) -> list[Run]: ...


class HealthStore(Protocol):
    async def check_writable(self) -> None:
        """A real write with a short lock wait; raises StoreUnavailable."""
        ...


class Store(IntakeStore, RunStore, ReadStore, OpsStore, ViewStore, HealthStore, Protocol):
    """What the service needs of a store: every face. Each room is handed only the faces it uses."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class PipelineError(Exception):
    """A pipeline call failed. `permanent` ones fail the run; others are retried on a later tick."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class PipelineRequest:
    run_id: str
    model: str
    reasons: tuple[str, ...]
    created_at: datetime
    alerts: list[dict[str, object]] = field(default_factory=list)
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineRef:
    id: str
    web_url: str | None = None


@dataclass(frozen=True)
class PipelineStatus:
    state: str  # running, success, failed, canceled, lost
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.state != "running"


class PipelineRunner(Protocol):
    # After a create that may have landed (a timeout), how long `find` may still miss the pipeline it made:
    # no second create within this window. 0 for a runner whose creates are never in doubt.
    create_settle_s: float

    async def find(self, request: PipelineRequest) -> PipelineRef | None:
        """The pipeline already started for this run, if any (how we stay at exactly one per run)."""
        ...

    async def trigger(self, request: PipelineRequest) -> PipelineRef: ...

    async def status(self, ref: PipelineRef) -> PipelineStatus: ...

    async def cancel(self, ref: PipelineRef) -> None: ...


@dataclass(frozen=True)
class PipelineHook:
    """What a CI system's pipeline webhook says about one pipeline (GitLab: a Pipeline Hook)."""

    pipeline_id: str
    status: PipelineStatus
    run_id: str | None = None  # the pipeline's RETRAIN_RUN_ID variable, when the hook carries it
    web_url: str | None = None
    project_id: str | None = None


class HookInvalid(ValueError):
    """A pipeline hook without what we need; `field` names the part that is missing or wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HookParser(Protocol):
    def __call__(self, body: Mapping[str, object]) -> PipelineHook | None:
        """The hook's news; None for a hook about something else than a pipeline; HookInvalid if malformed."""
        ...


# ---- canary analysis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class QueryResult:
    """An instant query's outcome. `no_data` (empty result, or only NaN) is kept apart from `error`
    (HTTP failure, bad query, timeout, unreachable): neither is evidence about the canary."""

    outcome: str  # "value" | "no_data" | "error"
    samples: tuple[Sample, ...] = ()
    error: str = ""


class MetricsSource(Protocol):
    async def query(self, promql: str) -> QueryResult: ...


class RolloutError(Exception):
    """A Kubernetes call failed. `permanent` (403, 404, 422: retrying cannot help) ends the attempt at once."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class Rollout(Protocol):
    """One model's stable and canary Deployments. Every call is idempotent: repeating it after a crash or a
    timeout changes nothing more."""

    async def status(self) -> RolloutStatus: ...

    async def set_canary(self, image: str, replicas: int) -> None:
        """Canary runs `image` with `replicas` pods (0: no canary). Stable is never touched."""
        ...

    async def promote(self, image: str) -> None:
        """Stable runs `image`. The canary is left as it is: the controller scales it to 0 once stable is ready."""
        ...


@runtime_checkable
class Closeable(Protocol):
    """An adapter holding connections, threads or processes: closed once, at shutdown. Fakes need not be."""

    async def aclose(self) -> None: ...

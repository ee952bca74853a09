"""A protocol-faithful stand-in for the parts of GitLab's REST API v4 the controller uses.

It is an aiohttp application meant to be driven through the *real* python-gitlab client::

    fake = FakeGitlab()                      # project 42 "ml/recsys", ref "main", token DEFAULT_TOKEN
    with fake.serve_in_thread() as url:      # or: async with fake.serve() as url:
        gl = make_client(url, DEFAULT_TOKEN, timeout=0.5)   # controller.adapters.gitlab
        project = gl.projects.get("ml/recsys", lazy=True)
        pipeline = project.pipelines.create({"ref": "main", "variables": [{"key": "RUN_ID", "value": "r1"}]})
        fake.set_status(pipeline.id, "success")

Shapes and messages follow GitLab's own source (lib/api/ci/pipelines.rb, lib/api/ci/triggers.rb,
Gitlab::Ci::Pipeline::Chain::*) and the API documentation:

- ``POST /projects/:id/pipeline`` answers 201 with the full pipeline entity. Validation failures of the
  pipeline (unknown ref, insufficient permission to set variables, duplicate variable keys) are 400 with
  ``{"message": {"base": [...]}}`` (``render_validation_error!``); parameter errors are Grape's
  ``{"error": "ref is missing"}`` / ``{"error": "variables is invalid"}``.
- ``POST /projects/:id/trigger/pipeline`` takes ``token``, ``ref`` and ``variables`` as a hash, either as JSON
  (python-gitlab sends ``{"ref", "token", "variables": {...}, "inputs": {...}}``) or form fields
  ``variables[KEY]=value``. A trigger token not belonging to the project is ``404 {"message": "404 Not Found"}``.
- ``GET .../pipelines/:pipeline_id`` of a pipeline that does not exist: ``404 {"message": "404 Not found"}``
  (ActiveRecord::RecordNotFound, lower-case "found"); unknown project: ``404 Project Not Found``.
- Invalid token (any endpoint but trigger): ``401 {"message": "401 Unauthorized"}``. A missing token on a
  POST is 401 too; a missing token on a GET of a private project is ``404 Project Not Found`` (GitLab hides
  private projects from anonymous users).
- ``POST .../cancel`` answers 200 with the pipeline; a pipeline that cannot be canceled is returned as is.
- Rate limiting (fault "429") looks like Rack::Attack's throttle answer: ``text/plain`` body
  ``Retry later``, with ``Retry-After`` and ``RateLimit-*`` headers. A "502" fault looks like a proxy's
  HTML page. Everything else is JSON with ``Content-Type: application/json``.

Faults are injected per endpoint kind (``create``, ``trigger``, ``get``, ``list``, ``variables``, ``cancel``,
``project``, or ``*`` for all) from a queue (:meth:`FakeGitlab.fail`) or at random with a seeded RNG
(:meth:`FakeGitlab.fail_randomly`). "after" faults let the request take effect first (the pipeline IS
created) and then break the answer: the ambiguous case a client must resolve by looking the pipeline up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

__all__ = [
    "CANCELABLE_STATUSES",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_PROJECT_PATH",
    "DEFAULT_TOKEN",
    "DEFAULT_TRIGGER_TOKEN",
    "ENDPOINTS",
    "FINISHED_STATUSES",
    "Fault",
    "FakeGitlab",
    "FakePipeline",
    "FakeProject",
    "RequestRecord",
    "STATUSES",
]

DEFAULT_TOKEN = "glpat-fake-maintainer-token"
DEFAULT_PROJECT_ID = 42
DEFAULT_PROJECT_PATH = "ml/recsys"
DEFAULT_TRIGGER_TOKEN = "glptt-fake-trigger-token"

ENDPOINTS = ("create", "trigger", "get", "list", "variables", "cancel", "project")

STATUSES = (
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
    # newer GitLab versions
    "waiting_for_callback",
    "canceling",
)
FINISHED_STATUSES = frozenset({"success", "failed", "canceled", "skipped"})
# Ci::HasStatus::CANCELABLE_STATUSES (+ waiting_for_callback in newer versions).
CANCELABLE_STATUSES = frozenset(
    {"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled", "waiting_for_callback"}
)
# Ci::Pipeline.sources.keys
SOURCES = frozenset(
    {
        "unknown", "push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
        "merge_request_event", "external_pull_request_event", "parent_pipeline", "ondemand_dast_scan",
        "ondemand_dast_validation", "security_orchestration_policy", "container_registry_push",
        "duo_workflow", "pipeline_execution_policy_schedule",
    }
)  # fmt: skip
LIST_SCOPES = frozenset({"running", "pending", "finished", "branches", "tags"})
ORDER_BY = ("id", "status", "ref", "updated_at", "user_id")
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
VARIABLE_TYPES = ("env_var", "file")
VARIABLE_KEY_RE = re.compile(r"\A[a-zA-Z0-9_]+\Z")

_DETAILED = {
    "created": ("created", "status_created"),
    "waiting_for_resource": ("waiting", "status_pending"),
    "preparing": ("preparing", "status_preparing"),
    "pending": ("pending", "status_pending"),
    "running": ("running", "status_running"),
    "success": ("passed", "status_success"),
    "failed": ("failed", "status_failed"),
    "canceled": ("canceled", "status_canceled"),
    "canceling": ("canceling", "status_canceled"),
    "skipped": ("skipped", "status_skipped"),
    "manual": ("manual", "status_manual"),
    "scheduled": ("delayed", "status_scheduled"),
    "waiting_for_callback": ("waiting", "status_pending"),
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(ts: datetime | None) -> str | None:
    """GitLab's API timestamp format: 2016-08-11T11:28:34.085Z."""
    if ts is None:
        return None
    ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    kind:
      ``"status"``  answer with ``status`` (500, 502, 503, 429, 401, ...) instead of the real answer;
      ``"timeout"`` hold the request for ``delay`` seconds (default: FakeGitlab.timeout_delay), longer than
                    the client's timeout; without ``after`` the connection is then dropped and nothing
                    happened, with ``after`` the request took effect and its (unread) answer is sent late;
      ``"reset"``   close the connection without any answer.
      ``"late"``    hold the request for ``delay`` seconds, then let it take effect (after the client gave up)
                    and drop the connection: GitLab committing a create the caller already counts as failed.
    after: the request takes effect (pipeline created / canceled) before the fault replaces the answer.
    retry_after: for 429, the ``Retry-After`` seconds.
    """

    kind: str
    status: int | None = None
    after: bool = False
    retry_after: int = 1
    delay: float | None = None

    @classmethod
    def http(cls, status: int, *, after: bool = False) -> Fault:
        return cls("status", status=status, after=after)

    @classmethod
    def rate_limited(cls, retry_after: int = 1, *, after: bool = False) -> Fault:
        return cls("status", status=429, after=after, retry_after=retry_after)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls("status", status=401)

    @classmethod
    def timeout(cls, *, after: bool = False, delay: float | None = None) -> Fault:
        return cls("timeout", after=after, delay=delay)

    @classmethod
    def reset(cls, *, after: bool = False) -> Fault:
        return cls("reset", after=after)

    @classmethod
    def late(cls, delay: float | None = None) -> Fault:
        return cls("late", delay=delay)

    @classmethod
    def parse(cls, spec: Fault | str | int) -> Fault:
        """``500``, ``"500"``, ``"500-after"``, ``"502"``, ``"503"``, ``"429"``, ``"429:5"`` (Retry-After 5),
        ``"429-after"``, ``"401"``, ``"timeout"``, ``"timeout-after"``, ``"reset"``, ``"reset-after"``, ``"late"``."""
        if isinstance(spec, Fault):
            return spec
        text = str(spec).strip().lower()
        after = False
        for suffix in ("-after", "_after", " after recording", " after"):
            if text.endswith(suffix):
                after, text = True, text[: -len(suffix)]
                break
        if text == "timeout":
            return cls.timeout(after=after)
        if text == "reset":
            return cls.reset(after=after)
        if text == "late":
            return cls.late()
        retry_after = 1
        if ":" in text:
            text, _, ra = text.partition(":")
            retry_after = int(ra)
        if text.isdigit():
            return cls("status", status=int(text), after=after, retry_after=retry_after)
        raise ValueError(f"unknown fault spec {spec!r}")

    def __str__(self) -> str:
        name = str(self.status) if self.kind == "status" else self.kind
        return name + ("-after" if self.after else "")


@dataclass
class _RandomRule:
    rate: float
    choices: list[Fault]
    weights: list[float]
    rng: random.Random


# ---------------------------------------------------------------------------------------------------- state


@dataclass
class FakeProject:
    id: int
    path: str  # full path, e.g. "ml/recsys"
    refs: dict[str, str] = field(default_factory=dict)  # ref -> sha
    default_branch: str = "main"
    visibility: str = "private"


@dataclass
class _Token:
    token: str
    role: str
    can_set_variables: bool
    user: dict[str, Any]


@dataclass
class _TriggerToken:
    token: str
    project_id: int
    owner: _Token


@dataclass
class FakePipeline:
    """A pipeline as the fake stores it. :meth:`FakeGitlab.pipelines` hands out copies."""

    id: int
    iid: int
    project_id: int
    ref: str
    sha: str
    status: str
    source: str
    created_at: datetime
    updated_at: datetime
    web_url: str
    user: dict[str, Any]
    variables: list[dict[str, Any]] = field(default_factory=list)  # [{key, value, variable_type, raw}]
    inputs: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tag: bool = False

    @property
    def vars(self) -> dict[str, str]:
        """Variables as a plain ``{key: value}`` dict."""
        return {v["key"]: v["value"] for v in self.variables}

    def basic_json(self) -> dict[str, Any]:
        """Entities::Ci::PipelineBasic(WithMetadata): the list item shape."""
        return {
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project_id,
            "sha": self.sha,
            "ref": self.ref,
            "status": self.status,
            "source": self.source,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "web_url": self.web_url,
        }

    def full_json(self) -> dict[str, Any]:
        """Entities::Ci::Pipeline: the create/get/cancel shape."""
        duration = None
        queued_duration = None
        if self.started_at is not None:
            queued_duration = round((self.started_at - self.created_at).total_seconds(), 3)
            if self.finished_at is not None:
                duration = int((self.finished_at - self.started_at).total_seconds())
        text, icon = _DETAILED.get(self.status, (self.status, "status_running"))
        details_path = "/" + self.web_url.split("/", 3)[3] if self.web_url.count("/") >= 3 else self.web_url
        return {
            **self.basic_json(),
            "before_sha": "0" * 40,
            "tag": self.tag,
            "yaml_errors": None,
            "user": dict(self.user),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "committed_at": None,
            "duration": duration,
            "queued_duration": queued_duration,
            "coverage": None,
            "detailed_status": {
                "icon": icon,
                "text": text,
                "label": text,
                "group": self.status,
                "tooltip": text,
                "has_details": True,
                "details_path": details_path,
                "illustration": None,
                "favicon": f"/assets/ci_favicons/favicon_{icon}.png",
            },
        }


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it. ``status`` is None when no answer was sent (reset / timeout)."""

    method: str
    path: str  # raw path without the query string, e.g. /api/v4/projects/ml%2Frecsys/pipeline
    status: int | None
    endpoint: str | None  # create / trigger / get / list / variables / cancel / project, None if unrouted
    query: Mapping[str, str] = field(default_factory=dict)
    fault: str | None = None  # str(Fault) if a fault was injected


class _Abort(Exception):
    """Raised inside the app to drop the connection without an answer."""


class _ApiError(Exception):
    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


# --------------------------------------------------------------------------------------------------- the fake


class FakeGitlab:
    """In-memory GitLab (projects, refs, tokens, trigger tokens, pipelines) served as an aiohttp app."""

    def __init__(
        self,
        *,
        project_id: int | None = DEFAULT_PROJECT_ID,
        project_path: str = DEFAULT_PROJECT_PATH,
        refs: Iterable[str] = ("main",),
        tokens: Mapping[str, str] | Iterable[str] = (DEFAULT_TOKEN,),
        trigger_tokens: Iterable[str] = (DEFAULT_TRIGGER_TOKEN,),
        latency: float = 0.0,
        timeout_delay: float = 2.0,
        seed: int = 0,
        clock: Callable[[], datetime] = _utcnow,
        cancel_status: str = "canceled",
        max_value_length: int = 10_000,
        first_pipeline_id: int = 1000,
    ) -> None:
        """
        project_id/project_path/refs: a first project (None: start without projects, use add_project).
        tokens: API tokens, either an iterable (role "maintainer") or a mapping token -> role
            ("guest" | "reporter" | "developer" | "maintainer" | "owner").
        trigger_tokens: pipeline trigger tokens of the first project (owned by the first API token's user).
        latency: seconds every request waits before being handled.
        timeout_delay: how long a "timeout" fault holds the request (must exceed the client's timeout).
        seed: seed of the RNG used by fail_randomly (unless that call gives its own).
        clock: returns an aware datetime; drives created_at / updated_at / started_at / finished_at.
        cancel_status: "canceled" (default) or "canceling" (newer GitLab with on_cancel jobs).
        max_value_length: longest accepted variable value (longer: 400).
        first_pipeline_id: ids are global and increase from here; iids count per project from 1.
        """
        self._lock = threading.RLock()
        self.latency = latency
        self.timeout_delay = timeout_delay
        self.clock = clock
        self.cancel_status = cancel_status
        self.max_value_length = max_value_length
        self.url: str | None = None
        self._seed = seed
        self._projects: dict[int, FakeProject] = {}
        self._tokens: dict[str, _Token] = {}
        self._triggers: dict[str, _TriggerToken] = {}
        self._pipelines: dict[int, FakePipeline] = {}
        self._next_id = first_pipeline_id
        self._next_iid: dict[int, int] = {}
        self._next_user_id = 1
        self._log: list[RequestRecord] = []
        self._fault_queue: dict[str, deque[Fault]] = {}
        self._fault_rules: dict[str, list[_RandomRule]] = {}
        self._closing: asyncio.Event | None = None
        self._closing_loop: asyncio.AbstractEventLoop | None = None

        token_roles = dict(tokens) if isinstance(tokens, Mapping) else {t: "maintainer" for t in tokens}
        for token, role in token_roles.items():
            self.add_token(token, role=role)
        if project_id is not None:
            self.add_project(project_id, project_path, refs=refs)
            for trigger in trigger_tokens:
                self.add_trigger_token(project_id, trigger)

    # ------------------------------------------------------------------------------------- state setup

    def add_project(
        self, project_id: int, path: str, *, refs: Iterable[str] = ("main",), default_branch: str | None = None
    ) -> FakeProject:
        refs = list(refs)
        with self._lock:
            project = FakeProject(
                id=project_id,
                path=path,
                refs={ref: _fake_sha(project_id, ref) for ref in refs},
                default_branch=default_branch or (refs[0] if refs else "main"),
            )
            self._projects[project_id] = project
            self._next_iid.setdefault(project_id, 1)
            return project

    def add_ref(self, project: int | str, ref: str, sha: str | None = None) -> None:
        with self._lock:
            p = self._project_or_raise(project)
            p.refs[ref] = sha or _fake_sha(p.id, ref)

    def remove_ref(self, project: int | str, ref: str) -> None:
        with self._lock:
            self._project_or_raise(project).refs.pop(ref, None)

    def add_token(
        self, token: str, *, role: str = "maintainer", can_set_variables: bool = True, username: str | None = None
    ) -> None:
        """An API token (PRIVATE-TOKEN or Authorization: Bearer). role decides what it may do: reading
        pipelines needs reporter, creating/canceling/reading variables developer. can_set_variables=False
        models ci_pipeline_variables_minimum_override_role above this user's role."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}, expected one of {sorted(ROLES)}")
        with self._lock:
            uid = self._next_user_id
            self._next_user_id += 1
            name = username or f"user{uid}"
            user = {
                "id": uid,
                "username": name,
                "name": name.replace("_", " ").title(),
                "state": "active",
                "locked": False,
                "avatar_url": f"https://www.gravatar.com/avatar/{_fake_sha(name)[:32]}?s=80&d=identicon",
                "web_url": f"https://gitlab.example.com/{name}",
            }
            self._tokens[token] = _Token(token, role, can_set_variables, user)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def add_trigger_token(
        self, project: int | str, token: str, *, owner_token: str | None = None, can_set_variables: bool = True
    ) -> None:
        """A pipeline trigger token of ``project``. It acts as its owner (default: the first API token's user)."""
        with self._lock:
            p = self._project_or_raise(project)
            if owner_token is not None:
                owner = self._tokens[owner_token]
            elif self._tokens:
                owner = next(iter(self._tokens.values()))
            else:
                owner = _Token("", "maintainer", True, {"id": 0, "username": "trigger", "name": "Trigger"})
            if not can_set_variables:
                owner = replace(owner, can_set_variables=False)
            self._triggers[token] = _TriggerToken(token, p.id, owner)

    def revoke_trigger_token(self, token: str) -> None:
        with self._lock:
            self._triggers.pop(token, None)

    def create_pipeline(
        self,
        project: int | str = DEFAULT_PROJECT_ID,
        ref: str = "main",
        variables: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
        *,
        source: str = "api",
        status: str = "created",
        token: str | None = None,
    ) -> FakePipeline:
        """Seed a pipeline directly (no HTTP, no validation, no faults). Returns a copy."""
        with self._lock:
            p = self._project_or_raise(project)
            if ref not in p.refs:
                p.refs[ref] = _fake_sha(p.id, ref)
            owner = self._tokens[token] if token else next(iter(self._tokens.values()), None)
            user = owner.user if owner else {"id": 0, "username": "system", "name": "System"}
            if isinstance(variables, Mapping):
                vlist = [{"key": k, "value": v} for k, v in variables.items()]
            else:
                vlist = [dict(v) for v in (variables or [])]
            pipeline = self._record_pipeline(p, ref, vlist, {}, source, user, "http://gitlab.invalid")
            if status != "created":
                self._set_status_locked(pipeline, status)
            return replace(pipeline, variables=[dict(v) for v in pipeline.variables])

    # ------------------------------------------------------------------------------------- test controls

    def set_status(self, pipeline_id: int, status: str) -> None:
        """Move a pipeline to ``status`` (any string; unknown ones are stored as given)."""
        with self._lock:
            pipeline = self._pipelines.get(int(pipeline_id))
            if pipeline is None:
                raise KeyError(f"no pipeline {pipeline_id}")
            self._set_status_locked(pipeline, status)

    def pipeline(self, pipeline_id: int) -> FakePipeline:
        """A copy of one pipeline (KeyError if unknown)."""
        with self._lock:
            p = self._pipelines[int(pipeline_id)]
            return replace(p, variables=[dict(v) for v in p.variables], inputs=dict(p.inputs))

    def pipelines(self, project: int | str | None = None) -> list[FakePipeline]:
        """Copies of the pipelines of ``project`` (all projects if None), oldest first."""
        with self._lock:
            pid = None if project is None else self._project_or_raise(project).id
            return [
                replace(p, variables=[dict(v) for v in p.variables], inputs=dict(p.inputs))
                for p in sorted(self._pipelines.values(), key=lambda p: p.id)
                if pid is None or p.project_id == pid
            ]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request handled so far (copy), in arrival order of their answers."""
        with self._lock:
            return list(self._log)

    def calls(self, endpoint: str | None = None, *, method: str | None = None) -> list[RequestRecord]:
        """The request log filtered by endpoint kind and/or method."""
        return [
            r
            for r in self.requests
            if (endpoint is None or r.endpoint == endpoint) and (method is None or r.method == method.upper())
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------------------------------- fault injection

    def fail(self, endpoint: str, *faults: Fault | str | int) -> None:
        """Queue faults for the next requests to ``endpoint`` (one fault per request, in order).

        ``fake.fail("create", "500-after", "429:3", "timeout")``: the next create is recorded and answered
        500, the one after gets 429 with Retry-After 3, the third hangs; then creates work again.
        """
        self._check_endpoint(endpoint)
        parsed = [Fault.parse(f) for f in faults]
        with self._lock:
            self._fault_queue.setdefault(endpoint, deque()).extend(parsed)

    def fail_randomly(
        self,
        endpoint: str,
        rate: float,
        faults: Mapping[Fault | str | int, float] | Iterable[Fault | str | int] = ("500",),
        *,
        seed: int | None = None,
    ) -> None:
        """Make a fraction ``rate`` of the requests to ``endpoint`` fail, drawing the fault from ``faults``
        (a list: equal weights; a mapping: fault -> weight) with an RNG seeded by ``seed`` (default: the
        FakeGitlab seed). Queued faults (fail) are used first.

        ``fake.fail_randomly("create", 0.3, ["500", "500-after"], seed=7)``: 30% of creates fail, half of
        those after the pipeline was recorded.
        """
        self._check_endpoint(endpoint)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if isinstance(faults, Mapping):
            choices = [Fault.parse(f) for f in faults]
            weights = [float(w) for w in faults.values()]
        else:
            choices = [Fault.parse(f) for f in faults]
            weights = [1.0] * len(choices)
        if not choices:
            raise ValueError("no faults to choose from")
        rng = random.Random(self._seed if seed is None else seed)
        with self._lock:
            self._fault_rules.setdefault(endpoint, []).append(_RandomRule(rate, choices, weights, rng))

    def clear_faults(self, endpoint: str | None = None) -> None:
        with self._lock:
            if endpoint is None:
                self._fault_queue.clear()
                self._fault_rules.clear()
            else:
                self._fault_queue.pop(endpoint, None)
                self._fault_rules.pop(endpoint, None)

    def pending_faults(self, endpoint: str) -> int:
        """How many queued faults are left for ``endpoint``."""
        with self._lock:
            return len(self._fault_queue.get(endpoint, ()))

    @staticmethod
    def _check_endpoint(endpoint: str) -> None:
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint kind {endpoint!r}, expected one of {ENDPOINTS} or '*'")

    def _draw_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for key in (endpoint, "*"):
                queue = self._fault_queue.get(key)
                if queue:
                    return queue.popleft()
            for key in (endpoint, "*"):
                for rule in self._fault_rules.get(key, ()):
                    if rule.rng.random() < rule.rate:
                        return rule.rng.choices(rule.choices, weights=rule.weights, k=1)[0]
            return None

    # ------------------------------------------------------------------------------------- serving

    def app(self) -> web.Application:
        """The aiohttp application (routes everything under /api/v4 itself, on the raw path, so that
        URL-encoded project paths like ``ml%2Frecsys`` arrive intact)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on the running loop; yields the base URL (``http://127.0.0.1:PORT``) to hand to
        ``gitlab.Gitlab``. Requests still held by a timeout fault are dropped on exit."""
        self._closing = asyncio.Event()
        self._closing_loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            addr = runner.addresses[0]
            self.url = f"http://{addr[0]}:{addr[1]}"
            yield self.url
        finally:
            self._closing.set()
            await runner.cleanup()
            self.url = None

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread with its own event loop (for synchronous tests, or for tests
        whose loop must not be blocked); yields the base URL. Stops the loop and joins the thread on exit."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop: asyncio.Event | None = None
        failure: list[BaseException] = []
        url_box: list[str] = []

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            try:
                async with self.serve(host, port) as url:
                    url_box.append(url)
                    ready.set()
                    await stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                failure.append(exc)
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(main())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="fake-gitlab", daemon=True)
        thread.start()
        ready.wait(10)
        if failure:
            thread.join(5)
            raise failure[0]
        if not url_box:
            raise RuntimeError("fake GitLab did not start within 10 s")
        try:
            yield url_box[0]
        finally:
            assert stop is not None
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, but wake up early when the server shuts down. True if it slept the full time."""
        if seconds <= 0:
            return True
        closing = self._closing if self._closing_loop is asyncio.get_running_loop() else None
        if closing is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(closing.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    # ------------------------------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        endpoint, _ = self._route(request.method, raw_path)
        record_fault: Fault | None = None
        status: int | None = None
        try:
            if self.latency > 0:
                await self._sleep(self.latency)
            fault = self._draw_fault(endpoint) if endpoint else None
            record_fault = fault
            if fault is not None and not fault.after:
                if fault.kind == "timeout":
                    await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay)
                    raise _Abort
                if fault.kind == "reset":
                    raise _Abort
                if fault.kind == "late":
                    await request.read()  # GitLab has the whole request; the client leaving does not undo it
                    if await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay):
                        await handler(request)
                    raise _Abort
                response = self._fault_response(fault)
                status = response.status
                return response
            response = await handler(request)
            if fault is not None:  # an "after" fault: the request took effect, its answer is lost
                if fault.kind == "timeout":
                    if not await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay):
                        raise _Abort
                elif fault.kind == "reset":
                    raise _Abort
                else:
                    response = self._fault_response(fault)
            status = response.status
            return response
        except _Abort:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)  # never reaches the client: the transport is gone
        finally:
            with self._lock:
                self._log.append(
                    RequestRecord(
                        method=request.method,
                        path=raw_path,
                        status=status,
                        endpoint=endpoint,
                        query=dict(request.query),
                        fault=None if record_fault is None else str(record_fault),
                    )
                )

    def _fault_response(self, fault: Fault) -> web.Response:
        code = fault.status or 500
        if code == 429:
            reset = int(self.clock().timestamp()) + fault.retry_after
            headers = {
                "Retry-After": str(fault.retry_after),
                "RateLimit-Name": "throttle_authenticated_api",
                "RateLimit-Limit": "60",
                "RateLimit-Observed": "61",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset),
            }
            return web.Response(status=429, text="Retry later\n", content_type="text/plain", headers=headers)
        if code in (502, 504):
            reason = "Bad Gateway" if code == 502 else "Gateway Timeout"
            page = f"<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1></body></html>"
            return web.Response(status=code, text=page, content_type="text/html")
        messages = {
            401: "401 Unauthorized",
            403: "403 Forbidden",
            404: "404 Not Found",
            500: "500 Internal Server Error",
            503: "503 Service Unavailable",
        }
        return _json({"message": messages.get(code, f"{code} Error")}, status=code)

    # ------------------------------------------------------------------------------------- routing

    _ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
        ("POST", ("pipeline",), "create"),
        ("POST", ("trigger", "pipeline"), "trigger"),
        ("GET", ("pipelines",), "list"),
        ("GET", ("pipelines", "*"), "get"),
        ("GET", ("pipelines", "*", "variables"), "variables"),
        ("POST", ("pipelines", "*", "cancel"), "cancel"),
        ("GET", (), "project"),
    )

    def _route(self, method: str, raw_path: str) -> tuple[str | None, list[str]]:
        """Match ``/api/v4/projects/:id/...`` on the raw (still percent-encoded) path."""
        parts = raw_path.split("/")
        if parts[:4] != ["", "api", "v4", "projects"] or len(parts) < 5 or not parts[4]:
            return None, []
        tail = [unquote(p) for p in parts[5:]]
        if tail and tail[-1] == "":
            tail = tail[:-1]
        for m, pattern, name in self._ROUTES:
            if m != method.upper() and not (m == "GET" and method.upper() == "HEAD"):
                continue
            if len(pattern) == len(tail) and all(p == "*" or p == t for p, t in zip(pattern, tail)):
                return name, [unquote(parts[4]), *[t for p, t in zip(pattern, tail) if p == "*"]]
        return None, []

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        endpoint, args = self._route(request.method, raw_path)
        if endpoint is None:
            return _json({"error": "404 Not Found"}, status=404)
        try:
            handler = getattr(self, f"_h_{endpoint}")
            return await handler(request, *args)
        except _ApiError as err:
            return _json(err.body, status=err.status)

    # ------------------------------------------------------------------------------------- helpers

    def _project_or_raise(self, project: int | str) -> FakeProject:
        found = self._find_project(project)
        if found is None:
            raise KeyError(f"no project {project!r}")
        return found

    def _find_project(self, ident: int | str) -> FakeProject | None:
        with self._lock:
            if isinstance(ident, int) or str(ident).isdigit():
                return self._projects.get(int(ident))
            for p in self._projects.values():
                if p.path == ident:
                    return p
            return None

    def _authenticate(self, request: web.Request) -> _Token | None:
        """None = anonymous. Raises 401 for a token that is present but unknown."""
        token = request.headers.get("PRIVATE-TOKEN")
        if token is None:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        if token is None:
            return None
        with self._lock:
            found = self._tokens.get(token)
        if found is None:
            raise _ApiError(401, {"message": "401 Unauthorized"})
        return found

    def _authorized_project(
        self, request: web.Request, ident: str, *, write: bool, min_role: str
    ) -> tuple[FakeProject, _Token]:
        """GitLab's order: a bad token is 401 first; anonymous writes are 401; a private project is
        invisible (404) to anonymous readers; a member below ``min_role`` gets 403."""
        user = self._authenticate(request)
        if user is None and write:
            raise _ApiError(401, {"message": "401 Unauthorized"})
        project = self._find_project(ident)
        if project is None or user is None:
            raise _ApiError(404, {"message": "404 Project Not Found"})
        if ROLES[user.role] < ROLES[min_role]:
            raise _ApiError(403, {"message": "403 Forbidden"})
        return project, user

    def _pipeline_of(self, project: FakeProject, pipeline_id: str) -> FakePipeline:
        if not re.fullmatch(r"-?\d+", pipeline_id):
            raise _ApiError(400, {"error": "pipeline_id is invalid"})
        with self._lock:
            pipeline = self._pipelines.get(int(pipeline_id))
        if pipeline is None or pipeline.project_id != project.id:
            raise _ApiError(404, {"message": "404 Not found"})
        return pipeline

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        """Grape-like params: query string merged with a JSON or form body (rack nested names)."""
        params: dict[str, Any] = _rack_parse(list(request.query.items()))
        if not request.body_exists:  # (can_read_body turns False once the body was read)
            return params
        ctype = request.content_type
        if ctype == "application/json":
            raw = await request.read()
            if not raw.strip():
                return params
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise _ApiError(400, {"error": f"The provided content-type '{ctype}' is not supported."}) from exc
            if not isinstance(body, dict):
                raise _ApiError(400, {"error": "The request body must be a JSON object"})
            params.update(body)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update(_rack_parse([(k, v) for k, v in form.items() if isinstance(v, str)]))
        else:
            await request.read()
        return params

    def _web_url(self, request: web.Request, project: FakeProject, pipeline_id: int) -> str:
        return f"{request.scheme}://{request.host}/{project.path}/-/pipelines/{pipeline_id}"

    def _validate_variables(self, variables: Any) -> list[dict[str, Any]]:
        """Grape's params block for ``variables`` (Array of {key, value, variable_type}) + model checks."""
        if variables is None:
            return []
        if not isinstance(variables, list) or not all(isinstance(v, dict) for v in variables):
            raise _ApiError(400, {"error": "variables is invalid"})
        out: list[dict[str, Any]] = []
        for i, var in enumerate(variables):
            row: dict[str, Any] = {}
            for name in ("key", "value"):
                val = var.get(name)
                if val is None:
                    row[name] = None
                elif isinstance(val, (str, int, float)) and not isinstance(val, bool):
                    row[name] = str(val)
                else:
                    raise _ApiError(400, {"error": f"variables[{i}][{name}] is invalid"})
            vtype = var.get("variable_type", "env_var")
            if vtype not in VARIABLE_TYPES:
                raise _ApiError(400, {"error": f"variables[{i}][variable_type] does not have a valid value"})
            row["variable_type"] = vtype
            out.append(row)
        return out

    def _check_variable_models(self, variables: list[dict[str, Any]]) -> None:
        """Ci::PipelineVariable validations (key presence/format/length, value length)."""
        for var in variables:
            key = (var.get("key") or "").strip()
            if not key or len(key) > 255 or not VARIABLE_KEY_RE.match(key):
                raise _ApiError(400, {"message": {"variables": ["is invalid"]}})
            var["key"] = key
            if var.get("value") is not None and len(var["value"]) > self.max_value_length:
                raise _ApiError(
                    400,
                    {"message": {"variables.value": [f"is too long (maximum is {self.max_value_length} characters)"]}},
                )

    @staticmethod
    def _check_chain(project: FakeProject, ref: str, variables: list[dict[str, Any]], user: _Token) -> None:
        """Gitlab::Ci::Pipeline::Chain: ref exists, permission to set variables, unique keys."""
        if ref not in project.refs:
            raise _ApiError(400, {"message": {"base": ["Reference not found"]}})
        if variables and not user.can_set_variables:
            raise _ApiError(400, {"message": {"base": ["Insufficient permissions to set pipeline variables"]}})
        seen: dict[str, int] = {}
        for var in variables:
            seen[var["key"]] = seen.get(var["key"], 0) + 1
        dups = [k for k, n in seen.items() if n > 1]
        if dups:
            word = "names" if len(dups) > 1 else "name"
            raise _ApiError(400, {"message": {"base": [f"Duplicate variable {word}: {', '.join(dups)}"]}})

    def _record_pipeline(
        self,
        project: FakeProject,
        ref: str,
        variables: list[dict[str, Any]],
        inputs: dict[str, Any],
        source: str,
        user: dict[str, Any],
        base_url: str,
    ) -> FakePipeline:
        with self._lock:
            pid = self._next_id
            self._next_id += 1
            iid = self._next_iid.get(project.id, 1)
            self._next_iid[project.id] = iid + 1
            now = self.clock()
            pipeline = FakePipeline(
                id=pid,
                iid=iid,
                project_id=project.id,
                ref=ref,
                sha=project.refs.get(ref) or _fake_sha(project.id, ref),
                status="created",
                source=source,
                created_at=now,
                updated_at=now,
                web_url=f"{base_url}/{project.path}/-/pipelines/{pid}",
                user=dict(user),
                variables=[
                    {
                        "key": v["key"],
                        "value": v.get("value") if v.get("value") is not None else "",
                        "variable_type": v.get("variable_type", "env_var"),
                        "raw": False,
                    }
                    for v in variables
                ],
                inputs=dict(inputs),
            )
            self._pipelines[pid] = pipeline
            return pipeline

    def _set_status_locked(self, pipeline: FakePipeline, status: str) -> None:
        now = self.clock()
        if status == "running" and pipeline.started_at is None:
            pipeline.started_at = now
        if status in FINISHED_STATUSES:
            if pipeline.started_at is None and status in ("success", "failed"):
                pipeline.started_at = now
            pipeline.finished_at = now
        else:
            pipeline.finished_at = None
        pipeline.status = status
        pipeline.updated_at = now

    # ------------------------------------------------------------------------------------- handlers

    async def _h_create(self, request: web.Request, ident: str) -> web.Response:
        project, user = self._authorized_project(request, ident, write=True, min_role="developer")
        params = await self._params(request)
        ref = params.get("ref")
        if ref is None or (isinstance(ref, str) and ref == ""):
            raise _ApiError(400, {"error": "ref is missing" if ref is None else "ref is empty"})
        if not isinstance(ref, (str, int)):
            raise _ApiError(400, {"error": "ref is invalid"})
        ref = str(ref)
        variables = self._validate_variables(params.get("variables"))
        inputs = params.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise _ApiError(400, {"error": "inputs is invalid"})
        self._check_variable_models(variables)
        self._check_chain(project, ref, variables, user)
        pipeline = self._record_pipeline(
            project, ref, variables, inputs or {}, "api", user.user, f"{request.scheme}://{request.host}"
        )
        return _json(pipeline.full_json(), status=201)

    async def _h_trigger(self, request: web.Request, ident: str) -> web.Response:
        params = await self._params(request)
        missing = [name for name in ("ref", "token") if params.get(name) is None]
        if missing:
            raise _ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        if params.get("ref") == "":
            raise _ApiError(400, {"error": "ref is empty"})
        variables = params.get("variables") or {}
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise _ApiError(400, {"message": "variables needs to be a map of key-valued strings"})
        inputs = params.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise _ApiError(400, {"error": "inputs is invalid"})
        project = self._find_project(ident)
        if project is None:
            raise _ApiError(404, {"message": "404 Not Found"})
        with self._lock:
            trigger = self._triggers.get(str(params["token"]))
        if trigger is None or trigger.project_id != project.id:
            raise _ApiError(404, {"message": "404 Not Found"})
        ref = str(params["ref"])
        vlist = [{"key": k, "value": v, "variable_type": "env_var"} for k, v in variables.items()]
        self._check_variable_models(vlist)
        self._check_chain(project, ref, vlist, trigger.owner)
        pipeline = self._record_pipeline(
            project, ref, vlist, inputs, "trigger", trigger.owner.user, f"{request.scheme}://{request.host}"
        )
        return _json(pipeline.full_json(), status=201)

    async def _h_get(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="reporter")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            body = {**pipeline.full_json(), "name": None}
        return _json(body)

    async def _h_variables(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="developer")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            body = [
                {"variable_type": v["variable_type"], "key": v["key"], "value": v["value"], "raw": v["raw"]}
                for v in pipeline.variables
            ]
        return _json(body)

    async def _h_cancel(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=True, min_role="developer")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            if pipeline.status in CANCELABLE_STATUSES or pipeline.status not in (
                *STATUSES,
                *FINISHED_STATUSES,
            ):
                self._set_status_locked(pipeline, self.cancel_status)
            body = pipeline.full_json()
        return _json(body, status=200)

    async def _h_project(self, request: web.Request, ident: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="guest")
        base = f"{request.scheme}://{request.host}"
        namespace, _, name = project.path.rpartition("/")
        return _json(
            {
                "id": project.id,
                "name": name,
                "path": name,
                "path_with_namespace": project.path,
                "name_with_namespace": project.path.replace("/", " / "),
                "default_branch": project.default_branch,
                "visibility": project.visibility,
                "web_url": f"{base}/{project.path}",
                "namespace": {"full_path": namespace, "path": namespace.rsplit("/", 1)[-1]},
            }
        )

    async def _h_list(self, request: web.Request, ident: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="reporter")
        q = request.query
        for name, allowed in (("scope", LIST_SCOPES), ("status", frozenset(STATUSES)), ("source", SOURCES)):
            if name in q and q[name] not in allowed:
                raise _ApiError(400, {"error": f"{name} does not have a valid value"})
        order_by = q.get("order_by", "id")
        if order_by not in ORDER_BY:
            raise _ApiError(400, {"error": "order_by does not have a valid value"})
        sort = q.get("sort", "desc").lower()
        if sort not in ("asc", "desc"):
            raise _ApiError(400, {"error": "sort does not have a valid value"})
        bounds: dict[str, datetime] = {}
        for name in ("updated_after", "updated_before", "created_after", "created_before"):
            if name in q:
                bounds[name] = _parse_time(name, q[name])
        page, per_page = _int_param(q, "page", 1), _int_param(q, "per_page", 20)
        page = max(page, 1)
        per_page = 20 if per_page < 1 else min(per_page, 100)

        with self._lock:
            items = [p for p in self._pipelines.values() if p.project_id == project.id]
            if "ref" in q:
                items = [p for p in items if p.ref == q["ref"]]
            if "sha" in q:
                items = [p for p in items if p.sha == q["sha"]]
            if "status" in q:
                items = [p for p in items if p.status == q["status"]]
            if "source" in q:
                items = [p for p in items if p.source == q["source"]]
            else:  # child pipelines are left out unless asked for
                items = [p for p in items if p.source != "parent_pipeline"]
            scope = q.get("scope")
            if scope == "running":
                items = [p for p in items if p.status == "running"]
            elif scope == "pending":
                items = [p for p in items if p.status == "pending"]
            elif scope == "finished":
                items = [p for p in items if p.status in FINISHED_STATUSES]
            elif scope == "tags":
                items = [p for p in items if p.tag]
            elif scope == "branches":
                items = [p for p in items if not p.tag]
            if "updated_after" in bounds:
                items = [p for p in items if p.updated_at >= bounds["updated_after"]]
            if "updated_before" in bounds:
                items = [p for p in items if p.updated_at <= bounds["updated_before"]]
            if "created_after" in bounds:
                items = [p for p in items if p.created_at >= bounds["created_after"]]
            if "created_before" in bounds:
                items = [p for p in items if p.created_at <= bounds["created_before"]]

            def sort_key(p: FakePipeline) -> tuple[Any, int]:
                value = {"id": p.id, "status": p.status, "ref": p.ref, "updated_at": p.updated_at}.get(
                    order_by, p.user.get("id", 0)
                )
                return (value, p.id)

            items.sort(key=sort_key, reverse=(sort == "desc"))
            total = len(items)
            chunk = items[(page - 1) * per_page : page * per_page]
            body = [{**p.basic_json(), "name": None} for p in chunk]

        total_pages = max(1, -(-total // per_page))
        headers = _pagination_headers(request, page, per_page, total, total_pages)
        return _json(body, headers=headers)


# ------------------------------------------------------------------------------------------------- helpers


def _json(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _int_param(q: Mapping[str, str], name: str, default: int) -> int:
    if name not in q or q[name] == "":
        return default
    try:
        return int(q[name])
    except ValueError as exc:
        raise _ApiError(400, {"error": f"{name} is invalid"}) from exc


def _parse_time(name: str, value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value.strip().replace(" ", "T", 1) if " " in value.strip() else value.strip())
    except ValueError as exc:
        raise _ApiError(400, {"error": f"{name} is invalid"}) from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _pagination_headers(
    request: web.Request, page: int, per_page: int, total: int, total_pages: int
) -> dict[str, str]:
    """GitLab's offset pagination headers (X-*, Link with prev/next/first/last)."""
    base = f"{request.scheme}://{request.host}{request.raw_path.split('?', 1)[0]}"
    params = [(k, v) for k, v in request.query.items() if k not in ("page", "per_page")]

    def link(p: int) -> str:
        query = urlencode([*params, ("page", str(p)), ("per_page", str(per_page))], quote_via=quote)
        return f"{base}?{query}"

    links = []
    if page > 1:
        links.append(f'<{link(page - 1)}>; rel="prev"')
    if page < total_pages:
        links.append(f'<{link(page + 1)}>; rel="next"')
    links.append(f'<{link(1)}>; rel="first"')
    links.append(f'<{link(total_pages)}>; rel="last"')
    return {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Prev-Page": str(page - 1) if page > 1 else "",
        "X-Next-Page": str(page + 1) if page < total_pages else "",
        "X-Total": str(total),
        "X-Total-Pages": str(total_pages),
        "Link": ", ".join(links),
    }


def _rack_parse(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Enough of Rack's nested parameter parsing: ``a=1``, ``variables[KEY]=v`` (hash) and
    ``variables[][key]=K&variables[][value]=V`` (array of hashes)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        m = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", name)
        if not m or not m.group(2):
            out[name] = value
            continue
        root, rest = m.group(1), re.findall(r"\[([^\[\]]*)\]", m.group(2))
        if rest[0] == "" and len(rest) == 2:  # variables[][key]=...
            items = out.setdefault(root, [])
            if not isinstance(items, list):
                continue
            if not items or rest[1] in items[-1]:
                items.append({})
            items[-1][rest[1]] = value
        elif rest[0] == "" and len(rest) == 1:  # list[]=a
            items = out.setdefault(root, [])
            if isinstance(items, list):
                items.append(value)
        elif len(rest) == 1:  # variables[KEY]=value
            d = out.setdefault(root, {})
            if isinstance(d, dict):
                d[rest[0]] = value
        else:  # deeper nesting: keep the flat name
            out[name] = value
    return out


"""One Settings model: a YAML file, then env overrides, then secrets from env or files. Validated once."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.core.canary import CanaryPlan, CanarySpec, GuardrailSpec, Step
from controller.core.durations import format_duration, parse_duration
from controller.core.judge import Direction, JudgeConfig
from controller.core.matchers import parse_matcher
from controller.core.policy import ModelPolicy, PolicyConfig, Route
from controller.core.runs import LIVE, Phase

# metric{label="v", other=~"a|b"} or {__name__="m", ...}: a name and/or one brace group, nothing else.
COUNTER_SELECTOR = re.compile(
    r'[A-Za-z_:][A-Za-z0-9_:]*\s*(\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})?|\{(?:[^{}"]|"(?:[^"\\]|\\.)*")+\}')

ENV_PREFIX = "RETRAIN_CONTROLLER_"
SECRET_NAMES = ("alertmanager_token", "admin_token", "callback_secret", "gitlab_token", "gitlab_webhook_token")

Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    external_url: str = ""  # how pipelines reach us; defaults to http://host:port
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: Duration = timedelta(seconds=20)  # in-flight requests may finish this long after SIGTERM
    # Slow clients: a connection must send a whole request head within header_timeout of opening (or of its last
    # answer; idle keep-alive connections close then too), and a whole body within body_timeout after that.
    header_timeout: Duration = timedelta(seconds=15)
    body_timeout: Duration = timedelta(seconds=30)

    @field_validator("header_timeout", "body_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class StoreSettings(_Strict):
    path: Path = Path("var/retrain-controller.db")
    busy_timeout: Duration = timedelta(seconds=5)
    synchronous: Literal["full", "normal"] = "full"
    retention: Duration = timedelta(days=30)


def _default_deadlines() -> dict[Phase, timedelta]:
    return {
        Phase.QUEUED: timedelta(hours=24),
        Phase.TRIGGERING: timedelta(minutes=15),
        Phase.TRAINING: timedelta(hours=6),
        Phase.DEPLOYING: timedelta(minutes=30),
        Phase.ANALYZING: timedelta(hours=3),
        Phase.PROMOTING: timedelta(minutes=30),
        Phase.ROLLING_BACK: timedelta(minutes=30),
    }


class PolicySettings(_Strict):
    cooldown: Duration = timedelta(hours=6)
    daily_budget: int = Field(default=3, ge=1)
    max_concurrent_runs: int = Field(default=2, ge=1)
    dry_run: bool = False
    tick_interval: Duration = timedelta(seconds=5)
    deadlines: dict[Phase, Duration] = Field(default_factory=_default_deadlines)

    @field_validator("deadlines")
    @classmethod
    def _live_phases_only(cls, value: dict[Phase, timedelta]) -> dict[Phase, timedelta]:
        bad = [p for p in value if p not in LIVE]
        if bad:
            raise ValueError(f"deadlines only apply to live phases, not {', '.join(bad)}")
        return {**_default_deadlines(), **value}


class GitlabSettings(_Strict):
    url: str = "https://gitlab.example.com"
    timeout: Duration = timedelta(seconds=30)  # one HTTP call
    retry_total: Duration = timedelta(minutes=2)  # retries of one operation before the next tick tries again
    poll_interval: Duration = timedelta(seconds=30)  # pipeline status polls, a backstop for hooks and callbacks
    # After a create whose outcome is unknown (timeout, reset, 5xx, a crash mid-call), only look for its pipeline
    # this long before creating another: GitLab may commit the first one late.
    create_settle: Duration = timedelta(seconds=60)


class PrometheusSettings(_Strict):
    url: str = "http://127.0.0.1:9090"
    timeout: Duration = timedelta(seconds=10)


class KubernetesSettings(_Strict):
    kubeconfig: Path | None = None  # None: in-cluster config


class RuleSettings(_Strict):
    alertname: str | None = None
    matchers: list[str] = Field(default_factory=list)
    reason: str = Field(default="", pattern=r"^[a-z0-9_.-]*$", max_length=64)
    notify_only: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "RuleSettings":
        if self.alertname is None and not self.matchers:
            raise ValueError("a rule needs `alertname` or `matchers`")
        if not self.notify_only and not self.reason:
            raise ValueError("a rule needs a `reason` unless it is `notify_only`")
        for m in self.matchers:
            parse_matcher(m)
        return self

    def all_matchers(self) -> list[str]:
        named = [f"alertname={_quote(self.alertname)}"] if self.alertname is not None else []
        return named + self.matchers


class CommandPipeline(_Strict):
    """Runs a local command per run (the demo, small setups)."""

    runner: Literal["command"] = "command"
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _own_keys(cls, data: Any) -> Any:
        return _refuse_foreign_keys(cls, data)

    @model_validator(mode="after")
    def _runnable(self) -> "CommandPipeline":
        if not self.command:
            raise ValueError("the command runner needs `command` (a list: program and arguments)")
        return self


class GitlabPipeline(_Strict):
    """Creates a GitLab pipeline per run (the pipelines API, or the trigger API with a trigger token)."""

    runner: Literal["gitlab"]
    project: str | int | None = None  # numeric id or full path, e.g. ml/recsys
    ref: str = "main"
    variables: dict[str, str] = Field(default_factory=dict)
    trigger_token_file: Path | None = None  # use the trigger API with this token instead of the pipelines API

    @model_validator(mode="before")
    @classmethod
    def _own_keys(cls, data: Any) -> Any:
        return _refuse_foreign_keys(cls, data)

    @model_validator(mode="after")
    def _runnable(self) -> "GitlabPipeline":
        if self.project in (None, ""):
            raise ValueError("the gitlab runner needs `project` (numeric id or full path)")
        reserved = sorted(k for k in self.variables if k.startswith("RETRAIN_"))
        if reserved:
            raise ValueError(f"variables starting with RETRAIN_ are set by the controller: {', '.join(reserved)}")
        return self


PIPELINES: dict[str, type[CommandPipeline] | type[GitlabPipeline]] = {
    "command": CommandPipeline,
    "gitlab": GitlabPipeline,
}
DEFAULT_RUNNER = "command"


def _refuse_foreign_keys(cls: type[BaseModel], data: Any) -> Any:
    """A key of another runner (e.g. `project` under the command runner) is a mistake worth naming as such."""
    if not isinstance(data, dict):
        return data
    runner = next(name for name, model in PIPELINES.items() if model is cls)
    for other, model in PIPELINES.items():
        foreign = [k for k in data if isinstance(k, str) and k not in cls.model_fields and k in model.model_fields]
        if foreign:
            keys = ", ".join(f"`{k}`" for k in foreign)
            verb = "is a setting" if len(foreign) == 1 else "are settings"
            raise ValueError(f"{keys} {verb} of the {other} runner, not of the {runner} runner this pipeline uses "
                             f"(`runner: {other}` selects it)")  # fmt: skip
    return data


def _runner_of(value: Any) -> str:
    if isinstance(value, dict):
        runner = value.get("runner", DEFAULT_RUNNER)
        return runner if isinstance(runner, str) else ""
    return str(getattr(value, "runner", DEFAULT_RUNNER))


# One class per runner, chosen by `runner` (the command runner when it is left out).
PipelineSettings = Annotated[
    Annotated[CommandPipeline, Tag("command")] | Annotated[GitlabPipeline, Tag("gitlab")],
    Discriminator(
        _runner_of,
        custom_error_type="unknown_runner",
        custom_error_message=f"`runner` must be one of {', '.join(PIPELINES)} (default {DEFAULT_RUNNER})",
    ),
]


class StepSettings(_Strict):
    weight: int = Field(ge=1, le=100)  # percent of the replica budget
    min_duration: Duration = timedelta(minutes=5)


class CanarySettings(_Strict):
    """Where the model runs on Kubernetes: a stable and a canary Deployment behind one Service."""

    namespace: str
    stable: str  # Deployment names
    canary: str
    container: str
    total_replicas: int = Field(default=10, ge=1)
    steps: list[StepSettings] = Field(
        default_factory=lambda: [StepSettings(weight=10), StepSettings(weight=25), StepSettings(weight=50)]
    )
    ready_timeout: Duration = timedelta(minutes=10)  # a canary not ready by then rolls back
    traffic: Literal["replicas"] = "replicas"  # where a mesh router (Istio, Gateway API) would plug in

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: list[StepSettings]) -> list[StepSettings]:
        if not value:
            raise ValueError("at least one step")
        weights = [s.weight for s in value]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must increase: {weights}")
        return value


class GuardrailSettings(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_.-]{1,40}$")
    query: str  # PromQL giving one number for the canary (e.g. its error ratio or p99 latency)
    max: float | None = None
    min: float | None = None
    breaches: int = Field(default=2, ge=1)  # looks in a row over the bound that roll back (1: the first one)

    @model_validator(mode="after")
    def _one_bound(self) -> "GuardrailSettings":
        if (self.max is None) == (self.min is None):
            raise ValueError("a guardrail needs exactly one of `max` or `min`")
        return self

    def spec(self) -> GuardrailSpec:
        if self.max is not None:
            return GuardrailSpec(self.name, self.query, self.max, Direction.MAX, self.breaches)
        if self.min is not None:
            return GuardrailSpec(self.name, self.query, self.min, Direction.MIN, self.breaches)
        raise AssertionError("validated: exactly one of max or min")  # pragma: no cover


class AnalysisSettings(_Strict):
    """The primary metric is a ratio of two counters (hits / trials, e.g. clicked / served slots), split by
    `track_label` into stable and canary; counts are taken from raw counter values, not increase()."""

    hits: str  # a counter selector, e.g. recsys_slot_hits_total{model="recsys"}
    trials: str
    # A counter of requests (the units slots come in). Without `overdispersion`, the judge then assumes the worst
    # correlation of slots within a request: valid, but slower. With neither, slots count as independent.
    units: str | None = None
    track_label: str = "track"
    tolerance: float = Field(default=0.05, ge=0, lt=1)  # the canary may be this much worse, relatively
    indifference: float = Field(default=0.05, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)  # P(roll back a canary that is fine)
    beta: float = Field(default=0.05, gt=0, lt=0.5)  # P(promote a canary that is too bad)
    overdispersion: float | None = Field(default=None, ge=1)  # design effect of correlated trials
    min_trials: int = Field(default=1000, ge=0)  # per arm, before a PASS; also per step before the next
    interval: Duration = timedelta(minutes=1)
    max_no_data: int = Field(default=5, ge=0)  # consecutive NO_DATA/ERROR looks; one more rolls back
    guardrails: list[GuardrailSettings] = Field(default_factory=list)

    @field_validator("hits", "trials", "units")
    @classmethod
    def _selector(cls, v: str | None) -> str | None:
        # Read as `selector[5m]` and per series (a sum would hide one pod's reset): an expression cannot be either.
        if v is not None and not COUNTER_SELECTOR.fullmatch(v.strip()):
            raise ValueError(f"{v!r} is not a counter selector: a metric name with optional {{label matchers}}, "
                             "no functions, sums or ranges")  # fmt: skip
        return v.strip() if v is not None else v


class ModelSettings(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
    matchers: list[str]
    rules: list[RuleSettings]
    cooldown: Duration | None = None
    daily_budget: int | None = Field(default=None, ge=1)
    pipeline: PipelineSettings
    canary: CanarySettings | None = None
    analysis: AnalysisSettings | None = None

    @model_validator(mode="after")
    def _analysed(self) -> "ModelSettings":
        if self.canary is not None and self.analysis is None:
            raise ValueError("a model with `canary` needs `analysis` (how to judge it)")
        return self

    def canary_spec(self) -> CanarySpec | None:
        """This model's canary in the core's plain values, or None without one."""
        if self.canary is None or self.analysis is None:
            return None
        c, a = self.canary, self.analysis
        return CanarySpec(
            plan=CanaryPlan(
                steps=tuple(Step(s.weight, s.min_duration) for s in c.steps),
                total_replicas=c.total_replicas,
                interval=a.interval,
                max_bad_looks=a.max_no_data,
                min_step_trials=a.min_trials,
            ),
            judge=JudgeConfig(tolerance=a.tolerance, indifference=a.indifference, alpha=a.alpha, beta=a.beta,
                              min_trials=a.min_trials, overdispersion=a.overdispersion),  # fmt: skip
            hits=a.hits,
            trials=a.trials,
            track_label=a.track_label,
            units=a.units,
            ready_timeout=c.ready_timeout,
            guardrails=tuple(g.spec() for g in a.guardrails),
        )

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a model needs at least one matcher, e.g. model=\"recsys\"")
        for m in value:
            parse_matcher(m)
        return value

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: list[RuleSettings]) -> list[RuleSettings]:
        if not value:
            raise ValueError("a model needs at least one rule mapping an alert to a reason")
        return value


class Secrets(BaseModel):
    model_config = ConfigDict(frozen=True)

    alertmanager_token: SecretStr | None = None
    admin_token: SecretStr | None = None
    callback_secret: SecretStr | None = None
    gitlab_token: SecretStr | None = None
    gitlab_webhook_token: SecretStr | None = None

    def values(self) -> list[str]:
        """Every configured secret, for redaction and for tests that prove none leaks."""
        return [s.get_secret_value() for s in (getattr(self, n) for n in SECRET_NAMES) if s is not None]


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    policy: PolicySettings = PolicySettings()
    gitlab: GitlabSettings = GitlabSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    models: list[ModelSettings]
    secrets: Secrets = Field(default=Secrets(), exclude=True)

    @model_validator(mode="after")
    def _unique_models(self) -> "Settings":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique: {', '.join(dupes)}")
        return self

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            models=tuple(
                ModelPolicy(
                    name=m.name,
                    matchers=tuple(parse_matcher(x) for x in m.matchers),
                    routes=tuple(
                        Route(tuple(parse_matcher(x) for x in r.all_matchers()), r.reason, r.notify_only)
                        for r in m.rules
                    ),
                    cooldown=m.cooldown if m.cooldown is not None else self.policy.cooldown,
                    daily_budget=m.daily_budget if m.daily_budget is not None else self.policy.daily_budget,
                )
                for m in self.models
            ),
            max_concurrent=self.policy.max_concurrent_runs,
        )

    def canary_specs(self) -> dict[str, CanarySpec]:
        """The canary of every model that has one, in the core's plain values."""
        return {m.name: spec for m in self.models if (spec := m.canary_spec()) is not None}

    def canary_spec(self, name: str) -> CanarySpec | None:
        """The canary of one model; None when it has none or there is no such model."""
        m = self.model(name)
        return m.canary_spec() if m is not None else None


class ConfigError(Exception):
    """Every problem found, one readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """RETRAIN_CONTROLLER__SERVER__PORT=9000 sets server.port; values are YAML scalars."""
    prefix = ENV_PREFIX + "_"
    for key, raw in sorted(env.items()):
        if not key.startswith(prefix):
            continue
        path = [p.lower() for p in key[len(prefix) :].split("__")]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
    return data


def load_secrets(env: Mapping[str, str]) -> tuple[Secrets, list[str]]:
    found: dict[str, str] = {}
    problems = []
    for name in SECRET_NAMES:
        var = ENV_PREFIX + name.upper()
        if env.get(var):
            found[name] = env[var]
        elif env.get(var + "_FILE"):
            path = Path(env[var + "_FILE"])
            try:
                value = path.read_text().strip()
            except OSError as exc:
                problems.append(f"{var}_FILE: cannot read {path}: {exc.strerror}")
                continue
            if not value:
                problems.append(f"{var}_FILE: {path} is empty")
                continue
            found[name] = value
    return Secrets(**found), problems  # type: ignore[arg-type]


def _describe(err: dict[str, Any]) -> str:
    parts = err["loc"]
    # Errors inside a pipeline carry the runner's tag (models.0.pipeline.gitlab.project): drop it.
    parts = [p for i, p in enumerate(parts) if not (i and parts[i - 1] == "pipeline" and p in PIPELINES)]
    loc = ".".join(str(p) for p in parts) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif err["type"] == "string_pattern_mismatch":
        msg = f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
    return f"{loc}: {msg}"


def load_settings(path: Path | str | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if not path:
        raise ConfigError([f"no config file: pass --config PATH or set {ENV_PREFIX}CONFIG"])
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    if "secrets" in data:
        raise ConfigError(["secrets: not allowed in the config file; use environment variables or *_FILE"])
    data = _env_overrides(data, env)
    secrets, problems = load_secrets(env)
    settings = None
    try:
        settings = Settings(**data, secrets=secrets)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()] + problems
    problems += _missing_secrets(secrets, settings)
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def _missing_secrets(secrets: Secrets, settings: Settings | None) -> list[str]:
    problems = []
    if secrets.alertmanager_token is None:
        problems.append(
            f"secret missing: {ENV_PREFIX}ALERTMANAGER_TOKEN (or ..._FILE): Alertmanager must authenticate"
        )
    gitlab_models = [m.name for m in settings.models if m.pipeline.runner == "gitlab"] if settings else []
    if gitlab_models:
        if secrets.gitlab_token is None:
            problems.append(
                f"secret missing: {ENV_PREFIX}GITLAB_TOKEN (or ..._FILE): models {', '.join(gitlab_models)} "
                "use GitLab (it is also how runs find their pipeline again after a failure)"
            )
        if secrets.callback_secret is None:
            problems.append(
                f"secret missing: {ENV_PREFIX}CALLBACK_SECRET (or ..._FILE): GitLab pipelines report their image "
                "with a per-run token derived from it"
            )
        for m in settings.models if settings else []:
            if not isinstance(m.pipeline, GitlabPipeline):
                continue
            f = m.pipeline.trigger_token_file
            if f is not None and not (f.is_file() and f.read_text().strip()):
                problems.append(f"models.{m.name}.pipeline.trigger_token_file: {f} is missing or empty")
    return problems

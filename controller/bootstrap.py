"""Builds the service from settings: adapters first, then the rooms around one ledger.

The app, the demo and the tests all build it here, so the wiring is written once. Pass an `Adapters` to replace
any outside part (a fake GitLab, a store on a full disk, the demo's model service).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from controller.adapters.clock import SystemClock
from controller.adapters.command_runner import CommandRunner
from controller.adapters.sqlite import SqliteStore
from controller.config import CommandPipeline, GitlabPipeline, Settings
from controller.core.canary import CanarySpec
from controller.observability import Metrics
from controller.ports import Clock, MetricsSource, PipelineRunner, Rollout, Store
from controller.service import Service
from controller.service.canary import Analyst, CanaryRoom, Driver
from controller.service.intake import Intake, new_run_id
from controller.service.ledger import RunLedger
from controller.service.operations import Operations
from controller.service.pipelines import PipelineTracker
from controller.service.reconciler import Reconciler
from controller.service.views import Views


@dataclass
class Adapters:
    store: Store
    runners: Mapping[str, PipelineRunner]
    clock: Clock
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    metrics_source: MetricsSource | None = None


def build_adapters(settings: Settings, rollouts: Mapping[str, Rollout] | None = None) -> Adapters:
    """The real adapters for `settings`. `rollouts` replaces the Kubernetes ones (the demo runs its own)."""
    store = SqliteStore(settings.store.path, settings.store.busy_timeout, settings.store.synchronous)
    return Adapters(store=store, runners=build_runners(settings), clock=SystemClock(),
                    rollouts=build_rollouts(settings) if rollouts is None else dict(rollouts),
                    metrics_source=build_metrics_source(settings, rollouts))  # fmt: skip


def build_runners(settings: Settings) -> dict[str, PipelineRunner]:
    state_dir = settings.store.path.parent / "pipelines"
    runners: dict[str, PipelineRunner] = {}
    client = None
    for m in settings.models:
        pipeline = m.pipeline
        if isinstance(pipeline, CommandPipeline):
            runners[m.name] = CommandRunner(pipeline.command, state_dir, pipeline.env, pipeline.workdir)
        elif isinstance(pipeline, GitlabPipeline):
            from controller.adapters.gitlab import GitlabRunner, make_client

            token = settings.secrets.gitlab_token
            client = client or make_client(settings.gitlab.url, token.get_secret_value() if token else None,
                                           settings.gitlab.timeout.total_seconds())  # fmt: skip
            trigger = pipeline.trigger_token_file
            runners[m.name] = GitlabRunner(
                client, pipeline.project or "", pipeline.ref, pipeline.variables,
                trigger_token=trigger.read_text().strip() if trigger else None,
                call_timeout=settings.gitlab.timeout.total_seconds(),
                retry_total=settings.gitlab.retry_total.total_seconds(),
                poll_interval=settings.gitlab.poll_interval.total_seconds(),
                create_settle=settings.gitlab.create_settle.total_seconds(),
            )  # fmt: skip
    return runners


def build_rollouts(settings: Settings) -> dict[str, Rollout]:
    rollouts: dict[str, Rollout] = {}
    apps_api = None
    for m in settings.models:
        if m.canary is not None:
            from controller.adapters.kubernetes import KubeRollout, make_apps_api

            apps_api = apps_api or make_apps_api(settings.kubernetes.kubeconfig)
            c = m.canary
            rollouts[m.name] = KubeRollout(apps_api, c.namespace, c.stable, c.canary, c.container)
    return rollouts


def build_metrics_source(settings: Settings, rollouts: Mapping[str, Rollout] | None = None) -> MetricsSource | None:
    if not rollouts and not any(m.canary is not None for m in settings.models):
        return None
    from controller.adapters.prometheus import PrometheusSource

    return PrometheusSource(settings.prometheus.url, settings.prometheus.timeout.total_seconds())


def callback_base_url(settings: Settings) -> str:
    if settings.server.external_url:
        return settings.server.external_url.rstrip("/")
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.server.port}"


def build_service(
    settings: Settings,
    adapters: Adapters | None = None,
    metrics: Metrics | None = None,
    new_id: Callable[[], str] = new_run_id,
    step_wait: float | None = None,
    specs: Mapping[str, CanarySpec] | None = None,
) -> Service:
    """The rooms for `settings` over `adapters` (built from settings when None). A model gets a canary room when
    it has a canary in config and a rollout among the adapters. A tick waits `step_wait` seconds for its steps
    (None: until they are done, as tests want; the app passes the tick interval). `specs` replaces the canary
    specs the settings give."""
    adapters = adapters or build_adapters(settings)
    metrics = metrics or Metrics()
    policy, deadlines, dry_run = settings.policy_config(), settings.policy.deadlines, settings.policy.dry_run
    secret = settings.secrets.callback_secret
    ledger = RunLedger(adapters.store, adapters.clock, deadlines, metrics)
    intake = Intake(ledger, adapters.store, policy, deadlines, metrics, dry_run=dry_run, new_id=new_id)
    pipelines = PipelineTracker(ledger, adapters.store, adapters.runners, metrics,
                                callback_secret=secret.get_secret_value() if secret else None,
                                callback_base_url=callback_base_url(settings))  # fmt: skip
    if specs is None:
        specs = settings.canary_specs()
        missing = sorted(set(specs) - set(adapters.rollouts))
        if missing:  # without one the model would end `succeeded` with nothing deployed
            raise ValueError(f"model(s) {', '.join(missing)} have a canary in config but no rollout")
    specs = {name: spec for name, spec in specs.items() if name in adapters.rollouts}
    canaries: dict[str, CanaryRoom] = {}
    for name, spec in specs.items():
        if adapters.metrics_source is None:
            raise ValueError(f"model {name} has a canary but there is no metrics source")
        canaries[name] = CanaryRoom(name, spec, Analyst(spec, adapters.metrics_source),
                                    Driver(adapters.rollouts[name]), ledger, adapters.clock, metrics)  # fmt: skip
    views = Views(adapters.store, policy, adapters.clock, specs, adapters.rollouts, dry_run)
    reconciler = Reconciler(ledger, adapters.store, policy, pipelines, views, metrics, dict(canaries), step_wait)
    operations = Operations(ledger, adapters.store, intake, pipelines)
    return Service(ledger, intake, pipelines, reconciler, operations, views, canaries)

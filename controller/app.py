"""The only wiring place: builds adapters, the controller, routes and background loops."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

from aiohttp import web

from controller import __version__
from controller.adapters.clock import SystemClock
from controller.adapters.command_runner import CommandRunner
from controller.adapters.gitlab import parse_pipeline_hook
from controller.adapters.sqlite_store import SqliteStore
from controller.config import CommandPipeline, GitlabPipeline, Settings
from controller.observability import Metrics, get_logger
from controller.ports import Clock, MetricsSource, PipelineRunner, Rollout
from controller.service import Controller
from controller.web import alerts, api, health, openapi, ops, pages, pipelines
from controller.web.common import CTX, WebContext, json_errors, request_metrics

CONTROLLER = web.AppKey("controller", Controller)
HOUSEKEEPING_INTERVAL_S = 3600.0


@dataclass
class Adapters:
    store: Any  # SqliteStore or anything with the same faces
    runners: Mapping[str, PipelineRunner]
    clock: Clock
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    metrics_source: MetricsSource | None = None


def build_adapters(settings: Settings, rollouts: Mapping[str, Rollout] | None = None) -> Adapters:
    """`rollouts` replaces the Kubernetes adapters (the demo drives its own model service)."""
    store = SqliteStore(settings.store.path, settings.store.busy_timeout, settings.store.synchronous)
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
                client,
                pipeline.project or "",
                pipeline.ref,
                pipeline.variables,
                trigger_token=trigger.read_text().strip() if trigger else None,
                call_timeout=settings.gitlab.timeout.total_seconds(),
                retry_total=settings.gitlab.retry_total.total_seconds(),
                poll_interval=settings.gitlab.poll_interval.total_seconds(),
                create_settle=settings.gitlab.create_settle.total_seconds(),
            )
    apps_api = None
    given, rollouts = rollouts, dict(rollouts or {})
    for m in settings.models:
        if m.canary is not None and given is None:
            from controller.adapters.kubernetes import KubeRollout, make_apps_api

            apps_api = apps_api or make_apps_api(settings.kubernetes.kubeconfig)
            c = m.canary
            rollouts[m.name] = KubeRollout(apps_api, c.namespace, c.stable, c.canary, c.container)
    source = None
    if rollouts:
        from controller.adapters.prometheus import PrometheusSource

        source = PrometheusSource(settings.prometheus.url, settings.prometheus.timeout.total_seconds())
    return Adapters(store=store, runners=runners, clock=SystemClock(), rollouts=rollouts, metrics_source=source)


def callback_base_url(settings: Settings) -> str:
    if settings.server.external_url:
        return settings.server.external_url.rstrip("/")
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.server.port}"


def create_app(settings: Settings, adapters: Adapters | None = None, metrics: Metrics | None = None) -> web.Application:
    adapters = adapters or build_adapters(settings)
    metrics = metrics or Metrics()
    metrics.info.labels(version=__version__, dry_run=str(settings.policy.dry_run).lower()).set(1)
    controller = Controller(
        policy=settings.policy_config(),
        deadlines=settings.policy.deadlines,
        store=adapters.store,
        runners=adapters.runners,
        clock=adapters.clock,
        metrics=metrics,
        dry_run=settings.policy.dry_run,
        callback_secret=secret.get_secret_value() if (secret := settings.secrets.callback_secret) else None,
        callback_base_url=callback_base_url(settings),
        step_wait=settings.policy.tick_interval.total_seconds(),
        rollouts=adapters.rollouts,
        canary_specs={k: v for k, v in settings.canary_specs().items() if k in adapters.rollouts},
        metrics_source=adapters.metrics_source,
    )
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[request_metrics(metrics), json_errors],
    )
    app[CTX] = WebContext(settings=settings, controller=controller, store=adapters.store, metrics=metrics,
                          parse_hook=parse_pipeline_hook)
    app[CONTROLLER] = controller
    app.router.add_post("/api/v1/alerts", alerts.post_alerts)
    app.router.add_post("/api/v1/runs/{run_id}/events", pipelines.post_run_event)
    app.router.add_post("/api/v1/gitlab/events", pipelines.post_gitlab_hook)
    app.router.add_get("/api/v1/models", api.list_models)
    app.router.add_get("/api/v1/runs", api.list_runs)
    app.router.add_get("/api/v1/runs/{run_id}", api.get_run)
    app.router.add_get("/api/v1/alerts", api.list_alerts)
    for action in ops.RUN_ACTIONS:
        app.router.add_post(f"/api/v1/runs/{{run_id}}/{action}", ops.run_action(action))
    for action in ops.MODEL_ACTIONS:
        app.router.add_post(f"/api/v1/models/{{model}}/{action}", ops.model_action(action))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/api/v1/openapi.json", openapi.openapi)
    app.router.add_get("/", pages.status_page)
    app.router.add_get("/runs/{run_id}", pages.run_page)
    pages.setup(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        log = get_logger()
        await adapters.store.open()
        log.info("store_opened", path=str(settings.store.path), dry_run=settings.policy.dry_run)
        loop = asyncio.create_task(controller.run_loop(settings.policy.tick_interval.total_seconds()))
        housekeeping = asyncio.create_task(_housekeeping(controller, settings))
        yield
        for task in (loop, housekeeping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await controller.aclose()
        for part in [*adapters.runners.values(), *adapters.rollouts.values(), adapters.metrics_source]:
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()
        await adapters.store.close()
        log.info("store_closed")

    app.cleanup_ctx.append(lifecycle)
    return app


async def _housekeeping(controller: Controller, settings: Settings) -> None:
    while True:
        try:
            await controller.prune(settings.store.retention)
        except Exception:
            get_logger().exception("housekeeping_failed")
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)

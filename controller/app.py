"""The aiohttp app: routes, middlewares, and the background loops' lifecycle. The service comes from bootstrap."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from controller import __version__
from controller.adapters.gitlab import parse_pipeline_hook
from controller.bootstrap import Adapters, build_adapters, build_service
from controller.config import Settings
from controller.observability import Metrics, get_logger
from controller.ports import Closeable
from controller.service import Service
from controller.web import alerts, api, health, openapi, ops, pages, pipelines
from controller.web.common import CTX, WebContext, json_errors, request_metrics

SERVICE = web.AppKey("service", Service)
HOUSEKEEPING_INTERVAL_S = 3600.0


def create_app(settings: Settings, adapters: Adapters | None = None, metrics: Metrics | None = None) -> web.Application:
    """The app for `settings`; `adapters` replaces the outside parts (tests, the demo)."""
    adapters = adapters or build_adapters(settings)
    metrics = metrics or Metrics()
    metrics.info.labels(version=__version__, dry_run=str(settings.policy.dry_run).lower()).set(1)
    service = build_service(settings, adapters, metrics, step_wait=settings.policy.tick_interval.total_seconds())
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[request_metrics(metrics), json_errors],
    )
    app[CTX] = WebContext(settings=settings, service=service, store=adapters.store, clock=adapters.clock,
                          metrics=metrics, parse_hook=parse_pipeline_hook)
    app[SERVICE] = service
    _routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        log = get_logger()
        await adapters.store.open()
        log.info("store_opened", path=str(settings.store.path), dry_run=settings.policy.dry_run)
        loop = asyncio.create_task(service.reconciler.run_loop(settings.policy.tick_interval.total_seconds()))
        housekeeping = asyncio.create_task(_housekeeping(service, settings))
        yield
        for task in (loop, housekeeping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.reconciler.aclose()
        for part in [*adapters.runners.values(), *adapters.rollouts.values(), adapters.metrics_source]:
            if isinstance(part, Closeable):
                await part.aclose()
        await adapters.store.close()
        log.info("store_closed")

    app.cleanup_ctx.append(lifecycle)
    return app


async def _housekeeping(service: Service, settings: Settings) -> None:
    while True:
        try:
            await service.reconciler.prune(settings.store.retention)
        except Exception:
            get_logger().exception("housekeeping_failed")
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)


def _routes(app: web.Application) -> None:
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

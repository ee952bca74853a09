"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.ports import StoreUnavailable
from controller.web.common import CTX, error, json_ok


async def healthz(request: web.Request) -> web.Response:
    return json_ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        await ctx.store.check_writable()
    except StoreUnavailable as exc:
        return error(503, "not ready", {"store": str(exc)})
    return json_ok({"status": "ready", "store": "writable", "dry_run": ctx.settings.policy.dry_run})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CTX].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

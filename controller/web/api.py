"""Read-only JSON API over runs, alert decisions and models."""

from __future__ import annotations

from aiohttp import web

from controller.core.runs import Phase
from controller.web.common import CTX, error, json_ok

MAX_LIMIT = 500


def _limit(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise web.HTTPBadRequest(
            text=f'{{"error": "bad limit", "detail": "limit must be 1..{MAX_LIMIT}"}}', content_type="application/json"
        )
    return int(raw)


async def list_runs(request: web.Request) -> web.Response:
    phase = request.query.get("phase")
    if phase is not None and phase not in {p.value for p in Phase}:
        return error(400, "bad phase", f"phase must be one of {', '.join(p.value for p in Phase)}")
    ctx = request.app[CTX]
    runs = await ctx.store.list_runs(_limit(request), model=request.query.get("model"), phase=phase)
    return json_ok({"runs": [ctx.service.views.run_json(r) for r in runs]})


async def get_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    detail = await request.app[CTX].service.views.run_detail(run_id, MAX_LIMIT)
    if detail is None:
        return error(404, "unknown run", run_id)
    return json_ok(detail)


async def list_alerts(request: web.Request) -> web.Response:
    decisions = await request.app[CTX].store.list_decisions(_limit(request), model=request.query.get("model"))
    return json_ok({"alerts": decisions})


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    models = await ctx.service.views.models_status()
    return json_ok({"models": models, "max_concurrent_runs": ctx.settings.policy.max_concurrent_runs})

"""Read-only JSON API over runs, alert decisions and models."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from controller.core.alerts import format_ts
from controller.core.runs import Phase, Run
from controller.web.common import CTX, error, json_ok

MAX_LIMIT = 500


def _limit(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise web.HTTPBadRequest(
            text=f'{{"error": "bad limit", "detail": "limit must be 1..{MAX_LIMIT}"}}', content_type="application/json"
        )
    return int(raw)


def run_json(run: Run) -> dict[str, Any]:
    out = asdict(run)
    out["phase"] = run.phase.value
    out["reasons"] = list(run.reasons)
    for key in ("created_at", "phase_entered_at", "deadline_at", "ended_at"):
        value = getattr(run, key)
        out[key] = format_ts(value) if value else None
    return out


async def list_runs(request: web.Request) -> web.Response:
    phase = request.query.get("phase")
    if phase is not None and phase not in {p.value for p in Phase}:
        return error(400, "bad phase", f"phase must be one of {', '.join(p.value for p in Phase)}")
    runs = await request.app[CTX].store.list_runs(_limit(request), model=request.query.get("model"), phase=phase)
    return json_ok({"runs": [run_json(r) for r in runs]})


async def get_run(request: web.Request) -> web.Response:
    store = request.app[CTX].store
    run_id = request.match_info["run_id"]
    run = await store.get_run(run_id)
    if run is None:
        return error(404, "unknown run", run_id)
    history = await store.history(run_id)
    decisions = await store.list_decisions(MAX_LIMIT, run_id=run_id)
    return json_ok(
        {
            "run": run_json(run),
            "history": [
                {
                    "at": format_ts(t.at),
                    "from": t.from_phase.value if t.from_phase else None,
                    "to": t.to_phase.value,
                    "cause": t.cause,
                }
                for t in history
            ],
            "alerts": decisions,
        }
    )


async def list_alerts(request: web.Request) -> web.Response:
    decisions = await request.app[CTX].store.list_decisions(_limit(request), model=request.query.get("model"))
    return json_ok({"alerts": decisions})


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    models = await ctx.controller.models_status()
    return json_ok({"models": models, "max_concurrent_runs": ctx.settings.policy.max_concurrent_runs})

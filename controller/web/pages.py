"""The status page (GET /) and the run page (GET /runs/{run_id}): server-rendered, read-only, no JavaScript.

Only chosen fields are rendered, never a run's stored details, settings or request headers: no secret can reach a page.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from controller.core.alerts import format_ts, parse_ts
from controller.core.durations import format_duration
from controller.core.runs import Phase, Run, held
from controller.core.state import verdict_to_json
from controller.service.views import Views
from controller.web.common import CTX

PAGE_SIZE = 25
DECISIONS_SHOWN = 30
MAX_PAGE = 400
SUMMARY_MAX = 300
LINKS_SHOWN = 3


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("controller.web", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["utc"] = _utc
    env.filters["short_image"] = short_image


def short_image(image: str, digits: int = 12) -> str:
    """`repo@sha256:<64 hex>` as `repo@sha256:<12 hex>…`: enough to tell images apart in a table cell."""
    name, sep, digest = image.partition("@sha256:")
    return f"{name}{sep}{digest[:digits]}…" if sep and len(digest) > digits else image


def _utc(value: datetime | str | None) -> str:
    if value is None or value == "":
        return "-"
    when = parse_ts(value) if isinstance(value, str) else value
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(value: datetime | str | None, now: datetime) -> str:
    if value is None or value == "":
        return ""
    when = parse_ts(value) if isinstance(value, str) else value
    delta = now - when
    if delta.total_seconds() < 0:
        return f"in {format_duration(-delta)}"
    if delta.total_seconds() < 1:
        return "just now"
    return f"{format_duration(delta.__class__(seconds=int(delta.total_seconds())))} ago"


def safe_url(url: object) -> str | None:
    """Only http(s) links: a stored URL must not become a javascript: (or data:, vbscript:) link."""
    if not isinstance(url, str) or not url:
        return None
    try:
        scheme = urlsplit(url).scheme  # strips and drops what browsers strip and drop before reading the scheme
    except ValueError:  # e.g. a broken [IPv6] host
        return None
    return url if scheme in ("http", "https") else None


def stage_rows(events: list[Any]) -> list[dict[str, Any]]:
    """One row per pipeline stage, in the order stages began: its latest status, and its latest detail."""
    rows: dict[str, dict[str, Any]] = {}
    for e in events:
        if not isinstance(e, Mapping):
            continue
        row = rows.setdefault(str(e.get("stage")), {"stage": e.get("stage"), "status": "", "detail": ""})
        row["status"] = e.get("status")
        row["detail"] = e.get("detail") or row["detail"]
    return list(rows.values())


def alert_view(decision: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A recorded alert for a page: its summary, links from annotations like runbook_url, to the Prometheus graph
    that fired it (generatorURL) and to the Alertmanager that sent it (externalURL); http(s) only."""
    annotations = decision.get("annotations")
    annotations = annotations if isinstance(annotations, Mapping) else {}
    summary = annotations.get("summary") or annotations.get("description") or ""
    links = [{"label": key[: -len("_url")].replace("_", " ") or "link", "url": url}
             for key, value in sorted(annotations.items()) if key.endswith("_url") and (url := safe_url(value))]  # fmt: skip
    links = links[:LINKS_SHOWN]
    for label, key in (("source", "generator_url"), ("alertmanager", "external_url")):  # Prometheus, Alertmanager
        if url := safe_url(decision.get(key)):
            links.append({"label": label, "url": url})
    return {**decision, "age": age(decision["received_at"], now), "summary": str(summary)[:SUMMARY_MAX],
            "links": links}  # fmt: skip


def run_view(run: Run, now: datetime, views: Views) -> dict[str, Any]:
    return {
        "id": run.id,
        "model": run.model,
        "phase": run.phase.value,
        "trigger": run.trigger,
        "reasons": list(run.reasons),
        "created_at": format_ts(run.created_at),
        "created_age": age(run.created_at, now),
        "ended_at": format_ts(run.ended_at) if run.ended_at else None,
        "deadline_at": format_ts(run.deadline_at) if run.deadline_at else None,
        "deadline_in": age(run.deadline_at, now) if run.deadline_at else "",
        "cause": run.cause,
        "dry_run": run.dry_run,
        "image": run.image,
        "pipeline_id": run.pipeline_id,
        "pipeline_url": safe_url(run.pipeline_url),
        "paused": run.pause is not None,
        "canary": views.canary_progress(run),
    }


# ---- the analysis chart: per look, precision of each arm, the tolerance band, verdicts marked ---------------------

CHART_LOOKS = 200  # the newest looks charted on a run page
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 240, 48, 12, 12, 28


def chart(measurements: Sequence[Mapping[str, Any]], tolerance: float, indifference: float) -> dict[str, Any] | None:
    looks = []
    for m in measurements:
        try:
            s, c = m["stable"], m["canary"]
            ps = s["hits"] / s["trials"] if s["trials"] else None
            pc = c["hits"] / c["trials"] if c["trials"] else None
        except (KeyError, TypeError, ZeroDivisionError):
            continue
        looks.append({"at": m.get("at"), "step": m.get("step"), "weight": m.get("weight"),
                      "verdict": str(m.get("verdict") or "none"), "stable": ps, "canary": pc,
                      "reason": str(m.get("reason") or "")})  # fmt: skip
    values = [v for look in looks for v in (look["stable"], look["canary"]) if v is not None]
    if not looks or not values:
        return None
    # Zoom on the data and the band (a 5% precision next to 5.2% is the whole story; zero is not).
    band_low = [look["stable"] * (1 - tolerance - indifference) for look in looks if look["stable"] is not None]
    lo, hi = min(values + band_low), max(values)
    span = (hi - lo) or (hi or 1.0) * 0.1
    lo, top = max(0.0, lo - span * 0.15), hi + span * 0.15
    n = len(looks)

    def x(i: int) -> float:
        return round(PAD_L + (W - PAD_L - PAD_R) * (i / (n - 1) if n > 1 else 0.5), 1)

    def y(v: float) -> float:
        v = min(max(v, lo), top)
        return round(PAD_T + (H - PAD_T - PAD_B) * (1 - (v - lo) / (top - lo)), 1)

    def line(key: str, factor: float = 1.0) -> str:
        return " ".join(f"{x(i)},{y(look[key] * factor)}" for i, look in enumerate(looks) if look[key] is not None)

    upper = [(x(i), y(look["stable"] * (1 - tolerance + indifference))) for i, look in enumerate(looks)
             if look["stable"] is not None]  # fmt: skip
    lower = [(x(i), y(look["stable"] * (1 - tolerance - indifference))) for i, look in enumerate(looks)
             if look["stable"] is not None]  # fmt: skip
    band = " ".join(f"{a},{b}" for a, b in upper + lower[::-1])
    marks = [
        {"x": x(i), "y": y(look["canary"] if look["canary"] is not None else lo), "verdict": look["verdict"],
         "title": f"look {i + 1}, step {look['step']} ({look['weight']}%): {look['verdict']}"
                  + (f" - {look['reason']}" if look["reason"] else "")}
        for i, look in enumerate(looks)
    ]  # fmt: skip
    ticks = [{"y": y(lo + (top - lo) * f), "label": f"{lo + (top - lo) * f:.4f}"} for f in (0.0, 0.5, 1.0)]
    return {
        "width": W, "height": H, "left": PAD_L, "right": W - PAD_R, "bottom": H - PAD_B, "top": PAD_T,
        "stable": line("stable"), "canary": line("canary"), "margin": line("stable", 1 - tolerance), "band": band,
        "marks": marks, "ticks": ticks, "looks": n, "tolerance": tolerance, "indifference": indifference,
        "last": looks[-1],
    }  # fmt: skip


# ---- handlers -------------------------------------------------------------------------------------------------------


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise web.HTTPBadRequest(
            text=f'{{"error": "bad page", "detail": "page must be 1..{MAX_PAGE}"}}', content_type="application/json"
        )
    return int(raw)


async def status_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    now = ctx.clock.now()
    page = _page(request)
    models = await ctx.service.views.models_status()
    live_runs = {r.id: r for r in await ctx.store.runs_in(frozenset(p for p in Phase if not p.terminal))}
    for m in models:
        live = live_runs.get((m.get("live_run") or {}).get("id", ""))
        m["live"] = run_view(live, now, ctx.service.views) if live else None
        if m["paused"]:
            m["paused"]["age"] = age(m["paused"]["since"], now)
        if m["rate_limited"]:
            m["rate_limited"]["left"] = age(m["rate_limited"]["until"], now)
        m["budget_left"] = max(0, m["daily_budget"] - m["runs_in_window"])
        for a in m["audit"]:
            a["age"] = age(a["at"], now)
        m["stable_image"] = m.get("stable_image")
    runs = await ctx.store.list_runs_page(PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
    paused = {m["name"] for m in models if m["paused"]}
    queue = [{**run_view(r, now, ctx.service.views), "held": held(r, paused)}
             for r in live_runs.values() if r.phase is Phase.QUEUED]  # fmt: skip
    active = sum(1 for r in live_runs.values() if r.phase.active)
    decisions = [alert_view(d, now) for d in await ctx.store.list_decisions(DECISIONS_SHOWN)]
    context = {
        "now": _utc(now),
        "dry_run": ctx.settings.policy.dry_run,
        "models": models,
        "runs": [run_view(r, now, ctx.service.views) for r in runs[:PAGE_SIZE]],
        "page": page,
        "has_next": len(runs) > PAGE_SIZE,
        "queue": queue,
        "active": active,
        "cap": ctx.settings.policy.max_concurrent_runs,
        "decisions": decisions,
    }
    return aiohttp_jinja2.render_template("status.html", request, context)


async def run_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    now = ctx.clock.now()
    run_id = request.match_info["run_id"]
    run = await ctx.store.get_run(run_id)
    if run is None:
        response = aiohttp_jinja2.render_template("missing.html", request, {"run_id": run_id, "now": _utc(now)})
        response.set_status(404)
        return response
    history = await ctx.store.history(run_id)
    decisions = [alert_view(d, now) for d in await ctx.store.list_decisions(200, run_id=run_id)]
    tolerance, indifference = ctx.service.views.band(run.model)
    audit = await ctx.store.run_audit(run_id)
    context = {
        "now": _utc(now),
        "run": run_view(run, now, ctx.service.views),
        "timeline": [
            {"at": format_ts(t.at), "age": age(t.at, now), "from": t.from_phase.value if t.from_phase else None,
             "to": t.to_phase.value, "cause": t.cause}
            for t in history
        ],  # fmt: skip
        "decisions": decisions,
        "chart": chart([look.to_json() for look in await ctx.store.run_looks(run_id, CHART_LOOKS)], tolerance,
                       indifference),  # fmt: skip
        "verdict": verdict_to_json(run.verdict) if run.verdict else None,
        "audit": [a.to_json() for a in audit],
        "stages": stage_rows([st.to_json() for st in run.stages]),
        "offline_metrics": dict(run.offline_metrics),
        "previous_image": run.previous_image,
        "retry_of": run.retry_of,
        "manual_reason": run.manual_reason,
    }
    return aiohttp_jinja2.render_template("run.html", request, context)

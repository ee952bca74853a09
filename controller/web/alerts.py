"""POST /api/v1/alerts: the Alertmanager webhook. Authenticate, validate, persist, then answer."""

from __future__ import annotations

from collections import Counter

from aiohttp import web
from pydantic import ValidationError

from controller.core.alerts import Notification, format_ts
from controller.ports import StoreUnavailable
from controller.observability import get_logger
from controller.web.common import CTX, BadJson, bearer_ok, decode_json, error, json_ok, read_limited


def _reject(request: web.Request, outcome: str, status: int, message: str, detail: object = None,
            headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    _note(request, outcome, status, message, detail)
    return error(status, message, detail, headers)


def _note(request: web.Request, outcome: str, status: int, message: str, detail: object = None) -> None:
    request.app[CTX].metrics.notifications.labels(outcome=outcome).inc()
    suppressed = request.app[CTX].quiet.allow(outcome)
    if suppressed is not None:
        # Never the body or the Authorization header: either may carry what must not be logged.
        get_logger().warning(
            "notification_rejected", outcome=outcome, status=status, error=message,
            detail=detail if status != 401 else None, remote=request.remote, suppressed=suppressed,
        )  # fmt: skip


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["loc"] == ("version",) and e["type"] == "literal_error":
            msg = f"unsupported version {e.get('input')!r}: only version \"4\" of the webhook payload is supported"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append({"field": loc, "message": msg})
    return out


async def post_alerts(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    expected = ctx.settings.secrets.alertmanager_token
    if not bearer_ok(request, expected.get_secret_value() if expected else None):
        return _reject(request, "unauthorized", 401, "unauthorized", "send Authorization: Bearer <token>",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip
    if request.content_type != "application/json":
        detail = f"expected application/json, got {request.content_type!r}"
        return _reject(request, "unsupported_media_type", 415, "unsupported media type", detail)
    raw = await read_limited(request, ctx.settings.server.max_body_bytes)
    if isinstance(raw, web.Response):  # 413 or 408
        _note(request, "too_large" if raw.status == 413 else "timeout", raw.status, raw.reason.lower())
        return raw
    try:
        text, data = decode_json(raw)
    except BadJson as exc:
        return _reject(request, "invalid", 400, "malformed JSON", str(exc))
    if not isinstance(data, dict):
        return _reject(request, "invalid", 400, "invalid payload", [{"field": "(body)", "message": "expected a JSON object"}])
    try:
        notification = Notification.model_validate(data)
    except ValidationError as exc:
        return _reject(request, "invalid", 400, "invalid payload", _field_errors(exc))
    try:
        decisions = await ctx.service.intake.handle_notification(notification, text)
    except StoreUnavailable as exc:
        # 5xx makes Alertmanager retry; the retry is recognised as the same episode.
        return _reject(request, "store_unavailable", 503, "could not record the notification", str(exc),
                       {"Retry-After": "5"})  # fmt: skip
    ctx.metrics.notifications.labels(outcome="recorded").inc()
    alerts = notification.alerts
    return json_ok(
        {
            "summary": dict(Counter(d.kind.value for d in decisions)),
            "alerts": [
                {
                    "fingerprint": alerts[d.index].fingerprint,
                    "alertname": alerts[d.index].alertname,
                    "status": alerts[d.index].status,
                    "decision": d.kind.value,
                    "model": d.model,
                    "reason": d.reason,
                    "run_id": d.run_id,
                    "until": format_ts(d.until) if d.until else None,
                    "detail": d.detail,
                }
                for d in decisions
            ],
        }
    )

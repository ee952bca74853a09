"""Pipeline news: the pipeline's own callbacks, and GitLab's Pipeline Hook as a backstop."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from controller.core.callbacks import EVENT, token_matches
from controller.ports import HookInvalid, StoreUnavailable
from controller.service import Conflict, RunFinished, UnknownRun
from controller.web.common import CTX, BadJson, bearer_token, decode_json, error, header_bytes, json_ok, read_limited

CALLBACK_LIMIT = 64 * 1024
HOOK_LIMIT = 1024 * 1024


async def _json_body(request: web.Request, limit: int) -> Any | web.Response:
    if request.content_type != "application/json":
        return error(415, "unsupported media type", f"expected application/json, got {request.content_type!r}")
    body = await read_limited(request, limit)
    if isinstance(body, web.Response):
        return body
    try:
        return decode_json(body)[1]
    except BadJson as exc:
        return error(400, "malformed JSON", str(exc))


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


async def post_run_event(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    run_id = request.match_info["run_id"]
    secret = ctx.settings.secrets.callback_secret
    token = bearer_token(request)
    if token is None:
        return error(401, "unauthorized", "send Authorization: Bearer <the run's callback token>",
                     {"WWW-Authenticate": "Bearer"})  # fmt: skip
    if secret is None or header_bytes(run_id) is None or not token_matches(secret.get_secret_value(), run_id, token):
        return error(403, "forbidden", "this token is not valid for this run")
    body = await _json_body(request, CALLBACK_LIMIT)
    if isinstance(body, web.Response):
        return body
    try:
        event = EVENT.validate_python(body)
    except ValidationError as exc:
        return error(400, "invalid event", _fields(exc))
    try:
        result = await ctx.service.pipelines.handle_event(run_id, event)
    except UnknownRun:
        return error(404, "unknown run", run_id)
    except RunFinished as exc:
        return error(403, "run is finished", str(exc))
    except Conflict as exc:
        return error(409, "conflict", str(exc))
    except StoreUnavailable as exc:
        return error(503, "could not record the event", str(exc), {"Retry-After": "5"})
    return json_ok(result)


async def post_gitlab_hook(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    expected = ctx.settings.secrets.gitlab_webhook_token
    presented = header_bytes(request.headers.get("X-Gitlab-Token", "")) or b""
    if expected is None or not presented or not hmac.compare_digest(presented, expected.get_secret_value().encode()):
        return error(401, "unauthorized", "X-Gitlab-Token does not match the configured webhook secret")
    body = await _json_body(request, HOOK_LIMIT)
    if isinstance(body, web.Response):
        return body
    try:
        hook = ctx.parse_hook(body) if isinstance(body, dict) else None
    except HookInvalid:
        return error(400, "invalid payload", [{"field": "object_attributes", "message": "needs id and status"}])
    if hook is None:
        kind = body.get("object_kind") if isinstance(body, dict) else None
        return json_ok({"ignored": f"object_kind {kind!r} is not handled"}, status=202)
    key = request.headers.get("Idempotency-Key", "")
    if header_bytes(key) is None:
        return error(400, "invalid Idempotency-Key", "the header must be UTF-8 text")
    try:
        # Hooks are idempotent, so a replay is processed again harmlessly; the key is remembered only after
        # success, so a delivery that failed half-way is not mistaken for a replay when GitLab retries it.
        result = await ctx.service.pipelines.handle_hook(hook)
        if key:
            result["replay"] = not await ctx.store.first_delivery(f"gitlab:{key}", ctx.clock.now())
    except UnknownRun as exc:
        # Not ours (another pipeline of the project): accept so GitLab does not retry or disable the hook.
        return json_ok({"ignored": f"no run for {exc}"}, status=202)
    except StoreUnavailable as exc:
        return error(503, "could not record the hook", str(exc), {"Retry-After": "5"})
    return json_ok(result)


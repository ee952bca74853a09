"""Operator API: audited actions on runs and models, behind the admin token.

Every action takes an optional JSON body `{"reason": "...", "by": "..."}`; `by` names who acts (the token is
shared, so it is what the operator says), `reason` is kept in the audit trail and in the run's transition causes.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.ports import StoreUnavailable
from controller.service import Conflict, RunFinished, UnknownModel, UnknownRun
from controller.web.common import CTX, BadJson, bearer_ok, decode_json, error, json_ok, read_limited

Handler = Callable[[web.Request], Awaitable[web.Response]]
BODY_LIMIT = 8 * 1024
REASON_MAX = 500
BY_MAX = 100
RUN_ACTIONS = ("abort", "promote", "retry", "pause", "resume")
MODEL_ACTIONS = ("pause", "resume", "retrain")


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=REASON_MAX)
    by: str = Field(default="operator", min_length=1, max_length=BY_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")


def _refuse_auth(request: web.Request) -> web.Response | None:
    expected = request.app[CTX].settings.secrets.admin_token
    if expected is None or not expected.get_secret_value():
        return error(403, "forbidden", "no admin token configured")
    if not bearer_ok(request, expected.get_secret_value()):
        return error(401, "unauthorized", "send Authorization: Bearer <admin token>", {"WWW-Authenticate": "Bearer"})
    return None


async def _body(request: web.Request) -> ActionBody | web.Response:
    raw = await read_limited(request, BODY_LIMIT)
    if isinstance(raw, web.Response):
        return raw
    if not raw.strip():
        return ActionBody()
    try:
        _, data = decode_json(raw)
    except BadJson as exc:
        return error(400, "malformed JSON", str(exc))
    if not isinstance(data, dict):
        return error(400, "invalid body", [{"field": "(body)", "message": "expected a JSON object"}])
    try:
        return ActionBody.model_validate(data)
    except ValidationError as exc:
        return error(400, "invalid body",
                     [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()])  # fmt: skip


async def _prepare(request: web.Request) -> ActionBody | web.Response:
    refused = _refuse_auth(request)
    if refused is not None:
        return refused
    return await _body(request)


def run_action(action: str) -> Handler:
    assert action in RUN_ACTIONS

    async def handler(request: web.Request) -> web.Response:
        return await _run_action(request, action)

    handler.__name__ = f"run_{action}"
    return handler


def model_action(action: str) -> Handler:
    assert action in MODEL_ACTIONS

    async def handler(request: web.Request) -> web.Response:
        return await _model_action(request, action)

    handler.__name__ = f"model_{action}"
    return handler


async def _run_action(request: web.Request, action: str) -> web.Response:
    body = await _prepare(request)
    if isinstance(body, web.Response):
        return body
    run_id = request.match_info["run_id"]
    try:
        result = await request.app[CTX].service.operations.act_on_run(run_id, action, body.by, body.reason)
    except UnknownRun:
        return error(404, "unknown run", run_id)
    except (Conflict, RunFinished) as exc:
        return error(409, "conflict", str(exc))
    except StoreUnavailable as exc:
        return error(503, "store unavailable", str(exc), {"Retry-After": "5"})
    return json_ok(result, status=201 if action == "retry" else 200)


async def _model_action(request: web.Request, action: str) -> web.Response:
    body = await _prepare(request)
    if isinstance(body, web.Response):
        return body
    model = request.match_info["model"]
    operations = request.app[CTX].service.operations
    try:
        if action == "retrain":
            return json_ok(await operations.retrain(model, body.by, body.reason), status=201)
        return json_ok(await operations.set_model_paused(model, action == "pause", body.by, body.reason))
    except UnknownModel:
        return error(404, "unknown model", model)
    except Conflict as exc:
        return error(409, "conflict", str(exc))
    except StoreUnavailable as exc:
        return error(503, "store unavailable", str(exc), {"Retry-After": "5"})

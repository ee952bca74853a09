"""GET /api/v1/openapi.json: the HTTP contract, written by hand (a test keeps it and the routes in step)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controller import __version__
from controller.web.common import json_ok

ERROR = {"$ref": "#/components/schemas/Error"}
ADMIN = [{"admin": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid request (the detail says which field)",
        401: "missing or wrong bearer token",
        403: "forbidden (e.g. no admin token configured, or a token for another run)",
        404: "unknown run, model or path",
        409: "conflict with the run's or model's state",
        408: "the body did not arrive within server.body_timeout; the connection is closed",
        413: "body over the limit",
        415: "not application/json",
        503: "the store could not make it durable; retry",
    }
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


RUN_ID = _path_param("run_id", "run id")
MODEL = _path_param("model", "model name from the config")
LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}
ACTION_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionBody"}}},
}

RUN_ACTION_TEXT = {
    "abort": "Abort a run: cancel its pipeline if it is training, roll its canary back if one is live.",
    "promote": "Promote an analyzing run's canary now, whatever the last verdict (409 in any other phase).",
    "retry": "Start a new manual run with the reasons of a failed, rolled back or canceled run; queued if the "
    "concurrency cap is full, not held by cooldown or budget; 409 if the model has a live run.",
    "pause": "Pause a deploying or analyzing run: the canary holds its weight, no verdict acts, no deadline runs.",
    "resume": "Resume a paused run; the pause does not count against its deadline.",
}
MODEL_ACTION_TEXT = {
    "pause": "Pause a model: its alerts are recorded with the decision `paused` and start nothing. Persisted.",
    "resume": "Resume a paused model.",
    "retrain": "Start a manual run for the model; queued if the concurrency cap is full, not held by cooldown or "
    "budget; 409 if the model has a live run.",
}


def _run_action(action: str) -> dict[str, Any]:
    ok = "201" if action == "retry" else "200"
    return {
        "post": {
            "operationId": f"run_{action}",
            "summary": RUN_ACTION_TEXT[action],
            "tags": ["operator"],
            "security": ADMIN,
            "parameters": [RUN_ID],
            "requestBody": ACTION_BODY,
            "responses": {ok: _json({"$ref": "#/components/schemas/ActionResult"}, "done (or `changed: false`)"),
                          **_errors(400, 401, 403, 404, 408, 409, 413, 503)},  # fmt: skip
        }
    }


def _model_action(action: str) -> dict[str, Any]:
    ok = "201" if action == "retrain" else "200"
    return {
        "post": {
            "operationId": f"model_{action}",
            "summary": MODEL_ACTION_TEXT[action],
            "tags": ["operator"],
            "security": ADMIN,
            "parameters": [MODEL],
            "requestBody": ACTION_BODY,
            "responses": {ok: _json({"$ref": "#/components/schemas/ActionResult"}, "done (or `changed: false`)"),
                          **_errors(400, 401, 403, 404, 408, 409, 413, 503)},  # fmt: skip
        }
    }


def _get(op: str, summary: str, tag: str, schema: dict[str, Any] | None = None, params: list[Any] | None = None,
         errors: tuple[int, ...] = (), content_type: str = "application/json") -> dict[str, Any]:  # fmt: skip
    ok = {"description": "OK", "content": {content_type: {"schema": schema or {"type": "object"}}}}
    out: dict[str, Any] = {"operationId": op, "summary": summary, "tags": [tag], "responses": {"200": ok,
                                                                                          **_errors(*errors)}}
    if params:
        out["parameters"] = params
    return {"get": out}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], description: str = "") -> dict[str, Any]:
    """A closed object: every property documented and present, nothing else (internal state never leaks)."""
    out = {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}
    return {**out, "description": description} if description else out


STR, NUM, INT, BOOL = {"type": "string"}, {"type": "number"}, {"type": "integer"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


COUNTS = {"type": "object", "additionalProperties": NUM, "description": "hits, trials (and units) since the step began"}
VERDICT = _obj({"outcome": {"enum": ["pass", "fail", "inconclusive", "no_data", "error"]}, "reason": STR,
                "statistic": _nullable(NUM), "threshold": _nullable(NUM), "ratio": _nullable(NUM),
                "design_effect": _nullable(NUM)}, "the judge's verdict of one look")  # fmt: skip
RUN_SCHEMAS: dict[str, Any] = {
    "Stage": _obj({"stage": STR, "status": STR, "detail": STR}, "a pipeline stage as the pipeline reported it"),
    "Verdict": VERDICT,
    "Run": _obj({
        "id": STR, "model": STR, "phase": STR, "trigger": {"enum": ["alert", "manual"]},
        "reasons": {"type": "array", "items": STR}, "cause": {**STR, "description": "why it is in its phase"},
        "dry_run": BOOL, "created_at": TIME, "phase_entered_at": TIME, "deadline_at": _nullable(TIME),
        "ended_at": _nullable(TIME),
        "pipeline": _obj({"id": _nullable(STR), "url": _nullable(STR), "trigger_attempts": INT,
                          "stages": {"type": "array", "items": _ref("Stage")}}),
        "image": _nullable(STR), "previous_image": _nullable({**STR, "description": "what stable ran before"}),
        "offline_metrics": {"type": "object", "additionalProperties": NUM},
        "paused": _nullable(_obj({"since": TIME})),
        "canary": _nullable(_obj({"step": INT, "steps": _nullable(INT), "weight": _nullable(INT),
                                  "stage": {"enum": ["rolling", "judging"]}})),
        "verdict": _nullable(_ref("Verdict")),
        "retry_of": _nullable(STR), "manual_reason": _nullable(STR),
    }, "a run as the API documents it"),  # fmt: skip
    "Look": {**_obj({"at": TIME, "step": INT, "weight": INT, "verdict": VERDICT["properties"]["outcome"],
                     **{k: v for k, v in VERDICT["properties"].items() if k != "outcome"},
                     "stable": COUNTS, "canary": COUNTS,
                     "guardrails": {"type": "object", "additionalProperties": _nullable(NUM)}}),
             "description": "one look at the canary"},  # fmt: skip
    "AuditEntry": {"type": "object", "required": ["at", "action", "by", "reason", "changed", "detail"],
                   "properties": {"at": TIME, "action": STR, "by": STR, "reason": STR, "changed": BOOL, "detail": STR,
                                  "retry_of": STR, "new_run": STR}},  # fmt: skip
    "Transition": _obj({"at": TIME, "from": _nullable(STR), "to": STR, "cause": STR}),
    "RunList": _obj({"runs": {"type": "array", "items": _ref("Run")}}),
    "RunDetail": _obj({"run": _ref("Run"), "history": {"type": "array", "items": _ref("Transition")},
                       "looks": {"type": "array", "items": _ref("Look")},
                       "audit": {"type": "array", "items": _ref("AuditEntry")},
                       "alerts": {"type": "array", "items": {"type": "object"}}}),  # fmt: skip
}


def _webhook_paths() -> dict[str, Any]:
    return {
        "/api/v1/alerts": {
            "post": {
                "operationId": "post_alerts",
                "summary": "Alertmanager webhook (payload version 4). Persisted before the answer.",
                "tags": ["intake"],
                "security": [{"alertmanager": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json({"type": "object"}, "a decision per alert"),
                              **_errors(400, 401, 408, 413, 415, 503)},  # fmt: skip
            },
            **_get("list_alerts", "Recent alert decisions, newest first.", "read", params=[LIMIT,
                   {"name": "model", "in": "query", "schema": {"type": "string"}}], errors=(400,)),  # fmt: skip
        },
        "/api/v1/runs/{run_id}/events": {
            "post": {
                "operationId": "post_run_event",
                "summary": "Callback from the run's own pipeline (stage, image, failed).",
                "tags": ["pipelines"],
                "security": [{"callback": []}],
                "parameters": [RUN_ID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json({"type": "object"}, "effect on the run"),
                              **_errors(400, 401, 403, 404, 408, 409, 413, 415, 503)},  # fmt: skip
            }
        },
        "/api/v1/gitlab/events": {
            "post": {
                "operationId": "post_gitlab_hook",
                "summary": "GitLab Pipeline Hook (X-Gitlab-Token; deduplicated on Idempotency-Key).",
                "tags": ["pipelines"],
                "security": [{"gitlab": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json({"type": "object"}, "effect on the run"),
                              "202": _json({"type": "object"}, "not a pipeline of ours: ignored"),
                              **_errors(400, 401, 408, 413, 415, 503)},  # fmt: skip
            }
        },
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        **_webhook_paths(),
        "/api/v1/models": _get("list_models", "Models: live run, pause, rate limits, stable image, last outcome.",
                               "read"),  # fmt: skip
        "/api/v1/runs": _get("list_runs", "Runs, newest first.", "read", _ref("RunList"), params=[
            LIMIT, {"name": "model", "in": "query", "schema": {"type": "string"}},
            {"name": "phase", "in": "query", "schema": {"type": "string"}}], errors=(400,)),  # fmt: skip
        "/api/v1/runs/{run_id}": _get("get_run", "One run with its history, looks, audit and alert decisions.",
                                      "read", _ref("RunDetail"), params=[RUN_ID], errors=(404,)),  # fmt: skip
        "/api/v1/openapi.json": _get("openapi", "This document.", "meta"),
        "/healthz": _get("healthz", "Liveness.", "meta"),
        "/readyz": _get("readyz", "Readiness: the store takes a write.", "meta", errors=(503,)),
        "/metrics": _get("metrics", "Prometheus metrics.", "meta", {"type": "string"},
                         content_type="text/plain"),  # fmt: skip
        "/": _get("status_page", "Status page (HTML, refreshes every 15 s).", "pages", {"type": "string"},
                  params=[{"name": "page", "in": "query", "description": "runs, 25 a page, newest first",
                           "schema": {"type": "integer", "minimum": 1, "maximum": 400, "default": 1}}],
                  errors=(400,), content_type="text/html"),  # fmt: skip
        "/runs/{run_id}": _get("run_page", "Run page (HTML).", "pages", {"type": "string"}, params=[RUN_ID],
                               content_type="text/html"),  # fmt: skip
    }
    paths["/runs/{run_id}"]["get"]["responses"]["404"] = {
        "description": "unknown run (an HTML page saying so)", "content": {"text/html": {"schema": {"type": "string"}}}}
    for action in RUN_ACTION_TEXT:
        paths[f"/api/v1/runs/{{run_id}}/{action}"] = _run_action(action)
    for action in MODEL_ACTION_TEXT:
        paths[f"/api/v1/models/{{model}}/{action}"] = _model_action(action)
    return paths


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "retrain-controller",
            "version": __version__,
            "description": "Alertmanager alerts in; retraining pipelines, canary analysis, promotion or rollback "
            "out. Errors are JSON `{error, detail}`.",
        },
        "paths": _paths(),
        "components": _components(),
    }


def _components() -> dict[str, Any]:
    return {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "RETRAIN_CONTROLLER_ADMIN_TOKEN"},
                "alertmanager": {"type": "http", "scheme": "bearer",
                                 "description": "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"},  # fmt: skip
                "callback": {"type": "http", "scheme": "bearer",
                             "description": "per-run token: HMAC of the callback secret and the run id"},  # fmt: skip
                "gitlab": {"type": "apiKey", "in": "header", "name": "X-Gitlab-Token"},
            },
            "schemas": {
                **RUN_SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {}},
                },
                "ActionBody": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "reason": {"type": "string", "maxLength": 500, "description": "why, for the audit trail"},
                        "by": {"type": "string", "minLength": 1, "maxLength": 100, "default": "operator",
                               "description": "who acts, for the audit trail"},  # fmt: skip
                    },
                },
                "ActionResult": {
                    "type": "object",
                    "required": ["action", "changed"],
                    "properties": {
                        "action": {"type": "string"},
                        "changed": {"type": "boolean", "description": "false when the action had already taken effect"},
                        "run_id": {"type": "string"},
                        "model": {"type": "string"},
                        "phase": {"type": "string"},
                        "detail": {"type": "string"},
                        "paused": {"type": "boolean"},
                        "audit": {"type": "object"},
                    },
                },
            },
    }


async def openapi(request: web.Request) -> web.Response:
    return json_ok(document())

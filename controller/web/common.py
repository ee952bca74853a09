"""What every handler shares: typed app keys, JSON errors, auth, and the middlewares."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from controller.config import Settings
from controller.observability import Metrics, Throttle, get_logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class WebContext:
    """What handlers may use; built in app.py."""

    settings: Settings
    controller: Any  # controller.service.Controller
    store: Any  # the store's read and health faces
    metrics: Metrics
    quiet: Throttle = field(default_factory=Throttle)  # rate-limits log lines about rejected requests


CTX = web.AppKey("ctx", WebContext)


def error(status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status, headers=headers)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def json_ok(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


async def read_limited(request: web.Request, limit: int) -> bytes | web.Response:
    """The body, or a 413 as soon as it passes `limit` (whatever Content-Length claims)."""
    if request.content_length is not None and request.content_length > limit:
        return error(413, "body too large", f"the limit is {limit} bytes")
    body = b""
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            return error(413, "body too large", f"the limit is {limit} bytes")
    return body


def bearer_ok(request: web.Request, expected: str | None) -> bool:
    """Constant-time comparison of `Authorization: Bearer <token>` with the configured token."""
    if not expected:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "body too large", f"the limit is {exc.max_size} bytes")  # type: ignore[attr-defined]
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        message = {404: "not found", 405: "method not allowed"}.get(exc.status, exc.reason.lower())
        return error(exc.status, message, f"{request.method} {request.path}", headers=_kept_headers(exc))
    except Exception:
        get_logger().exception("request_failed", method=request.method, path=request.path)
        return error(500, "internal error", "see the controller's log")


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}


def request_metrics(metrics: Metrics) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.requests.labels(route=route, method=request.method, status=str(status)).observe(
                time.perf_counter() - started
            )

    return middleware

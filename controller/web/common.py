"""What every handler shares: typed app keys, JSON errors, auth, and the middlewares."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from controller.config import Settings
from controller.observability import Metrics, Throttle, get_logger
from controller.ports import Clock, HealthStore, HookParser, ReadStore, RunStore, ViewStore
from controller.service import Service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebStore(RunStore, ReadStore, ViewStore, HealthStore, Protocol):
    """The store faces handlers read directly (lists, history, health, webhook replays)."""


@dataclass
class WebContext:
    """What handlers may use; built in app.py."""

    settings: Settings
    service: Service
    store: WebStore
    clock: Clock
    metrics: Metrics
    parse_hook: HookParser  # reads a CI system's pipeline webhook (GitLab's Pipeline Hook)
    quiet: Throttle = field(default_factory=Throttle)  # rate-limits log lines about rejected requests


CTX = web.AppKey("ctx", WebContext)


def error(status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status, headers=headers)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def json_ok(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


async def read_limited(request: web.Request, limit: int) -> bytes | web.Response:
    """The body; a 413 as soon as it passes `limit` (whatever Content-Length claims), a 408 when it has not all
    arrived within `server.body_timeout`, so a client trickling bytes cannot hold a handler forever."""
    if request.content_length is not None and request.content_length > limit:
        return error(413, "body too large", f"the limit is {limit} bytes")
    seconds = request.app[CTX].settings.server.body_timeout.total_seconds()
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.content.iter_chunked(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    return error(413, "body too large", f"the limit is {limit} bytes")
    except TimeoutError:
        slow = error(408, "request timeout", f"the body did not arrive within {seconds:g} s")
        slow.force_close()  # Connection: close; the server drops the rest for at most its lingering_time
        return slow
    return b"".join(chunks)


class BadJson(ValueError):
    """A body that is not one JSON document we can keep: the message says why."""


# A \uD800-\uDFFF escape: JSON may carry a lone surrogate, which no UTF-8 store, log or page can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def decode_json(raw: bytes) -> tuple[str, Any]:
    """The body's text and its JSON value, or BadJson. Never anything else: hostile input must end in a 4xx."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text)
    except RecursionError:
        raise BadJson("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise BadJson(str(exc)) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise BadJson("a string holds a lone UTF-16 surrogate escape")
    return text, value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]  # iterative: the document may be nested as deep as the parser allowed
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def header_bytes(value: str) -> bytes | None:
    """A header value as UTF-8, or None when the client sent bytes that are not (aiohttp keeps them escaped)."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, if there is one that is valid text."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or header_bytes(token) is None:
        return None
    return token


def bearer_ok(request: web.Request, expected: str | None) -> bool:
    """Constant-time comparison of `Authorization: Bearer <token>` with the configured token."""
    token = bearer_token(request)
    if not expected or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())


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

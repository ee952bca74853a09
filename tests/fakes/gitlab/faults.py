"""Fault injection: which faults exist (:class:`Fault`), how tests queue or scatter them per endpoint kind, and
the middleware that applies them (and logs every request) in front of the routes."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.gitlab.model import ENDPOINTS, RequestRecord
from tests.fakes.gitlab.routes import Routes
from tests.fakes.gitlab.wire import _Abort, _json


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    kind:
      ``"status"``  answer with ``status`` (500, 502, 503, 429, 401, ...) instead of the real answer;
      ``"timeout"`` hold the request for ``delay`` seconds (default: FakeGitlab.timeout_delay), longer than
                    the client's timeout; without ``after`` the connection is then dropped and nothing
                    happened, with ``after`` the request took effect and its (unread) answer is sent late;
      ``"reset"``   close the connection without any answer.
      ``"late"``    hold the request for ``delay`` seconds, then let it take effect (after the client gave up)
                    and drop the connection: GitLab committing a create the caller already counts as failed.
    after: the request takes effect (pipeline created / canceled) before the fault replaces the answer.
    retry_after: for 429, the ``Retry-After`` seconds.
    """

    kind: str
    status: int | None = None
    after: bool = False
    retry_after: int = 1
    delay: float | None = None

    @classmethod
    def http(cls, status: int, *, after: bool = False) -> Fault:
        return cls("status", status=status, after=after)

    @classmethod
    def rate_limited(cls, retry_after: int = 1, *, after: bool = False) -> Fault:
        return cls("status", status=429, after=after, retry_after=retry_after)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls("status", status=401)

    @classmethod
    def timeout(cls, *, after: bool = False, delay: float | None = None) -> Fault:
        return cls("timeout", after=after, delay=delay)

    @classmethod
    def reset(cls, *, after: bool = False) -> Fault:
        return cls("reset", after=after)

    @classmethod
    def late(cls, delay: float | None = None) -> Fault:
        return cls("late", delay=delay)

    @classmethod
    def parse(cls, spec: Fault | str | int) -> Fault:
        """``500``, ``"500"``, ``"500-after"``, ``"502"``, ``"503"``, ``"429"``, ``"429:5"`` (Retry-After 5),
        ``"429-after"``, ``"401"``, ``"timeout"``, ``"timeout-after"``, ``"reset"``, ``"reset-after"``, ``"late"``."""
        if isinstance(spec, Fault):
            return spec
        text = str(spec).strip().lower()
        after = False
        for suffix in ("-after", "_after", " after recording", " after"):
            if text.endswith(suffix):
                after, text = True, text[: -len(suffix)]
                break
        if text == "timeout":
            return cls.timeout(after=after)
        if text == "reset":
            return cls.reset(after=after)
        if text == "late":
            return cls.late()
        retry_after = 1
        if ":" in text:
            text, _, ra = text.partition(":")
            retry_after = int(ra)
        if text.isdigit():
            return cls("status", status=int(text), after=after, retry_after=retry_after)
        raise ValueError(f"unknown fault spec {spec!r}")

    def __str__(self) -> str:
        name = str(self.status) if self.kind == "status" else self.kind
        return name + ("-after" if self.after else "")


@dataclass
class _RandomRule:
    rate: float
    choices: list[Fault]
    weights: list[float]
    rng: random.Random


class FaultInjection(Routes):
    """Faults queued (:meth:`fail`) or drawn at random (:meth:`fail_randomly`) per endpoint kind."""

    def fail(self, endpoint: str, *faults: Fault | str | int) -> None:
        """Queue faults for the next requests to ``endpoint`` (one fault per request, in order).

        ``fake.fail("create", "500-after", "429:3", "timeout")``: the next create is recorded and answered
        500, the one after gets 429 with Retry-After 3, the third hangs; then creates work again.
        """
        self._check_endpoint(endpoint)
        parsed = [Fault.parse(f) for f in faults]
        with self._lock:
            self._fault_queue.setdefault(endpoint, deque()).extend(parsed)

    def fail_randomly(
        self,
        endpoint: str,
        rate: float,
        faults: Mapping[Fault | str | int, float] | Iterable[Fault | str | int] = ("500",),
        *,
        seed: int | None = None,
    ) -> None:
        """Make a fraction ``rate`` of the requests to ``endpoint`` fail, drawing the fault from ``faults``
        (a list: equal weights; a mapping: fault -> weight) with an RNG seeded by ``seed`` (default: the
        FakeGitlab seed). Queued faults (fail) are used first.

        ``fake.fail_randomly("create", 0.3, ["500", "500-after"], seed=7)``: 30% of creates fail, half of
        those after the pipeline was recorded.
        """
        self._check_endpoint(endpoint)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if isinstance(faults, Mapping):
            choices = [Fault.parse(f) for f in faults]
            weights = [float(w) for w in faults.values()]
        else:
            choices = [Fault.parse(f) for f in faults]
            weights = [1.0] * len(choices)
        if not choices:
            raise ValueError("no faults to choose from")
        rng = random.Random(self._seed if seed is None else seed)
        with self._lock:
            self._fault_rules.setdefault(endpoint, []).append(_RandomRule(rate, choices, weights, rng))

    def clear_faults(self, endpoint: str | None = None) -> None:
        with self._lock:
            if endpoint is None:
                self._fault_queue.clear()
                self._fault_rules.clear()
            else:
                self._fault_queue.pop(endpoint, None)
                self._fault_rules.pop(endpoint, None)

    def pending_faults(self, endpoint: str) -> int:
        """How many queued faults are left for ``endpoint``."""
        with self._lock:
            return len(self._fault_queue.get(endpoint, ()))

    @staticmethod
    def _check_endpoint(endpoint: str) -> None:
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint kind {endpoint!r}, expected one of {ENDPOINTS} or '*'")

    def _draw_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for key in (endpoint, "*"):
                queue = self._fault_queue.get(key)
                if queue:
                    return queue.popleft()
            for key in (endpoint, "*"):
                for rule in self._fault_rules.get(key, ()):
                    if rule.rng.random() < rule.rate:
                        return rule.rng.choices(rule.choices, weights=rule.weights, k=1)[0]
            return None

    # ------------------------------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        endpoint, _ = self._route(request.method, raw_path)
        record_fault: Fault | None = None
        status: int | None = None
        try:
            if self.latency > 0:
                await self._sleep(self.latency)
            fault = self._draw_fault(endpoint) if endpoint else None
            record_fault = fault
            if fault is not None and not fault.after:
                if fault.kind == "timeout":
                    await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay)
                    raise _Abort
                if fault.kind == "reset":
                    raise _Abort
                if fault.kind == "late":
                    await request.read()  # GitLab has the whole request; the client leaving does not undo it
                    if await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay):
                        await handler(request)
                    raise _Abort
                response = self._fault_response(fault)
                status = response.status
                return response
            response = await handler(request)
            if fault is not None:  # an "after" fault: the request took effect, its answer is lost
                if fault.kind == "timeout":
                    if not await self._sleep(fault.delay if fault.delay is not None else self.timeout_delay):
                        raise _Abort
                elif fault.kind == "reset":
                    raise _Abort
                else:
                    response = self._fault_response(fault)
            status = response.status
            return response
        except _Abort:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)  # never reaches the client: the transport is gone
        finally:
            with self._lock:
                self._log.append(
                    RequestRecord(
                        method=request.method,
                        path=raw_path,
                        status=status,
                        endpoint=endpoint,
                        query=dict(request.query),
                        fault=None if record_fault is None else str(record_fault),
                    )
                )

    def _fault_response(self, fault: Fault) -> web.Response:
        code = fault.status or 500
        if code == 429:
            reset = int(self.clock().timestamp()) + fault.retry_after
            headers = {
                "Retry-After": str(fault.retry_after),
                "RateLimit-Name": "throttle_authenticated_api",
                "RateLimit-Limit": "60",
                "RateLimit-Observed": "61",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset),
            }
            return web.Response(status=429, text="Retry later\n", content_type="text/plain", headers=headers)
        if code in (502, 504):
            reason = "Bad Gateway" if code == 502 else "Gateway Timeout"
            page = f"<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1></body></html>"
            return web.Response(status=code, text=page, content_type="text/html")
        messages = {
            401: "401 Unauthorized",
            403: "403 Forbidden",
            404: "404 Not Found",
            500: "500 Internal Server Error",
            503: "503 Service Unavailable",
        }
        return _json({"message": messages.get(code, f"{code} Error")}, status=code)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, but wake up early when the server shuts down. True if it slept the full time."""
        if seconds <= 0:
            return True
        closing = self._closing if self._closing_loop is asyncio.get_running_loop() else None
        if closing is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(closing.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

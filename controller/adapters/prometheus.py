"""MetricsSource over Prometheus's HTTP API: instant queries (`/api/v1/query`) with aiohttp.

Outcomes, never an exception for anything Prometheus or the network can do:
  - `value`: an instant vector (one Sample per series, its labels as returned, `__name__` included when the
    query keeps it) or a scalar (one Sample with no labels); for a range selector (`metric{...}[5m]`, a matrix)
    each series' latest sample, which is how counters are read: a range selection skips the stale markers a
    failed scrape writes, so a pod missed by one scrape still has its value. NaN samples are dropped.
  - `no_data`: an empty vector, or nothing but NaN. Not evidence of anything, and not a failure either.
  - `error`: connection refused or reset, timeout, HTTP 4xx/5xx (with Prometheus's own `errorType: error`, e.g.
    400 bad_data for a query that does not parse, 422 execution, 503 timeout/unavailable or a server that is not
    ready yet), a body that is not JSON, `status` other than "success", or a result type an instant value cannot
    come from (string).
Prometheus's `warnings` do not fail a query; they are logged.

One ClientSession, created on first use and closed by `aclose()`. Each query is bounded by `timeout_s` in total
(connect, send, wait, read). Long queries go as a POST form, which Prometheus accepts on the same endpoint, so
no URL length limit of a proxy in between can cut them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
from typing import Any, Callable
from urllib.parse import urlencode

import aiohttp

from controller.observability import get_logger
from controller.ports import QueryResult, Sample

# Past this length of the encoded query string, send a POST form instead of a GET.
MAX_GET_QUERY = 2000
# How much of an unexpected body goes into an error message.
SNIPPET = 300

SessionFactory = Callable[[], aiohttp.ClientSession]


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def parse_value(raw: Any) -> float:
    """A sample value from its string form: "1.5", "NaN", "+Inf", "-Inf" (Prometheus quotes every value)."""
    if isinstance(raw, bool):
        raise ValueError(f"not a sample value: {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw)
    if not isinstance(raw, str):
        raise ValueError(f"not a sample value: {raw!r}")
    return float(raw)  # float() reads NaN, +Inf, -Inf, Inf in any case


def _error(message: str) -> QueryResult:
    return QueryResult("error", error=message)


def parse_answer(http_status: int, body: str) -> tuple[QueryResult, list[str]]:
    """Turn one answer of /api/v1/query into a QueryResult, and the warnings Prometheus sent with it."""
    try:
        doc = json.loads(body)
    except ValueError:
        return _error(f"HTTP {http_status}: answer is not JSON: {_snippet(body)!r}"), []
    if not isinstance(doc, dict):
        return _error(f"HTTP {http_status}: unexpected answer: {_snippet(body)!r}"), []
    warnings = [str(w) for w in doc.get("warnings") or [] if w]
    status = doc.get("status")
    if http_status >= 400 or status != "success":
        kind = doc.get("errorType") or "error"
        message = doc.get("error") or f"status {status!r}"
        return _error(f"HTTP {http_status} {kind}: {message}"), warnings
    data = doc.get("data")
    if not isinstance(data, dict):
        return _error(f"HTTP {http_status}: answer without data: {_snippet(body)!r}"), warnings
    kind = data.get("resultType")
    result = data.get("result")
    try:
        if kind in ("vector", "matrix"):
            if not isinstance(result, list):
                raise ValueError(f"{kind} result is not a list")
            samples = []
            for item in result:
                labels = item.get("metric", {})
                if not isinstance(labels, dict):
                    raise ValueError(f"labels are not an object: {labels!r}")
                if kind == "vector":
                    _ts, raw = item["value"]
                else:  # a range selector: each series' latest sample (Prometheus sends them oldest first)
                    values = item["values"]
                    if not isinstance(values, list):
                        raise ValueError(f"values are not a list: {values!r}")
                    if not values:
                        continue
                    _ts, raw = values[-1]
                samples.append(Sample({str(k): str(v) for k, v in labels.items()}, parse_value(raw)))
        elif kind == "scalar":
            _ts, raw = result
            samples = [Sample({}, parse_value(raw))]
        else:
            return _error(f"result type {kind!r} is not an instant value (use an instant vector, a scalar or a range selector)"), warnings
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return _error(f"HTTP {http_status}: malformed {kind} result: {exc}"), warnings
    samples = [s for s in samples if not math.isnan(s.value)]
    if not samples:
        return QueryResult("no_data"), warnings
    return QueryResult("value", tuple(samples)), warnings


class PrometheusSource:
    """`MetricsSource` for one Prometheus (or anything speaking its query API: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(self, base_url: str, timeout_s: float, session_factory: SessionFactory | None = None):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/api/v1/query"
        self.timeout_s = float(timeout_s)
        self._factory = session_factory or (lambda: aiohttp.ClientSession(headers={"Accept": "application/json"}))
        self._session: aiohttp.ClientSession | None = None
        self.log = get_logger()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._factory()
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def query(self, promql: str) -> QueryResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                status, body = await self._send(promql)
        except TimeoutError:
            result, warnings = _error(f"timeout: no answer from {self.base_url} within {self.timeout_s:g}s"), []
        except aiohttp.ClientConnectorError as exc:
            why = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) else str(exc)
            result, warnings = _error(f"unreachable: {self.base_url}: {why}"), []
        except aiohttp.ServerDisconnectedError:
            result, warnings = _error(f"connection closed by {self.base_url} before an answer"), []
        except (aiohttp.ClientError, OSError, UnicodeDecodeError, LookupError) as exc:  # reset, payload, charset
            reset = isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET
            why = "connection reset" if reset else f"{type(exc).__name__}: {exc}"
            result, warnings = _error(f"request to {self.base_url} failed: {why}"), []
        else:
            result, warnings = parse_answer(status, body)
        if warnings:
            self.log.warning("prometheus_query_warnings", query=promql, warnings=warnings, outcome=result.outcome)
        if result.outcome == "error":
            self.log.debug("prometheus_query_failed", query=promql, error=result.error)
        return result

    async def _send(self, promql: str) -> tuple[int, str]:
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        form = {"query": promql}
        if len(urlencode(form)) <= MAX_GET_QUERY:
            request = session.get(self.url, params=form, timeout=timeout)
        else:
            request = session.post(self.url, data=form, timeout=timeout)
        async with request as resp:
            body = await resp.text(errors="replace")
            return resp.status, body

"""PrometheusSource against a small fake Prometheus that answers with the real API's shapes.

The bodies below are what Prometheus 2.42 answers (taken from the real server): a vector keeps `__name__` unless
an aggregation drops it, every value is a string ("NaN", "+Inf" included), a query that does not parse is
400 bad_data, an execution failure 422, a query timeout 503 with errorType "timeout", and a server that is not
ready yet answers 503 with a plain-text "Service Unavailable".
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from controller.adapters.prometheus import MAX_GET_QUERY, PrometheusSource, parse_answer
from controller.ports import QueryResult, Sample
from tests.infra.procs import free_port

TS = 1795531430.607


def vector(*series: tuple[dict[str, str], str], warnings: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": m, "value": [TS, v]} for m, v in series]},
    }
    if warnings:
        doc["warnings"] = warnings
    return doc


def scalar(v: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "scalar", "result": [TS, v]}}


def failure(error_type: str, error: str) -> dict[str, Any]:
    return {"status": "error", "errorType": error_type, "error": error}


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str -> as is
    content_type: str = "application/json"
    delay: float = 0.0  # before the headers
    body_delay: float = 0.0  # after the headers, before the body


HITS = "recsys_slot_hits_total"
BAD_PARSE = 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis'
BAD_REGEX = "invalid regular expression in label_replace(): ("

ANSWERS: dict[str, Answer] = {
    "hits": Answer(
        body=vector(
            ({"__name__": HITS, "model": "recsys", "track": "stable", "pod": "s-1"}, "1200"),
            ({"__name__": HITS, "model": "recsys", "track": "canary", "pod": "c-1"}, "37.5"),
        )
    ),
    "by_track": Answer(body=vector(({"track": "stable"}, "1200"), ({"track": "canary"}, "37"))),
    "scalar": Answer(body=scalar("0.25")),
    "scalar_nan": Answer(body=scalar("NaN")),
    "inf": Answer(body=vector(({"a": "1"}, "+Inf"), ({"a": "2"}, "-Inf"), ({"a": "3"}, "1e3"))),
    "empty": Answer(body=vector()),
    "all_nan": Answer(body=vector(({"a": "1"}, "NaN"), ({"a": "2"}, "NaN"))),
    "some_nan": Answer(body=vector(({"a": "1"}, "NaN"), ({"a": "2"}, "4"))),
    "sum(": Answer(400, failure("bad_data", BAD_PARSE)),
    "exec": Answer(422, failure("execution", BAD_REGEX)),
    "query_timeout": Answer(503, failure("timeout", "query timed out in expression evaluation")),
    "not_ready": Answer(503, "Service Unavailable", "text/plain; charset=utf-8"),
    "proxy": Answer(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "not_json": Answer(200, "up 1\n", "text/plain"),
    "json_list": Answer(200, [1, 2]),
    "status_error": Answer(200, {"status": "error", "errorType": "internal", "error": "odd"}),
    "matrix_empty": Answer(body={"status": "success", "data": {"resultType": "matrix", "result": []}}),
    "matrix": Answer(body={"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": HITS, "pod": "s-1"}, "values": [[TS, "10"], [TS + 15, "12"], [TS + 30, "19"]]},
        {"metric": {"__name__": HITS, "pod": "s-2"}, "values": [[TS, "4"]]},
        {"metric": {"__name__": HITS, "pod": "s-3"}, "values": []},
        {"metric": {"__name__": HITS, "pod": "s-4"}, "values": [[TS, "3"], [TS + 15, "NaN"]]},
    ]}}),
    "matrix_bad": Answer(body={"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}}]}}),
    "string": Answer(body={"status": "success", "data": {"resultType": "string", "result": [TS, "str"]}}),
    "malformed": Answer(body={"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}),
    "bad_value": Answer(body=vector(({"a": "1"}, "lots"))),
    "warned": Answer(body=vector(({"a": "1"}, "2"), warnings=["PromQL info: metric might not be a counter"])),
    "slow": Answer(body=vector(({"a": "1"}, "1")), delay=5.0),
    "slow_body": Answer(body=vector(({"a": "1"}, "1")), body_delay=5.0),
}


class FakePrometheus:
    """`/api/v1/query` over GET or POST form; answers by query text, an empty vector for anything unknown."""

    def __init__(self, answers: dict[str, Answer]):
        self.answers = answers
        self.requests: list[tuple[str, str]] = []  # (method, query)
        self.app = web.Application()
        self.app.router.add_route("*", "/api/v1/query", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            query = str((await request.post()).get("query", ""))
        elif request.method == "GET":
            query = request.query.get("query", "")
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        self.requests.append((request.method, query))
        answer = self.answers.get(query) or (
            Answer(body=vector(({"echo": query}, "1"))) if query.startswith("echo:") else Answer(body=vector())
        )
        if answer.delay:
            await asyncio.sleep(answer.delay)
        body = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
        resp = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type})
        await resp.prepare(request)
        if answer.body_delay:
            await resp.write(body[:10].encode())
            await asyncio.sleep(answer.body_delay)
            await resp.write(body[10:].encode())
        else:
            await resp.write(body.encode())
        await resp.write_eof()
        return resp


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakePrometheus:
    f = FakePrometheus(ANSWERS)
    f.server = await aiohttp_server(f.app)  # type: ignore[attr-defined]
    return f


@pytest.fixture
async def source(fake: FakePrometheus) -> AsyncIterator[PrometheusSource]:
    s = PrometheusSource(str(fake.server.make_url("/")), timeout_s=0.5)  # type: ignore[attr-defined]
    yield s
    await s.aclose()


# ---- values -------------------------------------------------------------------------------------------------


async def test_vector_one_sample_per_series_with_name(source: PrometheusSource, fake: FakePrometheus) -> None:
    r = await source.query("hits")
    assert r.outcome == "value" and r.error == ""
    assert r.samples == (
        Sample({"__name__": HITS, "model": "recsys", "track": "stable", "pod": "s-1"}, 1200.0),
        Sample({"__name__": HITS, "model": "recsys", "track": "canary", "pod": "c-1"}, 37.5),
    )
    assert fake.requests == [("GET", "hits")]


async def test_aggregated_vector(source: PrometheusSource) -> None:
    r = await source.query("by_track")
    assert {s.labels["track"]: s.value for s in r.samples} == {"stable": 1200.0, "canary": 37.0}
    assert all("__name__" not in s.labels for s in r.samples)


async def test_scalar_is_one_sample_without_labels(source: PrometheusSource) -> None:
    assert await source.query("scalar") == QueryResult("value", (Sample({}, 0.25),))


async def test_infinities_and_exponents(source: PrometheusSource) -> None:
    r = await source.query("inf")
    assert [s.value for s in r.samples] == [math.inf, -math.inf, 1000.0]


async def test_query_text_travels_intact(source: PrometheusSource, fake: FakePrometheus) -> None:
    q = 'echo:sum by (track) (increase(recsys_slot_hits_total{model="recsys",pod=~"c-.+"}[5m])) + 1 & ?#%'
    r = await source.query(q)
    assert r.samples == (Sample({"echo": q}, 1.0),)
    assert fake.requests == [("GET", q)]


async def test_long_query_goes_as_post_form(source: PrometheusSource, fake: FakePrometheus) -> None:
    q = "echo:" + " or ".join(f'recsys_slot_hits_total{{pod="pod-{i}"}}' for i in range(200))
    assert len(q) > MAX_GET_QUERY
    r = await source.query(q)
    assert r.outcome == "value" and r.samples[0].labels == {"echo": q}
    assert fake.requests == [("POST", q)]


# ---- no data ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["empty", "all_nan", "scalar_nan", "a_metric_nobody_exports"])
async def test_no_data(source: PrometheusSource, query: str) -> None:
    assert await source.query(query) == QueryResult("no_data")


async def test_nan_samples_are_dropped(source: PrometheusSource) -> None:
    assert await source.query("some_nan") == QueryResult("value", (Sample({"a": "2"}, 4.0),))


# ---- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ("sum(", f"HTTP 400 bad_data: {BAD_PARSE}"),
        ("exec", f"HTTP 422 execution: {BAD_REGEX}"),
        ("query_timeout", "HTTP 503 timeout: query timed out in expression evaluation"),
        ("status_error", "HTTP 200 internal: odd"),
    ],
)
async def test_prometheus_errors_carry_its_message(source: PrometheusSource, query: str, expected: str) -> None:
    assert await source.query(query) == QueryResult("error", error=expected)


@pytest.mark.parametrize(
    "query, fragments",
    [
        ("not_ready", ["HTTP 503", "not JSON", "Service Unavailable"]),
        ("proxy", ["HTTP 502", "not JSON", "502 Bad Gateway"]),
        ("not_json", ["HTTP 200", "not JSON", "up 1"]),
        ("json_list", ["HTTP 200", "unexpected answer"]),
        ("matrix_bad", ["malformed matrix"]),
        ("string", ["'string'", "not an instant value"]),
        ("malformed", ["malformed vector"]),
        ("bad_value", ["malformed vector", "lots"]),
    ],
)
async def test_garbled_answers_are_errors(source: PrometheusSource, query: str, fragments: list[str]) -> None:
    r = await source.query(query)
    assert r.outcome == "error" and r.samples == ()
    for f in fragments:
        assert f in r.error


async def test_a_range_selector_gives_each_series_latest_sample(source: PrometheusSource) -> None:
    r = await source.query("matrix")
    assert r.outcome == "value"
    assert {s.labels["pod"]: s.value for s in r.samples} == {"s-1": 19.0, "s-2": 4.0}  # s-4's latest is NaN
    assert all(s.labels["__name__"] == HITS for s in r.samples)  # a range selector keeps the metric name
    assert await source.query("matrix_empty") == QueryResult("no_data")


@pytest.mark.parametrize("query", ["slow", "slow_body"])
async def test_slow_answer_is_a_timeout(fake: FakePrometheus, query: str) -> None:
    source = PrometheusSource(str(fake.server.make_url("/")), timeout_s=0.3)  # type: ignore[attr-defined]
    try:
        t0 = time.monotonic()
        r = await source.query(query)
        elapsed = time.monotonic() - t0
        assert r == QueryResult("error", error=f"timeout: no answer from {source.base_url} within 0.3s")
        assert elapsed < 2.0
        # the session is still usable after a timeout
        assert (await source.query("scalar")).outcome == "value"
    finally:
        await source.aclose()


async def test_connection_refused_is_an_error_not_no_data() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        r = await source.query("up")
    finally:
        await source.aclose()
    assert r.outcome == "error"
    assert r.error == f"unreachable: {source.base_url}: connection refused"


@pytest.mark.parametrize("mode", ["close", "reset"])
async def test_connection_dropped_is_an_error(mode: str) -> None:
    """A server that takes the request and drops the connection without an answer (closed, or reset by RST)."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if mode == "reset":  # SO_LINGER 0: close() sends RST
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = PrometheusSource(f"http://127.0.0.1:{port}", timeout_s=2)
    try:
        r = await source.query("up")
    finally:
        await source.aclose()
        server.close()
        await server.wait_closed()
    assert r.outcome == "error"
    assert str(port) in r.error
    assert ("connection closed" if mode == "close" else "connection reset") in r.error


# ---- warnings, session ----------------------------------------------------------------------------------------


async def test_warnings_are_logged_and_the_value_kept(source: PrometheusSource) -> None:
    with capture_logs() as logs:
        r = await source.query("warned")
    assert r == QueryResult("value", (Sample({"a": "1"}, 2.0),))
    warned = [e for e in logs if e["event"] == "prometheus_query_warnings"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["warnings"] == ["PromQL info: metric might not be a counter"]
    assert warned[0]["query"] == "warned"


async def test_one_lazy_session_closed_by_aclose(fake: FakePrometheus) -> None:
    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    source = PrometheusSource(str(fake.server.make_url("/")), timeout_s=1, session_factory=factory)  # type: ignore[attr-defined]
    assert made == []  # nothing opened before the first query
    results = await asyncio.gather(*(source.query(q) for q in ["hits", "scalar", "empty", "sum("]))
    assert [r.outcome for r in results] == ["value", "value", "no_data", "error"]
    assert len(made) == 1
    await source.aclose()
    assert made[0].closed
    await source.aclose()  # twice is fine
    assert (await source.query("scalar")).outcome == "value"  # and a later query opens a new one
    assert len(made) == 2
    await source.aclose()
    assert made[1].closed


def test_parse_answer_never_raises_on_odd_documents() -> None:
    odd = [
        "",
        "null",
        '"text"',
        "{}",
        '{"status":"success"}',
        '{"status":"success","data":{"resultType":"vector","result":{}}}',
        '{"status":"success","data":{"resultType":"vector","result":[1]}}',
        '{"status":"success","data":{"resultType":"vector","result":[{"metric":[],"value":[1,"1"]}]}}',
        '{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,true]}]}}',
        '{"status":"success","data":{"resultType":"scalar","result":[1]}}',
        '{"status":"success","data":{"resultType":"scalar","result":null}}',
    ]
    for body in odd:
        result, _ = parse_answer(200, body)
        assert result.outcome == "error", body
        assert result.error, body

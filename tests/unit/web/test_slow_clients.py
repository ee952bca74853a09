"""Slow clients against `retrain-controller serve` on a real socket: a head or a body that trickles in is cut off
after server.header_timeout / server.body_timeout, and while dozens of them hang on, other clients are served."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from controller.core.callbacks import callback_token
from tests.conftest import SECRETS_ENV, TOKEN, write_config
from tests.infra.procs import Service, controller_service, free_port
from tests.unit.payloads import am_alert, notification

TIMEOUT = 1.0  # both timeouts, in the server's config below
SLACK = 1.5  # the server's timer granularity and a busy 2-core machine
ADMIN = SECRETS_ENV["RETRAIN_CONTROLLER_ADMIN_TOKEN"]
CALLBACK = callback_token(SECRETS_ENV["RETRAIN_CONTROLLER_CALLBACK_SECRET"], "r1")
ENDPOINTS = [
    ("/api/v1/alerts", f"Authorization: Bearer {TOKEN}"),
    ("/api/v1/runs/r1/events", f"Authorization: Bearer {CALLBACK}"),
    ("/api/v1/gitlab/events", "X-Gitlab-Token: hook-token-slow"),
    ("/api/v1/models/recsys/pause", f"Authorization: Bearer {ADMIN}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("slow")
    config = write_config(tmp, f"""
        server:
          header_timeout: {TIMEOUT}s
          body_timeout: {TIMEOUT}s
          log_format: json
        """)  # fmt: skip
    env = {**SECRETS_ENV, "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": "hook-token-slow"}
    service = controller_service(tmp, config, free_port(), TOKEN, env).start()
    try:
        yield service
    finally:
        service.stop()


@dataclass
class Outcome:
    answered: float | None  # seconds until a whole answer came, if one did
    said: bytes
    hung_up: float  # seconds until the server closed the connection


async def trickle(port: int, at_once: bytes, dripped: bytes, every: float = 0.2) -> Outcome:
    """Send `at_once`, then `dripped` a byte at a time and keep dripping whatever the server says."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(at_once)

    async def drip() -> None:
        for i in range(len(dripped)):
            writer.write(dripped[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every)

    dripping = asyncio.create_task(drip())
    said, answered = b"", None
    try:
        said = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(said.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        said += await reader.readexactly(length)
        answered = time.monotonic() - started
        await asyncio.wait_for(reader.read(), 30)  # and still dripping: when does the server hang up?
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        hung_up = time.monotonic() - started
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    return Outcome(answered, said, hung_up)


def request_head(path: str, auth: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()  # fmt: skip


async def test_a_head_that_trickles_in_is_cut_off(server):
    path, auth = ENDPOINTS[0]
    out = await trickle(server.port, b"", request_head(path, auth, 2))
    assert out.answered is None and out.said == b"" and TIMEOUT * 0.8 < out.hung_up < TIMEOUT + SLACK


@pytest.mark.parametrize("path,auth", ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
async def test_a_body_that_trickles_in_gets_408_and_the_connection_closes(server, path, auth):
    body = json.dumps(notification()).encode()
    out = await trickle(server.port, request_head(path, auth, len(body)), body)
    assert out.said.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in out.said, out.said
    assert out.said.endswith(b'{"error": "request timeout", "detail": "the body did not arrive within 1 s"}')
    assert out.answered is not None and TIMEOUT * 0.8 < out.answered < TIMEOUT + SLACK
    assert out.hung_up < 2 * TIMEOUT + SLACK  # the rest of the body is dropped for at most body_timeout more


async def test_dozens_of_slow_clients_do_not_hold_up_the_others(server, tmp_path):
    path, auth = ENDPOINTS[0]
    body = json.dumps(notification()).encode()
    slow = [asyncio.create_task(trickle(server.port, b"", request_head(path, auth, 2), every=0.3)) for _ in range(40)]
    slow += [asyncio.create_task(trickle(server.port, request_head(path, auth, len(body)), body, every=0.3))
             for _ in range(40)]  # fmt: skip
    await asyncio.sleep(0.3)  # they are all connected and dripping
    latencies = []
    fps = [f"{i:016x}" for i in range(20)]
    for fp in fps:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = json.dumps(notification(am_alert(fp=fp, model="nobody"))).encode()
        writer.write(request_head(path, auth, len(payload)).replace(b"Host: x", b"Host: x\r\nConnection: close")
                     + payload)  # fmt: skip
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        latencies.append(time.monotonic() - started)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert not any(t.done() for t in slow)  # all still hanging on while the others were served
    assert max(latencies) < 0.5, latencies
    results = await asyncio.gather(*slow)
    assert all(out.hung_up < 2 * TIMEOUT + SLACK for out in results)
    assert [out.said[:13] for out in results] == [b""] * 40 + [b"HTTP/1.1 408 "] * 40
    store = Path(server.proc.workdir) / "store" / "controller.db"
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        kept = {row[0] for row in db.execute("SELECT fingerprint FROM decisions")}
    finally:
        db.close()
    assert kept == set(fps)  # the served ones, and nothing of the slow ones

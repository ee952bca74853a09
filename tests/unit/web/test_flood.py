"""An unauthenticated flood against `retrain-controller serve`: thousands of requests with wrong tokens on every
POST endpoint, and malformed HTTP, leave the store as it was (rows, data_version, file sizes) and add a bounded
number of log lines, none carrying a token."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from pathlib import Path

import aiohttp

from controller.core.callbacks import callback_token
from tests.conftest import SECRETS_ENV, TOKEN, write_config
from tests.infra.procs import controller_service, free_port
from tests.unit.payloads import notification

ADMIN = SECRETS_ENV["RETRAIN_CONTROLLER_ADMIN_TOKEN"]
HOOK = "hook-token-flood-6b1e"
PATHS = ["/api/v1/alerts", "/api/v1/runs/r1/events", "/api/v1/gitlab/events",
         *(f"/api/v1/runs/r1/{a}" for a in ("abort", "promote", "retry", "pause", "resume")),
         *(f"/api/v1/models/recsys/{a}" for a in ("pause", "resume", "retrain"))]  # fmt: skip
NEAR_MISSES = [TOKEN[:-1] + "x", ADMIN[:-1] + "x", HOOK[:-1] + "x", TOKEN + "x", ADMIN.upper()]
WRONG = [{}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {ADMIN}"},
         *({"Authorization": f"Bearer {t}", "X-Gitlab-Token": t} for t in NEAR_MISSES),
         {"Authorization": f"Bearer {callback_token(SECRETS_ENV['RETRAIN_CONTROLLER_CALLBACK_SECRET'], 'r2')}"}]  # fmt: skip
PER_PATH = 400
THROTTLE_S = 10.0  # controller.observability.Throttle's interval


def store_state(db_path: Path, view: sqlite3.Connection) -> dict[str, object]:
    tables = [r[0] for r in view.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    state: dict[str, object] = {t: view.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    state["data_version"] = view.execute("PRAGMA data_version").fetchone()[0]
    for suffix in ("", "-wal"):
        f = Path(str(db_path) + suffix)
        state[f"size{suffix}"] = f.stat().st_size if f.exists() else 0
    return state


async def malformed(port: int, n: int) -> list[bytes]:
    """Requests aiohttp's parser refuses; one carries the real admin token in a header it cannot parse."""
    lines = []
    for i in range(n):
        bad = [b"Content-Length: -1", b"Authorization: Bearer " + ADMIN.encode() + b"\x01", b"X: \x00"][i % 3]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n\r\n")
        lines.append((await asyncio.wait_for(reader.readline(), 5)).strip())
        writer.close()
    return lines


async def test_a_flood_with_wrong_tokens_changes_no_store_and_logs_a_few_lines(tmp_path):
    config = write_config(tmp_path, "\nserver:\n  log_format: json\n")
    env = {**SECRETS_ENV, "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": HOOK,
           "RETRAIN_CONTROLLER__POLICY__TICK_INTERVAL": "1h"}  # fmt: skip
    ctl = controller_service(tmp_path, config, free_port(), TOKEN, env).start()
    db_path = tmp_path / "store" / "controller.db"
    view = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        await asyncio.sleep(0.5)  # the first tick and the housekeeping pass are done
        before, log_before = store_state(db_path, view), len(ctl.proc.log().splitlines())
        started = time.monotonic()
        body = json.dumps(notification()).encode()
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:

            async def one(path: str, headers: dict[str, str]) -> None:
                async with http.post(ctl.url + path, data=body,
                                     headers={**headers, "Content-Type": "application/json"}) as r:  # fmt: skip
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1

            await asyncio.gather(*(one(p, WRONG[i % len(WRONG)]) for p in PATHS for i in range(PER_PATH)))
        answers = await malformed(ctl.port, 60)
        took = time.monotonic() - started
        after, log = store_state(db_path, view), ctl.proc.log().splitlines()[log_before:]
    finally:
        view.close()
        ctl.stop()
    assert sum(statuses.values()) == len(PATHS) * PER_PATH
    assert set(statuses) <= {401, 403}, statuses
    assert {a.split(b" ", 1)[1] for a in answers} == {b"400 Bad Request"}
    assert after == before  # not a row, not a page, not a byte of WAL
    # One line per kind of rejection per throttle interval: the Alertmanager webhook's 401s and malformed HTTP.
    assert 0 < len(log) <= 2 * math.ceil(took / THROTTLE_S + 1), log
    assert any("notification_rejected" in line for line in log)
    assert any(json.loads(line).get("event") == "malformed_http_request" for line in log), log
    text = "\n".join(log)
    for secret in (*SECRETS_ENV.values(), HOOK, *NEAR_MISSES):
        assert secret not in text

"""The operator CLI against a real app on a real port (the CLI runs in a thread: it uses blocking urllib)."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

from controller.adapters.clock import SystemClock
from controller.adapters.sqlite import SqliteStore
from controller.app import Adapters, create_app
from controller.cli import main
from controller.config import load_settings
from tests.conftest import SECRETS_ENV, TOKEN, write_config
from tests.fakes.runner import ScriptedRunner
from tests.unit.payloads import am_alert, notification

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
ADMIN = SECRETS_ENV["RETRAIN_CONTROLLER_ADMIN_TOKEN"]


@pytest.fixture
async def server(aiohttp_server, tmp_path, monkeypatch):
    for name in ("RETRAIN_CONTROLLER_URL", "RETRAIN_CONTROLLER_ADMIN_TOKEN", "RETRAIN_CONTROLLER_ADMIN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(write_config(tmp_path), SECRETS_ENV)
    runner = ScriptedRunner()
    app = create_app(settings, Adapters(SqliteStore(settings.store.path), {"recsys": runner, "search": runner},
                                        SystemClock()))  # fmt: skip
    srv = await aiohttp_server(app)
    monkeypatch.setenv("RETRAIN_CONTROLLER_URL", str(srv.make_url("")).rstrip("/"))
    return srv


async def cli(capsys, *argv):
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    # The server runs in this process: drop its log lines, keep what the CLI printed.
    out = "".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line))
    return code, out, err


async def wait_phase(capsys, run_id, phase):
    for _ in range(250):
        code, out, _ = await cli(capsys, "run", run_id, "--json")
        if json.loads(out)["run"]["phase"] == phase:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {phase}")


async def test_status_runs_and_run(server, capsys):
    code, out, _ = await cli(capsys, "status")
    assert code == 0
    assert out.splitlines()[0].split() == ["MODEL", "PAUSED", "LIVE", "RUN", "PHASE", "RATE", "LIMIT", "BUDGET",
                                           "LAST", "STABLE", "IMAGE"]  # fmt: skip
    assert "recsys" in out and "search" in out and "concurrency cap: 1" in out
    code, out, _ = await cli(capsys, "status", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)["models"]] == ["recsys", "search"]

    async with __import__("aiohttp").ClientSession() as s:
        r = await s.post(server.make_url("/api/v1/alerts"), json=notification(am_alert()),
                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        run_id = (await r.json())["alerts"][0]["run_id"]
    await wait_phase(capsys, run_id, "training")
    code, out, _ = await cli(capsys, "runs")
    assert code == 0 and run_id in out and "training" in out
    code, out, _ = await cli(capsys, "runs", "--model", "search")
    assert code == 0 and out.strip() == "no runs"
    code, out, _ = await cli(capsys, "run", run_id)
    assert code == 0 and f"run {run_id}" in out and "precision_drop" in out and "-> training" in out


async def test_actions_with_the_token_from_env_flag_and_file(server, capsys, monkeypatch, tmp_path):
    code, _, err = await cli(capsys, "pause", "recsys", "--by", "alice", "--reason", "maintenance")
    assert code == 1 and "no admin token" in err
    monkeypatch.setenv("RETRAIN_CONTROLLER_ADMIN_TOKEN", ADMIN)
    code, out, _ = await cli(capsys, "pause", "recsys", "--by", "alice", "--reason", "maintenance")
    assert code == 0 and out.startswith("model recsys: paused by alice since ")
    code, out, _ = await cli(capsys, "pause", "recsys")
    assert code == 0 and out.startswith("model recsys: unchanged: paused by alice")
    code, out, _ = await cli(capsys, "status")
    assert "yes (by alice)" in out

    monkeypatch.delenv("RETRAIN_CONTROLLER_ADMIN_TOKEN")
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN + "\n")
    monkeypatch.setenv("RETRAIN_CONTROLLER_ADMIN_TOKEN_FILE", str(token_file))
    code, out, _ = await cli(capsys, "resume", "recsys", "--json")
    assert code == 0 and json.loads(out)["changed"] is True
    monkeypatch.delenv("RETRAIN_CONTROLLER_ADMIN_TOKEN_FILE")

    code, out, _ = await cli(capsys, "retrain", "recsys", "--reason", "new features", "--token", ADMIN, "--json")
    assert code == 0
    run_id = json.loads(out)["run_id"]
    await wait_phase(capsys, run_id, "training")
    code, _, err = await cli(capsys, "retrain", "recsys", "--reason", "again", "--token", ADMIN)
    assert code == 2 and "HTTP 409" in err and run_id in err
    code, _, err = await cli(capsys, "promote", run_id, "--token", ADMIN)
    assert code == 2 and "only an analyzing run" in err
    code, out, _ = await cli(capsys, "abort", run_id, "--token", ADMIN, "--reason", "mistake")
    assert code == 0 and out.strip().endswith("(phase canceled)")
    code, out, _ = await cli(capsys, "retry", run_id, "--token", ADMIN)
    assert code == 0 and "retry of run" in out


async def test_refusals_exit_2(server, capsys):
    code, _, err = await cli(capsys, "abort", "nosuchrun", "--token", ADMIN)
    assert code == 2 and "HTTP 404 unknown run" in err
    code, _, err = await cli(capsys, "abort", "nosuchrun", "--token", "wrong")
    assert code == 2 and "HTTP 401" in err
    code, out, _ = await cli(capsys, "run", "nosuchrun", "--json")
    assert code == 2 and json.loads(out)["error"] == "unknown run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_exits_3_and_usage_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("RETRAIN_CONTROLLER_URL", raising=False)
    code, _, err = await cli(capsys, "status", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 3 and "unreachable" in err
    code, _, err = await cli(capsys, "status", "--url", "ftp://x")
    assert code == 1
    with pytest.raises(SystemExit) as exc:
        main(["retrain", "recsys"])  # --reason is required
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 1


async def test_a_5xx_exits_3(aiohttp_server, capsys):
    from aiohttp import web

    async def broken(request):
        return web.json_response({"error": "internal error", "detail": "see the log"}, status=500)

    app = web.Application()
    app.router.add_get("/api/v1/models", broken)
    srv = await aiohttp_server(app)
    code, _, err = await cli(capsys, "status", "--url", str(srv.make_url("")))
    assert code == 3 and "HTTP 500" in err

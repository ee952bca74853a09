"""The command runner with real processes."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

from controller.adapters.command_runner import CommandRunner
from controller.ports import PipelineRequest

REQ = PipelineRequest(
    run_id="r1",
    model="recsys",
    reasons=("precision_drop", "drift"),
    created_at=datetime(2026, 11, 24, tzinfo=timezone.utc),
    alerts=[{"fingerprint": "fp1", "alertname": "RecsysPrecisionAtKDrop"}],
)


async def wait_finished(runner, ref, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await runner.status(ref)
        if status.finished or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.05)


async def test_runs_once_with_the_run_variables(tmp_path):
    out = tmp_path / "out"
    cmd = ["sh", "-c", f'echo "$RETRAIN_RUN_ID $RETRAIN_MODEL $RETRAIN_REASONS $RETRAIN_ALERTS $EXTRA" >> {out}']
    runner = CommandRunner(cmd, tmp_path / "state", env={"EXTRA": "yes"})
    assert await runner.find(REQ) is None
    ref = await runner.trigger(REQ)
    again = await runner.trigger(REQ)  # a retry after an ambiguous failure must not launch twice
    assert again == ref and await runner.find(REQ) == ref
    assert (await wait_finished(runner, ref)).state == "success"
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    run_id, model, reasons, alerts, extra = lines[0].split(" ", 4)
    assert (run_id, model, reasons, extra) == ("r1", "recsys", "precision_drop,drift", "yes")
    assert json.loads(alerts) == REQ.alerts


async def test_failure_reports_status_and_output(tmp_path):
    runner = CommandRunner(["sh", "-c", "echo boom: no data for window >&2; exit 3"], tmp_path)
    ref = await runner.trigger(REQ)
    status = await wait_finished(runner, ref)
    assert status.state == "failed"
    assert "exited with status 3" in status.detail and "boom: no data for window" in status.detail


async def test_outcome_survives_a_new_runner_instance(tmp_path):
    first = CommandRunner(["true"], tmp_path)
    ref = await first.trigger(REQ)
    await wait_finished(first, ref)
    second = CommandRunner(["true"], tmp_path)  # as after a controller restart
    assert (await second.status(ref)).state == "success"
    assert await second.find(REQ) == ref


async def test_vanished_process_is_lost(tmp_path):
    runner = CommandRunner(["true"], tmp_path, start_grace_s=0.0)
    (tmp_path / "r1" / "started").mkdir(parents=True)  # launched, then the machine died before it wrote a pid
    ref = await runner.find(REQ)
    assert ref is not None
    status = await runner.status(ref)
    assert status.state == "lost" and "left no exit status" in status.detail


async def test_cancel_stops_the_command(tmp_path):
    runner = CommandRunner(["sleep", "30"], tmp_path)
    ref = await runner.trigger(REQ)
    for _ in range(100):
        if (tmp_path / "r1" / "pid").exists():
            break
        await asyncio.sleep(0.02)
    assert (await runner.status(ref)).state == "running"
    await runner.cancel(ref)
    status = await wait_finished(runner, ref)
    assert status.state == "canceled"


async def test_missing_program_fails_the_pipeline(tmp_path):
    runner = CommandRunner(["/nonexistent/train"], tmp_path)
    ref = await runner.trigger(REQ)
    status = await wait_finished(runner, ref)
    assert status.state == "failed" and "127" in status.detail


async def test_the_controllers_secrets_never_reach_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_CONTROLLER_CALLBACK_SECRET", "s3cret-of-the-controller")
    monkeypatch.setenv("RETRAIN_CONTROLLER_ADMIN_TOKEN", "admin-token-of-the-controller")
    out = tmp_path / "env"
    runner = CommandRunner(["sh", "-c", f"env > {out}"], tmp_path / "state")
    req = PipelineRequest(**{**REQ.__dict__, "variables": {"RETRAIN_CALLBACK_TOKEN": "per-run-token"}})
    ref = await runner.trigger(req)
    assert (await wait_finished(runner, ref)).state == "success"
    env = out.read_text()
    assert "s3cret-of-the-controller" not in env and "admin-token-of-the-controller" not in env
    assert "RETRAIN_CALLBACK_TOKEN=per-run-token" in env  # the run's own token is the pipeline's to use
    on_disk = "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json"))
    assert "per-run-token" not in on_disk and "s3cret" not in on_disk and "RETRAIN_RUN_ID" in on_disk

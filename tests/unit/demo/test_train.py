"""The demo's training pipeline end to end: day files in, a model by digest out, callbacks to a recording
server that speaks like the controller (bearer token, JSON events, faults on demand)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web

from controller.core.callbacks import EVENT, ImageEvent
from controller.demo.model import Model, train
from controller.demo.rollout import ModelRegistry
from controller.demo.train import BAD_MODEL_FILE, Callbacks, CallbackError, main
from controller.demo.world import Interactions, World, write_day

TOKEN = "run-token-3e9b"
STAGES = ["fetch-data", "train", "evaluate", "build"]


class Recorder:
    def __init__(self, fail_first: int = 0, status: int = 503):
        self.events: list[dict[str, object]] = []
        self.auth: list[str] = []
        self.fail_first = fail_first
        self.status = status
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.auth.append(request.headers.get("Authorization", ""))
        if self.calls <= self.fail_first:
            return web.json_response({"error": "unavailable"}, status=self.status)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        EVENT.validate_python(body)  # exactly what the controller accepts
        self.events.append(body)
        return web.json_response({"ok": True})


async def _server(aiohttp_server, recorder: Recorder):
    app = web.Application()
    app.router.add_post("/api/v1/runs/{run_id}/events", recorder.handle)
    return await aiohttp_server(app)


def _world_on_disk(data: Path, models: Path, drift_days: int = 14) -> World:
    """A week of clicks, a production model trained on it, then drift, then the latest week on disk."""
    w = World(seed=11)
    first = []
    for _ in range(7):
        first.append(w.sample_interactions(3000))
        w.step()
    prod = train(Interactions.concat(first), w.n_users, w.n_items, item_category=w.item_category)
    w.step(drift_days)
    for _ in range(7):
        write_day(data, w, w.sample_interactions(3000))
        w.step()
    registry = ModelRegistry(models)
    registry.push(prod)
    (models / "production").write_text(prod.digest + "\n")
    return w


def _env(server, run_id: str = "run-1") -> dict[str, str]:
    return {
        "RETRAIN_RUN_ID": run_id,
        "RETRAIN_MODEL": "recsys",
        "RETRAIN_CALLBACK_URL": str(server.make_url(f"/api/v1/runs/{run_id}/events")),
        "RETRAIN_CALLBACK_TOKEN": TOKEN,
    }


def _stages(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["stage"], e["status"]) for e in events if e["event"] == "stage"]


async def test_a_run_reports_every_stage_and_a_better_model(tmp_path, aiohttp_server):
    rec = Recorder()
    server = await _server(aiohttp_server, rec)
    data, models = tmp_path / "data", tmp_path / "models"
    _world_on_disk(data, models)
    argv = ["--data-dir", str(data), "--models-dir", str(models)]
    code = await asyncio.to_thread(main, argv, _env(server))
    assert code == 0
    assert rec.auth == [f"Bearer {TOKEN}"] * len(rec.events)
    assert _stages(rec.events) == [(s, status) for s in STAGES for status in ("running", "success")]
    image = ImageEvent.model_validate(rec.events[-1])
    assert image.image.startswith("demo.local/recsys@sha256:")
    digest = image.image.rsplit(":", 1)[1]
    assert Model.load(models / f"{digest}.npz").digest == digest
    new, prod = image.metrics["precision_at_10_new"], image.metrics["precision_at_10_prod"]
    assert new > 0.05 and new > 3 * prod, image.metrics  # retraining fixed what drift broke
    assert image.metrics["train_clicks"] == 6 * 3000 and image.metrics["heldout_clicks"] == 3000


async def test_a_bad_model_on_request_and_retried_callbacks(tmp_path, aiohttp_server):
    rec = Recorder(fail_first=2)  # the controller answers 503 twice: retried, nothing lost
    server = await _server(aiohttp_server, rec)
    data, models = tmp_path / "data", tmp_path / "models"
    _world_on_disk(data, models, drift_days=0)
    (models / BAD_MODEL_FILE).touch()
    argv = ["--data-dir", str(data), "--models-dir", str(models)]
    assert await asyncio.to_thread(main, argv, _env(server)) == 0
    assert not (models / BAD_MODEL_FILE).exists()  # only the next run is bad
    assert rec.calls == len(rec.events) + 2 and len(rec.events) == 9
    metrics = rec.events[-1]["metrics"]
    assert metrics["precision_at_10_new"] < 0.5 * metrics["precision_at_10_prod"], metrics
    assert {"event": "stage", "stage": "train", "status": "running", "detail": "bad model requested"} in rec.events


async def test_missing_data_fails_the_run_with_a_reason(tmp_path, aiohttp_server):
    rec = Recorder()
    server = await _server(aiohttp_server, rec)
    (tmp_path / "data").mkdir()
    argv = ["--data-dir", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models")]
    assert await asyncio.to_thread(main, argv, _env(server)) == 1
    assert _stages(rec.events) == [("fetch-data", "running"), ("fetch-data", "failed")]
    assert rec.events[-1]["event"] == "failed" and rec.events[-1]["stage"] == "fetch-data"
    assert "day files" in str(rec.events[-1]["reason"])


async def test_a_refused_token_fails_fast(tmp_path, aiohttp_server):
    rec = Recorder()
    server = await _server(aiohttp_server, rec)
    env = {**_env(server), "RETRAIN_CALLBACK_TOKEN": "wrong"}
    argv = ["--data-dir", str(tmp_path), "--models-dir", str(tmp_path / "m")]
    assert await asyncio.to_thread(main, argv, env) == 1
    assert rec.calls == 1 and rec.events == []  # 401 is not retried


def test_callbacks_give_up_after_bounded_retries():
    slept: list[float] = []
    cb = Callbacks("http://127.0.0.1:9/unreachable", TOKEN, attempts=4, backoff_s=0.1, timeout_s=1,
                   sleep=slept.append, log=lambda _: None)  # fmt: skip
    with pytest.raises(CallbackError, match="gave up after 4 attempts"):
        cb.stage("train", "running")
    assert slept == [0.1, 0.2, 0.4]


async def test_runs_as_a_module_like_the_command_runner_runs_it(tmp_path, aiohttp_server):
    rec = Recorder()
    server = await _server(aiohttp_server, rec)
    data, models = tmp_path / "data", tmp_path / "models"
    _world_on_disk(data, models)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.demo.train", "--data-dir", str(data), "--models-dir", str(models),
        env={**_env(server, "run-cli"), "RETRAIN_BAD_MODEL": "1", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[3]),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["run_id"] == "run-cli" and rec.events[-1]["image"] == result["image"]
    assert "bad model requested" in json.dumps(rec.events)
    assert TOKEN not in out.decode() + err.decode()  # the token is never printed

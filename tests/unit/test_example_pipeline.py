"""examples/pipeline.py (the pipeline of `make run`) speaks the callback protocol: run as a process against a
small server that records what it is told."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.core.callbacks import EVENT, IMAGE_REF, ImageEvent, StageEvent, callback_token

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"
SECRET = "example-callback-secret"


async def run_script(env: dict[str, str]) -> tuple[int, str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), env={**inherited, "RETRAIN_EXAMPLE_STEP_SECONDS": "0", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def recorder():
    posts: list[tuple[str, str, dict[str, object]]] = []

    async def events(request: web.Request) -> web.Response:
        posts.append((request.match_info["run_id"], request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/api/v1/runs/{run_id}/events", events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, posts
    finally:
        await server.close()


def pipeline_env(server: TestServer, run_id: str) -> dict[str, str]:
    return {
        "RETRAIN_RUN_ID": run_id,
        "RETRAIN_MODEL": "recsys",
        "RETRAIN_REASONS": "precision_drop",
        "RETRAIN_ALERTS": "[]",
        "RETRAIN_CALLBACK_URL": str(server.make_url(f"/api/v1/runs/{run_id}/events")),
        "RETRAIN_CALLBACK_TOKEN": callback_token(SECRET, run_id),
    }


async def test_reports_stages_then_a_pinned_image(recorder):
    server, posts = recorder
    code, out, err = await run_script(pipeline_env(server, "r-20240101-0001"))
    assert code == 0, err

    assert {run_id for run_id, _, _ in posts} == {"r-20240101-0001"}
    assert {auth for _, auth, _ in posts} == {f"Bearer {callback_token(SECRET, 'r-20240101-0001')}"}
    events = [EVENT.validate_python(body) for _, _, body in posts]  # each one is what the controller accepts
    stages = [(e.stage, e.status) for e in events if isinstance(e, StageEvent)]
    assert stages == [
        (stage, status) for stage in ("fetch-data", "train", "evaluate", "build") for status in ("running", "success")
    ]
    assert isinstance(events[-1], ImageEvent) and sum(isinstance(e, ImageEvent) for e in events) == 1
    image = events[-1]
    assert IMAGE_REF.fullmatch(image.image)
    assert image.image.startswith("registry.example.local/recsys@sha256:")
    assert image.metrics and all(isinstance(v, float) for v in image.metrics.values())
    assert json.loads(out)["image"] == image.image


async def test_each_run_gets_its_own_image(recorder):
    server, posts = recorder
    for run_id in ("r-a", "r-b", "r-a"):
        code, _, err = await run_script(pipeline_env(server, run_id))
        assert code == 0, err
    images = [body["image"] for _, _, body in posts if body["event"] == "image"]
    assert len(images) == 3 and images[0] != images[1] and images[0] == images[2]


async def test_refused_callback_fails_the_pipeline():
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "unauthorized", "detail": "bad callback token"}, status=401)

    app = web.Application()
    app.router.add_post("/api/v1/runs/{run_id}/events", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        code, _, err = await run_script(pipeline_env(server, "r-1"))
    finally:
        await server.close()
    assert code != 0
    assert "HTTP 401" in err


@pytest.mark.parametrize("missing", ["RETRAIN_CALLBACK_URL", "RETRAIN_CALLBACK_TOKEN"])
async def test_without_callback_url_it_says_so_and_fails(recorder, missing):
    server, posts = recorder
    env = pipeline_env(server, "r-1")
    del env[missing]
    code, _, err = await run_script(env)
    assert code != 0
    assert "RETRAIN_CALLBACK_URL" in err and "RETRAIN_CONTROLLER_CALLBACK_SECRET" in err
    assert posts == []

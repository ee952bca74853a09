"""Pipeline callbacks and GitLab Pipeline Hooks through the real app and store; the runner is scripted."""

from __future__ import annotations

import asyncio
import json

import pytest

from controller.adapters.clock import SystemClock
from controller.adapters.sqlite import SqliteStore
from controller.app import Adapters, create_app
from controller.config import load_settings
from controller.core.callbacks import callback_token
from controller.ports import PipelineStatus
from tests.conftest import SECRETS_ENV, TOKEN, write_config
from tests.fakes.runner import ScriptedRunner
from tests.unit.payloads import am_alert, notification

CALLBACK_SECRET = SECRETS_ENV["RETRAIN_CONTROLLER_CALLBACK_SECRET"]
HOOK_TOKEN = "hook-token-3e8a1c"
IMAGE = "registry.example/ml/recsys@sha256:" + "0f" * 32


@pytest.fixture
async def env(aiohttp_client, tmp_path):
    settings = load_settings(write_config(tmp_path), {**SECRETS_ENV, "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": HOOK_TOKEN})
    runner = ScriptedRunner()
    adapters = Adapters(SqliteStore(settings.store.path), {"recsys": runner, "search": runner}, SystemClock())
    client = await aiohttp_client(create_app(settings, adapters))
    r = await client.post("/api/v1/alerts", json=notification(am_alert()), headers={"Authorization": f"Bearer {TOKEN}"})
    run_id = (await r.json())["alerts"][0]["run_id"]
    await wait_phase(client, run_id, "training")
    return client, runner, run_id


async def wait_phase(client, run_id, phase, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        run = (await (await client.get(f"/api/v1/runs/{run_id}")).json())["run"]
        if run["phase"] == phase or loop.time() > end:
            assert run["phase"] == phase, run
            return run
        await asyncio.sleep(0.02)


def auth(run_id, secret=CALLBACK_SECRET):
    return {"Authorization": f"Bearer {callback_token(secret, run_id)}"}


async def event(client, run_id, body, headers=None):
    return await client.post(f"/api/v1/runs/{run_id}/events", data=json.dumps(body) if not isinstance(body, bytes) else body,
                             headers={"Content-Type": "application/json", **(auth(run_id) if headers is None else headers)})


async def test_the_pipeline_variables_carry_a_working_callback(env):
    client, runner, run_id = env
    assert runner.triggers() == [run_id]
    r = await event(client, run_id, {"event": "stage", "stage": "train", "status": "running"})
    assert r.status == 200 and (await r.json())["effect"] == "record"
    r = await event(client, run_id, {"event": "image", "image": IMAGE, "metrics": {"precision_at_10": 0.071}})
    body = await r.json()
    assert r.status == 200 and body["effect"] == "move" and body["phase"] == "deploying"
    # This model has no canary configured: the image is the outcome, nothing is deployed, and the run says so.
    run = await wait_phase(client, run_id, "succeeded")
    assert run["image"] == IMAGE and run["offline_metrics"] == {"precision_at_10": 0.071}
    assert run["pipeline"]["stages"] == [{"stage": "train", "status": "running", "detail": ""}]
    history = (await (await client.get(f"/api/v1/runs/{run_id}")).json())["history"]
    assert [h["to"] for h in history][-2:] == ["deploying", "succeeded"]
    assert "has no canary" in history[-1]["cause"] and "nothing deployed" in history[-1]["cause"]
    r = await event(client, run_id, {"event": "image", "image": IMAGE})  # the run has ended: refused
    assert r.status == 403


async def test_failure_event_fails_the_run_and_later_events_are_refused(env):
    client, _, run_id = env
    r = await event(client, run_id, {"event": "failed", "reason": "OOMKilled", "stage": "train"})
    assert (await r.json())["phase"] == "failed"
    r = await event(client, run_id, {"event": "stage", "stage": "report", "status": "success"})
    assert r.status == 403 and (await r.json())["error"] == "run is finished"


@pytest.mark.parametrize(
    "headers,status",
    [
        ({}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer not-a-token"}, 403),
        ({"Authorization": f"Bearer {callback_token('other-secret', 'x')}"}, 403),
        ({"Authorization": f"Bearer {TOKEN}"}, 403),  # the Alertmanager token is not a callback token
    ],
)
async def test_callback_auth(env, headers, status):
    client, _, run_id = env
    r = await event(client, run_id, {"event": "stage", "stage": "train", "status": "running"}, headers=headers)
    assert r.status == status
    assert set(await r.json()) == {"error", "detail"}


async def test_another_runs_token_is_refused(env):
    client, _, run_id = env
    r = await event(client, run_id, {"event": "failed", "reason": "x"}, headers=auth("some-other-run"))
    assert r.status == 403
    await wait_phase(client, run_id, "training")


async def test_unknown_run_is_404(env):
    client, _, _ = env
    r = await event(client, "nosuchrun", {"event": "failed", "reason": "x"}, headers=auth("nosuchrun"))
    assert r.status == 404


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"event": "image", "image": "registry/recsys:latest"}, 400, "image"),
        ({"event": "launch"}, 400, "event"),
        (b"{nope", 400, "malformed JSON"),
        (json.dumps({"event": "failed", "reason": "x" * 70000}).encode(), 413, "limit"),
    ],
)
async def test_bad_events_change_nothing(env, body, status, needle):
    client, _, run_id = env
    r = await event(client, run_id, body)
    assert r.status == status and needle in json.dumps(await r.json())
    run = await wait_phase(client, run_id, "training")
    assert run["image"] is None


def hook(run_id, pipeline_id, status, **extra):
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": pipeline_id, "iid": 3, "ref": "main", "status": status, "source": "api",
            "created_at": "2016-08-12 15:23:28 UTC", "finished_at": None,
            "variables": [{"key": "RETRAIN_RUN_ID", "value": run_id}, {"key": "RETRAIN_MODEL", "value": "recsys"}],
        },
        "project": {"id": 42, "path_with_namespace": "ml/recsys", "web_url": "https://gitlab.test/ml/recsys"},
        **extra,
    }  # fmt: skip


async def post_hook(client, body, token=HOOK_TOKEN, key="k1"):
    headers = {"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": token, "Idempotency-Key": key}
    return await client.post("/api/v1/gitlab/events", json=body, headers=headers)


async def test_pipeline_hook_backstops_a_lost_callback(env):
    client, runner, run_id = env
    pid = runner.pipelines[run_id].id
    r = await post_hook(client, hook(run_id, pid, "running"))
    assert r.status == 200 and (await r.json())["phase"] == "training"
    r = await post_hook(client, hook(run_id, pid, "success"), key="k2")
    assert (await r.json())["phase"] == "failed"  # succeeded without reporting an image
    run = await wait_phase(client, run_id, "failed")
    assert run["cause"] == "pipeline succeeded without reporting an image"
    r = await post_hook(client, hook(run_id, pid, "success"), key="k2")  # GitLab's replay
    assert r.status == 200 and (await r.json())["replay"] is True


async def test_pipeline_hook_auth_and_foreign_pipelines(env):
    client, runner, run_id = env
    assert (await post_hook(client, hook(run_id, "1", "failed"), token="wrong")).status == 401
    r = await post_hook(client, hook("not-ours", "999", "failed"))
    assert r.status == 202 and "no run" in (await r.json())["ignored"]
    r = await post_hook(client, {"object_kind": "push"})
    assert r.status == 202
    r = await post_hook(client, {"object_kind": "pipeline", "object_attributes": {"status": "failed"}})
    assert r.status == 400
    await wait_phase(client, run_id, "training")


async def test_a_hook_about_a_running_pipeline_of_an_aborted_run_cancels_it(env):
    client, runner, run_id = env
    admin = {"Authorization": f"Bearer {SECRETS_ENV['RETRAIN_CONTROLLER_ADMIN_TOKEN']}"}
    assert (await client.post(f"/api/v1/runs/{run_id}/abort", headers=admin)).status == 200
    late = "p-late"  # e.g. a create that came back after the abort and was never recorded on the run
    runner.states[late] = PipelineStatus("running")
    runner.calls.clear()
    r = await post_hook(client, hook(run_id, late, "running"), key="late-1")
    assert r.status == 200 and (await r.json())["phase"] == "canceled"
    assert ("cancel", late) in runner.calls
    runner.calls.clear()
    r = await post_hook(client, hook(run_id, late, "canceled"), key="late-2")
    assert r.status == 200 and runner.calls == []  # a finished pipeline is left alone

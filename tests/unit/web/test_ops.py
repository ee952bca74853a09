"""The operator API through the real app and store: auth, every action's effect, conflicts, idempotency."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from controller.adapters.clock import SystemClock
from controller.adapters.sqlite import SqliteStore
from controller.app import Adapters, create_app
from controller.config import load_settings
from controller.core.judge import Outcome, Verdict
from controller.core.runs import Phase, Run, Transition
from controller.core.state import Pause
from tests.conftest import SECRETS_ENV, TOKEN, write_config
from tests.fakes.runner import ScriptedRunner
from tests.unit.payloads import am_alert, notification
from tests.unit.service.test_canary import CanaryWorld

ADMIN = SECRETS_ENV["RETRAIN_CONTROLLER_ADMIN_TOKEN"]
IMAGE = "registry.example/ml/recsys@sha256:" + "0f" * 32
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class Env:
    def __init__(self, client, runner, store):
        self.client, self.runner, self.store = client, runner, store

    async def post(self, path, body=None, headers=None, raw=None):
        kw = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
        return await self.client.post(path, headers=AUTH if headers is None else headers, **kw)

    async def detail(self, run_id):
        return await (await self.client.get(f"/api/v1/runs/{run_id}")).json()

    async def run(self, run_id):
        return (await self.detail(run_id))["run"]

    async def audit(self, run_id):
        return (await self.detail(run_id))["audit"]

    async def wait_phase(self, run_id, phase, timeout=5.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            run = await self.run(run_id)
            if run["phase"] == phase or loop.time() > end:
                assert run["phase"] == phase, run
                return run
            await asyncio.sleep(0.02)

    async def alert(self, **kw):
        r = await self.client.post("/api/v1/alerts", json=notification(am_alert(**kw)),
                                   headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert r.status == 200
        return (await r.json())["alerts"][0]

    async def put_run(self, run_id, phase, model="recsys", looks=(), **fields):
        """A run in any phase, as if it had got there (for phases the fakes here do not reach on their own);
        `fields` are the run's typed fields (verdict, stages, pause, ...)."""
        now = datetime.now(timezone.utc)
        ended = now if phase.terminal else None
        run = Run(id=run_id, model=model, phase=phase, created_at=now, phase_entered_at=now, ended_at=ended,
                  deadline_at=None if ended else now + timedelta(hours=2), reasons=("precision_drop",),
                  image=IMAGE, cause="test", **fields)  # fmt: skip
        await self.store.create_run(run, Transition(run_id, now, None, phase, "test"))
        for look in looks:  # the canary's looks, kept beside the run
            await self.store.update_run(run, look)


async def make_env(aiohttp_client, tmp_path, env=None):
    settings = load_settings(write_config(tmp_path), SECRETS_ENV if env is None else env)
    runner = ScriptedRunner()
    store = SqliteStore(settings.store.path)
    adapters = Adapters(store, {"recsys": runner, "search": runner}, SystemClock())
    client = await aiohttp_client(create_app(settings, adapters))
    return Env(client, runner, store)


@pytest.fixture
async def env(aiohttp_client, tmp_path):
    return await make_env(aiohttp_client, tmp_path)


# ---- auth and bodies ---------------------------------------------------------------------------------------

ROUTES = [f"/api/v1/runs/r1/{a}" for a in ("abort", "promote", "retry", "pause", "resume")] + [
    f"/api/v1/models/recsys/{a}" for a in ("pause", "resume", "retrain")
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"},
     {"Authorization": f"Basic {ADMIN}"}],  # fmt: skip
)
async def test_every_action_needs_the_admin_token(env, path, headers):
    r = await env.post(path, headers=headers)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert set(await r.json()) == {"error", "detail"}
    models = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert all(m["paused"] is None and m["live_run"] is None for m in models)


@pytest.mark.parametrize("path", ROUTES)
async def test_without_an_admin_token_every_action_is_forbidden(aiohttp_client, tmp_path, path):
    no_admin = {k: v for k, v in SECRETS_ENV.items() if k != "RETRAIN_CONTROLLER_ADMIN_TOKEN"}
    env = await make_env(aiohttp_client, tmp_path, no_admin)
    r = await env.post(path)
    assert r.status == 403 and await r.json() == {"error": "forbidden", "detail": "no admin token configured"}


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"{nope", "malformed JSON"),
        (b"[1]", "expected a JSON object"),
        (json.dumps({"reason": "x" * 501}).encode(), "reason"),
        (json.dumps({"by": "x" * 101}).encode(), "by"),
        (json.dumps({"by": ""}).encode(), "by"),
        (json.dumps({"by": "a\nb"}).encode(), "by"),
        (json.dumps({"who": "alice"}).encode(), "who"),
        (json.dumps({"reason": 3}).encode(), "reason"),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(env, raw, needle):
    r = await env.post("/api/v1/models/recsys/pause", raw=raw, headers={**AUTH, "Content-Type": "application/json"})
    body = await r.json()
    assert r.status == 400 and needle in json.dumps(body) and set(body) == {"error", "detail"}
    [recsys, _] = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert recsys["paused"] is None


async def test_oversized_body_is_413(env):
    r = await env.post("/api/v1/models/recsys/pause", raw=b'{"reason": "' + b"x" * 9000 + b'"}')
    assert r.status == 413


async def test_unknown_run_and_model_are_404(env):
    for action in ("abort", "promote", "retry", "pause", "resume"):
        r = await env.post(f"/api/v1/runs/nosuchrun/{action}")
        assert r.status == 404 and (await r.json()) == {"error": "unknown run", "detail": "nosuchrun"}
    for action in ("pause", "resume", "retrain"):
        r = await env.post(f"/api/v1/models/nosuchmodel/{action}")
        assert r.status == 404 and (await r.json())["error"] == "unknown model"


# ---- models ------------------------------------------------------------------------------------------------


async def test_pausing_a_model_records_alerts_and_starts_nothing(env):
    r = await env.post("/api/v1/models/recsys/pause", {"by": "alice", "reason": "feature store migration"})
    body = await r.json()
    assert r.status == 200 and body["changed"] is True and body["paused"] is True and body["by"] == "alice"
    again = await env.post("/api/v1/models/recsys/pause", {"by": "bob"})
    assert again.status == 200 and (await again.json())["changed"] is False
    assert (await again.json())["by"] == "alice"  # the first pause stands

    decision = await env.alert()
    assert decision["decision"] == "paused" and decision["run_id"] is None
    assert decision["detail"].startswith("model paused by alice since ")
    assert (await (await env.client.get("/api/v1/runs")).json())["runs"] == []
    [recsys, search] = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert recsys["paused"]["by"] == "alice" and recsys["paused"]["reason"] == "feature store migration"
    assert search["paused"] is None
    assert [a["action"] for a in recsys["audit"]] == ["pause", "pause"]
    assert [a["changed"] for a in recsys["audit"]] == [False, True]

    r = await env.post("/api/v1/models/recsys/resume", {"by": "alice"})
    assert (await r.json())["changed"] is True and (await r.json())["paused"] is False
    r = await env.post("/api/v1/models/recsys/resume")
    assert r.status == 200 and (await r.json())["changed"] is False
    # Alertmanager's next repeat of the same episode starts the run once the model is resumed.
    decision = await env.alert()
    assert decision["decision"] == "accepted"
    await env.wait_phase(decision["run_id"], "training")


async def test_a_pause_survives_a_restart(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    await env.post("/api/v1/models/search/pause", {"by": "ops"})
    await env.client.close()
    env = await make_env(aiohttp_client, tmp_path)
    [_, search] = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert search["paused"]["by"] == "ops"


async def test_retrain_starts_a_manual_run_and_conflicts_while_one_is_live(env):
    r = await env.post("/api/v1/models/recsys/retrain", {"by": "carol", "reason": "new features shipped"})
    body = await r.json()
    assert r.status == 201 and body["changed"] is True
    run = await env.wait_phase(body["run_id"], "training")
    assert run["trigger"] == "manual" and run["reasons"] == ["manual"]
    assert run["manual_reason"] == "new features shipped"
    audit = await env.audit(body["run_id"])
    assert audit[0]["by"] == "carol" and audit[0]["action"] == "retrain"
    history = (await (await env.client.get(f"/api/v1/runs/{body['run_id']}")).json())["history"]
    assert history[0]["cause"] == "manual retrain by carol: new features shipped"
    assert env.runner.triggers() == [body["run_id"]]

    r = await env.post("/api/v1/models/recsys/retrain")
    assert r.status == 409 and body["run_id"] in (await r.json())["detail"]
    # The concurrency cap (1) is full: a retrain of another model waits in the queue.
    r = await env.post("/api/v1/models/search/retrain", {"reason": "why not"})
    queued = await r.json()
    assert r.status == 201 and queued["phase"] == "queued"
    await asyncio.sleep(0.3)
    assert (await env.run(queued["run_id"]))["phase"] == "queued"
    # Freeing the slot starts it.
    r = await env.post(f"/api/v1/runs/{body['run_id']}/abort", {"by": "carol"})
    assert r.status == 200
    await env.wait_phase(queued["run_id"], "training")


async def test_retrain_ignores_cooldown_and_budget(env):
    await env.put_run("old", Phase.FAILED)  # ended just now: the model is in its cooldown
    decision = await env.alert()
    assert decision["decision"] == "rate_limited"
    r = await env.post("/api/v1/models/recsys/retrain")
    assert r.status == 201


async def test_retrain_of_a_paused_model_is_allowed_and_audited(env):
    await env.post("/api/v1/models/recsys/pause")
    r = await env.post("/api/v1/models/recsys/retrain", {"reason": "hand-picked data"})
    assert r.status == 201
    [recsys, _] = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert [a["action"] for a in recsys["audit"]] == ["retrain", "pause"]


async def test_a_pause_holds_runs_alerts_queued_until_resume_without_blocking_others(env):
    first = await env.alert()
    await env.wait_phase(first["run_id"], "training")  # the cap (1) is full from here on
    held = (await env.alert(name="SearchPrecisionDrop", model="search", fp="s1"))["run_id"]
    await env.post("/api/v1/models/search/pause", {"by": "erin", "reason": "index rebuild"})
    assert (await env.run(held))["phase"] == "queued"
    await env.post(f"/api/v1/runs/{first['run_id']}/abort")
    await asyncio.sleep(0.3)
    assert (await env.run(held))["phase"] == "queued"  # the slot is free but search is paused
    page = await (await env.client.get("/")).text()
    assert "held: search is paused" in page
    other = await env.post("/api/v1/models/recsys/retrain")
    assert other.status == 201  # the held run does not take the free slot
    other_id = (await other.json())["run_id"]
    await env.wait_phase(other_id, "training")
    await env.post(f"/api/v1/runs/{other_id}/abort")
    await env.post("/api/v1/models/search/resume", {"by": "erin"})
    await env.wait_phase(held, "training")
    assert env.runner.triggers() == [first["run_id"], other_id, held]


async def test_an_operators_queued_run_of_a_paused_model_still_starts(env):
    first = await env.alert()
    await env.wait_phase(first["run_id"], "training")
    await env.post("/api/v1/models/search/pause")
    r = await env.post("/api/v1/models/search/retrain", {"reason": "by hand, paused or not"})
    queued = (await r.json())["run_id"]
    assert (await r.json())["phase"] == "queued"
    await env.post(f"/api/v1/runs/{first['run_id']}/abort")
    await env.wait_phase(queued, "training")


# ---- runs --------------------------------------------------------------------------------------------------


async def test_abort_cancels_the_pipeline_and_is_idempotent(env):
    decision = await env.alert()
    run_id = decision["run_id"]
    await env.wait_phase(run_id, "training")
    r = await env.post(f"/api/v1/runs/{run_id}/abort", {"by": "dave", "reason": "wrong data window"})
    body = await r.json()
    assert r.status == 200 and body["phase"] == "canceled" and body["changed"] is True
    assert ("cancel", env.runner.pipelines[run_id].id) in env.runner.calls
    run = await env.run(run_id)
    assert run["cause"] == "aborted by dave: wrong data window"
    r = await env.post(f"/api/v1/runs/{run_id}/abort")
    assert r.status == 200 and (await r.json())["changed"] is False
    audit = await env.audit(run_id)
    assert [(a["action"], a["changed"], a["by"]) for a in audit] == [("abort", True, "dave"), ("abort", False, "operator")]
    assert audit[0]["reason"] == "wrong data window" and audit[0]["at"].endswith("Z")


async def test_abort_rolls_back_a_live_canary(env):
    await env.put_run("c1", Phase.ANALYZING)
    r = await env.post("/api/v1/runs/c1/abort", {"by": "erin"})
    assert r.status == 200 and (await r.json())["phase"] == "rolling_back"
    await env.wait_phase("c1", "rolled_back")
    history = (await (await env.client.get("/api/v1/runs/c1")).json())["history"]
    assert history[1]["cause"] == "aborted by erin"


async def test_abort_of_a_succeeded_run_is_409(env):
    await env.put_run("s1", Phase.SUCCEEDED)
    r = await env.post("/api/v1/runs/s1/abort")
    assert r.status == 409 and "nothing to abort" in (await r.json())["detail"]


async def test_promote_only_an_analyzing_run(env):
    await env.put_run("a1", Phase.ANALYZING, verdict=Verdict(Outcome.INCONCLUSIVE, "not enough evidence yet"))
    await env.put_run("d1", Phase.DEPLOYING, model="search")
    r = await env.post("/api/v1/runs/d1/promote")
    assert r.status == 409 and "only an analyzing run can be promoted" in (await r.json())["detail"]
    r = await env.post("/api/v1/runs/a1/promote", {"by": "frank", "reason": "business call"})
    body = await r.json()
    assert r.status == 200 and body["phase"] == "promoting" and body["changed"] is True
    run = await env.run("a1")
    assert run["cause"] == "promoted by frank: business call (last verdict: inconclusive)"
    r = await env.post("/api/v1/runs/a1/promote")
    assert r.status == 200 and (await r.json())["changed"] is False


async def test_pause_and_resume_a_run(env):
    await env.put_run("a1", Phase.ANALYZING)
    r = await env.post("/api/v1/runs/a1/pause", {"by": "gina"})
    assert r.status == 200 and (await r.json())["changed"] is True
    paused = (await env.run("a1"))["paused"]
    assert paused is not None and paused["since"].endswith("Z")
    r = await env.post("/api/v1/runs/a1/pause")
    assert r.status == 200 and (await r.json())["changed"] is False
    r = await env.post("/api/v1/runs/a1/resume")
    assert r.status == 200 and (await r.json())["changed"] is True
    r = await env.post("/api/v1/runs/a1/resume")
    assert r.status == 200 and (await r.json())["changed"] is False
    run = await env.run("a1")
    assert run["paused"] is None
    assert [(a["action"], a["changed"]) for a in await env.audit("a1")] == [
        ("pause", True), ("pause", False), ("resume", True), ("resume", False)]  # fmt: skip


async def test_pausing_a_training_run_is_409(env):
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    r = await env.post(f"/api/v1/runs/{decision['run_id']}/pause")
    assert r.status == 409 and "only a deploying or analyzing run can be paused" in (await r.json())["detail"]


async def test_retry_makes_a_new_manual_run_with_the_old_reasons(env):
    await env.put_run("f1", Phase.FAILED)
    r = await env.post("/api/v1/runs/f1/retry", {"by": "hank", "reason": "flaky runner"})
    body = await r.json()
    assert r.status == 201 and body["retry_of"] == "f1" and body["run_id"] != "f1"
    run = await env.wait_phase(body["run_id"], "training")
    assert run["trigger"] == "manual" and run["reasons"] == ["precision_drop"] and run["retry_of"] == "f1"
    assert (await env.audit("f1"))[-1]["new_run"] == body["run_id"]
    # The model now has a live run: a second retry is refused.
    r = await env.post("/api/v1/runs/f1/retry")
    assert r.status == 409 and "live run" in (await r.json())["detail"]


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.ANALYZING, Phase.QUEUED])
async def test_retry_only_an_ended_unsuccessful_run(env, phase):
    await env.put_run("x1", phase, model="search")
    r = await env.post("/api/v1/runs/x1/retry")
    assert r.status == 409 and "can be retried" in (await r.json())["detail"]


@pytest.mark.parametrize("phase", [Phase.ROLLED_BACK, Phase.CANCELED])
async def test_retry_of_rolled_back_or_canceled(env, phase):
    await env.put_run("x1", phase, model="search")
    r = await env.post("/api/v1/runs/x1/retry")
    assert r.status == 201


async def test_retry_is_queued_when_the_cap_is_full(env):
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    await env.put_run("f2", Phase.FAILED, model="search")
    r = await env.post("/api/v1/runs/f2/retry")
    assert r.status == 201 and (await r.json())["phase"] == "queued"


# ---- with a real canary loop (fake clock, fake rollout) -----------------------------------------------------


async def test_abort_through_the_service_scales_the_canary_to_zero(tmp_path):
    world = CanaryWorld(tmp_path)
    await world.start()
    try:
        run_id = await world.deploying_run()
        await world.service.reconciler.tick()
        assert (await world.run(run_id)).phase is Phase.ANALYZING
        result = await world.service.operations.act_on_run(run_id, "abort", "ivy", "latency looks off")
        assert result["phase"] == "rolling_back" and result["changed"] is True
        await world.service.reconciler.tick()
        run = await world.run(run_id)
        assert run.phase is Phase.ROLLED_BACK
        assert world.rollout.canary.replicas == 0
        assert (await world.store.run_audit(run_id))[0].reason == "latency looks off"
    finally:
        await world.stop()


async def test_pausing_again_after_the_paused_run_moved_on_changes_nothing(env):
    await env.put_run("paused1", Phase.ROLLING_BACK, pause=Pause(datetime.now(timezone.utc)))
    resp = await env.post("/api/v1/runs/paused1/pause", {"by": "sre"})
    assert resp.status == 200 and (await resp.json())["changed"] is False


async def test_a_run_of_a_model_no_longer_configured_cannot_be_retried(env):
    await env.put_run("gone1", Phase.FAILED, model="gone")
    resp = await env.post("/api/v1/runs/gone1/retry", {"by": "sre"})
    assert resp.status == 409 and "no longer configured" in (await resp.json())["detail"]


async def test_a_retry_is_audited_on_both_runs(env):
    await env.put_run("old1", Phase.FAILED)
    new = (await (await env.post("/api/v1/runs/old1/retry", {"by": "sre", "reason": "flaky"})).json())["run_id"]
    [first] = (await env.detail(new))["audit"]
    assert first["action"] == "retry" and first["retry_of"] == "old1" and first["reason"] == "flaky"
    [back] = (await env.detail("old1"))["audit"]
    assert back["new_run"] == new and back["retry_of"] == "old1" and back["detail"] == f"retried as run {new}"

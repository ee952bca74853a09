"""The use cases driven tick by tick: fake clock, scripted runner, real SQLite store on disk."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from controller.adapters.sqlite import SqliteStore
from controller.config import load_settings
from controller.core.alerts import Notification
from controller.core.runs import Phase, Transition
from controller.observability import Metrics
from controller.ports import PipelineError, PipelineRef, PipelineStatus
from controller.bootstrap import Adapters, build_service
from controller.service import Service
from tests.conftest import SECRETS_ENV, write_config
from tests.fakes.clock import FakeClock
from tests.fakes.runner import ScriptedRunner
from tests.unit.payloads import am_alert, notification


class IntakeWorld:
    """A controller over a store that outlives it, so tests can restart it."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None):
        self.settings = load_settings(write_config(tmp_path), {**SECRETS_ENV, **(extra_env or {})})
        self.clock = FakeClock()
        self.runner = ScriptedRunner()
        self.store: SqliteStore | None = None
        self.service: Service | None = None

    async def start(self) -> Service:
        self.store = SqliteStore(self.settings.store.path)
        await self.store.open()
        runners = {m.name: self.runner for m in self.settings.models}
        self.service = build_service(self.settings, Adapters(self.store, runners, self.clock), Metrics())
        return self.service

    async def restart(self) -> Service:
        await self.stop()
        return await self.start()

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def send(self, *alerts, **kw):
        n = Notification.model_validate(notification(*alerts, **kw))
        assert self.service is not None
        return await self.service.intake.handle_notification(n, "{}")

    async def run(self, run_id: str):
        assert self.store is not None
        return await self.store.get_run(run_id)


@pytest.fixture
async def world(tmp_path):
    w = IntakeWorld(tmp_path)
    await w.start()
    yield w
    await w.stop()


async def test_accepted_run_triggers_one_pipeline_and_follows_it(world):
    [d] = await world.send(am_alert())
    run = await world.run(d.run_id)
    assert run.phase is Phase.TRIGGERING and run.reasons == ("precision_drop",)
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.TRAINING and run.pipeline_id == "p-1" and run.pipeline_url.endswith(d.run_id)
    await world.service.reconciler.tick()  # still running: nothing changes, nothing is triggered again
    assert world.runner.triggers() == [d.run_id]
    world.runner.finish(d.run_id, "failed", "job train failed")
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.FAILED and run.cause == "pipeline failed: job train failed"
    history = await world.store.history(d.run_id)
    assert [(t.from_phase, t.to_phase) for t in history] == [
        (None, Phase.TRIGGERING),
        (Phase.TRIGGERING, Phase.TRAINING),
        (Phase.TRAINING, Phase.FAILED),
    ]
    assert all(t.cause for t in history)


async def test_success_without_an_image_fails_the_run(world):
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    world.runner.finish(d.run_id, "success")
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.FAILED and run.cause == "pipeline succeeded without reporting an image"


async def test_transient_trigger_errors_retry_permanent_ones_fail(world):
    world.runner.trigger_errors = [PipelineError("502 Bad Gateway"), PipelineError("Reference not found", permanent=True)]
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    assert (await world.run(d.run_id)).phase is Phase.TRIGGERING  # kept, retried next tick
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.FAILED and run.cause == "pipeline could not be started: Reference not found"


async def test_existing_pipeline_is_found_not_created_again(world):
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    # Pretend the store write after the trigger was lost: the run is back in triggering.
    run = await world.run(d.run_id)
    await world.store.apply(
        replace(run, phase=Phase.TRIGGERING, pipeline_id=None),
        Transition(run.id, world.clock.now(), Phase.TRAINING, Phase.TRIGGERING, "test: simulate a lost write"),
    )
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.TRAINING and run.cause.startswith("found the pipeline already started")
    assert world.runner.triggers() == [d.run_id]


async def test_concurrency_cap_queues_and_starts_in_arrival_order(world):
    # cap is 1: recsys takes the slot, search queues
    [a] = await world.send(am_alert())
    [b] = await world.send(am_alert("SearchPrecisionDrop", model="search", fp="s1"))
    assert a.kind.value == "accepted" and b.kind.value == "queued"
    await world.service.reconciler.tick()
    assert (await world.run(b.run_id)).phase is Phase.QUEUED
    world.runner.finish(a.run_id, "failed", "x")
    await world.service.reconciler.tick()  # recsys fails, the slot frees, search starts in the same tick
    run = await world.run(b.run_id)
    assert run.phase is Phase.TRIGGERING and run.cause == "a concurrency slot freed up"
    await world.service.reconciler.tick()
    assert world.runner.triggers() == [a.run_id, b.run_id]


async def test_deadline_fails_the_run_and_cancels_its_pipeline(world):
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    world.clock.advance(hours=6, seconds=1)  # default training deadline is 6h
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.FAILED and run.cause == "deadline: training took longer than 6h"
    assert ("cancel", "p-1") in world.runner.calls


async def test_queued_deadline_frees_nothing_twice(world):
    await world.send(am_alert())
    [b] = await world.send(am_alert("SearchPrecisionDrop", model="search", fp="s1"))
    world.clock.advance(hours=24, seconds=1)
    await world.service.reconciler.tick()
    assert (await world.run(b.run_id)).phase is Phase.FAILED


async def test_restart_keeps_decisions_cooldowns_and_queue(world):
    [a] = await world.send(am_alert())
    [b] = await world.send(am_alert("SearchPrecisionDrop", model="search", fp="s1"))
    await world.service.reconciler.tick()
    world.runner.finish(a.run_id, "failed", "x")
    await world.service.reconciler.tick()
    await world.restart()
    # same episode after restart: duplicate; new recsys episode: cooldown (run ended 0s ago)
    [dup] = await world.send(am_alert())
    assert dup.kind.value == "duplicate" and dup.run_id == a.run_id
    [rl] = await world.send(am_alert(starts="2026-11-24T11:00:00Z"))
    assert rl.kind.value == "rate_limited" and rl.until == world.clock.now() + timedelta(hours=1)
    assert (await world.run(b.run_id)).phase is Phase.TRIGGERING
    await world.service.reconciler.tick()
    assert (await world.run(b.run_id)).phase is Phase.TRAINING


async def test_rate_limited_episode_starts_a_run_when_the_cooldown_lifts(world):
    [a] = await world.send(am_alert())
    await world.service.reconciler.tick()
    world.runner.finish(a.run_id, "failed", "x")
    await world.service.reconciler.tick()
    episode2 = am_alert(fp="other", starts="2026-11-24T10:05:00Z")
    [d] = await world.send(episode2)
    assert d.kind.value == "rate_limited"
    world.clock.advance(hours=1, seconds=1)
    [d] = await world.send(episode2)  # Alertmanager's repeat of the same, still firing, episode
    assert d.kind.value == "accepted"


async def test_dry_run_decides_and_records_but_starts_nothing(tmp_path):
    w = IntakeWorld(tmp_path, {"RETRAIN_CONTROLLER__POLICY__DRY_RUN": "true"})
    await w.start()
    try:
        [d] = await w.send(am_alert())
        assert d.kind.value == "accepted"
        run = await w.run(d.run_id)
        assert run.phase is Phase.CANCELED and run.dry_run and run.cause == "dry run: no pipeline was started"
        await w.service.reconciler.tick()
        assert w.runner.calls == []
        [d2] = await w.send(am_alert(fp="x2"))
        assert d2.kind.value == "rate_limited"  # the simulated run still counts for the cooldown
    finally:
        await w.stop()
    # dry-run history does not rate-limit the real controller later
    w2 = IntakeWorld(tmp_path)
    w2.settings = load_settings(write_config(tmp_path), SECRETS_ENV)
    await w2.start()
    try:
        [d3] = await w2.send(am_alert(fp="x3"))
        assert d3.kind.value == "accepted"
    finally:
        await w2.stop()


async def test_prune_forgets_old_decisions_but_not_live_runs(world):
    [a] = await world.send(am_alert())
    world.clock.advance(days=31)
    removed = await world.service.reconciler.prune(timedelta(days=30))
    assert removed == 1
    assert await world.store.count("episodes") == 1  # the run is still live: its episode must stay
    assert (await world.run(a.run_id)) is not None


async def test_the_first_attempt_creates_at_once_later_ones_look_first(world):
    world.runner.trigger_errors = [PipelineError("GitLab unreachable: ReadTimeout")]
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    assert world.runner.calls == [("trigger", d.run_id)]  # nothing can exist yet: no lookup
    assert (await world.run(d.run_id)).attempts.count == 1  # saved before the call was made
    await world.restart()  # as after a crash mid-call: the next process must look before creating
    await world.service.reconciler.tick()
    assert world.runner.calls[1:] == [("find", d.run_id), ("trigger", d.run_id)]
    assert (await world.run(d.run_id)).phase is Phase.TRAINING


async def test_after_an_unknown_outcome_it_only_looks_until_create_settle_has_passed(world):
    world.runner.create_settle_s = 60.0  # e.g. GitLab: a create may be committed after the caller gave up
    world.runner.trigger_errors = [PipelineError("GitLab did not answer in time")]
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    world.clock.advance(seconds=30)
    await world.service.reconciler.tick()
    await world.restart()  # the window is on the run, so a new process keeps it too
    world.clock.advance(seconds=29)
    await world.service.reconciler.tick()
    assert world.runner.triggers() == [d.run_id] and ("find", d.run_id) in world.runner.calls
    assert (await world.run(d.run_id)).phase is Phase.TRIGGERING
    world.clock.advance(seconds=2)  # 61 s after the attempt: nothing turned up, so create again
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert world.runner.triggers() == [d.run_id, d.run_id] and run.phase is Phase.TRAINING
    assert run.attempts.count == 2


async def test_a_late_pipeline_found_inside_the_window_is_taken(world):
    world.runner.create_settle_s = 60.0
    world.runner.trigger_errors = [PipelineError("GitLab did not answer in time")]
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    world.runner.pipelines[d.run_id] = PipelineRef(id="p-late")  # GitLab committed it after all
    world.runner.states["p-late"] = PipelineStatus("running")
    world.clock.advance(seconds=5)
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.TRAINING and run.pipeline_id == "p-late" and world.runner.triggers() == [d.run_id]


async def test_a_slow_pipeline_call_holds_up_only_its_own_run(tmp_path):
    import asyncio

    class SlowFirst(ScriptedRunner):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()
            self.entered: list[str] = []

        async def trigger(self, request):
            self.entered.append(request.run_id)
            if not self.pipelines:  # the first run's create hangs until released
                self.pipelines["hold"] = None  # type: ignore[assignment]
                await self.release.wait()
            return await super().trigger(request)

    w = IntakeWorld(tmp_path, {"RETRAIN_CONTROLLER__POLICY__MAX_CONCURRENT_RUNS": "2"})
    w.runner = SlowFirst()
    await w.start()
    w.service.reconciler.step_wait = 0.05
    [a] = await w.send(am_alert())
    [b] = await w.send(am_alert("SearchPrecisionDrop", model="search", fp="00000000000000bb"))
    await w.service.reconciler.tick()
    assert (await w.run(a.run_id)).phase is Phase.TRIGGERING
    assert (await w.run(b.run_id)).phase is Phase.TRAINING  # not stuck behind the first
    await w.service.reconciler.tick()  # the first run's step is still in flight: not started twice
    assert w.runner.entered.count(a.run_id) == 1
    w.runner.release.set()
    await w.service.reconciler.tick()
    await asyncio.sleep(0.05)
    assert (await w.run(a.run_id)).phase is Phase.TRAINING
    await w.service.reconciler.aclose()
    await w.stop()


class GatedRunner(ScriptedRunner):
    """trigger and cancel wait for the test to open their gate, as a slow GitLab would make them."""

    def __init__(self) -> None:
        super().__init__()
        self.trigger_gate, self.cancel_gate = asyncio.Event(), asyncio.Event()
        self.in_trigger, self.in_cancel = asyncio.Event(), asyncio.Event()

    async def trigger(self, request):
        self.in_trigger.set()
        await self.trigger_gate.wait()
        return await super().trigger(request)

    async def cancel(self, ref):
        self.in_cancel.set()
        await self.cancel_gate.wait()
        await super().cancel(ref)


async def test_a_pipeline_created_after_an_abort_is_canceled_not_left_training(world):
    world.runner = runner = GatedRunner()
    await world.restart()
    runner.cancel_gate.set()
    [d] = await world.send(am_alert())
    tick = asyncio.create_task(world.service.reconciler.tick())
    await asyncio.wait_for(runner.in_trigger.wait(), 5)
    await world.service.operations.act_on_run(d.run_id, "abort", "oncall")  # while GitLab is still creating it
    runner.trigger_gate.set()
    await asyncio.wait_for(tick, 5)
    assert (await world.run(d.run_id)).phase is Phase.CANCELED
    assert ("cancel", "p-1") in runner.calls


async def test_a_slow_cancel_does_not_hold_up_alerts_and_callbacks(world):
    world.runner = runner = GatedRunner()
    await world.restart()
    runner.trigger_gate.set()
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    abort = asyncio.create_task(world.service.operations.act_on_run(d.run_id, "abort", "oncall"))
    await asyncio.wait_for(runner.in_cancel.wait(), 5)
    assert (await world.run(d.run_id)).phase is Phase.CANCELED  # recorded before GitLab answers
    [other] = await asyncio.wait_for(world.send(am_alert("SearchPrecisionDrop", model="search", fp="s1")), 2)
    assert other.run_id is not None
    runner.cancel_gate.set()
    await asyncio.wait_for(abort, 5)
    assert ("cancel", "p-1") in runner.calls


async def test_a_run_ending_with_a_create_in_doubt_cancels_the_pipeline_that_create_made(world):
    world.runner.trigger_errors.append(PipelineError("timeout after sending the create"))
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    assert (await world.run(d.run_id)).phase is Phase.TRIGGERING
    # GitLab committed the create after all; the run times out before it is found.
    world.runner.pipelines[d.run_id] = PipelineRef("p-late", "https://gitlab.test/p/late")
    world.runner.states["p-late"] = PipelineStatus("running")
    world.clock.advance(hours=24)
    await world.service.reconciler.tick()
    assert (await world.run(d.run_id)).phase is Phase.FAILED
    assert ("cancel", "p-late") in world.runner.calls


async def test_a_slot_freed_between_ticks_goes_to_the_queued_run_first(world):
    from controller.core.runs import new_run

    # As between a run's end and the next tick: no run active, one queued for search.
    waiting, t = new_run("waiting1", "search", Phase.QUEUED, ("precision_drop",), world.clock.now(),
                         world.settings.policy.deadlines, "queued: 1 runs already active")  # fmt: skip
    await world.store.create_run(waiting, t)
    [d] = await world.send(am_alert())
    assert d.kind.value == "queued" and "1 queued run(s) go first" in d.detail
    await world.service.reconciler.tick()  # the slot goes to the oldest queued run
    await world.service.reconciler.tick()  # which is triggered
    assert world.runner.triggers() == ["waiting1"]
    assert (await world.run(d.run_id)).phase is Phase.QUEUED


async def test_a_model_without_a_canary_succeeds_with_its_image_recorded(world):
    """Retrain-only models (batch scoring, a registry push): the image is the outcome, nothing is deployed."""
    from controller.core.callbacks import ImageEvent

    image = "registry.example/recsys@sha256:" + "c" * 64
    [d] = await world.send(am_alert())
    await world.service.reconciler.tick()
    await world.service.pipelines.handle_event(d.run_id, ImageEvent(event="image", image=image, metrics={"p": 0.2}))
    await world.service.reconciler.tick()
    run = await world.run(d.run_id)
    assert run.phase is Phase.SUCCEEDED and run.image == image and run.offline_metrics == {"p": 0.2}
    assert run.cause == f"model recsys has no canary: image {image} recorded, nothing deployed"
    assert [t.to_phase for t in await world.store.history(d.run_id)][-2:] == [Phase.DEPLOYING, Phase.SUCCEEDED]


def test_a_canary_in_config_without_a_rollout_is_refused_at_build(tmp_path):
    """Without a rollout the model would end succeeded with nothing deployed."""
    from controller.bootstrap import Adapters, build_service

    path = write_config(tmp_path)
    path.write_text(path.read_text() + "    canary: {namespace: ml, stable: search, canary: search-canary, container: model}\n"
                    "    analysis: {hits: 'hits_total', trials: 'trials_total'}\n")  # fmt: skip
    settings = load_settings(path, SECRETS_ENV)
    assert settings.canary_spec("search") is not None
    with pytest.raises(ValueError, match="search have a canary in config but no rollout"):
        build_service(settings, Adapters(SqliteStore(settings.store.path), {}, FakeClock()))

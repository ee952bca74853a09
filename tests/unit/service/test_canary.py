"""The canary room driven tick by tick: fake clock, fake rollout, counters the test serves, real SQLite store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controller.adapters.sqlite import SqliteStore
from controller.config import load_settings
from controller.core.callbacks import ImageEvent
from controller.core.canary import CanaryPlan, Step
from controller.core.judge import Direction, JudgeConfig
from controller.core.runs import Phase
from controller.observability import Metrics
from controller.ports import RolloutError
from controller.core.canary import CanarySpec, GuardrailSpec
from controller.bootstrap import Adapters, build_service
from controller.service import Service
from tests.conftest import SECRETS_ENV, write_config
from tests.fakes.clock import FakeClock
from tests.fakes.rollout import CounterSource, FakeRollout
from tests.fakes.runner import ScriptedRunner
from tests.unit.payloads import am_alert, notification
from controller.core.alerts import Notification

IMAGE = "registry.example/recsys@sha256:" + "b" * 64
OLD = "registry.example/recsys@sha256:" + "a" * 64
GUARD = "canary_error_ratio"


def spec(**kw: object) -> CanarySpec:
    base = dict(
        plan=CanaryPlan(steps=(Step(10, timedelta(minutes=5)), Step(50, timedelta(minutes=5))), total_replicas=10,
                        interval=timedelta(minutes=1), max_bad_looks=2, min_step_trials=1000),
        judge=JudgeConfig(min_trials=1000, overdispersion=1.0),
        hits="hits_total{model=\"recsys\"}", trials="trials_total{model=\"recsys\"}", track_label="track",
        ready_timeout=timedelta(minutes=10),
        guardrails=(GuardrailSpec("error_ratio", GUARD, 0.01, Direction.MAX),),
    )  # fmt: skip
    base.update(kw)
    return CanarySpec(**base)  # type: ignore[arg-type]


class CanaryWorld:
    def __init__(self, tmp_path: Path, canary_spec: CanarySpec | None = None):
        self.settings = load_settings(write_config(tmp_path), SECRETS_ENV)
        self.clock = FakeClock()
        self.runner = ScriptedRunner()
        self.rollout = FakeRollout()
        self.source = CounterSource()
        self.source.scalars[GUARD] = 0.001
        self.source.serve((0, 0), (0, 0))  # the counters exist before the canary starts
        self.spec = canary_spec or spec()
        self.store: SqliteStore | None = None

    async def start(self) -> Service:
        self.store = SqliteStore(self.settings.store.path)
        await self.store.open()
        adapters = Adapters(self.store, {"recsys": self.runner}, self.clock, {"recsys": self.rollout}, self.source)
        self.service = build_service(self.settings, adapters, Metrics(), specs={"recsys": self.spec})
        return self.service

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def deploying_run(self) -> str:
        n = Notification.model_validate(notification(am_alert()))
        [d] = await self.service.intake.handle_notification(n, "{}")
        await self.service.reconciler.tick()  # triggers the pipeline
        await self.service.pipelines.handle_event(d.run_id, ImageEvent(event="image", image=IMAGE))
        return str(d.run_id)

    async def looks(self, run_id: str):
        assert self.store is not None
        return await self.store.run_looks(run_id)

    async def run(self, run_id: str):
        assert self.store is not None
        return await self.store.get_run(run_id)

    async def minute(self, stable: tuple[float, float], canary: tuple[float, float]) -> None:
        self.source.serve(stable, canary)
        self.clock.advance(minutes=1)
        await self.service.reconciler.tick()

    async def until_end(self, run_id: str, stable, canary, limit: int = 400) -> list[Phase]:
        seen = []
        for _ in range(limit):
            await self.minute(stable, canary)
            run = await self.run(run_id)
            if not seen or seen[-1] is not run.phase:
                seen.append(run.phase)
            if run.phase.terminal:
                return seen
        raise AssertionError(f"no end after {limit} minutes: {seen}")


@pytest.fixture
async def world(tmp_path):
    w = CanaryWorld(tmp_path)
    await w.start()
    yield w
    await w.stop()


EQUAL = ((450, 9000), (50, 1000))  # 5% precision on both arms, 10% of the traffic on the canary
WORSE = ((450, 9000), (40, 1000))  # canary 20% worse


async def test_a_good_canary_walks_the_steps_and_is_promoted(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.ANALYZING and run.previous_image == OLD
    assert world.rollout.calls[0] == ("set_canary", (IMAGE, 1))  # 10% of 10 replicas
    phases = await world.until_end(run_id, *EQUAL)
    assert phases == [Phase.ANALYZING, Phase.PROMOTING, Phase.SUCCEEDED]
    run = await world.run(run_id)
    assert ("set_canary", (IMAGE, 5)) in world.rollout.calls  # the 50% step came before promotion
    assert world.rollout.stable.image == IMAGE and world.rollout.canary.replicas == 0
    verdicts = [m.verdict.outcome.value for m in (await world.looks(run_id))]
    assert verdicts[-1] == "pass" and "fail" not in verdicts
    steps = [m.step for m in (await world.looks(run_id))]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 2
    # no PASS before the last step had its minimum duration
    last_step = [m for m in (await world.looks(run_id)) if m.step == 2]
    assert len(last_step) >= 5


async def test_a_worse_canary_is_rolled_back_and_stable_is_untouched(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    phases = await world.until_end(run_id, *WORSE)
    assert phases == [Phase.ANALYZING, Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    run = await world.run(run_id)
    assert (await world.looks(run_id))[-1].verdict.outcome.value == "fail"
    assert world.rollout.stable.image == OLD and world.rollout.stable.replicas == 10
    assert world.rollout.canary.replicas == 0
    assert ("promote", IMAGE) not in world.rollout.calls


async def test_a_canary_without_traffic_is_never_promoted(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    phases = await world.until_end(run_id, (450, 9000), (0, 0), limit=400)
    assert Phase.PROMOTING not in phases and phases[-1] is Phase.ROLLED_BACK
    why = (await world.store.history(run_id))[-2].cause
    assert "deadline" in why or "without usable data" in why, why


async def test_metrics_source_down_is_error_then_rollback_after_the_limit(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    await world.minute(*EQUAL)
    world.source.down = True
    for _ in range(2):
        await world.minute(*EQUAL)
        assert (await world.run(run_id)).phase is Phase.ANALYZING  # tolerated: 2 in a row
    await world.minute(*EQUAL)
    run = await world.run(run_id)
    assert run.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    assert "3 looks in a row without usable data" in run.cause and "connection refused" in run.cause
    assert [m.verdict.outcome.value for m in (await world.looks(run_id))][-3:] == ["error"] * 3


async def test_a_guardrail_breached_two_looks_in_a_row_fails_and_one_spike_is_tolerated(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    world.source.scalars[GUARD] = 0.2  # one noisy look: a cold pod's error ratio
    await world.minute(*EQUAL)
    run = await world.run(run_id)
    assert run.phase is Phase.ANALYZING and run.verdict.outcome.value == "inconclusive"
    assert "guardrail error_ratio 0.2 over its threshold, tolerated for now" in run.verdict.reason
    world.source.scalars[GUARD] = 0.001  # back under: the streak starts again
    await world.minute(*EQUAL)
    assert (await world.run(run_id)).canary.breaches == {"error_ratio": 0}
    world.source.scalars[GUARD] = 0.2
    await world.minute(*EQUAL)
    assert (await world.run(run_id)).phase is Phase.ANALYZING
    await world.minute(*EQUAL)
    run = await world.run(run_id)
    assert run.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK) and "guardrail error_ratio breached" in run.cause


async def test_a_guardrail_with_a_limit_of_one_fails_at_once(tmp_path):
    w = CanaryWorld(tmp_path, spec(guardrails=(GuardrailSpec("error_ratio", GUARD, 0.01, Direction.MAX, breaches=1),)))
    await w.start()
    try:
        run_id = await w.deploying_run()
        await w.service.reconciler.tick()
        w.source.scalars[GUARD] = 0.2
        await w.minute(*EQUAL)
        run = await w.run(run_id)
        assert run.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK) and "guardrail error_ratio breached" in run.cause
    finally:
        await w.stop()


async def test_a_canary_that_never_gets_ready_rolls_back(world):
    world.rollout.auto_ready = False
    run_id = await world.deploying_run()
    for _ in range(9):
        await world.minute(*EQUAL)
        assert (await world.run(run_id)).phase is Phase.DEPLOYING
    for _ in range(3):
        await world.minute(*EQUAL)
    run = await world.run(run_id)
    assert run.phase is Phase.ROLLED_BACK
    history = await world.store.history(run_id)
    assert "canary not ready after 10m" in history[-2].cause


async def test_restart_mid_analysis_resumes_at_the_same_step_with_the_same_baseline(world, tmp_path):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    for _ in range(3):
        await world.minute(*EQUAL)
    before = await world.run(run_id)
    await world.stop()
    world.source.serve(*EQUAL)  # traffic while the controller was down still counts
    await world.start()
    await world.minute(*EQUAL)
    after = await world.run(run_id)
    assert after.canary.step == before.canary.step
    assert after.canary.step_started_at == before.canary.step_started_at
    assert after.canary.totals["canary"]["trials"] == before.canary.totals["canary"]["trials"] + 2000


async def test_counter_reset_mid_step_is_counted_from_zero(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    world.source.serve(*EQUAL)
    await world.minute(*EQUAL)  # canary p0 at 100 hits / 2000 trials
    # the canary pod restarts: its counters start again from 0, then serve a minute
    world.source.values[("hits_total", "canary", "p0")] = 0
    world.source.values[("trials_total", "canary", "p0")] = 0
    await world.minute(*EQUAL)
    run = await world.run(run_id)
    assert run.canary.totals["canary"] == {"hits": 150, "trials": 3000}
    assert run.canary.resets == 2


async def test_transient_kubernetes_errors_retry_permanent_ones_roll_back(world):
    run_id = await world.deploying_run()
    world.rollout.errors = [RolloutError("503 Service Unavailable"),
                            RolloutError("403 Forbidden: cannot patch deployments", permanent=True)]  # fmt: skip
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.DEPLOYING  # transient: tried again next tick
    await world.service.reconciler.tick()
    history = await world.store.history(run_id)
    assert history[-1].to_phase is Phase.ROLLING_BACK
    assert history[-1].cause == "Kubernetes refused: 403 Forbidden: cannot patch deployments"


async def test_operator_pause_resume_abort_promote(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    await world.service.operations.act_on_run(run_id, "pause", "sre")
    for _ in range(300):  # far past the analyzing deadline: a paused canary waits
        world.clock.advance(minutes=1)
        await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.ANALYZING and run.pause is not None
    assert run.canary.looks == 0
    await world.service.operations.act_on_run(run_id, "resume", "sre")
    run = await world.run(run_id)
    assert run.deadline_at > world.clock.now()  # the pause did not count against the deadline
    await world.service.operations.act_on_run(run_id, "promote", "sre")
    assert (await world.run(run_id)).phase is Phase.PROMOTING
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.SUCCEEDED and world.rollout.stable.image == IMAGE
    assert "promoted by sre" in (await world.store.history(run_id))[-2].cause


async def test_operator_abort_rolls_a_canary_back(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    result = await world.service.operations.act_on_run(run_id, "abort", "sre")
    assert result["phase"] == "rolling_back"
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.ROLLED_BACK and world.rollout.canary.replicas == 0


async def test_a_requests_counter_makes_the_judge_allow_for_correlated_slots(tmp_path):
    w = CanaryWorld(tmp_path, spec(units='units_total{model="recsys"}', judge=JudgeConfig(min_trials=1000)))
    for track in ("stable", "canary"):
        w.source.add("units_total", track, 0)
    await w.start()
    try:
        run_id = await w.deploying_run()
        await w.service.reconciler.tick()
        for _ in range(3):
            w.source.add("units_total", "stable", 900)  # 10 slots per request
            w.source.add("units_total", "canary", 100)
            await w.minute(*EQUAL)
        run = await w.run(run_id)
        assert run.canary.totals["canary"] == {"hits": 150, "trials": 3000, "units": 300}
        assert run.verdict.outcome.value in ("inconclusive", "pass")
        assert (await w.looks(run_id))[-1].canary["units"] == 300
    finally:
        await w.stop()


async def test_the_first_look_of_a_step_waits_one_interval_after_its_baseline(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()  # ready: baseline taken, analyzing
    await world.service.reconciler.tick()  # same moment: nothing scraped since the baseline, so no look yet
    assert not (await world.looks(run_id))
    world.clock.advance(seconds=59)
    await world.service.reconciler.tick()
    assert not (await world.looks(run_id))
    await world.minute(*EQUAL)
    looks = [look.to_json() for look in (await world.looks(run_id))]
    assert len(looks) == 1 and looks[0]["verdict"] != "no_data"


async def test_before_any_run_the_stable_image_comes_from_the_cluster_cached_and_unknown_on_errors(world):
    [recsys] = [m for m in await world.service.views.models_status() if m["name"] == "recsys"]
    assert recsys["stable_image"] == OLD  # no run yet: what the rollout reports
    world.rollout.stable.image = IMAGE
    [recsys] = [m for m in await world.service.views.models_status() if m["name"] == "recsys"]
    assert recsys["stable_image"] == OLD  # cached: a page refresh is not a cluster call per model
    world.clock.advance(seconds=31)
    [recsys] = [m for m in await world.service.views.models_status() if m["name"] == "recsys"]
    assert recsys["stable_image"] == IMAGE
    world.clock.advance(seconds=31)
    world.rollout.errors.append(RolloutError("apiserver: 503"))
    [recsys] = [m for m in await world.service.views.models_status() if m["name"] == "recsys"]
    assert recsys["stable_image"] is None  # the page says "unknown" rather than guess
    others = [m for m in await world.service.views.models_status() if m["name"] != "recsys"]
    assert others and all(m["stable_image"] is None for m in others)  # no rollout for them


async def test_a_pod_missed_by_one_scrape_at_the_baseline_does_not_add_its_lifetime_to_the_step(world):
    # A stable pod that has served for days at a higher precision than today's; its scrape fails just as the
    # canary becomes ready. Counted from 0, its 2M lifetime slots would swamp the step and roll back a fine canary.
    world.source.add("hits_total", "stable", 140_000, pod="p9")
    world.source.add("trials_total", "stable", 2_000_000, pod="p9")
    run_id = await world.deploying_run()
    world.source.stale.add("p9")
    await world.service.reconciler.tick()  # canary ready: the baseline is read now
    assert (await world.run(run_id)).phase is Phase.ANALYZING
    world.source.stale.clear()
    phases = await world.until_end(run_id, *EQUAL)
    assert phases[-1] is Phase.SUCCEEDED, (await world.looks(run_id))[-1:]
    for q in world.source.queries:
        if q.startswith(("hits_total", "trials_total")):
            assert q.endswith("[5m]")  # counters are read as range selectors


async def test_the_wait_for_a_baseline_is_bounded_by_the_ready_timeout(world):
    run_id = await world.deploying_run()
    world.source.down = True  # the canary is ready, but Prometheus cannot give a baseline
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.DEPLOYING
    world.clock.advance(minutes=9)
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.DEPLOYING
    world.clock.advance(minutes=1, seconds=1)
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.ROLLING_BACK
    assert "no counters for a baseline after 10m" in run.cause and "unreachable" in run.cause


async def test_a_paused_deploying_canary_holds_and_the_pause_does_not_count_against_its_ready_timeout(world):
    world.rollout.auto_ready = False
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    assert world.rollout.canary.replicas == 1
    world.clock.advance(minutes=5)
    await world.service.operations.act_on_run(run_id, "pause", "oncall")
    world.clock.advance(minutes=30)
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.DEPLOYING  # no ready timeout while paused
    await world.service.operations.act_on_run(run_id, "resume", "oncall")
    world.clock.advance(minutes=4)  # 5 + 4 minutes of waiting, under the 10-minute ready timeout
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.DEPLOYING
    world.rollout.make_ready()
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.ANALYZING


async def test_a_canary_that_loses_its_pods_while_judged_is_rolled_back_and_one_bad_moment_is_not(world):
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    await world.minute(*EQUAL)
    world.rollout.canary.ready = 0  # crashlooping: its series go stale, the tallies would freeze
    await world.minute(*EQUAL)
    world.rollout.canary.ready = 1  # back after one look
    run = await world.run(run_id)
    assert run.phase is Phase.ANALYZING
    assert (await world.looks(run_id))[-1].verdict.reason == "canary unhealthy: 0/1 pod(s) ready"
    world.rollout.canary.ready = 0
    phases = await world.until_end(run_id, *EQUAL)
    assert phases[-1] is Phase.ROLLED_BACK
    assert (await world.run(run_id)).verdict.reason == "canary unhealthy: 0/1 pod(s) ready"


async def promoting_run(world) -> str:
    world.rollout.auto_ready = False
    run_id = await world.deploying_run()
    await world.service.reconciler.tick()
    world.rollout.make_ready()
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.ANALYZING
    await world.service.operations.act_on_run(run_id, "promote", "sre")
    return run_id


async def test_promotion_scales_the_canary_down_only_once_stable_is_ready_on_the_image(world):
    run_id = await promoting_run(world)
    await world.service.reconciler.tick()
    assert world.rollout.stable.image == IMAGE and world.rollout.canary.replicas == 1  # canary still serving
    world.clock.advance(minutes=2)
    await world.service.reconciler.tick()
    assert (await world.run(run_id)).phase is Phase.PROMOTING and world.rollout.canary.replicas == 1
    world.rollout.make_ready()
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.SUCCEEDED and world.rollout.canary.replicas == 0
    assert {c for c in world.rollout.calls if c[0] == "promote"} == {("promote", IMAGE)}


async def test_a_stable_that_never_gets_ready_on_the_image_gets_its_old_image_back(world):
    run_id = await promoting_run(world)
    await world.service.reconciler.tick()
    world.clock.advance(minutes=10)  # canary.ready_timeout
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.ROLLING_BACK and run.restore_stable == OLD
    assert "stable not ready on" in run.cause and "0/10 ready" in run.cause
    await world.service.reconciler.tick()
    assert world.rollout.stable.image == OLD and world.rollout.canary.replicas == 0
    assert (await world.run(run_id)).phase is Phase.ROLLING_BACK  # until stable is ready on the old image again
    world.rollout.make_ready()
    await world.service.reconciler.tick()
    run = await world.run(run_id)
    assert run.phase is Phase.ROLLED_BACK and run.cause == f"canary scaled to 0; stable restored to {OLD}"


async def test_a_store_written_before_typed_state_resumes_its_run_mid_analysis(tmp_path):
    """tests/data/store-v4.db was written by the schema-4 code (one `extra` dict per run): a run at step 2 of
    this file's spec, judging since 10:06, paused and resumed once, with a stage and 4 looks."""
    import shutil
    from datetime import datetime, timezone

    from controller.core.state import CanaryStage, Stage

    w = CanaryWorld(tmp_path)
    w.settings.store.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parents[2] / "data" / "store-v4.db", w.settings.store.path)
    w.clock.t = datetime(2026, 11, 24, 10, 6, tzinfo=timezone.utc)
    w.rollout.canary.image, w.rollout.canary.replicas, w.rollout.canary.ready = IMAGE, 5, 5  # the cluster as left
    w.source.serve((1800, 36000), (200, 4000))  # the counters as last read
    await w.start()
    try:
        [run] = await w.store.list_runs(10)
        assert run.phase is Phase.ANALYZING and run.image == IMAGE and run.previous_image == OLD
        assert run.canary is not None and run.canary.step == 1 and run.canary.stage is CanaryStage.JUDGING
        assert run.canary.carried == pytest.approx(-1.0226) and run.canary.tallies["hits"]["canary"].last
        assert len(await w.looks(run.id)) == 4 and (await w.looks(run.id))[-1].verdict.outcome.value == "inconclusive"
        assert run.attempts.count == 1 and run.stages == (Stage("train", "success", ""),) and run.pause is None
        audit = await w.store.run_audit(run.id)
        assert [(a.action, a.by, a.reason) for a in audit] == [("pause", "sre", "looking at a dashboard"),
                                                              ("resume", "sre", "")]  # fmt: skip
        phases = await w.until_end(run.id, *EQUAL)
        assert phases == [Phase.ANALYZING, Phase.PROMOTING, Phase.SUCCEEDED]
        done = await w.run(run.id)
        assert (await w.looks(run.id))[4].step == 2 and (await w.looks(run.id))[4].canary["trials"] == 1000  # counted from the old baseline
        assert w.rollout.stable.image == IMAGE
    finally:
        await w.stop()

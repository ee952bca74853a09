"""The canary loop against real Prometheus scraping counters the test serves (the rollout is a fake: no cluster).

Traffic is fast (thousands of slots a second) so a sequential verdict arrives in seconds; the judge, the counter
tallies and the Prometheus adapter are the real ones.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from controller.adapters.clock import SystemClock
from controller.adapters.prometheus import PrometheusSource
from controller.adapters.sqlite import SqliteStore
from controller.bootstrap import Adapters, build_service
from controller.config import load_settings
from controller.core.alerts import Notification
from controller.core.callbacks import ImageEvent
from controller.core.canary import CanaryPlan, CanarySpec, GuardrailSpec, Step
from controller.core.judge import Direction, JudgeConfig
from controller.core.runs import Phase
from controller.observability import Metrics
from tests.conftest import SECRETS_ENV, write_config
from tests.fakes.rollout import FakeRollout
from tests.fakes.runner import ScriptedRunner
from tests.infra.stack_configs import prometheus_config
from tests.infra.exporter import CounterExporter
from tests.infra.procs import Service, prometheus_binary, start_prometheus
from tests.unit.payloads import am_alert, notification

IMAGE = "registry.example/recsys@sha256:" + "c" * 64
PRECISION = 0.05
STABLE_RATE, CANARY_RATE = 20000.0, 5000.0  # slots per second


@pytest.fixture(scope="module")
def exporter() -> Iterator[CounterExporter]:
    e = CounterExporter().start()
    yield e
    e.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: CounterExporter) -> Iterator[Service]:
    prometheus_binary()  # skip, or fail under REQUIRE_INTEGRATION=1, before starting anything
    service = start_prometheus(tmp_path_factory.mktemp("prometheus"), prometheus_config({"recsys": exporter.target}))
    try:
        yield service
    finally:
        service.stop()


class Traffic:
    """Adds slots served and clicked to each arm's counters, several times a second, until stopped."""

    def __init__(self, exporter: CounterExporter, model: str, canary_ratio: float, canary_rate: float = CANARY_RATE):
        self.exporter, self.model = exporter, model
        self.ratio, self.canary_rate = canary_ratio, canary_rate
        for track in ("stable", "canary"):
            for name in ("recsys_slot_hits_total", "recsys_slots_served_total"):
                exporter.set(name, self.labels(track), 0)

    def labels(self, track: str) -> dict[str, str]:
        return {"model": self.model, "track": track, "pod": f"{self.model}-{track}-0"}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for track, rate, p in (("stable", STABLE_RATE, PRECISION), ("canary", self.canary_rate, PRECISION * self.ratio)):
                self.exporter.add("recsys_slots_served_total", self.labels(track), rate * 0.2)
                self.exporter.add("recsys_slot_hits_total", self.labels(track), rate * 0.2 * p)


def spec(model: str) -> CanarySpec:
    return CanarySpec(
        plan=CanaryPlan(steps=(Step(10, timedelta(seconds=2)), Step(50, timedelta(seconds=3))), total_replicas=10,
                        interval=timedelta(seconds=1), max_bad_looks=3, min_step_trials=1000),
        judge=JudgeConfig(min_trials=1000, overdispersion=1.0),
        hits=f'recsys_slot_hits_total{{model="{model}"}}',
        trials=f'recsys_slots_served_total{{model="{model}"}}',
        track_label="track",
        ready_timeout=timedelta(seconds=30),
        guardrails=(GuardrailSpec("up", 'up{job="recsys"}', 1, Direction.MIN),),
    )  # fmt: skip


class Loop:
    def __init__(self, tmp_path: Path, url: str, model: str, analyzing: timedelta = timedelta(minutes=5)):
        self.settings = load_settings(write_config(tmp_path), SECRETS_ENV)
        self.rollout = FakeRollout()
        self.source = PrometheusSource(url, 2.0)
        self.store = SqliteStore(self.settings.store.path)
        deadlines = {**self.settings.policy.deadlines, Phase.ANALYZING: analyzing}
        settings = self.settings.model_copy(
            update={"policy": self.settings.policy.model_copy(update={"deadlines": deadlines})})
        self.service = build_service(
            settings, Adapters(store=self.store, runners={"recsys": ScriptedRunner()}, clock=SystemClock(),
                               rollouts={"recsys": self.rollout}, metrics_source=self.source),
            Metrics(), specs={"recsys": spec(model)},
        )  # fmt: skip

    async def deploying_run(self) -> str:
        await self.store.open()
        [d] = await self.service.intake.handle_notification(Notification.model_validate(notification(am_alert())), "{}")
        await self.service.reconciler.tick()
        await self.service.pipelines.handle_event(d.run_id, ImageEvent(event="image", image=IMAGE))
        return str(d.run_id)

    async def until(self, run_id: str, done: set[Phase], seconds: float) -> list[Phase]:
        seen: list[Phase] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await self.service.reconciler.tick()
            run = await self.store.get_run(run_id)
            assert run is not None
            if not seen or seen[-1] is not run.phase:
                seen.append(run.phase)
            if run.phase in done:
                return seen
            await asyncio.sleep(0.25)
        raise AssertionError(f"no {done} within {seconds}s; phases {seen}")

    async def run_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await self.service.reconciler.tick()
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        await self.source.aclose()
        await self.store.close()


@pytest.fixture
async def loops(tmp_path: Path) -> AsyncIterator[list[Loop]]:
    made: list[Loop] = []
    yield made
    for loop in made:
        await loop.close()


async def scenario(exporter, prometheus, tmp_path, loops, model, ratio, canary_rate=CANARY_RATE, **kw):
    traffic = Traffic(exporter, model, ratio, canary_rate)
    exporter.settle()
    task = asyncio.create_task(traffic.run())
    loop = Loop(tmp_path, prometheus.url, model, **kw)
    loops.append(loop)
    run_id = await loop.deploying_run()
    return loop, run_id, task


async def test_a_good_canary_is_promoted(exporter, prometheus, tmp_path, loops) -> None:
    loop, run_id, task = await scenario(exporter, prometheus, tmp_path, loops, "good", 1.0)
    try:
        phases = await loop.until(run_id, {Phase.SUCCEEDED, Phase.ROLLED_BACK}, 90)
    finally:
        task.cancel()
    assert phases[-1] is Phase.SUCCEEDED, phases
    run = await loop.store.get_run(run_id)
    verdicts = [look.verdict.outcome.value for look in await loop.store.run_looks(run_id)]
    assert verdicts[-1] == "pass" and "fail" not in verdicts
    assert {look.step for look in await loop.store.run_looks(run_id)} == {1, 2}
    assert loop.rollout.stable.image == IMAGE


async def test_a_canary_ten_percent_worse_is_rolled_back(exporter, prometheus, tmp_path, loops) -> None:
    loop, run_id, task = await scenario(exporter, prometheus, tmp_path, loops, "worse", 0.9)
    try:
        phases = await loop.until(run_id, {Phase.SUCCEEDED, Phase.ROLLED_BACK}, 90)
    finally:
        task.cancel()
    assert phases[-1] is Phase.ROLLED_BACK, phases
    run = await loop.store.get_run(run_id)
    assert (await loop.store.run_looks(run_id))[-1].verdict.outcome.value == "fail"
    assert loop.rollout.stable.image != IMAGE and loop.rollout.canary.replicas == 0


async def test_a_canary_without_traffic_is_never_promoted(exporter, prometheus, tmp_path, loops) -> None:
    loop, run_id, task = await scenario(exporter, prometheus, tmp_path, loops, "idle", 1.0, canary_rate=0.0,
                                        analyzing=timedelta(seconds=15))  # fmt: skip
    try:
        phases = await loop.until(run_id, {Phase.SUCCEEDED, Phase.ROLLED_BACK}, 60)
    finally:
        task.cancel()
    assert Phase.PROMOTING not in phases and phases[-1] is Phase.ROLLED_BACK, phases
    run = await loop.store.get_run(run_id)
    assert {look.verdict.outcome.value for look in await loop.store.run_looks(run_id)} <= {"no_data", "inconclusive"}


async def test_prometheus_stopped_mid_analysis_is_error_and_ends_as_configured(exporter, tmp_path, loops) -> None:
    prometheus_binary()
    own = start_prometheus(tmp_path / "prometheus", prometheus_config({"recsys": exporter.target}))
    try:
        # a slow canary, so the analysis is still going when Prometheus stops
        loop, run_id, task = await scenario(exporter, own, tmp_path, loops, "outage", 1.0, canary_rate=50.0)
        try:
            await loop.until(run_id, {Phase.ANALYZING}, 30)
            await loop.run_for(3)
            assert (await loop.store.get_run(run_id)).phase is Phase.ANALYZING
            own.stop()
            phases = await loop.until(run_id, {Phase.SUCCEEDED, Phase.ROLLED_BACK}, 30)
        finally:
            task.cancel()
    finally:
        own.stop()
    assert phases[-1] is Phase.ROLLED_BACK and Phase.PROMOTING not in phases
    run = await loop.store.get_run(run_id)
    last = [look.verdict.outcome.value for look in await loop.store.run_looks(run_id)][-4:]
    assert last == ["error"] * 4, last  # max_bad_looks 3: the fourth error in a row rolls back
    history = await loop.store.history(run_id)
    assert "without usable data" in history[-2].cause and "unreachable" in history[-2].cause

"""PrometheusSource and the counter arithmetic against a real Prometheus scraping a CounterExporter every second.

One Prometheus and one exporter serve the module (each test empties the exporter first); every wait is bounded
(CounterExporter.settle: two scrapes, at most 10 s) and every Prometheus is stopped at teardown.
Run with -s to see the exact increase next to Prometheus's extrapolated `increase()`.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from controller.adapters.prometheus import PrometheusSource
from controller.core.counters import Tally, advance, reading, series_key, start
from controller.ports import QueryResult, Sample
from tests.infra.stack_configs import prometheus_config
from tests.infra.exporter import HITS, SERVED, CounterExporter
from tests.infra.procs import Service, prometheus_binary, start_prometheus

SETTLE_S = 10.0


def pod(track: str, name: str) -> dict[str, str]:
    return {"model": "recsys", "track": track, "pod": name}


@pytest.fixture(scope="module")
def shared_exporter() -> Iterator[CounterExporter]:
    exporter = CounterExporter().start()
    yield exporter
    exporter.close()


@pytest.fixture(scope="module")
def shared_prometheus(tmp_path_factory: pytest.TempPathFactory, shared_exporter: CounterExporter) -> Iterator[Service]:
    """One Prometheus for the module: it first scrapes a new target only after its ~5 s discovery delay."""
    prometheus_binary()  # skip (or fail under REQUIRE_INTEGRATION=1) before starting anything
    service = start_prometheus(tmp_path_factory.mktemp("prometheus"), prometheus_config({"recsys": shared_exporter.target}))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def counters(shared_exporter: CounterExporter, shared_prometheus: Service) -> CounterExporter:
    """The exporter, emptied: whatever an earlier test served goes stale at the next scrape."""
    shared_exporter.clear()
    return shared_exporter


@pytest.fixture
async def source(shared_prometheus: Service) -> AsyncIterator[PrometheusSource]:
    s = PrometheusSource(shared_prometheus.url, timeout_s=5)
    yield s
    await s.aclose()


async def settle(exporter: CounterExporter) -> None:
    """Until Prometheus has stored what the exporter serves now (bounded)."""
    await asyncio.to_thread(exporter.settle, SETTLE_S)


def by(result: QueryResult, label: str) -> dict[str, float]:
    assert result.outcome == "value", result
    out = {s.labels[label]: s.value for s in result.samples}
    assert len(out) == len(result.samples), result
    return out


async def test_sum_by_track_equals_what_the_exporter_serves(source: PrometheusSource, counters: CounterExporter) -> None:
    counters.set_many(SERVED, [(pod("stable", "s-1"), 1000), (pod("stable", "s-2"), 524), (pod("canary", "c-1"), 121)])
    counters.set_many(HITS, [(pod("stable", "s-1"), 80), (pod("stable", "s-2"), 41), (pod("canary", "c-1"), 9)])
    await settle(counters)

    q = 'sum by (track) (recsys_slots_served_total{model="recsys"})'
    assert by(await source.query(q), "track") == {"stable": 1524.0, "canary": 121.0}
    hits = await source.query('sum by (track) (recsys_slot_hits_total{model="recsys"})')
    assert by(hits, "track") == {"stable": 121.0, "canary": 9.0}

    # raw series: one sample per pod, all labels, the metric name and the scrape's job/instance included
    raw = await source.query('recsys_slots_served_total{model="recsys"}')
    assert raw.outcome == "value"
    assert {s.labels["pod"]: s.value for s in raw.samples} == {"s-1": 1000.0, "s-2": 524.0, "c-1": 121.0}
    for s in raw.samples:
        assert s.labels["__name__"] == SERVED and s.labels["model"] == "recsys"
        assert s.labels["job"] == "recsys" and s.labels["instance"] == counters.target

    # the values follow the exporter
    counters.add(SERVED, pod("canary", "c-1"), 30)
    counters.add(SERVED, pod("stable", "s-2"), 6)
    await settle(counters)
    assert by(await source.query(q), "track") == {"stable": 1530.0, "canary": 151.0}

    # a scalar comes back as one sample without labels
    total = await source.query('scalar(sum(recsys_slots_served_total{model="recsys"}))')
    assert total.outcome == "value" and len(total.samples) == 1
    assert dict(total.samples[0].labels) == {} and total.samples[0].value == 1681.0


async def test_a_metric_that_does_not_exist_is_no_data(source: PrometheusSource, counters: CounterExporter) -> None:
    counters.set(SERVED, pod("canary", "c-1"), 5)
    await settle(counters)
    assert await source.query('recsys_slots_served_total{model="recsys"}') != QueryResult("no_data")
    assert await source.query('sum by (track) (recsys_no_such_metric_total{model="recsys"})') == QueryResult("no_data")
    assert await source.query('recsys_slots_served_total{model="no-such-model"}') == QueryResult("no_data")
    # a division by zero is NaN in Prometheus: no data, not a value
    assert await source.query('sum(recsys_slots_served_total{model="recsys"}) * 0 / 0') == QueryResult("no_data")


async def test_a_bad_query_is_an_error_with_prometheus_message(source: PrometheusSource) -> None:
    r = await source.query('sum by (track) (recsys_slots_served_total{model="recsys"}')
    assert r.outcome == "error" and r.samples == ()
    assert r.error.startswith("HTTP 400 bad_data: ")
    assert "parse error" in r.error
    print(f"\nbad query -> {r.error}")

    r = await source.query('label_replace(vector(1), "a", "$1", "b", "(")')
    assert r.outcome == "error" and r.error.startswith("HTTP 422 execution: ")
    assert "invalid regular expression" in r.error


async def test_stopped_prometheus_is_an_error_not_no_data(tmp_path: Path) -> None:
    prometheus_binary()
    prometheus = start_prometheus(tmp_path / "prometheus", prometheus_config({"recsys": "127.0.0.1:1"}))  # a Prometheus of its own
    source = PrometheusSource(prometheus.url, timeout_s=5)
    try:
        assert await source.query("vector(1)") == QueryResult("value", (Sample({}, 1.0),))
        assert await source.query('recsys_slots_served_total{model="recsys"}') == QueryResult("no_data")
        prometheus.stop()
        t0 = time.monotonic()
        r = await source.query('recsys_slots_served_total{model="recsys"}')
        assert r == QueryResult("error", error=f"unreachable: {prometheus.url}: connection refused")
        assert time.monotonic() - t0 < 5
    finally:
        await source.aclose()
        prometheus.stop()


async def test_a_failed_scrape_hides_a_series_from_an_instant_query_but_not_from_a_range_read(
    source: PrometheusSource, counters: CounterExporter
) -> None:
    """Why the canary reads counters as `selector[5m]`: after one failed scrape the instant query has no series."""
    counters.set(SERVED, pod("stable", "missed-1"), 1234)
    await settle(counters)
    selector = 'recsys_slots_served_total{model="recsys",pod="missed-1"}'
    assert by(await source.query(selector), "pod") == {"missed-1": 1234.0}
    counters.failing = True
    try:
        deadline = time.monotonic() + SETTLE_S
        while (instant := await source.query(selector)).outcome == "value":
            assert time.monotonic() < deadline, "the series never went stale"
            await asyncio.sleep(0.2)
        assert instant == QueryResult("no_data")
        ranged = await source.query(selector + "[5m]")
        assert by(ranged, "pod") == {"missed-1": 1234.0}
        assert ranged.samples[0].labels["__name__"] == SERVED
    finally:
        counters.failing = False


async def test_counter_reset_gives_the_true_increase(source: PrometheusSource, counters: CounterExporter) -> None:
    """Per-pod raw readings at each look, summed up by core.counters; compared with Prometheus's increase().

    Pod names of their own, so no series of an earlier test (now stale) falls into Prometheus's window.
    """
    steps: list[dict[tuple[str, str], float]] = [
        # baseline: one canary pod, two stable pods
        {("canary", "canary-a"): 100, ("stable", "stable-a"): 1000, ("stable", "stable-b"): 500},
        # steady growth: canary +50, stable +100 +30
        {("canary", "canary-a"): 150, ("stable", "stable-a"): 1100, ("stable", "stable-b"): 530},
        # canary-a restarted (its counter reset: 20 is its whole increase since), canary-b is a new pod (from 0: +7),
        # stable-b went away (nothing more from it), stable-a +100
        {("canary", "canary-a"): 20, ("canary", "canary-b"): 7, ("stable", "stable-a"): 1200},
        # growth again: canary +25 +5, stable +100
        {("canary", "canary-a"): 45, ("canary", "canary-b"): 12, ("stable", "stable-a"): 1300},
    ]
    expected = {"canary": 50 + 20 + 7 + 25 + 5, "stable": 100 + 30 + 100 + 100}

    tallies: dict[str, Tally] = {}
    t_baseline = 0.0
    for i, values in enumerate(steps):
        counters.clear()
        counters.set_many(SERVED, [(pod(track, name), v) for (track, name), v in values.items()])
        await settle(counters)
        for track in ("canary", "stable"):
            result = await source.query(f'recsys_slots_served_total{{model="recsys",track="{track}"}}')
            assert result.outcome == "value", result
            now = reading(result.samples)
            # what Prometheus returned is exactly what the exporter served (a pod gone is gone)
            assert {s.labels["pod"]: s.value for s in result.samples} == {
                name: v for (t, name), v in values.items() if t == track
            }
            tallies[track] = start(now) if i == 0 else advance(tallies[track], now)
            assert tallies[track].clean
        if i == 0:
            t_baseline = time.monotonic()

    ours = {track: t.total for track, t in tallies.items()}
    assert ours == expected
    assert tallies["canary"].resets == 1 and tallies["stable"].resets == 0
    c1 = series_key({"__name__": SERVED, "instance": counters.target, "job": "recsys", **pod("canary", "canary-a")})
    assert tallies["canary"].per_series[c1] == 50 + 20 + 25

    # Prometheus over (about) the same window: extrapolated, and blind to the new pod's first 7
    window = math.ceil(time.monotonic() - t_baseline) + 1
    theirs: dict[str, float] = {}
    for track in ("canary", "stable"):
        r = await source.query(f'sum(increase(recsys_slots_served_total{{model="recsys",track="{track}"}}[{window}s]))')
        theirs[track] = r.samples[0].value if r.outcome == "value" else math.nan
    print(
        f"\nslots served over the step ({window}s window):"
        f"\n  canary: exact {ours['canary']:g} (core.counters) vs Prometheus increase() {theirs['canary']:.3f}"
        f"\n  stable: exact {ours['stable']:g} (core.counters) vs Prometheus increase() {theirs['stable']:.3f}"
    )

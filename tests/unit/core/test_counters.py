"""Counter increases from raw readings: table tests of controller.core.counters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from controller.core.counters import Tally, advance, increase, reading, series_key, start
from controller.ports import Sample

NAN, INF = math.nan, math.inf


def key(pod: str, track: str = "canary") -> str:
    return series_key({"__name__": "recsys_slot_hits_total", "model": "recsys", "track": track, "pod": pod})


A, B, C = key("a"), key("b"), key("c")


@dataclass(frozen=True)
class Case:
    name: str
    readings: list[dict[str, float]]  # the first one is the baseline
    total: float
    per_series: dict[str, float]
    resets: int = 0
    flagged: tuple[str, ...] = ()


CASES = [
    Case("nothing after the baseline", [{A: 100}], 0, {}),
    Case("steady growth", [{A: 100, B: 10}, {A: 150, B: 30}, {A: 175, B: 31}], 96, {A: 75, B: 21}),
    Case("no change counts zero", [{A: 100}, {A: 100}, {A: 100}], 0, {A: 0}),
    Case("float counters", [{A: 0.5}, {A: 1.75}], 1.25, {A: 1.25}),
    # 100 -> 150 (+50), reset, 20 (+20: the new value), 45 (+25)
    Case("reset mid-step", [{A: 100}, {A: 150}, {A: 20}, {A: 45}], 95, {A: 95}, resets=1),
    Case("reset to zero", [{A: 100}, {A: 0}, {A: 7}], 7, {A: 7}, resets=1),
    Case("two resets", [{A: 100}, {A: 5}, {A: 3}, {A: 4}], 9, {A: 9}, resets=2),
    Case("reset seen before any growth", [{A: 100}, {A: 30}], 30, {A: 30}, resets=1),
    # b is a new pod: not in the baseline, so it started at 0 during the step and all of its 12 count
    Case("new pod counts from zero", [{A: 100}, {A: 110, B: 12}, {A: 120, B: 20}], 40, {A: 20, B: 20}),
    Case("new pod in the last reading", [{A: 100}, {A: 100, B: 3}], 3, {A: 0, B: 3}),
    # b was in the baseline: it does not count from 0, only its growth does
    Case("baseline pod is not new", [{A: 100, B: 50}, {A: 100, B: 55}], 5, {A: 0, B: 5}),
    # b goes away after +5: contributes nothing more, its earlier increase stays
    Case("pod gone", [{A: 100, B: 50}, {A: 110, B: 55}, {A: 120}, {A: 130}], 35, {A: 30, B: 5}),
    Case("all pods gone", [{A: 100}, {A: 110}, {}], 10, {A: 10}),
    # b missing from one reading, then back higher: continues from its last good value, not from 0
    Case("pod back after a gap", [{A: 1, B: 50}, {A: 1}, {A: 1, B: 60}], 10, {A: 0, B: 10}),
    # ... and back lower: a reset while it was away, its new value counts
    Case("pod back after a gap, reset", [{B: 50}, {}, {B: 4}], 4, {B: 4}, resets=1),
    Case("replacement pod", [{A: 100}, {A: 120}, {B: 9}, {B: 19}], 39, {A: 20, B: 19}),
    Case("empty baseline, pods start", [{}, {A: 5}, {A: 8, B: 2}], 10, {A: 8, B: 2}),
    # garbage is flagged in the reading where it appears, counts nothing, and the last good value is kept
    Case("NaN flagged", [{A: 100}, {A: NAN}], 0, {}, flagged=(A,)),
    Case("NaN then growth", [{A: 100}, {A: NAN}, {A: 130}], 30, {A: 30}),
    Case("negative flagged", [{A: 100}, {A: -5, B: 3}], 3, {B: 3}, flagged=(A,)),
    Case("infinity flagged", [{A: 100}, {A: INF}, {A: 101}], 1, {A: 1}),
    Case("garbage in the latest reading only", [{A: 100, B: 1}, {A: 110, B: NAN}], 10, {A: 10}, flagged=(B,)),
    # a series whose first sighting is garbage has no start: its first good value is the start, not 0
    Case("garbage baseline", [{A: NAN}, {A: 100}, {A: 104}], 4, {A: 4}),
    Case("garbage baseline flagged", [{A: NAN, B: 1}], 0, {}, flagged=(A,)),
    Case("new pod first seen as garbage", [{A: 1}, {A: 1, B: NAN}, {A: 1, B: 40}, {A: 1, B: 42}], 2, {A: 0, B: 2}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    tally = increase(case.readings)
    assert tally.total == pytest.approx(case.total)
    assert dict(tally.per_series) == pytest.approx(case.per_series)
    assert tally.resets == case.resets
    assert tally.flagged == case.flagged
    assert tally.clean == (not case.flagged)


def test_step_by_step_equals_the_whole() -> None:
    readings = [{A: 100, B: 1}, {A: 150, B: 2}, {A: 20, C: 4}, {A: 45, B: 5, C: 9}]
    tally = start(readings[0])
    seen = [tally.total]
    for r in readings[1:]:
        tally = advance(tally, r)
        seen.append(tally.total)
    assert seen == [0, 51, 75, 108]  # +50+1 / +20 (reset) +4 (new c) / +25 +3 (b back) +5
    assert tally == increase(readings)


def test_inputs_are_not_changed() -> None:
    base = {A: 100.0}
    tally = start(base)
    now = {A: 120.0, B: 3.0}
    after = advance(tally, now)
    assert base == {A: 100.0} and now == {A: 120.0, B: 3.0}
    assert tally.total == 0 and dict(tally.last) == {A: 100.0}
    assert after.total == 23


def test_round_trips_through_json() -> None:
    tally = increase([{A: 100, C: NAN}, {A: 20, B: 3, C: NAN}])
    again = Tally.from_dict(json.loads(json.dumps(tally.as_dict())))
    assert again == tally
    assert advance(again, {A: 25, C: 7}) == advance(tally, {A: 25, C: 7})


def test_series_key_is_stable_and_unambiguous() -> None:
    assert series_key({"b": "2", "a": "1"}) == series_key({"a": "1", "b": "2"}) == '{a="1",b="2"}'
    assert series_key({}) == "{}"
    # values that contain separators cannot collide with other label sets
    assert series_key({"a": '1",b="2'}) != series_key({"a": "1", "b": "2"})
    assert series_key({"a": "x,b=y"}) != series_key({"a": "x", "b": "y"})
    # __name__ takes part: two metrics with the same labels are two series
    assert series_key({"__name__": "hits", "pod": "a"}) != series_key({"__name__": "served", "pod": "a"})


def test_reading_from_samples() -> None:
    samples = [Sample({"pod": "a", "track": "canary"}, 3.0), Sample({"pod": "b", "track": "canary"}, NAN)]
    r = reading(samples)
    assert r[series_key({"track": "canary", "pod": "a"})] == 3.0
    assert math.isnan(r[series_key({"pod": "b", "track": "canary"})])
    with pytest.raises(ValueError, match="two samples"):
        reading([Sample({"pod": "a"}, 1.0), Sample({"pod": "a"}, 2.0)])

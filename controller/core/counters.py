"""Exact counter increases from raw readings, with resets handled the way Prometheus handles them.

Prometheus `increase(c[w])` extrapolates the first and last samples in the window to its edges, so over a short
canary step it is neither a whole number nor the traffic that really happened. The controller instead reads the
raw counters of every series (one per pod: query `recsys_slot_hits_total{model="recsys",track="canary"}`, never a
`sum`, which hides a single pod's reset) at the start of a step and at each look, and adds up the increases here.

Per series, between consecutive readings:
  - value went up (or stayed): the increase is the difference;
  - value went DOWN: the counter was reset (the process restarted), so the increase is the new value itself, as in
    Prometheus's `increase()`/`resets()`; what happened between the last reading and the reset is lost;
  - first seen after the baseline: a new pod whose counter started at 0 during the step, so its whole value
    counts. ASSUMPTION: a series absent from the baseline started after it. A series that existed but was missed
    by the baseline would be over-counted by its value at the start, so readings come from range selectors
    (rollouts.COUNTER_WINDOW), which keep a pod whose last scrape failed;
  - absent from a reading: a pod that went away contributes nothing more (its earlier increase stays counted). If
    it comes back it continues from its last good value (with the reset rule), not from 0;
  - garbage (NaN, infinite or negative): the series is flagged in this reading and contributes nothing; its last
    good value is kept. A series whose first sighting is garbage has no starting point: its first good value
    becomes the starting point (it counts from there, not from 0).

Everything is pure and immutable: a `Tally` goes in with a reading, a new `Tally` comes out. `Tally.as_dict()` /
`Tally.from_dict()` give a JSON-safe form, so a step survives a restart of the controller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

Reading = Mapping[str, float]
"""Raw counter value per series, keyed by `series_key(labels)`."""


def series_key(labels: Mapping[str, str]) -> str:
    """A stable, unambiguous key for a label set: `{a="1",b="x"}` with labels sorted, values JSON-quoted.

    Every label takes part, `__name__` included, so two metrics never share a key.
    """
    return "{" + ",".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(labels.items())) + "}"


class LabelledValue(Protocol):
    """What a query result sample looks like (`controller.ports.Sample` fits)."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...


def reading(samples: Iterable[LabelledValue]) -> dict[str, float]:
    """A Reading from query samples. Two samples with one label set make no sense for a counter: ValueError."""
    out: dict[str, float] = {}
    for s in samples:
        key = series_key(s.labels)
        if key in out:
            raise ValueError(f"two samples for series {key}")
        out[key] = float(s.value)
    return out


def is_garbage(value: float) -> bool:
    """Not a counter value: NaN, infinite or negative."""
    return math.isnan(value) or math.isinf(value) or value < 0


@dataclass(frozen=True)
class Tally:
    """The accumulated increase of one counter (one arm: e.g. canary hits) since the step's baseline."""

    last: Mapping[str, float] = field(default_factory=dict)  # last good raw value of every series seen
    total: float = 0.0  # sum of per_series: what the judge consumes
    per_series: Mapping[str, float] = field(default_factory=dict)  # increase of each series since the baseline
    resets: int = 0  # counter resets seen since the baseline
    unknown: frozenset[str] = frozenset()  # seen, but only ever with garbage: no starting point yet
    flagged: tuple[str, ...] = ()  # series with a garbage value in the LATEST reading

    @property
    def clean(self) -> bool:
        """The latest reading had no garbage values."""
        return not self.flagged

    def as_dict(self) -> dict[str, Any]:
        return {
            "last": dict(self.last),
            "total": self.total,
            "per_series": dict(self.per_series),
            "resets": self.resets,
            "unknown": sorted(self.unknown),
            "flagged": list(self.flagged),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Tally":
        return cls(
            last={str(k): float(v) for k, v in data.get("last", {}).items()},
            total=float(data.get("total", 0.0)),
            per_series={str(k): float(v) for k, v in data.get("per_series", {}).items()},
            resets=int(data.get("resets", 0)),
            unknown=frozenset(str(k) for k in data.get("unknown", ())),
            flagged=tuple(str(k) for k in data.get("flagged", ())),
        )


def start(baseline: Reading) -> Tally:
    """The tally at the start of a step: nothing counted yet; garbage series are flagged and have no start."""
    last = {k: float(v) for k, v in baseline.items() if not is_garbage(v)}
    bad = tuple(sorted(k for k, v in baseline.items() if is_garbage(v)))
    return Tally(last=last, unknown=frozenset(bad), flagged=bad)


def advance(tally: Tally, now: Reading) -> Tally:
    """Add the increases between the previous readings (as summed up in `tally`) and `now`."""
    last = dict(tally.last)
    per_series = dict(tally.per_series)
    unknown = set(tally.unknown)
    flagged: list[str] = []
    resets = tally.resets
    for key, raw in now.items():
        value = float(raw)
        if is_garbage(value):
            flagged.append(key)
            if key not in last:
                unknown.add(key)
            continue
        if key in last:
            before = last[key]
            if value >= before:
                inc = value - before
            else:
                inc, resets = value, resets + 1
        elif key in unknown:
            inc = 0.0  # first good value of a series that had none: it is the starting point
            unknown.discard(key)
        else:
            inc = value  # a new series (a new pod): its counter started at 0 after the baseline
        last[key] = value
        per_series[key] = per_series.get(key, 0.0) + inc
    return Tally(
        last=last,
        total=math.fsum(per_series.values()),
        per_series=per_series,
        resets=resets,
        unknown=frozenset(unknown),
        flagged=tuple(sorted(flagged)),
    )


def increase(readings: Iterable[Reading]) -> Tally:
    """The tally over a sequence of readings, the first one being the baseline."""
    it = iter(readings)
    try:
        tally = start(next(it))
    except StopIteration:
        return Tally()
    for r in it:
        tally = advance(tally, r)
    return tally

"""A Rollout with no cluster behind it, and a MetricsSource whose counters the test sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.core.counters import series_key
from controller.ports import DeploymentStatus, QueryResult, RolloutError, RolloutStatus, Sample


@dataclass
class _Deployment:
    image: str | None
    replicas: int
    ready: int = 0
    settled: bool = True


@dataclass
class FakeRollout:
    """Spec changes apply at once; pods become ready at once when `auto_ready`, else on `make_ready()`."""

    stable: _Deployment = field(default_factory=lambda: _Deployment("registry.example/recsys@sha256:" + "a" * 64, 10, 10))
    canary: _Deployment = field(default_factory=lambda: _Deployment(None, 0, 0))
    auto_ready: bool = True
    errors: list[RolloutError] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)

    def _fail(self) -> None:
        if self.errors:
            raise self.errors.pop(0)

    def _set(self, d: _Deployment, image: str | None, replicas: int) -> None:
        if d.image == image and d.replicas == replicas:
            return  # idempotent: nothing changes
        d.image, d.replicas = image, replicas
        d.ready, d.settled = (replicas, True) if self.auto_ready else (0, replicas == 0)

    def make_ready(self) -> None:
        for d in (self.stable, self.canary):
            d.ready, d.settled = d.replicas, True

    async def status(self) -> RolloutStatus:
        self._fail()
        return RolloutStatus(*(DeploymentStatus(d.image, d.replicas, d.ready, d.ready, d.settled)
                               for d in (self.stable, self.canary)))  # fmt: skip

    async def set_canary(self, image: str, replicas: int) -> None:
        self._fail()
        self.calls.append(("set_canary", (image, replicas)))
        self._set(self.canary, image, replicas)

    async def promote(self, image: str) -> None:
        self._fail()
        self.calls.append(("promote", image))
        self._set(self.stable, image, self.stable.replicas)


class CounterSource:
    """Prometheus stand-in: raw counters per (metric, track, pod), set by the test; queries by metric name."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], float] = {}
        self.scalars: dict[str, float | None] = {}
        self.down = False
        self.stale: set[str] = set()  # pods whose last scrape failed: left out of instant queries, as in Prometheus
        self.queries: list[str] = []

    def add(self, metric: str, track: str, amount: float, pod: str = "p0") -> None:
        key = (metric, track, pod)
        self.values[key] = self.values.get(key, 0.0) + amount

    def serve(self, stable: tuple[float, float], canary: tuple[float, float]) -> None:
        """Add (hits, trials) to each arm."""
        for track, (hits, trials) in (("stable", stable), ("canary", canary)):
            self.add("hits_total", track, hits)
            self.add("trials_total", track, trials)

    async def query(self, promql: str) -> QueryResult:
        self.queries.append(promql)
        if self.down:
            return QueryResult("error", error="unreachable: connection refused")
        if promql in self.scalars:
            v = self.scalars[promql]
            return QueryResult("no_data") if v is None else QueryResult("value", (Sample({}, v),))
        name = promql.split("{")[0]
        ranged = promql.endswith("]")  # a range selector still has a stale pod's last sample
        samples = tuple(
            Sample({"__name__": m, "track": t, "pod": p}, v)
            for (m, t, p), v in self.values.items()
            if m == name and (ranged or p not in self.stale)
        )
        return QueryResult("value", samples) if samples else QueryResult("no_data")


__all__ = ["CounterSource", "FakeRollout", "series_key"]

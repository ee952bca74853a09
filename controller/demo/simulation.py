"""One simulated recommender system: the world, its model service, the data directory the training script
reads, and the model registry the rollout deploys from. `bootstrap()` trains the first stable model; each
`tick()` is one simulated day: clicks go to the data directory and the feedback stream, requests are served, and
the world drifts on.
"""

from __future__ import annotations

from pathlib import Path

from controller.demo.model import Model, train
from controller.demo.rollout import LocalRollout, ModelRegistry
from controller.demo.service import ModelService, TrackCounts
from controller.demo.world import Interactions, World, write_day


class Simulation:
    def __init__(
        self,
        data_dir: str | Path,
        models_dir: str | Path,
        seed: int = 0,
        clicks_per_day: int = 3000,
        requests_per_day: int = 2000,
        stable_replicas: int = 10,
        world: World | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.world = world or World(seed=seed)
        self.service = ModelService(self.world, seed=seed)
        self.registry = ModelRegistry(models_dir)
        self.rollout = LocalRollout(self.service, self.registry, stable_replicas=stable_replicas)
        self.clicks_per_day = clicks_per_day
        self.requests_per_day = requests_per_day
        self.seed = seed

    def bootstrap(self, days: int = 7) -> Model:
        """`days` of history on disk, a first model trained on it and running as stable."""
        parts = [self.record_day() for _ in range(days)]
        model = train(Interactions.concat(parts), self.world.n_users, self.world.n_items, seed=self.seed,
                      item_category=self.world.item_category)  # fmt: skip
        self.rollout.start(self.registry.push(model))
        return model

    def tick(self, days: int = 1, requests: int | None = None) -> dict[str, TrackCounts]:
        """Simulate `days` days; returns the traffic each track served over them."""
        served: dict[str, TrackCounts] = {}
        for _ in range(days):
            self.record_day()
            for track, c in self.service.serve(self.requests_per_day if requests is None else requests).items():
                total = served.setdefault(track, TrackCounts())
                for f in ("requests", "slots", "hits", "requests_with_hit", "errors"):
                    setattr(total, f, getattr(total, f) + getattr(c, f))
        return served

    def record_day(self) -> Interactions:
        """One simulated day of feedback: clicks to the data directory and the event stream; the world drifts."""
        clicks = self.world.sample_interactions(self.clicks_per_day)
        write_day(self.data_dir, self.world, clicks)
        self.service.ingest(clicks)
        self.world.step()
        return clicks

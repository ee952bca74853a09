"""A synthetic world of users and items with known ground truth, so a recommender can go stale and be fixed.

Users have a taste vector over C item categories; items have a category, a popularity and a birth day. Every
simulated day each user's taste moves a fraction `drift` of the way toward a target mix that jumps to a new one
every `regime_days`: a blend (weight `trend`) of a mix shared by everyone, so the overall category share moves
and shows as feature drift, and a personal random mix. New items arrive every day and older ones fade (their
appeal halves every `half_life_days`). A model trained on an old window therefore recommends the wrong
categories and faded items, and misses the new ones. One seeded generator drives it all: same seed, same world.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)
class Interactions:
    """Clicks: parallel arrays of user id, item id and simulated day."""

    users: np.ndarray
    items: np.ndarray
    days: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @staticmethod
    def concat(parts: list["Interactions"]) -> "Interactions":
        if not parts:
            return Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return Interactions(
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.items for p in parts]),
            np.concatenate([p.days for p in parts]),
        )

    def between(self, first_day: int, last_day: int) -> "Interactions":
        keep = (self.days >= first_day) & (self.days <= last_day)
        return Interactions(self.users[keep], self.items[keep], self.days[keep])


class World:
    def __init__(
        self,
        seed: int = 0,
        n_users: int = 300,
        n_categories: int = 8,
        n_items: int = 400,
        new_items_per_day: int = 12,
        drift: float = 0.25,
        regime_days: int = 7,
        half_life_days: float = 10.0,
        concentration: float = 0.3,
        trend: float = 0.5,
        click_scale: float = 0.08,
    ):
        self.rng = np.random.default_rng(seed)
        self.n_users = n_users
        self.n_categories = n_categories
        self.new_items_per_day = new_items_per_day
        self.drift = drift
        self.regime_days = regime_days
        self.half_life_days = half_life_days
        self.concentration = concentration
        self.trend = trend
        self.click_scale = click_scale
        self.day = 0
        self.tastes = self.rng.dirichlet([concentration] * n_categories, size=n_users)
        self._targets = self._new_targets()
        self.item_category = np.zeros(0, np.int64)
        self.item_popularity = np.zeros(0)
        self.item_birth = np.zeros(0, np.int64)
        # Items are born over the past weeks, so the catalogue starts with a spread of ages.
        ages = self.rng.integers(0, int(3 * half_life_days), size=n_items)
        self._add_items(n_items, births=-ages)

    # ---- ground truth ----------------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return int(self.item_category.shape[0])

    def freshness(self) -> np.ndarray:
        age = np.maximum(self.day - self.item_birth, 0)
        return np.power(0.5, age / self.half_life_days)

    def affinity(self, users: np.ndarray | int) -> np.ndarray:
        """How much each user likes each item now (rows: users, columns: every item ever born)."""
        u = np.atleast_1d(np.asarray(users))
        appeal = self.item_popularity * self.freshness()
        return self.tastes[u][:, self.item_category] * appeal[None, :]

    def category_share(self) -> np.ndarray:
        """The expected share of clicks per category today (all users equally active)."""
        aff = self.affinity(np.arange(self.n_users))
        pref = aff / aff.sum(axis=1, keepdims=True)
        share = np.zeros(self.n_categories)
        np.add.at(share, self.item_category, pref.sum(axis=0))
        return share / share.sum()

    def click_probabilities(self, user: int, items: np.ndarray | list[int]) -> np.ndarray:
        """The chance that `user` clicks each of `items` when shown: rises with the item's affinity relative to
        the average item's, saturating below 1. Unknown item ids get 0."""
        return self.click_probabilities_many(np.array([user]), np.asarray(items, dtype=np.int64)[None, :])[0]

    def click_probabilities_many(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Row r: the click chances of `users[r]` for the item ids in `items[r]`."""
        items = np.asarray(items, dtype=np.int64)
        aff = self.affinity(users)
        mean = aff.mean(axis=1, keepdims=True) if aff.shape[1] else np.ones((aff.shape[0], 1))
        known = (items >= 0) & (items < self.n_items)
        rel = np.take_along_axis(aff, np.where(known, items, 0), axis=1) / mean
        rel[~known] = 0.0
        return 1.0 - np.exp(-self.click_scale * rel)

    # ---- time and sampling -----------------------------------------------------------------------------------

    def step(self, days: int = 1) -> None:
        for _ in range(days):
            self.day += 1
            if self.day % self.regime_days == 0:
                self._targets = self._new_targets()
            self.tastes = (1 - self.drift) * self.tastes + self.drift * self._targets
            self._add_items(self.new_items_per_day, births=np.full(self.new_items_per_day, self.day))

    def sample_interactions(self, n: int) -> Interactions:
        """`n` clicks of today: a random user each, the item drawn from that user's true preferences."""
        users = self.rng.integers(0, self.n_users, size=n)
        appeal = self.item_popularity * self.freshness()
        items = np.empty(n, np.int64)
        order = np.argsort(users, kind="stable")
        sorted_users = users[order]
        bounds = np.searchsorted(sorted_users, np.arange(self.n_users + 1))
        for u in range(self.n_users):
            lo, hi = bounds[u], bounds[u + 1]
            if hi == lo:
                continue
            w = self.tastes[u][self.item_category] * appeal
            cdf = np.cumsum(w)
            picks = np.searchsorted(cdf, self.rng.random(hi - lo) * cdf[-1], side="right")
            items[order[lo:hi]] = np.minimum(picks, self.n_items - 1)
        return Interactions(users.astype(np.int64), items, np.full(n, self.day, np.int64))

    def _new_targets(self) -> np.ndarray:
        shared = self.rng.dirichlet([self.concentration] * self.n_categories)
        personal = self.rng.dirichlet([self.concentration] * self.n_categories, size=self.n_users)
        return self.trend * shared[None, :] + (1 - self.trend) * personal

    def _add_items(self, count: int, births: np.ndarray) -> None:
        cats = self.rng.integers(0, self.n_categories, size=count)
        pops = self.rng.lognormal(0.0, 1.0, size=count)
        self.item_category = np.concatenate([self.item_category, cats])
        self.item_popularity = np.concatenate([self.item_popularity, pops])
        self.item_birth = np.concatenate([self.item_birth, np.asarray(births, np.int64)])


# ---- the data directory the training script reads ----------------------------------------------------------
#
#   <data_dir>/catalog.npz     item_category (category id per item id), n_users: rewritten every day
#   <data_dir>/day-00012.npz   users, items, days: the clicks of simulated day 12


def write_day(data_dir: str | Path, world: World, clicks: Interactions) -> Path:
    """Record one day of clicks and the catalogue as it is now. Writes are atomic (temp file, rename)."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_npz(d / "catalog.npz", item_category=world.item_category, n_users=np.array(world.n_users))
    day = int(clicks.days.max()) if len(clicks) else world.day
    path = d / f"day-{day:05d}.npz"
    _atomic_npz(path, users=clicks.users, items=clicks.items, days=clicks.days)
    return path


def read_catalog(data_dir: str | Path) -> tuple[np.ndarray, int]:
    with np.load(Path(data_dir) / "catalog.npz") as f:
        return f["item_category"].astype(np.int64), int(f["n_users"])


def read_days(data_dir: str | Path, last: int) -> list[Interactions]:
    """The clicks of the `last` most recent days on file, oldest first."""
    files = sorted(Path(data_dir).glob("day-*.npz"))[-last:] if last > 0 else []
    return [load_interactions(f) for f in files]


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def load_interactions(path: str | Path) -> Interactions:
    with np.load(path) as f:
        return Interactions(f["users"].astype(np.int64), f["items"].astype(np.int64), f["days"].astype(np.int64))

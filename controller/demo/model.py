"""A small real recommender: implicit-feedback matrix factorisation (ALS, Hu, Koren and Volinsky 2008) in numpy.

Trained on a window of clicks, it scores items for a user by the dot product of their factors. `bad=True` trains
the same model and then flips the sign of its scores: a well-formed model that ranks upside down (the classic
ascending-instead-of-descending sort), so it serves what the user likes least. It is clearly worse than a good
model and than a stale one, so a canary analysis must roll it back whatever stable serves.
A model is identified by the SHA-256 of its content.
"""

from __future__ import annotations

import hashlib
import io
from functools import cached_property
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.demo.world import Interactions


@dataclass(frozen=True, eq=False)
class Model:
    user_factors: np.ndarray  # (n_users, f)
    item_factors: np.ndarray  # (n_items, f): rows for item ids 0..n_items-1 seen in training (unseen: zeros)
    item_bias: np.ndarray  # (n_items,) log-popularity in the window, breaks ties and serves unknown users
    bad: bool = False
    # Share of each item category in the training window's clicks: the reference the service's drift (PSI)
    # gauge compares live traffic with. Empty when the trainer was not told the categories.
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the model's content (64 hex digits): the image digest."""
        h = hashlib.sha256()
        for arr in (self.user_factors, self.item_factors, self.item_bias, self.reference):
            a = np.ascontiguousarray(arr, dtype=np.float64)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        h.update(b"bad" if self.bad else b"good")
        return h.hexdigest()

    @property
    def version(self) -> str:
        """A short content hash, the `version` label of the metrics."""
        return self.digest[:12]

    def scores(self, user: int) -> np.ndarray:
        if 0 <= user < self.user_factors.shape[0]:
            return self.item_factors @ self.user_factors[user] + 1e-3 * self.item_bias
        return self.item_bias.copy()

    def recommend(self, user: int, k: int = 10) -> np.ndarray:
        """The `k` best item ids for `user`, best first."""
        s = self.scores(user)
        k = min(k, s.shape[0])
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top], kind="stable")]

    def recommend_many(self, users: np.ndarray, k: int = 10) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        n_u = self.user_factors.shape[0]
        known = (users >= 0) & (users < n_u)
        s = np.tile(self.item_bias, (users.shape[0], 1))
        s[known] = self.user_factors[users[known]] @ self.item_factors.T + 1e-3 * self.item_bias
        k = min(k, s.shape[1])
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    # ---- persistence: <dir>/<digest>.npz -----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.digest}.npz"
        if not path.exists():
            buf = io.BytesIO()
            np.savez(buf, user_factors=self.user_factors, item_factors=self.item_factors,
                     item_bias=self.item_bias, bad=np.array(self.bad), reference=self.reference)  # fmt: skip
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)  # atomic: a reader never sees half a model
        return path

    @staticmethod
    def load(path: str | Path) -> "Model":
        with np.load(path) as f:
            model = Model(f["user_factors"], f["item_factors"], f["item_bias"], bool(f["bad"]), f["reference"])
        expected = Path(path).stem
        if len(expected) == 64 and model.digest != expected:
            raise ValueError(f"{path}: content does not match its digest")
        return model


def train(
    interactions: Interactions,
    n_users: int | None = None,
    n_items: int | None = None,
    factors: int = 16,
    iterations: int = 8,
    alpha: float = 10.0,
    reg: float = 0.1,
    seed: int = 0,
    bad: bool = False,
    item_category: np.ndarray | None = None,
) -> Model:
    """Implicit ALS on the click counts of `interactions`. Confidence c = 1 + alpha * clicks, preference 1 where
    clicked. Dense linear algebra: fine for the demo's scale (hundreds of users, about a thousand items).
    With `item_category` (category id per item id) the model also keeps the window's category share."""
    rng = np.random.default_rng(seed)
    n_u = int(n_users if n_users is not None else (interactions.users.max() + 1 if len(interactions) else 0))
    n_i = int(n_items if n_items is not None else (interactions.items.max() + 1 if len(interactions) else 0))
    counts = np.zeros((n_u, n_i))
    np.add.at(counts, (interactions.users, interactions.items), 1.0)
    conf = alpha * counts  # c - 1
    pref = (counts > 0).astype(float)
    x = rng.normal(0, 0.1, size=(n_u, factors))
    y = rng.normal(0, 0.1, size=(n_i, factors))
    eye = reg * np.eye(factors)
    for _ in range(iterations):
        x = _solve(y, conf, pref, eye)
        y = _solve(x, conf.T, pref.T, eye)
    seen = counts.sum(axis=0) > 0
    y[~seen] = 0.0  # an item nobody clicked in the window is unknown to the model
    bias = np.log1p(counts.sum(axis=0))
    reference = np.zeros(0)
    if item_category is not None and len(interactions):
        reference = category_share(np.asarray(item_category)[interactions.items], int(np.max(item_category)) + 1)
    if bad:
        y, bias = -y, -bias
    return Model(x, y, bias, bad, reference)


def _solve(fixed: np.ndarray, conf: np.ndarray, pref: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """One ALS half-step: for every row r, (F'F + F' diag(conf_r) F + reg I) x_r = F' (1 + conf_r) p_r."""
    ftf = fixed.T @ fixed
    a = ftf[None, :, :] + np.einsum("ri,if,ig->rfg", conf, fixed, fixed, optimize=True) + eye[None, :, :]
    b = ((1.0 + conf) * pref) @ fixed
    return np.linalg.solve(a, b[:, :, None])[:, :, 0]


def offline_precision_at_k(model: Model, heldout: Interactions, k: int = 10) -> float:
    """Mean over the users in `heldout` of |top-k ∩ items they clicked in heldout| / k."""
    if len(heldout) == 0:
        return 0.0
    users = np.unique(heldout.users)
    recs = model.recommend_many(users, k)
    clicked: dict[int, set[int]] = {}
    for u, i in zip(heldout.users.tolist(), heldout.items.tolist()):
        clicked.setdefault(u, set()).add(i)
    hits = [len(clicked[int(u)].intersection(r.tolist())) for u, r in zip(users, recs)]
    return float(np.mean(hits)) / k


def category_share(categories: np.ndarray, n_categories: int) -> np.ndarray:
    counts = np.bincount(np.asarray(categories, dtype=np.int64), minlength=n_categories).astype(float)
    return counts / counts.sum() if counts.sum() else counts


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored to stay finite."""
    n = max(len(expected), len(actual))
    e = np.maximum(np.pad(np.asarray(expected, float), (0, n - len(expected))), floor)
    a = np.maximum(np.pad(np.asarray(actual, float), (0, n - len(actual))), floor)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))

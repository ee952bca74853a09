"""The demo world: seeded, drifting, with ground truth that favours what users like."""

from __future__ import annotations

import numpy as np

from controller.demo.model import category_share, psi
from controller.demo.world import Interactions, World, read_catalog, read_days, write_day


def test_same_seed_same_world():
    a, b = World(seed=3), World(seed=3)
    for w in (a, b):
        w.step(2)
    x, y = a.sample_interactions(500), b.sample_interactions(500)
    assert np.array_equal(x.users, y.users) and np.array_equal(x.items, y.items)
    assert not np.array_equal(x.items, World(seed=4).sample_interactions(500).items)


def test_tastes_drift_and_items_come_and_fade():
    w = World(seed=1)
    before, n_items, share = w.tastes.copy(), w.n_items, w.category_share()
    w.step(7)
    assert w.day == 7
    assert w.n_items == n_items + 7 * w.new_items_per_day
    assert np.abs(w.tastes - before).sum(axis=1).mean() > 0.3  # each user's mix moved
    assert psi(share, w.category_share()) > 0.1  # and so did the overall one
    assert np.allclose(w.tastes.sum(axis=1), 1.0)
    fresh = w.freshness()
    assert fresh[-1] == 1.0 and fresh[:n_items].max() < 1.0  # the newest items are the freshest


def test_clicks_follow_the_ground_truth():
    w = World(seed=2)
    clicks = w.sample_interactions(20000)
    assert clicks.days.tolist() == [0] * 20000
    # Each user's clicks lean toward their favourite categories.
    top = w.tastes.argmax(axis=1)
    assert np.mean(w.item_category[clicks.items] == top[clicks.users]) > 0.4
    aff = w.affinity(5)[0]
    best, worst = int(np.argmax(aff)), int(np.argmin(aff))
    p = w.click_probabilities(5, [best, worst, 10**6])
    assert 0 < p[0] < 1 and p[1] < p[0] / 10 and p[2] == 0.0
    many = w.click_probabilities_many(np.array([5, 5]), np.array([[best, worst], [worst, best]]))
    assert np.allclose(many, [[p[0], p[1]], [p[1], p[0]]])


def test_days_on_disk_round_trip(tmp_path):
    w = World(seed=0)
    written = []
    for _ in range(3):
        day = w.sample_interactions(100)
        written.append(day)
        write_day(tmp_path, w, day)
        w.step()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "catalog.npz", "day-00000.npz", "day-00001.npz", "day-00002.npz"]  # fmt: skip
    last_two = read_days(tmp_path, 2)
    assert [int(d.days[0]) for d in last_two] == [1, 2]
    assert np.array_equal(Interactions.concat(last_two).items, Interactions.concat(written[1:]).items)
    cats, n_users = read_catalog(tmp_path)
    assert n_users == w.n_users and len(cats) == w.n_items - w.new_items_per_day  # as of the last write
    assert category_share(cats, w.n_categories).sum() == 1.0

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.core.policy import Kind, ModelState, PolicyState, decide, runs_to_start
from tests.unit.core.helpers import T0, alert, ids, policy

H = timedelta(hours=1)

# (case, alerts, state, expected kinds, expected detail fragments)
CASES = [
    ("first firing alert starts a run", [alert()], PolicyState(), [Kind.ACCEPTED], ["started run run1"]),
    ("resolved never starts anything", [alert(status="resolved")], PolicyState(), [Kind.IGNORED_RESOLVED], ["resolved"]),
    ("resolved even when the model is idle and unlimited", [alert(status="resolved", fp="x")], PolicyState(),
     [Kind.IGNORED_RESOLVED], [""]),
    ("no model matches", [alert(model="other")], PolicyState(), [Kind.UNMATCHED], ["no model"]),
    ("model matches but no rule", [alert(name="RecsysLatencyHigh")], PolicyState(), [Kind.UNMATCHED],
     ["no rule for alertname='RecsysLatencyHigh'"]),
    ("notify-only rule", [alert(name="RecsysEventStreamDown")], PolicyState(), [Kind.NOTIFY_ONLY], ["notify-only"]),
    ("regex rule", [alert(name="RecsysEmbeddingDrift")], PolicyState(), [Kind.ACCEPTED], [""]),
    ("repeat of a handled episode", [alert()], PolicyState(handled={alert().episode: "r0"}),
     [Kind.DUPLICATE], ["run r0"]),
    ("new reason while a run is live joins it",
     [alert(name="RecsysFeatureDrift", fp="fp2")], PolicyState(models={"recsys": ModelState(live_run="r0")}),
     [Kind.JOINED], ["joined live run r0"]),
    ("cooldown after the last run ended",
     [alert()], PolicyState(models={"recsys": ModelState(last_ended_at=T0 - timedelta(minutes=10))}),
     [Kind.RATE_LIMITED], ["cooldown: cooldown of 1h"]),
    ("cooldown over",
     [alert()], PolicyState(models={"recsys": ModelState(last_ended_at=T0 - H - timedelta(seconds=1))}),
     [Kind.ACCEPTED], [""]),
    ("daily budget used",
     [alert()], PolicyState(models={"recsys": ModelState(recent_starts=(T0 - 20 * H, T0 - 10 * H, T0 - 5 * H))}),
     [Kind.RATE_LIMITED], ["daily_budget: daily budget of 3 runs used"]),
    ("budget counts only the rolling day",
     [alert()], PolicyState(models={"recsys": ModelState(recent_starts=(T0 - 25 * H, T0 - 10 * H, T0 - 5 * H))}),
     [Kind.ACCEPTED], [""]),
    ("concurrency cap reached queues", [alert()], PolicyState(active_runs=2), [Kind.QUEUED], ["waits in the queue"]),
    ("two alerts for one model in one notification: one run, the second joins",
     [alert(), alert(name="RecsysFeatureDrift", fp="fp2")], PolicyState(),
     [Kind.ACCEPTED, Kind.JOINED], ["run1", "joined live run run1"]),
    ("HA twin in the same notification is a duplicate", [alert(), alert()], PolicyState(),
     [Kind.ACCEPTED, Kind.DUPLICATE], ["", "run1"]),
    ("two models in one notification: two runs", [alert(), alert(model="search", fp="s1")], PolicyState(),
     [Kind.ACCEPTED, Kind.ACCEPTED], ["run1", "run2"]),
    ("the cap applies inside one notification too", [alert(), alert(model="search", fp="s1")],
     PolicyState(active_runs=1), [Kind.ACCEPTED, Kind.QUEUED], ["run1", "run2"]),
    ("alert that resolved and fires again is a new episode",
     [alert(starts=T0 + H)], PolicyState(handled={alert().episode: "r0"}), [Kind.ACCEPTED], [""]),
    ("a rate-limited episode is re-decided on repeat, not a duplicate",
     [alert()], PolicyState(models={"recsys": ModelState(last_ended_at=T0 - 2 * H)}), [Kind.ACCEPTED], [""]),
    ("a paused model records the alert and starts nothing",
     [alert()], PolicyState(models={"recsys": ModelState(paused_by="sre-oncall", paused_at=T0 - H)}),
     [Kind.PAUSED], ["model paused by sre-oncall since 2026-11-24T09:00:00Z"]),
    ("paused wins over duplicate and joined",
     [alert(), alert(name="RecsysFeatureDrift", fp="fp2")],
     PolicyState(models={"recsys": ModelState(live_run="r0", paused_by="ops", paused_at=T0)},
                 handled={alert().episode: "r0"}),
     [Kind.PAUSED, Kind.PAUSED], ["paused by ops", "paused by ops"]),
    ("pausing one model leaves the others running",
     [alert(), alert(model="search", fp="s1")], PolicyState(models={"recsys": ModelState(paused_by="ops", paused_at=T0)}),
     [Kind.PAUSED, Kind.ACCEPTED], ["paused", "run1"]),
    ("resolved and unmatched come before paused",
     [alert(status="resolved"), alert(name="RecsysLatencyHigh", fp="z"), alert(name="RecsysEventStreamDown", fp="y")],
     PolicyState(models={"recsys": ModelState(paused_by="ops", paused_at=T0)}),
     [Kind.IGNORED_RESOLVED, Kind.UNMATCHED, Kind.NOTIFY_ONLY], ["", "", ""]),
    ("unmatched before duplicate logic", [alert(model="other")], PolicyState(handled={alert(model="other").episode: "r"}),
     [Kind.UNMATCHED], [""]),
]


@pytest.mark.parametrize("case,alerts,state,kinds,details", CASES, ids=[c[0] for c in CASES])
def test_decide(case, alerts, state, kinds, details):
    decisions, _ = decide(alerts, state, T0, policy(), ids())
    assert [d.kind for d in decisions] == kinds
    for d, fragment in zip(decisions, details):
        assert fragment in d.detail


def test_rate_limited_says_until_when():
    ended = T0 - timedelta(minutes=10)
    state = PolicyState(models={"recsys": ModelState(last_ended_at=ended)})
    [d], _ = decide([alert()], state, T0, policy(), ids())
    assert d.until == ended + H


def test_budget_until_is_when_a_slot_frees():
    starts = (T0 - 20 * H, T0 - 10 * H, T0 - 5 * H)
    state = PolicyState(models={"recsys": ModelState(recent_starts=starts)})
    [d], _ = decide([alert()], state, T0, policy(), ids())
    assert d.until == T0 - 20 * H + timedelta(days=1)


def test_budget_with_more_starts_than_budget_frees_at_the_right_one():
    starts = (T0 - 20 * H, T0 - 15 * H, T0 - 10 * H, T0 - 5 * H)  # 4 starts, budget 3 (a lowered budget)
    state = PolicyState(models={"recsys": ModelState(recent_starts=starts)})
    [d], _ = decide([alert()], state, T0, policy(), ids())
    assert d.until == T0 - 15 * H + timedelta(days=1)  # two must leave the window before a third fits


def test_storm_of_identical_notifications_starts_exactly_one_run():
    state = PolicyState()
    started = []
    gen = ids()
    for _ in range(1000):
        decisions, state = decide([alert(), alert(name="RecsysFeatureDrift", fp="fp2")], state, T0, policy(), gen)
        started += [d.run_id for d in decisions if d.starts_run]
    assert started == ["run1"]


def test_queued_run_is_the_live_run_for_later_alerts():
    decisions, state = decide([alert()], PolicyState(active_runs=2), T0, policy(), ids())
    assert decisions[0].kind is Kind.QUEUED
    decisions, _ = decide([alert(name="RecsysFeatureDrift", fp="fp2")], state, T0, policy(), ids("x"))
    assert decisions[0].kind is Kind.JOINED and decisions[0].run_id == "run1"


def test_state_is_not_mutated():
    state = PolicyState()
    decide([alert()], state, T0, policy(), ids())
    assert state == PolicyState()


@pytest.mark.parametrize(
    "queued,active,cap,expected",
    [
        (["a", "b", "c"], 0, 2, ["a", "b"]),
        (["a", "b"], 2, 2, []),
        (["a", "b"], 3, 2, []),  # cap lowered below the active count
        ([], 0, 2, []),
        (["a"], 1, 2, ["a"]),
    ],
)
def test_runs_to_start_in_arrival_order(queued, active, cap, expected):
    assert runs_to_start(queued, active, cap) == expected


@pytest.mark.parametrize(
    "queued,active,cap,held,expected",
    [
        (["a", "b", "c"], 0, 1, {"a"}, ["b"]),  # a held run takes no slot and blocks nobody behind it
        (["a", "b", "c"], 0, 2, {"b"}, ["a", "c"]),
        (["a", "b"], 0, 5, {"a", "b"}, []),
        (["a", "b"], 1, 1, {"x"}, []),  # holding a run that is not queued changes nothing
    ],
)
def test_held_runs_wait_without_taking_a_slot(queued, active, cap, held, expected):
    assert runs_to_start(queued, active, cap, frozenset(held)) == expected


def test_a_free_slot_goes_to_the_oldest_queued_run_not_a_new_alert():
    from controller.core.policy import Kind as K

    [d], state = decide([alert()], PolicyState(active_runs=0, waiting=1), T0, policy(), ids())
    assert d.kind is K.QUEUED and "1 queued run(s) go first" in d.detail and state.waiting == 2
    [d], _ = decide([alert()], PolicyState(active_runs=0, waiting=0), T0, policy(), ids())
    assert d.kind is K.ACCEPTED

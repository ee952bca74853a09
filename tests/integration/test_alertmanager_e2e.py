"""Real Prometheus and Alertmanager deliver to the real controller process.

A gauge falls, Prometheus fires RecsysPrecisionAtKDrop, Alertmanager groups it and delivers it (and its repeats,
and its resolution) to the controller's webhook with a bearer token from a file. Whatever happens in between (a
controller crash, a locked store answered with 503), one alert episode makes exactly one run.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.procs import Deadline, http_status, wait_until
from tests.integration.conftest import DEGRADED, HEALTHY, Stack, StackFactory
from tests.infra.stack_configs import ALERTNAME

pytestmark = pytest.mark.integration

BUDGET_S = 60.0  # every wait of one scenario shares this


def _ours(stack: Stack) -> list[dict[str, Any]]:
    return [d for d in stack.decisions() if d["alertname"] == ALERTNAME]


def _first(stack: Stack, kind: str) -> dict[str, Any] | None:
    return next((d for d in _ours(stack) if d["decision"] == kind), None)


def _duplicates(stack: Stack, run_id: str, after_id: int = 0, at_least: int = 2) -> list[dict[str, Any]] | None:
    """Duplicate decisions of `run_id` from at least `at_least` distinct notifications recorded after `after_id`."""
    dups = [d for d in _ours(stack) if d["decision"] == "duplicate" and d["id"] > after_id]
    assert all(d["run_id"] == run_id for d in dups), f"a duplicate points at another run: {dups}"
    return dups if len({d["notification_id"] for d in dups}) >= at_least else None


def _assert_one_run(stack: Stack, run_id: str) -> dict[str, Any]:
    runs = stack.runs()
    assert [r["id"] for r in runs] == [run_id], f"expected exactly run {run_id}, got {runs}\n{stack.logs()}"
    return runs[0]


def _assert_all_reference(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    decisions = stack.decisions()
    kinds = [d["decision"] for d in decisions]
    assert kinds.count("accepted") == 1, kinds
    for d in decisions:
        if d["decision"] == "ignored_resolved":
            continue
        assert d["decision"] in ("accepted", "duplicate"), d
        assert d["run_id"] == run_id, d
    episodes = {d["episode"] for d in decisions}
    assert len(episodes) == 1, f"one firing of one series is one episode: {episodes}"
    return decisions


def test_firing_repeats_and_resolution_make_exactly_one_run(start_stack: StackFactory) -> None:
    stack = start_stack(pipeline_command=["sh", "-c", "sleep 1"])
    deadline = Deadline(BUDGET_S)

    stack.exporter.set(DEGRADED)
    accepted = wait_until(lambda: _first(stack, "accepted"), "an `accepted` decision", deadline, stack.logs)
    run_id = accepted["run_id"]
    assert accepted["model"] == "recsys" and accepted["reason"] == "precision_drop"
    assert accepted["status"] == "firing"
    assert accepted["labels"]["model"] == "recsys" and accepted["labels"]["action"] == "retrain"
    run = _assert_one_run(stack, run_id)
    assert run["model"] == "recsys" and run["reasons"] == ["precision_drop"] and run["trigger"] == "alert"

    dups = wait_until(
        lambda: _duplicates(stack, run_id), "2 repeats recorded as `duplicate`", deadline, stack.logs
    )
    assert {d["episode"] for d in dups} == {accepted["episode"]}
    _assert_one_run(stack, run_id)

    stack.exporter.set(HEALTHY)
    resolved = wait_until(
        lambda: _first(stack, "ignored_resolved"), "an `ignored_resolved` decision", deadline, stack.logs
    )
    assert resolved["status"] == "resolved" and resolved["run_id"] is None
    assert resolved["episode"] == accepted["episode"]

    _assert_one_run(stack, run_id)
    _assert_all_reference(stack, run_id)
    # The bearer token from Alertmanager's credentials_file was accepted every time, and every delivery landed.
    assert stack.controller_metric("retrain_controller_notifications_total", outcome="unauthorized") == 0
    assert stack.alertmanager_metric("alertmanager_notification_requests_total", integration="webhook") >= 4
    assert stack.alertmanager_metric("alertmanager_notification_requests_failed_total", integration="webhook") == 0
    print(f"\nfire -> accepted -> 2 repeats -> resolved in {deadline.elapsed:.1f}s")


def test_controller_killed_between_notifications_keeps_one_run(start_stack: StackFactory, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    stack = start_stack(
        # The pipeline runs until the test opens the gate, so the run is live across the crash.
        pipeline_command=["sh", "-c", 'while [ ! -e "$GATE" ]; do sleep 0.1; done'],
        pipeline_env={"GATE": str(gate)},
    )
    deadline = Deadline(BUDGET_S)

    stack.exporter.set(DEGRADED)
    accepted = wait_until(lambda: _first(stack, "accepted"), "an `accepted` decision", deadline, stack.logs)
    run_id = accepted["run_id"]
    wait_until(
        lambda: stack.runs()[0]["phase"] == "training", "the run to reach `training`", deadline, stack.logs
    )
    before = stack.model()
    assert before["live_run"] == {"id": run_id, "phase": "training"}, before
    last_id = max(d["id"] for d in stack.decisions())
    failed = stack.alertmanager_metric("alertmanager_notification_requests_failed_total", integration="webhook")

    assert stack.controller.kill() == -9
    # Alertmanager's next repeat meets a dead controller: it must fail, and be retried.
    wait_until(
        lambda: stack.alertmanager_metric("alertmanager_notification_requests_failed_total", integration="webhook")
        > failed,
        "Alertmanager to fail a delivery to the killed controller",
        deadline,
        stack.logs,
    )
    stack.restart_controller()

    after = stack.model()
    assert after == before, f"the run and rate-limit state changed across a crash:\n{before}\n{after}"
    wait_until(
        lambda: _duplicates(stack, run_id, after_id=last_id),
        "2 repeats after the restart recorded as `duplicate`",
        deadline,
        stack.logs,
    )
    _assert_one_run(stack, run_id)
    _assert_all_reference(stack, run_id)

    # The pipeline that outlived the crash finishes; the run ends and the cooldown starts from its end.
    gate.touch()
    ended = wait_until(
        lambda: (m := stack.model())["live_run"] is None and m["rate_limited"] is not None and m,
        "the run to end and the cooldown to start",
        deadline,
        stack.logs,
    )
    assert ended["rate_limited"]["by"] == "cooldown", ended
    run = _assert_one_run(stack, run_id)
    assert run["ended_at"] == ended["last_ended_at"]

    # A second crash, now inside the cooldown: the limit survives it unchanged, and repeats stay duplicates.
    last_id = max(d["id"] for d in stack.decisions())
    assert stack.controller.kill() == -9
    stack.restart_controller()
    assert stack.model() == ended
    wait_until(
        lambda: _duplicates(stack, run_id, after_id=last_id, at_least=1),
        "a repeat after the second restart recorded as `duplicate`",
        deadline,
        stack.logs,
    )
    _assert_one_run(stack, run_id)
    _assert_all_reference(stack, run_id)
    print(f"\ncrash/restart scenario in {deadline.elapsed:.1f}s")


def test_locked_store_answers_503_and_alertmanager_retry_is_accepted(start_stack: StackFactory) -> None:
    stack = start_stack(pipeline_command=["sh", "-c", "sleep 1"], store={"busy_timeout": "200ms"})
    deadline = Deadline(BUDGET_S)

    lock = sqlite3.connect(stack.store_path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the controller's writes now wait 200ms, then fail
        assert http_status(stack.controller.url + "/readyz") == 503

        stack.exporter.set(DEGRADED)
        wait_until(
            lambda: stack.controller_metric("retrain_controller_notifications_total", outcome="store_unavailable")
            >= 2,
            "the controller to answer 503 (store_unavailable) to a delivery and to Alertmanager's retry of it",
            deadline,
            stack.logs,
        )
        # Nothing was acknowledged, so nothing may have been recorded.
        assert stack.decisions() == [] and stack.runs() == []
        answered_503 = deadline.elapsed
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
        released_at = time.monotonic()

    accepted = wait_until(
        lambda: _first(stack, "accepted"), "Alertmanager's retry to be `accepted`", deadline, stack.logs
    )
    retry_latency = time.monotonic() - released_at
    run_id = accepted["run_id"]
    _assert_one_run(stack, run_id)
    _assert_all_reference(stack, run_id)
    assert stack.controller_metric("retrain_controller_store_errors_total") >= 1
    assert http_status(stack.controller.url + "/readyz") == 200
    rejected = stack.controller_metric("retrain_controller_notifications_total", outcome="store_unavailable")
    print(
        f"\nfirst 503 after {answered_503:.1f}s, {rejected:.0f} answered 503 in all;"
        f" accepted {retry_latency:.1f}s after the lock was released; {deadline.elapsed:.1f}s in all"
    )

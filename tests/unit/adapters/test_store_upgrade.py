"""Schema 5 carries a schema-4 store forward whatever its runs' loose `extra` dicts hold: the store opens, every
run reads, and every run can still be written (so it can still move, time out and end)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from controller.adapters.sqlite import SqliteStore

V4 = Path(__file__).parents[2] / "data" / "store-v4.db"
GOOD = json.loads(sqlite3.connect(V4).execute("SELECT extra FROM runs").fetchone()[0])

EXTRAS = {
    "null": None,
    "not json": "{",
    "a list": [1, 2],
    "audit item not an object": {**GOOD, "audit": ["pause"]},
    "audit entry without a time": {**GOOD, "audit": [{"action": "pause", "by": "sre"}]},
    "trigger attempts not a number": {**GOOD, "trigger_attempts": "x"},
    "offline metric null": {**GOOD, "offline_metrics": {"p": None, "q": 0.5}},
    "paused without a time": {**GOOD, "paused": True, "paused_at": "yesterday"},
    "unknown canary stage": {**GOOD, "canary": {**GOOD["canary"], "stage": "dancing"}},
    "unknown verdict": {**GOOD, "verdict": {"outcome": "maybe"}},
    "tally null": {**GOOD, "canary": {**GOOD["canary"], "tallies": {"hits": {"canary": None}}}},
    "canary without a stage start": {**GOOD, "canary": {k: v for k, v in GOOD["canary"].items() if k != "stage_since"}},
    "look without a time": {**GOOD, "measurements": [{"step": 1, "verdict": "pass"}, *GOOD["measurements"]]},
}


@pytest.mark.parametrize("extra", list(EXTRAS.values()), ids=list(EXTRAS))
async def test_a_damaged_run_does_not_stop_the_upgrade(tmp_path, extra):
    path = tmp_path / "controller.db"
    shutil.copy(V4, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET extra = ?", (extra if isinstance(extra, str) else json.dumps(extra),))
    store = SqliteStore(path)
    await store.open()
    try:
        [run] = await store.list_runs(10)
        assert await store.update_run(replace(run, cause="written after the upgrade"))
        again = await store.get_run(run.id)
        assert again is not None and again.cause == "written after the upgrade"
        assert all(look.at.tzinfo is not None for look in await store.run_looks(run.id))
        for entry in await store.run_audit(run.id):
            assert entry.at.tzinfo is not None
    finally:
        await store.close()


async def test_a_pause_without_its_time_keeps_the_run_paused(tmp_path):
    path = tmp_path / "controller.db"
    shutil.copy(V4, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET extra = ?", (json.dumps({**GOOD, "paused": True, "paused_at": None}),))
    store = SqliteStore(path)
    await store.open()
    try:
        [run] = await store.list_runs(10)
        assert run.pause is not None and run.pause.since == run.phase_entered_at
    finally:
        await store.close()

"""The store's own queries: the ones every tick makes must not scan every run ever made."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.adapters.sqlite import SqliteStore
from controller.core.runs import LIVE, Phase, new_run, transition

DEADLINES = {p: timedelta(hours=1) for p in Phase}
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


async def test_live_runs_come_from_the_partial_index_and_only_live_ones(tmp_path):
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    try:
        for i in range(3):
            run, t = new_run(f"r{i}", "recsys", Phase.TRIGGERING, ("drift",), NOW, DEADLINES, "accepted")
            await store.create_run(run, t)
            if i < 2:
                done, t = transition(run, Phase.FAILED, "pipeline failed", NOW, DEADLINES)
                assert await store.apply(done, t)
        db = store._db
        assert db is not None
        statements: list[str] = []
        db.set_trace_callback(statements.append)  # the statement as run, with its values bound
        assert [r.id for r in await store.runs_in(LIVE)] == ["r2"]
        db.set_trace_callback(None)
        plan = db.execute("EXPLAIN QUERY PLAN " + statements[-1]).fetchall()
        assert "USING INDEX runs_live" in " ".join(str(tuple(r)) for r in plan)
        assert [r.id for r in await store.runs_in(frozenset({Phase.FAILED}))] == ["r0", "r1"]
        again = await store.get_run("r2")
        assert again is not None and again.created_at == NOW and again.created_at.utcoffset() == timedelta(0)
    finally:
        await store.close()


async def test_policy_state_reads_only_the_newest_starts_the_budget_needs(tmp_path):
    from controller.core.policy import ModelPolicy, ModelState, rate_limit

    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    try:
        for i in range(6):
            at = NOW - timedelta(hours=6 - i)
            run, t = new_run(f"r{i}", "recsys", Phase.TRIGGERING, ("drift",), at, DEADLINES, "accepted")
            await store.create_run(run, t)
        args = dict(episodes=[], models=["recsys"], now=NOW, window_start=NOW - timedelta(days=1), dry_run=False)
        every = (await store.policy_state(**args)).models["recsys"].recent_starts
        newest = (await store.policy_state(**args, recent_limit={"recsys": 2})).models["recsys"].recent_starts
        assert sorted(every) == [NOW - timedelta(hours=h) for h in range(6, 0, -1)]
        assert sorted(newest) == [NOW - timedelta(hours=2), NOW - timedelta(hours=1)]
        under = (await store.policy_state(**args, recent_limit={"recsys": 7})).models["recsys"].recent_starts
        assert under == ()  # the budget is not used up: nothing to read
        model = ModelPolicy("recsys", (), (), timedelta(0), daily_budget=2)
        limited = rate_limit(model, ModelState(recent_starts=newest), NOW, timedelta(days=1))
        assert limited == rate_limit(model, ModelState(recent_starts=every), NOW, timedelta(days=1)) is not None
    finally:
        await store.close()

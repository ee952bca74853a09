"""The run and read faces: transitions guarded by the expected phase, lookups, lists, history, pruning."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from controller.adapters.sqlite.connection import Connection
from controller.adapters.sqlite.rows import insert_look, insert_transition, look_from_row, parse, run_from_row, ts, update_run
from controller.core.runs import Phase, Run, Transition
from controller.core.state import Look


class RunFaces(Connection):
    # ---- runs -----------------------------------------------------------------------------------------------

    async def apply(self, run: Run, transition: Transition, look: Look | None = None) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            assert transition.from_phase is not None
            if not update_run(db, run, transition.from_phase):
                return False
            insert_transition(db, transition)
            if look is not None:
                insert_look(db, run.id, look)
            return True

        return await self._call(self._tx, body)

    async def update_run(self, run: Run, look: Look | None = None) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            if not update_run(db, run, run.phase):
                return False
            if look is not None:
                insert_look(db, run.id, look)
            return True

        return await self._call(self._tx, body)

    async def run_looks(self, run_id: str, limit: int = 500) -> list[Look]:
        rows = await self._call(
            self._query, "SELECT body FROM run_looks WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, limit)
        )
        return [look for r in reversed(rows) if (look := look_from_row(r))]

    async def get_run(self, run_id: str) -> Run | None:
        rows = await self._call(self._query, "SELECT * FROM runs WHERE id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def run_by_pipeline(self, pipeline_id: str) -> Run | None:
        rows = await self._call(
            self._query, "SELECT * FROM runs WHERE pipeline_id = ? ORDER BY seq DESC LIMIT 1", (pipeline_id,)
        )
        return run_from_row(rows[0]) if rows else None

    async def first_delivery(self, key: str, at: datetime) -> bool:
        """Remember a webhook delivery; False if this key was seen before (a replay)."""

        def body(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT OR IGNORE INTO deliveries (key, received_at) VALUES (?, ?)", (key, ts(at)))
            return cur.rowcount == 1

        return await self._call(self._tx, body)

    async def runs_in(self, phases: frozenset[Phase]) -> list[Run]:
        marks = ",".join("?" * len(phases))
        # Live runs have no end: saying so lets the tick use the small partial index instead of scanning every run.
        live = " AND ended_at IS NULL" if not any(p.terminal for p in phases) else ""
        sql = f"SELECT * FROM runs WHERE phase IN ({marks}){live} ORDER BY seq"
        rows = await self._call(self._query, sql, tuple(p.value for p in phases))
        return [run_from_row(r) for r in rows]

    # ---- reads ----------------------------------------------------------------------------------------------

    async def list_runs(self, limit: int, model: str | None = None, phase: str | None = None) -> list[Run]:
        clause, params = _where(model=model, phase=phase)
        rows = await self._call(self._query, f"SELECT * FROM runs {clause} ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [run_from_row(r) for r in rows]

    async def history(self, run_id: str) -> list[Transition]:
        rows = await self._call(self._query, "SELECT * FROM transitions WHERE run_id = ? ORDER BY id", (run_id,))
        return [
            Transition(
                run_id=r["run_id"],
                at=parse(r["at"]),
                from_phase=Phase(r["from_phase"]) if r["from_phase"] else None,
                to_phase=Phase(r["to_phase"]),
                cause=r["cause"],
            )
            for r in rows
        ]

    async def list_decisions(
        self, limit: int, model: str | None = None, run_id: str | None = None
    ) -> list[dict[str, object]]:
        clause, params = _where(model=model, run_id=run_id)
        rows = await self._call(
            self._query,
            "SELECT id, notification_id, received_at, episode, fingerprint, alertname, status, starts_at, labels,"
            " annotations, decision, model, reason, run_id, until, detail, generator_url,"
            " (SELECT n.external_url FROM notifications n WHERE n.id = decisions.notification_id) AS external_url"
            f" FROM decisions {clause}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        out = []
        for r in rows:
            item = dict(r)
            item["labels"] = json.loads(item["labels"])
            item["annotations"] = json.loads(item["annotations"])
            out.append(item)
        return out

    async def counts_by_phase(self) -> dict[str, int]:
        rows = await self._call(self._query, "SELECT phase, COUNT(*) FROM runs GROUP BY phase")
        return {r[0]: r[1] for r in rows}

    async def count(self, table: str) -> int:
        if table not in ("notifications", "decisions", "runs", "transitions", "episodes"):
            raise ValueError(table)
        rows = await self._call(self._query, f"SELECT COUNT(*) FROM {table}")
        return int(rows[0][0])

    async def prune(self, before: datetime) -> int:
        """Drop notifications and decisions older than `before`, and episodes of runs that ended before it."""

        def body(db: sqlite3.Connection) -> int:
            cutoff = ts(before)
            n = db.execute("DELETE FROM decisions WHERE received_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM notifications WHERE received_at < ?", (cutoff,))
            db.execute("DELETE FROM deliveries WHERE received_at < ?", (cutoff,))
            db.execute(
                "DELETE FROM episodes WHERE first_seen_at < ? AND run_id IN"
                " (SELECT id FROM runs WHERE ended_at IS NOT NULL AND ended_at < ?)",
                (cutoff, cutoff),
            )
            return n

        return await self._call(self._tx, body)


def _where(**filters: str | None) -> tuple[str, list[str]]:
    """A WHERE clause for the filters that are set (column names are ours, values are bound)."""
    columns = [name for name, value in filters.items() if value]
    clause = f"WHERE {' AND '.join(f'{c} = ?' for c in columns)}" if columns else ""
    return clause, [str(filters[c]) for c in columns]

"""The operator face: runs started by hand, model pauses, and the audit trails of runs and models."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from controller.adapters.sqlite.connection import Connection
from controller.adapters.sqlite.rows import control_from_row, insert_audit, insert_run, insert_transition, parse, run_from_row, ts
from controller.core.runs import Phase, Run, Transition
from controller.core.state import AuditEntry, ModelAuditEntry, ModelControl


class OpsFaces(Connection):
    # ---- operator controls ------------------------------------------------------------------------------------

    async def create_run(self, run: Run, transition: Transition, audit: AuditEntry | None = None) -> None:
        """A run started by an operator (no notification behind it), with its first transition and the action."""

        def body(db: sqlite3.Connection) -> None:
            insert_run(db, run)
            insert_transition(db, transition)
            if audit is not None:
                insert_audit(db, run.id, audit)

        await self._call(self._tx, body)

    async def audit_run(self, run_id: str, entry: AuditEntry) -> None:
        await self._call(self._tx, lambda db: insert_audit(db, run_id, entry))

    async def run_audit(self, run_id: str) -> list[AuditEntry]:
        rows = await self._call(self._query, "SELECT * FROM run_audit WHERE run_id = ? ORDER BY id", (run_id,))
        return [AuditEntry(parse(r["at"]), r["action"], r["by"], r["reason"], bool(r["changed"]), r["detail"],
                           r["retry_of"], r["new_run"]) for r in rows]  # fmt: skip

    async def model_controls(self) -> dict[str, ModelControl]:
        rows = await self._call(self._query, "SELECT * FROM model_controls")
        return {r["model"]: control_from_row(r) for r in rows}

    async def set_model_paused(
        self, model: str, paused: bool, by: str, reason: str, at: datetime
    ) -> tuple[bool, ModelControl]:
        """Pause or resume a model, audited; (changed, the control now). Doing it twice changes nothing."""

        def body(db: sqlite3.Connection) -> tuple[bool, ModelControl]:
            row = db.execute("SELECT * FROM model_controls WHERE model = ?", (model,)).fetchone()
            was = bool(row["paused"]) if row else False
            changed = was != paused
            if changed:
                db.execute(
                    "INSERT OR REPLACE INTO model_controls (model, paused, by, at, reason) VALUES (?, ?, ?, ?, ?)",
                    (model, int(paused), by, ts(at), reason),
                )
            db.execute(
                "INSERT INTO model_audit (model, at, action, by, reason, changed) VALUES (?, ?, ?, ?, ?, ?)",
                (model, ts(at), "pause" if paused else "resume", by, reason, int(changed)),
            )
            now = db.execute("SELECT * FROM model_controls WHERE model = ?", (model,)).fetchone()
            return changed, control_from_row(now) if now else ModelControl(False)

        return await self._call(self._tx, body)

    async def audit_model(self, model: str, action: str, by: str, reason: str, at: datetime,
                          run_id: str | None = None, changed: bool = True) -> None:  # fmt: skip
        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO model_audit (model, at, action, by, reason, changed, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, ts(at), action, by, reason, int(changed), run_id),
            )

        await self._call(self._tx, body)

    async def model_audit(self, model: str, limit: int = 20) -> list[ModelAuditEntry]:
        rows = await self._call(
            self._query,
            "SELECT at, action, by, reason, changed, run_id FROM model_audit WHERE model = ? ORDER BY id DESC LIMIT ?",
            (model, limit),
        )
        return [ModelAuditEntry(parse(r["at"]), r["action"], r["by"], r["reason"], bool(r["changed"]), r["run_id"])
                for r in rows]  # fmt: skip

    async def last_run_in(self, model: str, phases: frozenset[Phase]) -> Run | None:
        """The newest run of a model in one of `phases` (indexed by model, phase, seq)."""
        best: Run | None = None
        best_seq = -1
        for phase in phases:
            rows = await self._call(
                self._query,
                "SELECT * FROM runs WHERE model = ? AND phase = ? ORDER BY seq DESC LIMIT 1",
                (model, phase.value),
            )
            if rows and rows[0]["seq"] > best_seq:
                best, best_seq = run_from_row(rows[0]), rows[0]["seq"]
        return best

    async def list_runs_page(self, limit: int, offset: int = 0, model: str | None = None) -> list[Run]:
        where, params = ("WHERE model = ?", [model]) if model else ("", [])
        rows = await self._call(
            self._query, f"SELECT * FROM runs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [run_from_row(r) for r in rows]

"""The intake face: policy state for decisions, and a notification with its decisions and runs in one commit."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import datetime
from typing import Any, Mapping

from controller.adapters.sqlite.connection import Connection
from controller.adapters.sqlite.rows import CHUNK, URL_MAX, dt, insert_run, insert_transition, parse, ts, update_run
from controller.core.alerts import Alert
from controller.core.policy import Decision, Kind, ModelState, PolicyState
from controller.core.runs import Phase, Run, Transition
from controller.ports import NotificationRecord


class IntakeFaces(Connection):
    # ---- intake ---------------------------------------------------------------------------------------------

    async def policy_state(
        self, episodes: list[str], models: list[str], now: datetime, window_start: datetime, dry_run: bool,
        recent_limit: Mapping[str, int] | None = None,
    ) -> PolicyState:
        return await self._call(self._policy_state, episodes, models, window_start, dry_run, recent_limit or {})

    @staticmethod
    def _recent_starts(
        db: sqlite3.Connection, model: str, dry_run: bool, window_start: datetime, limit: int | None
    ) -> list[Any]:
        """With a limit (the daily budget): the newest `limit` starts if there are that many, else none, which is
        all the rate limit needs; a decision's cost then does not grow with the day's runs. Without: every one."""
        where = "FROM runs WHERE model = ? AND dry_run = ? AND created_at > ? ORDER BY created_at DESC"
        params = (model, int(dry_run), ts(window_start))
        if limit is None:
            return db.execute(f"SELECT created_at {where}", params).fetchall()
        if db.execute(f"SELECT 1 {where} LIMIT 1 OFFSET ?", (*params, limit - 1)).fetchone() is None:
            return []
        return db.execute(f"SELECT created_at {where} LIMIT ?", (*params, limit)).fetchall()

    def _policy_state(
        self, episodes: list[str], models: list[str], window_start: datetime, dry_run: bool,
        recent_limit: Mapping[str, int],
    ) -> PolicyState:
        db = self._db
        assert db is not None
        handled: dict[str, str] = {}
        unique = list(dict.fromkeys(episodes))
        for i in range(0, len(unique), CHUNK):
            part = unique[i : i + CHUNK]
            marks = ",".join("?" * len(part))
            for row in db.execute(f"SELECT episode, run_id FROM episodes WHERE episode IN ({marks})", part):
                handled[row[0]] = row[1]
        states = {}
        for model in models:
            live = db.execute(
                "SELECT id FROM runs WHERE model = ? AND ended_at IS NULL ORDER BY seq LIMIT 1", (model,)
            ).fetchone()
            ended = db.execute(
                "SELECT MAX(ended_at) FROM runs WHERE model = ? AND dry_run = ?", (model, int(dry_run))
            ).fetchone()[0]
            starts = self._recent_starts(db, model, dry_run, window_start, recent_limit.get(model))
            states[model] = ModelState(
                live_run=live[0] if live else None,
                last_ended_at=dt(ended),
                recent_starts=tuple(parse(r[0]) for r in starts),
            )
        for row in db.execute("SELECT model, by, at FROM model_controls WHERE paused = 1"):
            if row[0] in states:
                states[row[0]] = replace(states[row[0]], paused_by=row[1], paused_at=parse(row[2]))
        active = db.execute(
            "SELECT COUNT(*) FROM runs WHERE ended_at IS NULL AND phase != ?", (Phase.QUEUED.value,)
        ).fetchone()[0]
        # Queued runs a freed slot would start: not those a pause holds (core.runs.held says the same).
        waiting = db.execute(
            "SELECT COUNT(*) FROM runs WHERE ended_at IS NULL AND phase = ? AND (trigger = 'manual'"
            " OR model NOT IN (SELECT model FROM model_controls WHERE paused = 1))",
            (Phase.QUEUED.value,),
        ).fetchone()[0]
        return PolicyState(models=states, active_runs=active, handled=handled, waiting=waiting)

    async def record_notification(
        self,
        record: NotificationRecord,
        alerts: list[Alert],
        decisions: list[Decision],
        new_runs: list[tuple[Run, Transition]],
    ) -> int:
        return await self._call(self._tx, lambda db: self._record(db, record, alerts, decisions, new_runs))

    def _record(
        self,
        db: sqlite3.Connection,
        record: NotificationRecord,
        alerts: list[Alert],
        decisions: list[Decision],
        new_runs: list[tuple[Run, Transition]],
    ) -> int:
        at = ts(record.received_at)
        cur = db.execute(
            "INSERT INTO notifications (received_at, group_key, receiver, status, truncated_alerts, body, external_url)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, record.group_key, record.receiver, record.status, record.truncated_alerts, record.body,
             record.external_url[:URL_MAX]),  # fmt: skip
        )
        notification_id = int(cur.lastrowid or 0)
        for run, t in new_runs:
            if t.from_phase is None:
                insert_run(db, run)
            else:
                update_run(db, run, t.from_phase)
            insert_transition(db, t)
        rows = []
        for d in decisions:
            a = alerts[d.index]
            rows.append(
                (
                    notification_id, at, d.index, d.episode, a.fingerprint, a.alertname, a.status,
                    ts(a.startsAt), json.dumps(a.labels, sort_keys=True), json.dumps(a.annotations, sort_keys=True),
                    d.kind.value, d.model, d.reason, d.run_id, ts(d.until), d.detail, a.generatorURL[:URL_MAX],
                )
            )  # fmt: skip
        db.executemany(
            "INSERT INTO decisions (notification_id, received_at, position, episode, fingerprint, alertname, status,"
            " starts_at, labels, annotations, decision, model, reason, run_id, until, detail, generator_url)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        for d in decisions:
            if d.kind in (Kind.ACCEPTED, Kind.QUEUED, Kind.JOINED) and d.run_id and d.model:
                db.execute(
                    "INSERT OR IGNORE INTO episodes (episode, run_id, model, first_seen_at) VALUES (?, ?, ?, ?)",
                    (d.episode, d.run_id, d.model, at),
                )
            if d.kind is Kind.JOINED and d.run_id and d.reason:
                self._add_reason(db, d.run_id, d.reason)
        return notification_id

    def _add_reason(self, db: sqlite3.Connection, run_id: str, reason: str) -> None:
        row = db.execute("SELECT reasons FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return
        reasons = json.loads(row[0])
        if reason not in reasons:
            db.execute("UPDATE runs SET reasons = ? WHERE id = ?", (json.dumps(reasons + [reason]), run_id))

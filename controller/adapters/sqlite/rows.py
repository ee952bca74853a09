"""Rows to domain objects and back: the only place that knows how a run is laid out in SQLite."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from controller.core.alerts import format_ts
from controller.core.runs import Phase, Run, Transition, details_from_json
from controller.core.state import AuditEntry, Look, ModelControl

URL_MAX = 2048  # a URL longer than this is not a link anyone follows; it is cut, not refused

# SQLite's limit on bound parameters is 999 on old builds; stay well below it.
CHUNK = 500


def ts(value: datetime | None) -> str | None:
    return None if value is None else format_ts(value)


def parse(value: str) -> datetime:
    # Only our own format_ts strings are read back; fromisoformat takes them ~50x faster than strptime, which
    # counts: every notification reads the start time of each run in the budget window.
    return datetime.fromisoformat(value)


def dt(value: str | None) -> datetime | None:
    return None if value is None else parse(value)


def insert_run(db: sqlite3.Connection, run: Run) -> None:
    db.execute(
        "INSERT INTO runs (id, model, phase, trigger, reasons, created_at, phase_entered_at, deadline_at,"
        " ended_at, cause, dry_run, pipeline_id, pipeline_url, image, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.id, run.model, run.phase.value, run.trigger, json.dumps(list(run.reasons)),
            ts(run.created_at), ts(run.phase_entered_at), ts(run.deadline_at), ts(run.ended_at),
            run.cause, int(run.dry_run), run.pipeline_id, run.pipeline_url, run.image,
            json.dumps(run.details_json(), sort_keys=True),
        ),
    )  # fmt: skip

def update_run(db: sqlite3.Connection, run: Run, expected: Phase) -> bool:
    # Reasons are not written here: joins add them concurrently, and a stale copy must not erase them.
    cur = db.execute(
        "UPDATE runs SET phase = ?, phase_entered_at = ?, deadline_at = ?, ended_at = ?, cause = ?,"
        " pipeline_id = ?, pipeline_url = ?, image = ?, details = ? WHERE id = ? AND phase = ?",
        (
            run.phase.value, ts(run.phase_entered_at), ts(run.deadline_at), ts(run.ended_at), run.cause,
            run.pipeline_id, run.pipeline_url, run.image, json.dumps(run.details_json(), sort_keys=True),
            run.id, expected.value,
        ),
    )  # fmt: skip
    return cur.rowcount == 1

def insert_transition(db: sqlite3.Connection, t: Transition) -> None:
    db.execute(
        "INSERT INTO transitions (run_id, at, from_phase, to_phase, cause) VALUES (?, ?, ?, ?, ?)",
        (t.run_id, ts(t.at), t.from_phase.value if t.from_phase else None, t.to_phase.value, t.cause),
    )


def control_from_row(row: sqlite3.Row) -> ModelControl:
    return ModelControl(bool(row["paused"]), row["by"], parse(row["at"]), row["reason"])


def run_from_row(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        model=row["model"],
        phase=Phase(row["phase"]),
        created_at=parse(row["created_at"]),
        phase_entered_at=parse(row["phase_entered_at"]),
        deadline_at=dt(row["deadline_at"]),
        trigger=row["trigger"],
        reasons=tuple(json.loads(row["reasons"])),
        ended_at=dt(row["ended_at"]),
        cause=row["cause"],
        dry_run=bool(row["dry_run"]),
        pipeline_id=row["pipeline_id"],
        pipeline_url=row["pipeline_url"],
        image=row["image"],
        **details_from_json(_json(row["details"]), fallback=parse(row["phase_entered_at"])),
    )


def insert_audit(db: sqlite3.Connection, run_id: str, e: AuditEntry) -> None:
    db.execute(
        "INSERT INTO run_audit (run_id, at, action, by, reason, changed, detail, retry_of, new_run)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, ts(e.at), e.action, e.by, e.reason, int(e.changed), e.detail, e.retry_of, e.new_run),
    )


def insert_look(db: sqlite3.Connection, run_id: str, look: Look) -> None:
    db.execute("INSERT INTO run_looks (run_id, at, body) VALUES (?, ?, ?)",
               (run_id, ts(look.at), json.dumps(look.to_json(), sort_keys=True)))  # fmt: skip


def look_from_row(row: sqlite3.Row) -> Look | None:
    data = _json(row["body"])
    return Look.from_json(data) if isinstance(data, dict) else None


def _json(text: str) -> object:
    """A run's stored details; {} when they are not JSON (a damaged row must not stop the store opening)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return {}

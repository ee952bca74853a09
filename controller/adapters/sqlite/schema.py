"""The SQLite schema: migrations by user_version, each in one transaction."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Callable

from controller.adapters.sqlite.rows import insert_audit, insert_look, run_from_row
from controller.core.runs import legacy_looks
from controller.core.state import AuditEntry


def _typed_run_state(db: sqlite3.Connection) -> None:
    """Schema 5: run audit and canary looks get tables of their own, and each run's loose `extra` keys become its
    typed details. Reads the old keys with the same readers the store uses (they keep reading them)."""
    db.execute(
        "CREATE TABLE run_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, at TEXT NOT NULL,"
        " action TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL, changed INTEGER NOT NULL,"
        " detail TEXT NOT NULL, retry_of TEXT, new_run TEXT)"
    )
    db.execute("CREATE INDEX run_audit_run ON run_audit(run_id, id)")
    # A canary's looks are a series that only grows, like transitions: rows of their own, not a field of the run.
    db.execute("CREATE TABLE run_looks (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, at TEXT NOT NULL,"
               " body TEXT NOT NULL)")  # fmt: skip
    db.execute("CREATE INDEX run_looks_run ON run_looks(run_id, id)")
    db.execute("ALTER TABLE runs RENAME COLUMN extra TO details")
    for row in db.execute("SELECT * FROM runs").fetchall():
        try:
            legacy = json.loads(row["details"])
        except (TypeError, ValueError):
            legacy = {}
        audit = legacy.get("audit") if isinstance(legacy, dict) else None
        for item in audit if isinstance(audit, list) else ():
            if isinstance(item, dict):  # an entry without a time keeps the run's phase entry as its time
                insert_audit(db, row["id"], AuditEntry.from_json(item, datetime.fromisoformat(row["phase_entered_at"])))
        for look in legacy_looks(legacy):
            insert_look(db, row["id"], look)
        run = run_from_row(row)
        db.execute("UPDATE runs SET details = ? WHERE id = ?", (json.dumps(run.details_json(), sort_keys=True), run.id))


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: the first schema
    """
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        group_key TEXT NOT NULL,
        receiver TEXT NOT NULL,
        status TEXT NOT NULL,
        truncated_alerts INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX notifications_received ON notifications(received_at);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        notification_id INTEGER NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
        received_at TEXT NOT NULL,
        position INTEGER NOT NULL,
        episode TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        alertname TEXT NOT NULL,
        status TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        decision TEXT NOT NULL,
        model TEXT,
        reason TEXT,
        run_id TEXT,
        until TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX decisions_model ON decisions(model, id);
    CREATE INDEX decisions_run ON decisions(run_id);
    CREATE INDEX decisions_notification ON decisions(notification_id);
    CREATE INDEX decisions_received ON decisions(received_at);
    CREATE TABLE episodes (
        episode TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        model TEXT NOT NULL,
        first_seen_at TEXT NOT NULL
    );
    CREATE INDEX episodes_run ON episodes(run_id);
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        phase TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reasons TEXT NOT NULL,
        created_at TEXT NOT NULL,
        phase_entered_at TEXT NOT NULL,
        deadline_at TEXT,
        ended_at TEXT,
        cause TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        pipeline_id TEXT,
        pipeline_url TEXT,
        image TEXT,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_model_created ON runs(model, created_at);
    CREATE INDEX runs_model_ended ON runs(model, ended_at);
    CREATE INDEX runs_live ON runs(phase) WHERE ended_at IS NULL;
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        at TEXT NOT NULL,
        from_phase TEXT,
        to_phase TEXT NOT NULL,
        cause TEXT NOT NULL
    );
    CREATE INDEX transitions_run ON transitions(run_id, id);
    CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
    """,
    # 2: pipeline lookups for hooks, and hook deliveries seen (GitLab's Idempotency-Key)
    """
    CREATE INDEX runs_pipeline ON runs(pipeline_id) WHERE pipeline_id IS NOT NULL;
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        received_at TEXT NOT NULL
    );
    CREATE INDEX deliveries_received ON deliveries(received_at);
    """,
    # 3: operator controls per model (pause), their audit trail, and per-model run lookups by phase
    """
    CREATE TABLE model_controls (
        model TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        by TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE model_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        at TEXT NOT NULL,
        action TEXT NOT NULL,
        by TEXT NOT NULL,
        reason TEXT NOT NULL,
        changed INTEGER NOT NULL,
        run_id TEXT
    );
    CREATE INDEX model_audit_model ON model_audit(model, id);
    CREATE INDEX runs_model_phase ON runs(model, phase, seq);
    """,
    # 4: where an alert comes from (Prometheus' generatorURL) and which Alertmanager sent it (externalURL)
    """
    ALTER TABLE decisions ADD COLUMN generator_url TEXT NOT NULL DEFAULT '';
    ALTER TABLE notifications ADD COLUMN external_url TEXT NOT NULL DEFAULT ''
    """,
    # 5: typed run state
    _typed_run_state,
]

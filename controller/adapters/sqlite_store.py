"""SQLite store: WAL, one connection on one worker thread (the single writer), schema migrations by user_version.

Every write is one `BEGIN IMMEDIATE` transaction; a notification, its decisions and the runs they start commit
together or not at all. Lock, disk-full and read-only errors surface as StoreUnavailable (HTTP 503).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from controller.core.alerts import Alert, format_ts
from controller.core.policy import Decision, Kind, ModelState, PolicyState
from controller.core.runs import Phase, Run, Transition, details_from_json
from controller.core.state import AuditEntry, ModelAuditEntry, ModelControl
from controller.ports import NotificationRecord, StoreUnavailable

T = TypeVar("T")

def _typed_run_state(db: sqlite3.Connection) -> None:
    """Schema 5: run audit gets its own table, and each run's loose `extra` keys become its typed details."""
    db.execute(
        "CREATE TABLE run_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, at TEXT NOT NULL,"
        " action TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL, changed INTEGER NOT NULL,"
        " detail TEXT NOT NULL, retry_of TEXT, new_run TEXT)"
    )
    db.execute("CREATE INDEX run_audit_run ON run_audit(run_id, id)")
    db.execute("ALTER TABLE runs RENAME COLUMN extra TO details")
    for row in db.execute("SELECT * FROM runs").fetchall():
        legacy = json.loads(row["details"])
        for item in legacy.get("audit") or ():
            _insert_audit(db, row["id"], AuditEntry.from_json(item))
        run = _run(row)
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

URL_MAX = 2048  # a URL longer than this is not a link anyone follows; it is cut, not refused

# SQLite's limit on bound parameters is 999 on old builds; stay well below it.
_CHUNK = 500


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_ts(value)


def _parse(value: str) -> datetime:
    # Only our own format_ts strings are read back; fromisoformat takes them ~50x faster than strptime, which
    # counts: every notification reads the start time of each run in the budget window.
    return datetime.fromisoformat(value)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else _parse(value)


class SqliteStore:
    def __init__(self, path: Path, busy_timeout: timedelta = timedelta(seconds=5), synchronous: str = "full"):
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout.total_seconds() * 1000)
        self.synchronous = synchronous.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreUnavailable(f"{self.path}: could not switch to WAL (journal_mode={mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute("PRAGMA foreign_keys = ON")
        self._db = db
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreUnavailable(
                f"{self.path}: schema version {version} is newer than this controller knows ({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                if callable(script):
                    script(db)
                else:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        db, self._db = self._db, None
        assert db is not None
        try:
            db.execute("PRAGMA optimize")
        except sqlite3.OperationalError:
            pass  # only an optimisation; a full or read-only disk must not keep the store from closing
        finally:
            db.close()  # a checkpoint it cannot write stays in the WAL and is replayed on the next open

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as exc:
            # locked, disk full, read-only, I/O error: not durable, and the caller must say so. The path and
            # SQLite's code tell an operator which volume to look at.
            code = getattr(exc, "sqlite_errorname", None)
            raise StoreUnavailable(f"store {self.path}: {exc}" + (f" ({code})" if code else "")) from exc

    def _tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        assert db is not None, "store is not open"
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ---- health ---------------------------------------------------------------------------------------------

    async def check_writable(self) -> None:
        """A real write, with a short lock wait, so /readyz tells the truth about disk and locks."""

        def probe(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, datetime('now'))")

        def run() -> None:
            assert self._db is not None
            self._db.execute("PRAGMA busy_timeout = 250")
            try:
                self._tx(probe)
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")

        await self._call(run)

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
        params = (model, int(dry_run), _ts(window_start))
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
        for i in range(0, len(unique), _CHUNK):
            part = unique[i : i + _CHUNK]
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
                last_ended_at=_dt(ended),
                recent_starts=tuple(_parse(r[0]) for r in starts),
            )
        for row in db.execute("SELECT model, by, at FROM model_controls WHERE paused = 1"):
            if row[0] in states:
                states[row[0]] = replace(states[row[0]], paused_by=row[1], paused_at=_parse(row[2]))
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
        at = _ts(record.received_at)
        cur = db.execute(
            "INSERT INTO notifications (received_at, group_key, receiver, status, truncated_alerts, body, external_url)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, record.group_key, record.receiver, record.status, record.truncated_alerts, record.body,
             record.external_url[:URL_MAX]),  # fmt: skip
        )
        notification_id = int(cur.lastrowid or 0)
        for run, t in new_runs:
            if t.from_phase is None:
                self._insert_run(db, run)
            else:
                self._update_run(db, run, t.from_phase)
            self._insert_transition(db, t)
        rows = []
        for d in decisions:
            a = alerts[d.index]
            rows.append(
                (
                    notification_id, at, d.index, d.episode, a.fingerprint, a.alertname, a.status,
                    _ts(a.startsAt), json.dumps(a.labels, sort_keys=True), json.dumps(a.annotations, sort_keys=True),
                    d.kind.value, d.model, d.reason, d.run_id, _ts(d.until), d.detail, a.generatorURL[:URL_MAX],
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

    # ---- runs -----------------------------------------------------------------------------------------------

    def _insert_run(self, db: sqlite3.Connection, run: Run) -> None:
        db.execute(
            "INSERT INTO runs (id, model, phase, trigger, reasons, created_at, phase_entered_at, deadline_at,"
            " ended_at, cause, dry_run, pipeline_id, pipeline_url, image, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.id, run.model, run.phase.value, run.trigger, json.dumps(list(run.reasons)),
                _ts(run.created_at), _ts(run.phase_entered_at), _ts(run.deadline_at), _ts(run.ended_at),
                run.cause, int(run.dry_run), run.pipeline_id, run.pipeline_url, run.image,
                json.dumps(run.details_json(), sort_keys=True),
            ),
        )  # fmt: skip

    def _update_run(self, db: sqlite3.Connection, run: Run, expected: Phase) -> bool:
        # Reasons are not written here: joins add them concurrently, and a stale copy must not erase them.
        cur = db.execute(
            "UPDATE runs SET phase = ?, phase_entered_at = ?, deadline_at = ?, ended_at = ?, cause = ?,"
            " pipeline_id = ?, pipeline_url = ?, image = ?, details = ? WHERE id = ? AND phase = ?",
            (
                run.phase.value, _ts(run.phase_entered_at), _ts(run.deadline_at), _ts(run.ended_at), run.cause,
                run.pipeline_id, run.pipeline_url, run.image, json.dumps(run.details_json(), sort_keys=True),
                run.id, expected.value,
            ),
        )  # fmt: skip
        return cur.rowcount == 1

    def _insert_transition(self, db: sqlite3.Connection, t: Transition) -> None:
        db.execute(
            "INSERT INTO transitions (run_id, at, from_phase, to_phase, cause) VALUES (?, ?, ?, ?, ?)",
            (t.run_id, _ts(t.at), t.from_phase.value if t.from_phase else None, t.to_phase.value, t.cause),
        )

    async def apply(self, run: Run, transition: Transition) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            assert transition.from_phase is not None
            if not self._update_run(db, run, transition.from_phase):
                return False
            self._insert_transition(db, transition)
            return True

        return await self._call(self._tx, body)

    async def update_run(self, run: Run) -> bool:
        return await self._call(self._tx, lambda db: self._update_run(db, run, run.phase))

    async def get_run(self, run_id: str) -> Run | None:
        rows = await self._call(self._query, "SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    async def run_by_pipeline(self, pipeline_id: str) -> Run | None:
        rows = await self._call(
            self._query, "SELECT * FROM runs WHERE pipeline_id = ? ORDER BY seq DESC LIMIT 1", (pipeline_id,)
        )
        return _run(rows[0]) if rows else None

    async def first_delivery(self, key: str, at: datetime) -> bool:
        """Remember a webhook delivery; False if this key was seen before (a replay)."""

        def body(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT OR IGNORE INTO deliveries (key, received_at) VALUES (?, ?)", (key, _ts(at)))
            return cur.rowcount == 1

        return await self._call(self._tx, body)

    async def runs_in(self, phases: frozenset[Phase]) -> list[Run]:
        marks = ",".join("?" * len(phases))
        # Live runs have no end: saying so lets the tick use the small partial index instead of scanning every run.
        live = " AND ended_at IS NULL" if not any(p.terminal for p in phases) else ""
        sql = f"SELECT * FROM runs WHERE phase IN ({marks}){live} ORDER BY seq"
        rows = await self._call(self._query, sql, tuple(p.value for p in phases))
        return [_run(r) for r in rows]

    # ---- reads ----------------------------------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        assert self._db is not None
        return self._db.execute(sql, tuple(params)).fetchall()

    async def list_runs(self, limit: int, model: str | None = None, phase: str | None = None) -> list[Run]:
        where, params = [], []
        if model:
            where.append("model = ?")
            params.append(model)
        if phase:
            where.append("phase = ?")
            params.append(phase)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._call(self._query, f"SELECT * FROM runs {clause} ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [_run(r) for r in rows]

    async def history(self, run_id: str) -> list[Transition]:
        rows = await self._call(self._query, "SELECT * FROM transitions WHERE run_id = ? ORDER BY id", (run_id,))
        return [
            Transition(
                run_id=r["run_id"],
                at=_parse(r["at"]),
                from_phase=Phase(r["from_phase"]) if r["from_phase"] else None,
                to_phase=Phase(r["to_phase"]),
                cause=r["cause"],
            )
            for r in rows
        ]

    async def list_decisions(
        self, limit: int, model: str | None = None, run_id: str | None = None
    ) -> list[dict[str, object]]:
        where, params = [], []
        if model:
            where.append("model = ?")
            params.append(model)
        if run_id:
            where.append("run_id = ?")
            params.append(run_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
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
            cutoff = _ts(before)
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


    # ---- operator controls ------------------------------------------------------------------------------------

    async def create_run(self, run: Run, transition: Transition) -> None:
        """A run started by an operator (no notification behind it), with its first transition."""

        def body(db: sqlite3.Connection) -> None:
            self._insert_run(db, run)
            self._insert_transition(db, transition)

        await self._call(self._tx, body)

    async def audit_run(self, run_id: str, entry: AuditEntry) -> None:
        await self._call(self._tx, lambda db: _insert_audit(db, run_id, entry))

    async def run_audit(self, run_id: str) -> list[AuditEntry]:
        rows = await self._call(self._query, "SELECT * FROM run_audit WHERE run_id = ? ORDER BY id", (run_id,))
        return [AuditEntry(_parse(r["at"]), r["action"], r["by"], r["reason"], bool(r["changed"]), r["detail"],
                           r["retry_of"], r["new_run"]) for r in rows]  # fmt: skip

    async def model_controls(self) -> dict[str, ModelControl]:
        rows = await self._call(self._query, "SELECT * FROM model_controls")
        return {r["model"]: _control(r) for r in rows}

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
                    (model, int(paused), by, _ts(at), reason),
                )
            db.execute(
                "INSERT INTO model_audit (model, at, action, by, reason, changed) VALUES (?, ?, ?, ?, ?, ?)",
                (model, _ts(at), "pause" if paused else "resume", by, reason, int(changed)),
            )
            now = db.execute("SELECT * FROM model_controls WHERE model = ?", (model,)).fetchone()
            return changed, _control(now) if now else ModelControl(False)

        return await self._call(self._tx, body)

    async def audit_model(self, model: str, action: str, by: str, reason: str, at: datetime,
                          run_id: str | None = None, changed: bool = True) -> None:  # fmt: skip
        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO model_audit (model, at, action, by, reason, changed, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, _ts(at), action, by, reason, int(changed), run_id),
            )

        await self._call(self._tx, body)

    async def model_audit(self, model: str, limit: int = 20) -> list[ModelAuditEntry]:
        rows = await self._call(
            self._query,
            "SELECT at, action, by, reason, changed, run_id FROM model_audit WHERE model = ? ORDER BY id DESC LIMIT ?",
            (model, limit),
        )
        return [ModelAuditEntry(_parse(r["at"]), r["action"], r["by"], r["reason"], bool(r["changed"]), r["run_id"])
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
                best, best_seq = _run(rows[0]), rows[0]["seq"]
        return best

    async def list_runs_page(self, limit: int, offset: int = 0, model: str | None = None) -> list[Run]:
        where, params = ("WHERE model = ?", [model]) if model else ("", [])
        rows = await self._call(
            self._query, f"SELECT * FROM runs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [_run(r) for r in rows]


def _control(row: sqlite3.Row) -> ModelControl:
    return ModelControl(bool(row["paused"]), row["by"], _parse(row["at"]), row["reason"])


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        model=row["model"],
        phase=Phase(row["phase"]),
        created_at=_parse(row["created_at"]),
        phase_entered_at=_parse(row["phase_entered_at"]),
        deadline_at=_dt(row["deadline_at"]),
        trigger=row["trigger"],
        reasons=tuple(json.loads(row["reasons"])),
        ended_at=_dt(row["ended_at"]),
        cause=row["cause"],
        dry_run=bool(row["dry_run"]),
        pipeline_id=row["pipeline_id"],
        pipeline_url=row["pipeline_url"],
        image=row["image"],
        **details_from_json(json.loads(row["details"])),
    )


def _insert_audit(db: sqlite3.Connection, run_id: str, e: AuditEntry) -> None:
    db.execute(
        "INSERT INTO run_audit (run_id, at, action, by, reason, changed, detail, retry_of, new_run)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, _ts(e.at), e.action, e.by, e.reason, int(e.changed), e.detail, e.retry_of, e.new_run),
    )

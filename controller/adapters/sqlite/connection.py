"""One connection on one worker thread (the single writer): WAL, transactions, and errors as StoreUnavailable."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from controller.adapters.sqlite.schema import MIGRATIONS
from controller.ports import StoreUnavailable

T = TypeVar("T")


class Connection:
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

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        assert self._db is not None
        return self._db.execute(sql, tuple(params)).fetchall()

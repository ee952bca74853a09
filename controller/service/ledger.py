"""The run ledger: the single writer of runs. Every change to a stored run goes through here, under one lock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Protocol

from controller.core.runs import Phase, Run, transition
from controller.core.state import AuditEntry, Look
from controller.observability import Metrics, Throttle, get_logger
from controller.ports import Clock, OpsStore, RunStore, StoreUnavailable

Update = Callable[[Run], Run]  # what a change does to the stored copy of a run


class LedgerStore(RunStore, OpsStore, Protocol):
    """The faces of the store the ledger writes through."""


@dataclass
class RunLedger:
    store: LedgerStore
    clock: Clock
    deadlines: Mapping[Phase, timedelta]
    metrics: Metrics
    # One writer: decisions read state and write it back; nothing may interleave between the two.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set when something happened that the reconciler should act on before its next interval.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    log: Any = field(default_factory=get_logger)
    # A store that cannot write fails every tick of every run: one line per interval says so.
    _store_quiet: Throttle = field(default_factory=Throttle)

    async def get(self, run_id: str) -> Run | None:
        return await self.store.get_run(run_id)

    async def current(self, run_id: str) -> Run:
        """The stored run after a change this process made: it exists (runs are never deleted)."""
        run = await self.store.get_run(run_id)
        assert run is not None, run_id
        return run

    async def move(self, run: Run, to: Phase, cause: str, update: Update | None = None, look: Look | None = None) -> bool:
        """Move the stored copy of `run` to `to`, if it is still in `run.phase`; False if it moved on.

        `run` may be stale (read at the start of a tick): a callback may have recorded stages or an image since.
        The stored copy is moved, with `update` applied to it, so nothing recorded meanwhile is written over.
        `look`, the canary look behind the move, is kept in the same commit."""
        async with self.lock:
            fresh = await self._fresh(run)
            if fresh is None:
                self._skipped(run, to)
                return False
            return await self.move_locked(update(fresh) if update else fresh, to, cause, look)

    async def move_locked(self, run: Run, to: Phase, cause: str, look: Look | None = None) -> bool:
        """`move` for a caller that holds the lock and has just read `run`."""
        updated, t = transition(run, to, cause, self.clock.now(), self.deadlines)
        if not await self.store.apply(updated, t, look):
            self._skipped(run, to)
            return False
        self.count(updated)
        log = self.log.warning if to is Phase.FAILED else self.log.info
        log("run_transition", run_id=run.id, model=run.model, from_phase=run.phase.value, phase=to.value, cause=cause)
        if to.terminal:
            self.wake.set()  # a slot may have freed up for a queued run
        return True

    async def record(self, run: Run, update: Update, look: Look | None = None) -> bool:
        """Save `update` of the stored copy of a run still in `run.phase` (and `look`); False if it moved on."""
        async with self.lock:
            fresh = await self._fresh(run)
            if fresh is None:
                return False
            return await self.store.update_run(update(fresh), look)

    async def audit(self, run_id: str, entry: AuditEntry) -> None:
        await self.store.audit_run(run_id, entry)

    def count(self, run: Run) -> None:
        self.metrics.transitions.labels(model=run.model, phase=run.phase.value).inc()

    def store_error(self, exc: StoreUnavailable, **where: str) -> None:
        """Count every write the loop could not make; log what is wrong at most once per interval."""
        self.metrics.store_errors.inc()
        suppressed = self._store_quiet.allow("store")
        if suppressed is not None:
            self.log.error("store_unavailable", error=str(exc), suppressed=suppressed, **where)

    async def _fresh(self, run: Run) -> Run | None:
        fresh = await self.store.get_run(run.id)
        return fresh if fresh is not None and fresh.phase is run.phase else None

    def _skipped(self, run: Run, to: Phase) -> None:
        self.log.info("transition_skipped", run_id=run.id, model=run.model, to=to.value, why="run moved on")

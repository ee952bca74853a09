"""Watches Prometheus' alerts and the controller's store, has the narrator tell what changed, and (--once) checks
the story once the first run has ended and a simulated day has passed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import aiohttp

from controller.core.runs import Phase, Run
from controller.demo.configs import MODEL, Options
from controller.demo.meter import Meter
from controller.demo.narrator import Narrator
from controller.demo.story import PRECISION_ALERT, Story, check
from controller.ports import ReadStore, ViewStore


class DemoStore(ReadStore, ViewStore, Protocol):
    """What the watcher reads of the controller's store."""


@dataclass
class Outcome:
    story: Story | None = None
    run_id: str | None = None
    precision_before: float | None = None
    precision_at_alert: float | None = None
    precision_after: float | None = None
    offline: dict[str, float] = field(default_factory=dict)


class Watcher:
    def __init__(self, opts: Options, store: DemoStore, narrator: Narrator, meter: Meter,
                 precision: Callable[[str], float | None], result: Outcome):  # fmt: skip
        self.opts = opts
        self.store = store
        self.narrator = narrator
        self.meter = meter
        self.precision = precision  # stable's precision over the last simulated day
        self.result = result
        self._decisions_seen: set[object] = set()
        self._first_run: str | None = None
        self._ended_at: float | None = None

    async def run(self, prom_port: int) -> None:
        """Returns only with --once, when the story is checked."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                await asyncio.sleep(0.5)
                await self._prometheus_alerts(http, prom_port)
                await self._decisions()
                runs = await self._runs()
                if self.opts.once and await self._story_ended(runs):
                    return

    async def _prometheus_alerts(self, http: aiohttp.ClientSession, port: int) -> None:
        try:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/alerts") as resp:
                alerts = (await resp.json())["data"]["alerts"]
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            return
        now = {}
        for a in alerts:
            if a["labels"].get("model") == MODEL:
                now[a["labels"]["alertname"]] = (a["state"], a.get("value", ""))
        self.narrator.alerts(now)

    async def _decisions(self) -> None:
        for d in reversed(await self.store.list_decisions(50, model=MODEL)):
            if d["id"] in self._decisions_seen:
                continue
            self._decisions_seen.add(d["id"])
            self.narrator.decision(d)
            taken = d["status"] != "resolved" and d["decision"] in ("accepted", "joined")
            if taken and d["alertname"] == PRECISION_ALERT and self.result.precision_at_alert is None:
                self.result.precision_at_alert = self.precision("stable")

    async def _runs(self) -> list[Run]:
        runs = sorted(await self.store.list_runs(20, model=MODEL), key=lambda r: r.created_at)
        for r in runs:
            self._first_run = self._first_run or r.id
            self.narrator.run(r, await self.store.run_looks(r.id) if r.phase is not Phase.QUEUED else [])
        active = [r for r in runs if not r.phase.terminal]
        self.narrator.run_line = f"run {active[-1].id[:8]} {active[-1].phase.value}" if active else ""
        return runs

    async def _story_ended(self, runs: list[Run]) -> bool:
        """The first run ended a simulated day ago: the story is checked and recorded."""
        if self._first_run is None:
            return False
        run = next(r for r in runs if r.id == self._first_run)
        if not run.phase.terminal:
            return False
        if self._ended_at is None:
            self._ended_at = time.monotonic()
            self.narrator.say("measuring stable's precision@k over the next simulated day ...")
        if time.monotonic() - self._ended_at < self.opts.day_seconds:
            return False
        self.result.precision_after = self.meter.precision("stable", self._ended_at)
        history = await self.store.history(run.id)
        decisions = await self.store.list_decisions(500, run_id=run.id)
        expect = "rolled_back" if self.opts.bad_model else "promoted"
        self.result.story = check(run, history, decisions, expect, await self.store.run_looks(run.id))
        self.result.run_id = run.id
        self.result.offline = dict(run.offline_metrics)
        return True

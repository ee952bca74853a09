"""A real controller on a real port over a real SQLite store, a raw HTTP client that sends any bytes, and the
property every hostile request is held to. Shared by tests/reliability/test_fuzz_endpoints.py and bench/fuzz.py.

The property: the answer is 2xx or 4xx, never 5xx and never a dropped connection; 2xx where the input was valid,
4xx where it was not; and a 4xx leaves the store exactly as it was (`PRAGMA data_version` on a connection of our
own changes with any commit by another, so even an UPDATE that keeps every row count is seen).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from aiohttp import web

from controller.adapters.clock import SystemClock
from controller.adapters.sqlite import SqliteStore
from controller.app import SERVICE, Adapters, create_app
from controller.config import load_settings
from controller.core.runs import Phase, Run, Transition
from controller.web.server import quiet_protocol_errors, server_options
from tests.conftest import write_config
from tests.fakes.runner import ScriptedRunner
from tests.reliability.strategies import FUZZ_ENV, Case, Seed

T = TypeVar("T")
RETIRE_ABOVE = 40  # live runs kept; more would make every tick (and so the fuzzing) slower and slower


@dataclass
class Reply:
    status: int | None  # None: no answer at all
    content_type: str = ""
    body: bytes = b""


@dataclass
class Tally:
    cases: int = 0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    no_answer: int = 0
    store_changes_on_reject: int = 0
    wrong_class: int = 0  # 2xx for bad input or 4xx for valid input
    problems: list[str] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        for name in ("cases", "requests", "server_errors", "no_answer", "store_changes_on_reject", "wrong_class"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.problems.extend(other.problems[: max(0, 20 - len(self.problems))])


class Target:
    """The app on 127.0.0.1 with its background loop, driven from a loop this object owns."""

    def __init__(self, tmp: Path):
        self.settings = load_settings(write_config(tmp), FUZZ_ENV)
        self.runner = ScriptedRunner()
        self.store = SqliteStore(self.settings.store.path, synchronous=self.settings.store.synchronous)
        self.app = create_app(self.settings, Adapters(self.store, {"recsys": self.runner, "search": self.runner},
                                                      SystemClock()))  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._view: sqlite3.Connection | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def __enter__(self) -> "Target":
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            self._view.close()
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.run(_cancel_rest())
        self.loop.close()

    async def _start(self) -> None:
        quiet_protocol_errors()  # as `serve` does
        self._runner = web.AppRunner(self.app, access_log=None, **server_options(self.settings.server))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        await self.settle()
        self._view = sqlite3.connect(f"file:{self.settings.store.path}?mode=ro", uri=True, isolation_level=None)

    # ---- the store, seen from outside ----------------------------------------------------------------------

    def snapshot(self) -> tuple[int, dict[str, int]]:
        assert self._view is not None
        db = self._view
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                           " AND name NOT LIKE 'sqlite_%' ORDER BY name")]  # fmt: skip
        return db.execute("PRAGMA data_version").fetchone()[0], {
            t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables
        }

    async def seed(self, seed: Seed) -> bool:
        """Put a run in the store (as a run that got there); False if one with that id exists already."""
        if await self.store.get_run(seed.run_id) is not None:
            return False
        now = datetime.now(timezone.utc)
        terminal = seed.phase.terminal
        run = Run(id=seed.run_id, model=seed.model, phase=seed.phase, created_at=now, phase_entered_at=now,
                  deadline_at=None if terminal else now + timedelta(hours=2), ended_at=now if terminal else None,
                  reasons=("precision_drop",), cause="seeded by the fuzzer")  # fmt: skip
        await self.store.create_run(run, Transition(run.id, now, None, seed.phase, "seeded by the fuzzer"))
        return True

    async def retire(self, model: str | None = None) -> None:
        """End live runs beyond a few (or all of `model`'s), outside any measured window, so the store stays the
        size of a real one and a model can be made free for a retry or a retrain."""
        live = await self.store.runs_in(frozenset(p for p in Phase if not p.terminal))
        now = datetime.now(timezone.utc)
        if model is not None:
            ending = [r for r in live if r.model == model]
        else:
            ending = live[:-RETIRE_ABOVE] if len(live) > RETIRE_ABOVE else []
        for run in ending:
            ended = replace(run, phase=Phase.CANCELED, ended_at=now, deadline_at=None, cause="retired by the fuzzer")
            await self.store.apply(ended, Transition(run.id, now, run.phase, Phase.CANCELED, "retired by the fuzzer"))

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the reconcile loop has nothing left to do, so whatever it writes lands outside a window."""
        service = self.app[SERVICE]
        end = self.loop.time() + timeout
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0)
            quiet = quiet + 1 if _idle(service) else 0
            if self.loop.time() > end:
                raise AssertionError("the controller never went idle")
            if not quiet:
                await asyncio.sleep(0.001)

    # ---- one case ------------------------------------------------------------------------------------------

    async def check(self, case: Case) -> Tally:
        tally = Tally(cases=1)
        await self.retire()
        if case.quiet_model is not None:
            await self.settle()
            await self.retire(case.quiet_model)
        expect = case.expect
        if case.seed is not None and not await self.seed(case.seed):
            expect = "any"  # hypothesis drew an id it had drawn before: that run has moved on since
        await self.settle()
        reply = await self._one(case, expect, tally)
        if case.replay and reply.status is not None and 200 <= reply.status < 300:
            before = self.snapshot()
            again = await self._one(case, "any", tally)
            after = self.snapshot()
            if again.status is not None and 200 <= again.status < 300:
                changed = _changed(before, after, case.replay_keeps)
                if changed:
                    tally.problems.append(f"{case.kind}: a replay changed {changed}: {case!r}")
        return tally

    async def _one(self, case: Case, expect: str, tally: Tally) -> Reply:
        before = self.snapshot()
        reply = await send(self.port, case)
        await self.settle()
        after = self.snapshot()
        tally.requests += 1
        status = reply.status
        label = f"{status // 100}xx" if status else "none"
        tally.statuses[label] = tally.statuses.get(label, 0) + 1
        where = f"{case.kind}: {status} {reply.body[:300]!r} for {case!r}"
        if status is None:
            tally.no_answer += 1
            tally.problems.append(f"no answer: {where}")
            return reply
        if status >= 500:
            tally.server_errors += 1
            tally.problems.append(f"server error: {where}")
        elif (expect == "ok" and not 200 <= status < 300) or (expect == "bad" and not 400 <= status < 500):
            tally.wrong_class += 1
            tally.problems.append(f"expected {expect}: {where}")
        if status >= 400:
            if before != after:
                tally.store_changes_on_reject += 1
                tally.problems.append(f"store changed on a reject {before} -> {after}: {where}")
            if reply.content_type == "application/json":
                try:
                    keys = set(json.loads(reply.body))
                except (ValueError, TypeError):
                    keys = set()
                if keys != {"error", "detail"}:
                    tally.problems.append(f"error body is not {{error, detail}}: {where}")
        return reply


async def _cancel_rest() -> None:
    """Connections still lingering over a body a client announced and never sent."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _changed(before: tuple[int, dict[str, int]], after: tuple[int, dict[str, int]], keeps: tuple[str, ...]) -> str:
    if keeps == ("*",):
        return "" if before == after else f"the store {before} -> {after}"
    moved = [t for t in keeps if before[1].get(t) != after[1].get(t)]
    return ", ".join(f"{t} {before[1].get(t)} -> {after[1].get(t)}" for t in moved)


def _idle(service: Any) -> bool:
    if service.ledger.wake.is_set() or service.ledger.lock.locked():
        return False
    for task in asyncio.all_tasks():
        if task.done():
            continue
        if task.get_name().startswith("step-"):
            return False
        coro = task.get_coro()
        if getattr(coro, "__qualname__", "") == "Reconciler.run_loop" and "Reconciler.tick" in _awaiting(coro):
            return False
    return True


def _awaiting(coro: Any) -> list[str]:
    names = []
    while coro is not None:
        names.append(getattr(coro, "__qualname__", type(coro).__name__))
        coro = getattr(coro, "cr_await", None)
    return names


# ---- a client that sends exactly the bytes it is given -------------------------------------------------------


async def send(port: int, case: Case, timeout: float = 10.0) -> Reply:
    head = [b"POST " + case.target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    head += [k + b": " + v for k, v in case.headers]
    if case.chunked:
        head.append(b"Transfer-Encoding: chunked")
        step = 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(case.body[i:i + step]), case.body[i:i + step])
                        for i in range(0, len(case.body), step)) + b"0\r\n\r\n"  # fmt: skip
    else:
        head.append(b"Content-Length: " + (case.declared if case.declared is not None else b"%d" % len(case.body)))
        body = case.body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # answered and closed before reading it all: the answer is still in our buffer
        return await asyncio.wait_for(_read_reply(reader), timeout)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        return Reply(None)
    finally:
        writer.close()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = headers.get("content-length")
    body = await reader.readexactly(int(length)) if length is not None else await reader.read()
    return Reply(status, headers.get("content-type", "").split(";")[0].strip(), body)

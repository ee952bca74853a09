"""Intake benchmark: POST /api/v1/alerts on the real controller against a bare aiohttp server.

Run by hand:  .venv/bin/python bench/intake.py            (about a minute on a 2-core machine)
              .venv/bin/python bench/intake.py --help     (durations, concurrency, rate, store sync mode)

Starts two subprocesses on free loopback ports:
  * the controller (`python -m controller serve --config <tmp>`), store in a temp dir, log level warning, one
    model `recsys` (matcher model="recsys"), rules mapping alertnames to reasons, pipeline command ["true"];
  * a bare aiohttp app (this file with --bare-server PORT) whose POST handler reads the body and answers 200 {}.

Every notification is an Alertmanager v4 webhook body with 10 alerts. The same payload sequence goes to both
servers. The policy (cooldown 1s, tick 1s, a huge daily budget) keeps a run starting, living ~1 s, ending, and
the model cooling down, over and over, so fresh episodes are a mix of accepted / joined / rate_limited, and
repeated episodes (as Alertmanager re-sends a group) are duplicates; a few alerts are notify-only, resolved or
match no model. The decision mix the controller reported is printed; on a 2-core machine it is about joined 34%,
rate_limited 30%, duplicate 26%, notify_only 4%, ignored_resolved 4%, unmatched 2%, and one accepted per run
(a run every ~2 s, so ~0.02% of alerts).

Measurements:
  1. throughput: closed loop, N concurrent clients for a fixed duration, against each server; notifications/s
     and the ratio controller/bare;
  2. latency: open loop at a fixed rate (default 200 notifications/s) on a fixed timetable; latency runs from
     the *scheduled* send time to the end of the response, so queueing is not hidden (no coordinated omission).

Human-readable table first; the LAST line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import hashlib
import json
import os
import math
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-" + secrets.token_urlsafe(24)
ALERTS_PER_NOTIFICATION = 10
PATH = "/api/v1/alerts"

# Alertnames and what the controller's config maps them to.
RETRAIN_ALERTS = {
    "RecsysPrecisionAtKDrop": "precision_drop",
    "RecsysFeatureDrift": "drift",
    "RecsysCalibrationDrift": "calibration",
    "RecsysCTRDrop": "ctr_drop",
}
NOTIFY_ONLY_ALERT = "RecsysEventStreamDown"


# ---- the bare server -------------------------------------------------------------------------------------------


def bare_server(port: int) -> None:
    from aiohttp import web

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(PATH, post)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


# ---- payloads --------------------------------------------------------------------------------------------------


def _rfc3339(t: datetime) -> str:
    # Alertmanager (Go) writes nanoseconds.
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


class Payloads:
    """A deterministic stream of v4 notification bodies (bytes), each with 10 alerts.

    Per alert slot: ~4% resolved, ~4% notify-only, ~2% another model (unmatched), ~40% a repeat of a recently
    sent firing episode (Alertmanager re-sending a group), the rest a fresh episode: a series firing again
    (same labels and fingerprint, a new startsAt). Series labels carry `tag`, so phases never share episodes.
    """

    def __init__(self, seed: int, tag: str, base: datetime, series: int = 4000):
        self.rng = random.Random(seed)
        self.base = base
        self.series: list[tuple[bytes, bytes, str]] = []  # (alert JSON before startsAt, after startsAt, name)
        self.generation = [0] * series
        self.recent: collections.deque[int] = collections.deque(maxlen=3000)  # encoded firing alerts sent
        self.recent_bytes: dict[int, bytes] = {}
        self.next_key = 0
        names = list(RETRAIN_ALERTS)
        for i in range(series):
            name = names[i % len(names)]
            self.series.append(self._series(name, "recsys", f"{tag}-{i}", i))
        self.notify_only = [self._series(NOTIFY_ONLY_ALERT, "recsys", f"{tag}-n{i}", i) for i in range(50)]
        self.other_model = [self._series("SearchNDCGDrop", "search", f"{tag}-o{i}", i) for i in range(50)]

    @staticmethod
    def _series(name: str, model: str, shard: str, i: int) -> tuple[bytes, bytes, str]:
        labels = {
            "alertname": name,
            "model": model,
            "severity": "page" if i % 3 else "ticket",
            "action": "retrain",
            "segment": f"seg-{i % 17}",
            "shard": shard,
            "job": f"{model}-monitor",
        }
        fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        annotations = {
            "summary": f"{name} on {model} ({labels['segment']})",
            "description": f"{name}: the monitored metric of {model} left its band for 15m on {labels['segment']}",
            "runbook_url": f"https://runbooks.example/{model}/{name}",
        }
        head = json.dumps({"labels": labels, "annotations": annotations}, separators=(",", ":"))[:-1]
        head += ',"startsAt":"'
        tail = (
            f'"generatorURL":"http://prometheus:9090/graph?g0.expr={name}%7Bmodel%3D%22{model}%22%7D&g0.tab=1",'
            f'"fingerprint":"{fingerprint}"'
        )
        return head.encode(), tail.encode(), name

    def _alert(self, s: tuple[bytes, bytes, str], gen: int, resolved: bool = False) -> bytes:
        starts = self.base + timedelta(seconds=gen * 7)
        if resolved:
            ends = _rfc3339(starts + timedelta(minutes=5))
            status = b'{"status":"resolved",'
        else:
            ends = "0001-01-01T00:00:00Z"
            status = b'{"status":"firing",'
        return status + s[0][1:] + _rfc3339(starts).encode() + b'","endsAt":"' + ends.encode() + b'",' + s[1] + b"}"

    def next(self) -> bytes:
        rng = self.rng
        parts = []
        firing = False
        for _ in range(ALERTS_PER_NOTIFICATION):
            r = rng.random()
            if r < 0.04:
                i = rng.randrange(len(self.series))
                parts.append(self._alert(self.series[i], self.generation[i], resolved=True))
                continue
            firing = True
            if r < 0.08:
                parts.append(self._alert(rng.choice(self.notify_only), 0))
            elif r < 0.10:
                parts.append(self._alert(rng.choice(self.other_model), 0))
            elif r < 0.50 and self.recent:
                parts.append(self.recent_bytes[rng.choice(self.recent)])
            else:
                i = rng.randrange(len(self.series))
                self.generation[i] += 1
                encoded = self._alert(self.series[i], self.generation[i])
                parts.append(encoded)
                if len(self.recent) == self.recent.maxlen:
                    self.recent_bytes.pop(self.recent[0], None)
                self.recent.append(self.next_key)
                self.recent_bytes[self.next_key] = encoded
                self.next_key += 1
        status = b"firing" if firing else b"resolved"
        return (
            b'{"receiver":"retrain-controller","status":"' + status + b'","alerts":[' + b",".join(parts) + b"],"
            b'"groupLabels":{"action":"retrain"},"commonLabels":{"action":"retrain"},"commonAnnotations":{},'
            b'"externalURL":"http://alertmanager:9093","version":"4",'
            b'"groupKey":"{}/{action=\\"retrain\\"}:{action=\\"retrain\\"}","truncatedAlerts":0}'
        )


# ---- subprocesses ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process, all threads."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def controller_config(tmp: Path, port: int, synchronous: str | None) -> Path:
    store: dict[str, Any] = {"path": str(tmp / "store" / "controller.db")}
    if synchronous:
        store["synchronous"] = synchronous
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning", "log_format": "json"},
        "store": store,
        "policy": {"cooldown": "1s", "daily_budget": 1_000_000, "max_concurrent_runs": 2, "tick_interval": "1s"},
        "models": [
            {
                "name": "recsys",
                "matchers": ['model="recsys"'],
                "rules": [{"alertname": a, "reason": r} for a, r in RETRAIN_ALERTS.items()]
                + [{"alertname": NOTIFY_ONLY_ALERT, "notify_only": True}],
                "pipeline": {"runner": "command", "command": ["true"]},
            }
        ],
    }
    path = tmp / "controller.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start(name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Server:
    out = log.open("wb")
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    return Server(name, proc, port, log)


def stop(server: Server) -> None:
    p = server.proc
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)  # aiohttp shuts down cleanly on SIGINT
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)  # anything it left in its own process group (started with a new session)


async def wait_ready(session: Any, server: Server, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{server.port}/healthz"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout_s}s:\n{server.tail()}")


# ---- load ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    phase: str
    sent: int = 0
    ok: int = 0
    non_200: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # open loop: actual send start - scheduled time
    bodies: list[bytes] = field(default_factory=list)
    elapsed: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    first_error: str = ""
    t0: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent at, s since start; latency)

    def stalls(self, threshold: float = 0.020, gap: float = 0.25) -> list[tuple[float, float, int]]:
        """Moments when answers took longer than `threshold`: (at s, worst latency, requests hit), worst first."""
        out: list[list[float]] = []
        for at, lat in sorted(s for s in self.samples if s[1] > threshold):
            if out and at - out[-1][3] <= gap:
                out[-1][1] = max(out[-1][1], lat)
                out[-1][2] += 1
                out[-1][3] = at
            else:
                out.append([at, lat, 1, at])
        return sorted(((a, w, int(n)) for a, w, n, _ in out), key=lambda x: -x[1])

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def decisions(self) -> collections.Counter[str]:
        mix: collections.Counter[str] = collections.Counter()
        for b in self.bodies:
            with contextlib.suppress(ValueError, AttributeError):
                mix.update(json.loads(b).get("summary", {}))
        return mix


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def post(session: Any, url: str, body: bytes, res: Result, started: float, keep_body: bool) -> None:
    import aiohttp

    res.sent += 1
    try:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        res.errors[type(exc).__name__] += 1
        return
    res.latencies.append(time.perf_counter() - started)
    res.samples.append((started - res.t0, res.latencies[-1]))
    if status == 200:
        res.ok += 1
        if keep_body:
            res.bodies.append(data)
    else:
        res.non_200[status] += 1
        if not res.first_error:
            res.first_error = data[:300].decode(errors="replace")


@contextlib.contextmanager
def no_client_gc() -> Any:
    """No cyclic-GC pauses in the load generator while it measures (phases are bounded, so memory is too)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def closed_loop(
    session: Any, server: Server, gen: Payloads, concurrency: int, duration: float, cap: int, phase: str,
    keep_bodies: bool = True,
) -> Result:
    res = Result(server.name, phase)
    deadline = 0.0
    counted = Result(server.name, phase)  # responses completed inside the window

    async def worker() -> None:
        while time.perf_counter() < deadline and res.sent < cap:
            t = time.perf_counter()
            await post(session, server.url, gen.next(), res, t, keep_bodies)
            if time.perf_counter() <= deadline:
                counted.ok = res.ok

    cpu0, ccpu0 = server.cpu_s(), time.process_time()
    t0 = res.t0 = time.perf_counter()
    deadline = t0 + duration
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    done, pending = await asyncio.wait(workers, timeout=duration + 30)
    for w in pending:
        w.cancel()
        res.errors["unfinished"] += 1
    res.elapsed = min(time.perf_counter(), deadline) - t0
    res.server_cpu, res.client_cpu = server.cpu_s() - cpu0, time.process_time() - ccpu0
    res.ok = counted.ok  # throughput counts only what completed within the window
    return res


async def open_loop(
    session: Any, server: Server, gen: Payloads, rate: float, duration: float, phase: str, drain_s: float = 20.0
) -> Result:
    res = Result(server.name, phase)
    n = int(rate * duration)
    bodies = [gen.next() for _ in range(n)]  # built before the clock starts: no generation cost in the timetable
    tasks = []

    async def one(body: bytes, scheduled: float) -> None:
        res.lags.append(time.perf_counter() - scheduled)
        await post(session, server.url, body, res, scheduled, True)

    cpu0, ccpu0 = server.cpu_s(), time.process_time()
    t0 = res.t0 = time.perf_counter() + 0.05
    for i, body in enumerate(bodies):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, scheduled)))
    done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    end = time.perf_counter()
    for i, t in enumerate(tasks):
        if t in pending:
            t.cancel()
            res.errors["unfinished"] += 1
            # Coordinated-omission safe: an unanswered request counts with at least the time it has waited.
            res.latencies.append(end - (t0 + i / rate))
    res.elapsed = end - t0
    res.server_cpu, res.client_cpu = server.cpu_s() - cpu0, time.process_time() - ccpu0
    return res


# ---- main ------------------------------------------------------------------------------------------------------


def fmt_ms(s: float) -> str:
    return f"{s * 1000:8.2f}"


async def run(args: argparse.Namespace, servers: dict[str, Server]) -> dict[str, Any]:
    import aiohttp

    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    limit = max(args.concurrency, 256)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for s in servers.values():
            await wait_ready(session, s)

        results: dict[tuple[str, str], Result] = {}
        # Warm-up: connections, imports, the SQLite file, both code paths.
        for name, s in servers.items():
            await closed_loop(session, s, Payloads(1, f"warm-{name}", base), args.concurrency, args.warmup, 100_000,
                              "warmup", keep_bodies=False)  # fmt: skip
        # 1. throughput, closed loop; the same payload sequence for both servers.
        for name, s in servers.items():
            print(f"throughput: {name}, {args.concurrency} clients, {args.duration:.0f}s ...", flush=True)
            with no_client_gc():
                results[name, "throughput"] = await closed_loop(
                    session, s, Payloads(2, "tput", base), args.concurrency, args.duration, args.max_requests,
                    "throughput",
                )
            await asyncio.sleep(1.0)
        # 2. latency, open loop on a fixed timetable.
        for name, s in servers.items():
            print(f"latency: {name}, {args.rate:.0f}/s for {args.latency_duration:.0f}s ...", flush=True)
            with no_client_gc():
                results[name, "latency"] = await open_loop(
                    session, s, Payloads(3, "lat", base), args.rate, args.latency_duration, "latency"
                )
            await asyncio.sleep(1.0)
    return report(args, results)


def report(args: argparse.Namespace, results: dict[tuple[str, str], Result]) -> dict[str, Any]:
    ct, bt = results["controller", "throughput"], results["bare", "throughput"]
    cl, bl = results["controller", "latency"], results["bare", "latency"]
    print()
    print(f"Intake benchmark: {ALERTS_PER_NOTIFICATION} alerts/notification, {os.cpu_count()} CPUs, "
          f"store synchronous={args.synchronous or 'default (full)'}")  # fmt: skip
    print()
    print(f"1. throughput, closed loop, {args.concurrency} clients, {args.duration:.0f}s")
    print(f"   {'server':<11}{'notif/s':>9}{'alerts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-200':>9}{'errors':>8}"
          f"{'srv CPU':>9}{'cli CPU':>9}")  # fmt: skip
    for r in (bt, ct):
        print(f"   {r.server:<11}{r.rate:9.1f}{r.rate * ALERTS_PER_NOTIFICATION:10.0f}{fmt_ms(pct(r.latencies, 50)):>9}"
              f"{fmt_ms(pct(r.latencies, 99)):>9}{sum(r.non_200.values()):9d}{sum(r.errors.values()):8d}"
              f"{r.server_cpu / r.elapsed:8.0%} {r.client_cpu / r.elapsed:8.0%}")  # fmt: skip
    ratio = ct.rate / bt.rate if bt.rate else float("nan")
    print(f"   controller/bare = {ratio:.3f}")
    if bt.client_cpu / bt.elapsed > 0.9:
        print("   (the load generator used a whole core against the bare server: its figure is a floor, the true"
              " ratio is lower still)")  # fmt: skip
    print()
    print(f"2. latency, open loop, {args.rate:.0f} notifications/s for {args.latency_duration:.0f}s"
          " (from scheduled send time)")  # fmt: skip
    print(f"   {'server':<11}{'done':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-200':>9}"
          f"{'errors':>8}{'lag p99':>9}{'srv CPU':>9}")  # fmt: skip
    for r in (bl, cl):
        print(f"   {r.server:<11}{r.ok:7d}{fmt_ms(pct(r.latencies, 50)):>9}{fmt_ms(pct(r.latencies, 90)):>9}"
              f"{fmt_ms(pct(r.latencies, 99)):>9}{fmt_ms(max(r.latencies, default=float('nan'))):>9}"
              f"{sum(r.non_200.values()):9d}{sum(r.errors.values()):8d}{fmt_ms(pct(r.lags, 99)):>9}"
              f"{r.server_cpu / r.elapsed:8.0%}")  # fmt: skip
    print("   (lag p99: how late the client itself started sends; it is included in the latencies)")
    for r in (bl, cl):
        st = r.stalls()
        if st:
            worst = "; ".join(f"at {a:.1f}s peak {w * 1000:.0f} ms, {n} req" for a, w, n in st[:4])
            print(f"   {r.server}: {len(st)} stall(s) with answers > 20 ms: {worst}")
    mix = ct.decisions() + cl.decisions()
    total = sum(mix.values()) or 1
    print()
    print("controller decisions (throughput + latency phases): "
          + ", ".join(f"{k} {v / total:.1%} ({v})" for k, v in mix.most_common()))  # fmt: skip
    non_200 = {f"{r.server}_{r.phase}": dict(r.non_200) for r in results.values() if r.non_200}
    errors = {f"{r.server}_{r.phase}": dict(r.errors) for r in results.values() if r.errors}
    if non_200 or errors:
        print(f"non-200 answers: {non_200}; client errors: {errors}")
        for r in results.values():
            if r.first_error:
                print(f"   first non-200 body from {r.server} ({r.phase}): {r.first_error}")
    p99 = pct(cl.latencies, 99)
    targets = {"throughput_ratio_vs_bare>=0.5": ratio >= 0.5, "p99_ms_at_200rps<20": p99 * 1000 < 20}
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    def r3(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 3)  # the JSON line stays strict JSON

    return {
        "throughput_ratio_vs_bare": r3(ratio),
        "p99_ms_at_200rps": r3(p99 * 1000),
        "notifications_per_s": r3(ct.rate),
        "bare_notifications_per_s": r3(bt.rate),
        "alerts_per_s": r3(ct.rate * ALERTS_PER_NOTIFICATION),
        "p50_ms_at_200rps": r3(pct(cl.latencies, 50) * 1000),
        "p90_ms_at_200rps": r3(pct(cl.latencies, 90) * 1000),
        "max_ms_at_200rps": r3(max(cl.latencies, default=float("nan")) * 1000),
        "stalls_over_20ms_at_200rps": len(cl.stalls()),
        "bare_p50_ms_at_200rps": r3(pct(bl.latencies, 50) * 1000),
        "bare_p99_ms_at_200rps": r3(pct(bl.latencies, 99) * 1000),
        "closed_loop_p50_ms": r3(pct(ct.latencies, 50) * 1000),
        "closed_loop_p99_ms": r3(pct(ct.latencies, 99) * 1000),
        "controller_cpu_per_notification_ms": r3(ct.server_cpu / max(ct.ok, 1) * 1000),
        "bare_cpu_per_notification_ms": r3(bt.server_cpu / max(bt.ok, 1) * 1000),
        "non_200": sum(sum(r.non_200.values()) for r in results.values()),
        "client_errors": sum(sum(r.errors.values()) for r in results.values()),
        "decision_mix": dict(mix.most_common()),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rate": args.rate,
        "alerts_per_notification": ALERTS_PER_NOTIFICATION,
        "store_synchronous": args.synchronous or "full",
        "cpus": os.cpu_count(),
        "targets_met": all(targets.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    p.add_argument("--duration", type=float, default=10.0, help="closed-loop seconds per server (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server (default 2)")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop notifications/s (default 200)")
    p.add_argument("--latency-duration", type=float, default=10.0, help="open-loop seconds per server (default 10)")
    p.add_argument("--max-requests", type=int, default=200_000, help="closed-loop cap per server")
    p.add_argument("--request-timeout", type=float, default=15.0)
    p.add_argument("--synchronous", choices=["full", "normal"], help="the store's synchronous mode (default: the"
                   " controller's default, full)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temp dir (store, config, logs)")
    args = p.parse_args(argv)
    if args.bare_server is not None:
        bare_server(args.bare_server)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    servers: dict[str, Server] = {}
    try:
        cport, bport = free_port(), free_port()
        while bport == cport:
            bport = free_port()
        config = controller_config(tmp, cport, args.synchronous)
        env = {**os.environ, "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN": TOKEN}
        env.pop("RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE", None)
        env = {k: v for k, v in env.items() if not k.startswith("RETRAIN_CONTROLLER__")}  # no stray overrides
        servers["bare"] = start(
            "bare", [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(bport)], bport, tmp / "bare.log"
        )
        servers["controller"] = start(
            "controller", [sys.executable, "-m", "controller", "serve", "--config", str(config)], cport,
            tmp / "controller.log", env,
        )  # fmt: skip
        summary = asyncio.run(run(args, servers))
        for s in servers.values():
            if s.proc.poll() is not None:
                print(f"warning: {s.name} exited early ({s.proc.returncode}):\n{s.tail()}", flush=True)
    finally:
        for s in servers.values():
            stop(s)
        if args.keep:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stderr.flush()
    print(json.dumps(summary, separators=(", ", ": ")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak benchmark: the controller under a steady stream of notifications for a long time, runs cycling.

Run by hand:  .venv/bin/python bench/soak.py                 (an hour)
              .venv/bin/python bench/soak.py --minutes 10    (shorter; --help for the rest)

The controller is a subprocess (`python -m controller serve`), store in a temp dir (`synchronous=full`), four
models, cooldown 2 s, at most 2 runs at once, tick 1 s, and the `command` pipeline runner. Each pipeline sleeps
0.3 s, then by its run id either reports an image through the run's callback (the run goes deploying, and with no
canary configured rolls back) or exits 1 (the run fails). So runs keep starting, queueing and ending all along.

Notifications go out open loop at a fixed rate (default 50/s) on a fixed timetable; latency runs from the
scheduled send time to the end of the answer, so queueing is not hidden. Each is one Alertmanager group (one
model) of 1 to 6 alerts: ~55% new episodes (a series firing again with a new startsAt), ~30% repeats of recent
episodes, ~10% resolved, ~5% notify-only.

Every interval (default 60 s) it prints the controller's RSS (/proc/<pid>/status VmRSS), p50/p99/max latency of
that interval's notifications, answers other than 200, the store's size (database + WAL), the runs that ended,
the controller's CPU and the machine's 1-minute load average (other work on a small machine shows up as latency).
RSS growth is measured from the end of the first interval (caches warm, under load) to the end; the idle RSS
before any load is printed too. The LAST line is JSON: {"rss_growth": .., "p99_ms": .., ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import secrets
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra.procs import Service, controller_service, free_port, kill_process_groups  # noqa: E402

TOKEN = "soak-" + secrets.token_urlsafe(24)
MODELS = ("recsys", "search", "ads", "feed")
REASONS = {"PrecisionAtKDrop": "precision_drop", "FeatureDrift": "drift", "CTRDrop": "ctr_drop"}
NOTIFY_ONLY = "EventStreamDown"
# Half the runs (hex ids ending 0-7) report an image; the others fail.
PIPELINE = """sleep 0.3
case "$RETRAIN_RUN_ID" in *[0-7]) ;; *) echo 'training failed' >&2; exit 1 ;; esac
digest=$(printf '%064d' 0)
curl -fsS -m 10 --retry 5 --retry-all-errors -o /dev/null -H "Authorization: Bearer $RETRAIN_CALLBACK_TOKEN" \
  -H 'Content-Type: application/json' "$RETRAIN_CALLBACK_URL" \
  -d "{\\"event\\":\\"image\\",\\"image\\":\\"images.invalid/$RETRAIN_MODEL@sha256:$digest\\"}"
"""


def config(tmp: Path, port: int) -> Path:
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning", "log_format": "json"},
        "store": {"path": str(tmp / "store" / "controller.db")},
        "policy": {"cooldown": "2s", "daily_budget": 1_000_000, "max_concurrent_runs": 2, "tick_interval": "1s"},
        "models": [
            {
                "name": m,
                "matchers": [f'model="{m}"'],
                "rules": [{"alertname": a, "reason": r} for a, r in REASONS.items()]
                + [{"alertname": NOTIFY_ONLY, "notify_only": True}],
                "pipeline": {"runner": "command", "command": ["sh", "-c", PIPELINE]},
            }
            for m in MODELS
        ],
    }
    path = tmp / "controller.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


class Payloads:
    """Alertmanager v4 groups, one model each, with new, repeated and resolved episodes."""

    def __init__(self, seed: int, series_per_model: int = 200):
        self.rng = random.Random(seed)
        self.base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
        self.gen: dict[tuple[str, str, int], int] = collections.defaultdict(int)
        self.recent: dict[str, collections.deque[dict[str, Any]]] = {m: collections.deque(maxlen=200) for m in MODELS}
        self.series = series_per_model

    def _alert(self, model: str, name: str, i: int, gen: int, resolved: bool = False) -> dict[str, Any]:
        starts = self.base + timedelta(seconds=gen * 7)
        labels = {"alertname": name, "model": model, "segment": f"seg-{i}", "action": "retrain", "severity": "page"}
        return {
            "status": "resolved" if resolved else "firing",
            "labels": labels,
            "annotations": {"summary": f"{name} on {model} (seg-{i})"},
            "startsAt": starts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
            "endsAt": (starts + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ") if resolved
            else "0001-01-01T00:00:00Z",
            "generatorURL": f"http://prometheus:9090/graph?g0.expr={name}",
            "fingerprint": hashlib.sha256(f"{model}/{name}/{i}".encode()).hexdigest()[:16],
        }  # fmt: skip

    def next(self) -> bytes:
        rng = self.rng
        model = rng.choice(MODELS)
        alerts = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            name, i = rng.choice(list(REASONS)), rng.randrange(self.series)
            if r < 0.10:
                alerts.append(self._alert(model, name, i, self.gen[(model, name, i)], resolved=True))
            elif r < 0.15:
                alerts.append(self._alert(model, NOTIFY_ONLY, 0, 0))
            elif r < 0.45 and self.recent[model]:
                alerts.append(rng.choice(self.recent[model]))
            else:
                self.gen[(model, name, i)] += 1
                alert = self._alert(model, name, i, self.gen[(model, name, i)])
                self.recent[model].append(alert)
                alerts.append(alert)
        status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
        return json.dumps({
            "version": "4", "groupKey": f'{{}}/{{action="retrain"}}:{{model="{model}"}}', "truncatedAlerts": 0,
            "status": status, "receiver": "retrain-controller", "groupLabels": {"model": model},
            "commonLabels": {"model": model, "action": "retrain"}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": alerts,
        }).encode()  # fmt: skip


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


ENDS = ("failed", "rolled_back", "succeeded")


def runs_ended(metrics: str) -> collections.Counter[str]:
    """Transitions into each phase so far, from the controller's own counter."""
    out: collections.Counter[str] = collections.Counter()
    for line in metrics.splitlines():
        if line.startswith("retrain_controller_run_transitions_total{"):
            phase = line.split('phase="', 1)[1].split('"', 1)[0]
            out[phase] += float(line.rsplit(" ", 1)[1])
    return out


async def soak(args: argparse.Namespace, controller: Service, db: Path) -> dict[str, Any]:
    import aiohttp

    pid = controller.proc.pid
    assert pid is not None
    gen = Payloads(args.seed)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    url = controller.url + "/api/v1/alerts"
    lat: list[float] = []  # this interval's answers
    all_lat: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(body: bytes, scheduled: float) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    codes[str(resp.status)] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                codes[type(exc).__name__] += 1
            lat.append(time.perf_counter() - scheduled)

        async def send(t0: float, total: int) -> set[asyncio.Task[None]]:
            tasks: set[asyncio.Task[None]] = set()
            for i in range(total):
                scheduled = t0 + i / args.rate
                body = gen.next()
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(body, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            return tasks

        last: collections.Counter[str] = collections.Counter()

        async def ended() -> collections.Counter[str]:
            # Its own connection and timeout: a backlog of notifications must not stall or end the sampling.
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as probe:
                    async with probe.get(controller.url + "/metrics") as resp:
                        last.update(runs_ended(await resp.text()) - last)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # this row repeats the last count
            return collections.Counter(last)

        def row(at: float, ended_now: collections.Counter[str]) -> None:
            done = lat[:]
            lat.clear()
            all_lat.extend(done)
            r = {
                "minute": round(at / 60, 2), "rss_kib": rss_kib(pid),
                "cpu": (cpu_s(pid) - sum(x["cpu_s"] for x in rows) - cpu0) / args.interval * 100,
                "p50_ms": pct(done, 50) * 1000, "p99_ms": pct(done, 99) * 1000,
                "max_ms": max(done, default=float("nan")) * 1000, "answers": len(done),
                "non_200": sum(v for k, v in codes.items() if k != "200") - sum(x["non_200"] for x in rows),
                "store_bytes": store_bytes(db),
                "load": float(Path("/proc/loadavg").read_text().split()[0]),  # other work on the machine shows here
                "runs_ended": sum(ended_now[p] - ended0[p] for p in ENDS) - sum(x["runs_ended"] for x in rows),
            }  # fmt: skip
            r["cpu_s"] = r["cpu"] * args.interval / 100
            rows.append(r)
            print(f"{r['minute']:6.1f} {r['rss_kib'] / 1024:8.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                  f"{r['max_ms']:7.1f} {r['answers']:7d} {r['non_200']:7d} {r['store_bytes'] / 2**20:9.1f} "
                  f"{r['runs_ended']:10.0f} {r['cpu']:5.0f}% {r['load']:5.2f}", flush=True)  # fmt: skip

        idle = rss_kib(pid)
        print(f"controller pid {pid}, idle RSS {idle / 1024:.1f} MiB; {args.rate:g} notifications/s for "
              f"{args.minutes:g} min, a row every {args.interval:g} s", flush=True)  # fmt: skip
        print(f"{'min':>6} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'answers':>7} {'non-200':>7} "
              f"{'store MiB':>9} {'runs ended':>10} {'CPU':>6} {'load':>5}", flush=True)  # fmt: skip
        ended0 = await ended()
        cpu0 = cpu_s(pid)
        duration = args.minutes * 60
        t0 = time.perf_counter() + 0.1
        sender = asyncio.create_task(send(t0, int(duration * args.rate)))
        at = args.interval
        while at < duration:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            row(at, await ended())
            at += args.interval
        in_flight = await sender
        if in_flight:
            _, unfinished = await asyncio.wait(in_flight, timeout=30)
            for task in unfinished:
                task.cancel()
                codes["unfinished"] += 1
        row(duration, await ended())
        runs = await ended()
    start, end = rows[0]["rss_kib"], rows[-1]["rss_kib"]
    return {
        "rss_growth": round((end - start) / start, 4),
        "p99_ms": round(pct(all_lat, 99) * 1000, 2),
        "p50_ms": round(pct(all_lat, 50) * 1000, 2),
        "max_ms": round(max(all_lat) * 1000, 1),
        "worst_interval_p99_ms": round(max(r["p99_ms"] for r in rows), 2),
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_start_mib": round(start / 1024, 1),
        "rss_end_mib": round(end / 1024, 1),
        "store_mib": round(store_bytes(db) / 2**20, 1),
        "notifications": sum(codes.values()),
        "answers": dict(codes),
        "runs_ended": {p: int(runs[p] - ended0[p]) for p in ENDS},
        "max_load": max(r["load"] for r in rows),
        "minutes": args.minutes,
        "rate": args.rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to send (default 60)")
    parser.add_argument("--rate", type=float, default=50.0, help="notifications per second (default 50)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per row of the table (default 60)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (store, log) and print its path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    port = free_port()
    env = {"RETRAIN_CONTROLLER_CALLBACK_SECRET": secrets.token_urlsafe(24)}
    controller = controller_service(tmp / "controller", config(tmp, port), port, TOKEN, env)
    db = tmp / "store" / "controller.db"
    try:
        controller.start()
        result = asyncio.run(soak(args, controller, db))
    finally:
        code = controller.stop(timeout=30)
        kill_process_groups(sorted((db.parent / "pipelines").glob("*/pid")))
    print(f"controller exited {code}; log {controller.proc.log_path}" if args.keep else f"controller exited {code}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

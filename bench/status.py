"""Status page benchmark: render time of `GET /` and `GET /runs/{id}` over a big store.

Run by hand:  .venv/bin/python bench/status.py          (seeding takes about a minute; --runs/--decisions to change)

Seeds a store on disk with 10,000 runs (a few live, the rest ended, each with its transitions and 30
measurements on some) and 100,000 alert decisions across 20 models, through the store's own write path; then
serves the real app in-process and times requests from an aiohttp client: the status page, a run page, and, as the
baseline in the same run, `GET /healthz` (the cost of the HTTP round trip alone). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from controller.adapters.clock import SystemClock  # noqa: E402
from controller.adapters.sqlite import SqliteStore  # noqa: E402
from controller.app import Adapters, create_app  # noqa: E402
from controller.config import load_settings  # noqa: E402
from controller.core.alerts import Notification  # noqa: E402
from controller.core.policy import Decision, Kind  # noqa: E402
from controller.core.judge import Outcome, Verdict  # noqa: E402
from controller.core.runs import Phase, new_run, transition  # noqa: E402
from controller.core.state import Look  # noqa: E402
from controller.ports import NotificationRecord  # noqa: E402

MODELS = [f"model{i:02d}" for i in range(20)]
IMAGE = "registry.example/ml/{m}@sha256:" + "ab" * 32


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def config(tmp: Path) -> Path:
    models = [{"name": m, "matchers": [f'model="{m}"'], "rules": [{"alertname": "PrecisionDrop", "reason": "precision_drop"}],
               "pipeline": {"runner": "command", "command": ["true"]}} for m in MODELS]  # fmt: skip
    cfg = {"server": {"log_level": "warning"}, "store": {"path": str(tmp / "store.db"), "synchronous": "normal"},
           "policy": {"max_concurrent_runs": 5, "tick_interval": "1h"}, "models": models}  # fmt: skip
    path = tmp / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


async def seed(store: SqliteStore, runs: int, decisions: int, rng: random.Random) -> list[str]:
    deadlines = {p: timedelta(hours=6) for p in Phase}
    start = datetime.now(timezone.utc) - timedelta(seconds=runs * 150)  # the last runs are recent: still live
    per = max(1, decisions // runs)
    ids = []
    for i in range(runs):
        at = start + timedelta(seconds=i * 150)
        model = MODELS[i % len(MODELS)]
        run_id = f"run{i:06d}"
        alerts = [{
            "status": "firing", "labels": {"alertname": "PrecisionDrop", "model": model, "pod": f"p{j}"},
            "annotations": {"summary": "precision@k fell"}, "startsAt": (at - timedelta(minutes=j)).isoformat(),
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": f"{i:08x}{j:08x}",
        } for j in range(per)]  # fmt: skip
        body = {"version": "4", "groupKey": "{}", "truncatedAlerts": 0, "status": "firing", "receiver": "r",
                "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": alerts}  # fmt: skip
        n = Notification.model_validate(body)
        kinds = [Kind.ACCEPTED] + [rng.choice([Kind.JOINED, Kind.DUPLICATE, Kind.RATE_LIMITED]) for _ in range(per - 1)]
        ds = [Decision(j, f"{a.fingerprint}@{a.startsAt.isoformat()}", k, f"bench {k.value}", model, "precision_drop",
                       run_id if k in (Kind.ACCEPTED, Kind.JOINED, Kind.DUPLICATE) else None)
              for j, (a, k) in enumerate(zip(n.alerts, kinds))]  # fmt: skip
        run, t = new_run(run_id, model, Phase.TRIGGERING, ("precision_drop",), at, deadlines, "bench: accepted")
        record = NotificationRecord(at, json.dumps(body), "{}", "r", "firing", 0)
        await store.record_notification(record, list(n.alerts), ds, [(run, t)])
        if i < runs - len(MODELS) // 4:  # all but a few end
            path = [Phase.TRAINING, Phase.DEPLOYING, Phase.ANALYZING,
                    rng.choice([Phase.PROMOTING, Phase.ROLLING_BACK])]  # fmt: skip
            looks = tuple(
                Look(at=at, step=1, weight=10, verdict=Verdict(Outcome.INCONCLUSIVE, "bench", 0.1 * k, 3.0, 1.0),
                     stable={"hits": 45.0 * k, "trials": 900.0 * k}, canary={"hits": 5.0 * k, "trials": 100.0 * k})
                for k in range(1, 31)) if i % 10 == 0 else ()  # fmt: skip
            for to in path + [Phase.SUCCEEDED if path[-1] is Phase.PROMOTING else Phase.ROLLED_BACK]:
                if to is Phase.DEPLOYING:
                    last = looks[-1].verdict if looks else None
                    run = replace(run, image=IMAGE.format(m=model), verdict=last)
                run, t = transition(run, to, f"bench: {to.value}", at, deadlines)
                await store.apply(run, t)
                if to is Phase.ANALYZING:
                    for look in looks:  # kept beside the run, as the canary room keeps them
                        await store.update_run(run, look)
        ids.append(run_id)
        if i % 1000 == 999:
            print(f"  seeded {i + 1} runs", flush=True)
    return ids


async def timed(client: TestClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = await client.get(path)
        await r.read()
        assert r.status == 200, (path, r.status)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp())
    settings = load_settings(config(tmp), {"RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN": "bench-token-123456"})
    store = SqliteStore(settings.store.path, synchronous="normal")
    await store.open()
    t0 = time.perf_counter()
    ids = await seed(store, args.runs, args.decisions, random.Random(7))
    await store.close()
    print(f"seeded {args.runs} runs, {args.decisions} decisions in {time.perf_counter() - t0:.0f}s")
    app = create_app(settings, Adapters(SqliteStore(settings.store.path), {}, SystemClock()))
    async with TestClient(TestServer(app)) as client:
        await timed(client, "/", 5)  # warm-up
        health = await timed(client, "/healthz", args.n)
        page = await timed(client, "/", args.n)
        run = await timed(client, f"/runs/{ids[len(ids) // 2 // 10 * 10]}", args.n)  # one with measurements
        page2 = await timed(client, "/?page=40", args.n)
    rows = [("GET /healthz (baseline)", health), ("GET /", page), ("GET /?page=40", page2), ("GET /runs/{id}", run)]
    for name, v in rows:
        print(f"{name:26} p50 {statistics.median(v):7.2f} ms   p99 {pct(v, 0.99):7.2f} ms")
    print(f"status page p50 / baseline p50: {statistics.median(page) / statistics.median(health):.1f}x")
    worst = max(pct(page, 0.99), pct(run, 0.99), pct(page2, 0.99))
    print(f"target p99 < 100 ms: {'met' if worst < 100 else 'MISSED'} (worst page p99 {worst:.1f} ms)")
    print(json.dumps({"render_ms_p50": round(statistics.median(page), 2), "render_ms_p99": round(pct(page, 0.99), 2),
                      "run_page_ms_p50": round(statistics.median(run), 2), "run_page_ms_p99": round(pct(run, 0.99), 2),
                      "baseline_ms_p50": round(statistics.median(health), 2)}))  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("-n", type=int, default=200, help="requests per page (default 200)")
    asyncio.run(main(ap.parse_args()))

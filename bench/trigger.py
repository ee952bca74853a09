"""Trigger benchmark: from an accepted alert to the GitLab pipeline it creates, through the real controller.

Run by hand:  .venv/bin/python bench/trigger.py          (about half a minute)

The controller runs as a subprocess with the GitLab runner; GitLab is the protocol-faithful stand-in from
tests/fakes/gitlab/, served from this process, driven by the controller through python-gitlab.

  1. latency: one alert at a time, for GitLab answering at once and with 100 ms added to every request; time from
     the POST to Alertmanager's endpoint to the moment the stand-in recorded the pipeline. The baseline, in the
     same run, is python-gitlab creating a pipeline directly against the same stand-in: what is left over is the
     controller's own cost (store writes, the loop's wake-up, the thread hop).
  2. throughput: 100 alerts for 100 models at once under a concurrency cap of 10; each pipeline "runs" 0.5 s,
     then fails (which ends its run and frees a slot). Reports the time to drain against the ideal
     ceil(100 / cap) x 0.5 s, the most pipelines ever running at once (must not exceed the cap), and pipelines
     per run (must be exactly 1).

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.adapters.gitlab import make_client  # noqa: E402
from tests.fakes.gitlab import DEFAULT_PROJECT_PATH, DEFAULT_TOKEN, FakeGitlab  # noqa: E402
from tests.infra.procs import free_port, wait_http  # noqa: E402

TOKEN = "bench-trigger-token-0c3a"
CAP = 10
PIPELINE_S = 0.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def config(tmp: Path, port: int, gitlab_url: str, models: int, cap: int, poll: str) -> Path:
    cfg = {
        "server": {"port": port, "log_level": "warning", "log_format": "json"},
        "store": {"path": str(tmp / "store.db")},
        "policy": {"max_concurrent_runs": cap, "tick_interval": "100ms", "cooldown": "1h"},
        "gitlab": {"url": gitlab_url, "timeout": "10s", "retry_total": "30s", "poll_interval": poll},
        "models": [
            {
                "name": f"m{i:03d}",
                "matchers": [f'model="m{i:03d}"'],
                "rules": [{"alertname": "RecsysPrecisionAtKDrop", "reason": "precision_drop"}],
                "pipeline": {"runner": "gitlab", "project": DEFAULT_PROJECT_PATH, "ref": "main"},
            }
            for i in range(models)
        ],
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def alert_body(model: str) -> bytes:
    return json.dumps(
        {
            "version": "4", "groupKey": f'{{}}:{{model="{model}"}}', "truncatedAlerts": 0, "status": "firing",
            "receiver": "retrain-controller", "groupLabels": {"model": model}, "commonLabels": {"model": model},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": [{
                "status": "firing", "labels": {"alertname": "RecsysPrecisionAtKDrop", "model": model},
                "annotations": {}, "startsAt": "2026-11-24T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": f"{abs(hash(model)):016x}"[:16],
            }],
        }
    ).encode()  # fmt: skip


def post_alert(url: str, model: str) -> None:
    req = urllib.request.Request(
        f"{url}/api/v1/alerts", alert_body(model), {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200, resp.status


class BenchController:
    def __init__(self, tmp: Path, gitlab_url: str, models: int, cap: int, poll: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_CONTROLLER_")}
        env.update(RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN=TOKEN, RETRAIN_CONTROLLER_GITLAB_TOKEN=DEFAULT_TOKEN,
                   RETRAIN_CONTROLLER_CALLBACK_SECRET="bench-callback-secret")  # fmt: skip
        self.log = (tmp / "controller.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--config", str(config(tmp, self.port, gitlab_url, models, cap, poll))],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_http(f"{self.url}/readyz", 30)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_for(check: Any, timeout: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.002)
    raise TimeoutError("the controller did not create the pipeline in time")


def direct_creates(fake: FakeGitlab, url: str, n: int) -> list[float]:
    project = make_client(url, DEFAULT_TOKEN, 10).projects.get(DEFAULT_PROJECT_PATH, lazy=True)
    out = []
    for i in range(n):
        started = time.perf_counter()
        project.pipelines.create({"ref": "main", "variables": [{"key": "RETRAIN_RUN_ID", "value": f"direct-{i}"}]})
        out.append((time.perf_counter() - started) * 1000)
    return out


def latency(latency_s: float, n: int) -> dict[str, Any]:
    fake = FakeGitlab(latency=latency_s)
    with fake.serve_in_thread() as gitlab_url, tempfile.TemporaryDirectory() as tmp:
        baseline = direct_creates(fake, gitlab_url, n)
        # Pipelines keep running here, so live runs pile up: poll them at a production-like pace.
        ctl = BenchController(Path(tmp), gitlab_url, n, cap=n, poll="30s")
        try:
            samples = []
            for i in range(n):
                before = len(fake.pipelines())
                sent = datetime.now(timezone.utc)
                post_alert(ctl.url, f"m{i:03d}")
                made = wait_for(lambda: (p := fake.pipelines())[before:] and p[-1], 10)
                samples.append((made.created_at - sent).total_seconds() * 1000)
        finally:
            ctl.close()
    return {
        "gitlab_latency_ms": latency_s * 1000,
        "p50_ms": statistics.median(samples),
        "p99_ms": pct(samples, 0.99),
        "direct_create_p50_ms": statistics.median(baseline),
        "overhead_p50_ms": statistics.median(samples) - statistics.median(baseline),
    }


def throughput(n: int, cap: int) -> dict[str, Any]:
    fake = FakeGitlab()
    with fake.serve_in_thread() as gitlab_url, tempfile.TemporaryDirectory() as tmp:
        ctl = BenchController(Path(tmp), gitlab_url, n, cap, poll="0s")  # polling is what frees the slots here
        stop = threading.Event()
        most = 0

        def run_pipelines() -> None:  # each pipeline runs PIPELINE_S, then fails
            nonlocal most
            while not stop.is_set():
                now = datetime.now(timezone.utc)
                open_ = [p for p in fake.pipelines() if p.status == "created"]
                most = max(most, len(open_))
                for p in open_:
                    if (now - p.created_at).total_seconds() >= PIPELINE_S:
                        fake.set_status(p.id, "failed")
                time.sleep(0.005)

        worker = threading.Thread(target=run_pipelines, daemon=True)
        worker.start()
        try:
            started = time.perf_counter()
            threads = [threading.Thread(target=post_alert, args=(ctl.url, f"m{i:03d}")) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_for(lambda: len(fake.pipelines()) >= n and all(p.status == "failed" for p in fake.pipelines()), 120)
            elapsed = time.perf_counter() - started
            runs = json.loads(urllib.request.urlopen(f"{ctl.url}/api/v1/runs?limit=500", timeout=10).read())["runs"]
        finally:
            stop.set()
            worker.join(5)
            ctl.close()
    per_run: dict[str, int] = {}
    for p in fake.pipelines():
        per_run[p.vars["RETRAIN_RUN_ID"]] = per_run.get(p.vars["RETRAIN_RUN_ID"], 0) + 1
    ideal = math.ceil(n / cap) * PIPELINE_S
    return {
        "runs": len(runs),
        "pipelines": len(fake.pipelines()),
        "pipelines_per_run": len(fake.pipelines()) / max(1, len(runs)),
        "max_running_at_once": most,
        "cap": cap,
        "drain_s": elapsed,
        "ideal_drain_s": ideal,
        "drain_ratio_vs_ideal": elapsed / ideal,
        "exactly_one_each": sorted(per_run) == sorted(r["id"] for r in runs) and set(per_run.values()) == {1},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=100, help="alerts per latency scenario (default 100)")
    args = ap.parse_args()
    results = {}
    for lat in (0.0, 0.1):
        r = latency(lat, args.alerts)
        results[f"latency_{int(lat * 1000)}ms"] = r
        print(f"GitLab +{r['gitlab_latency_ms']:.0f} ms: alert->pipeline p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms;"
              f" direct python-gitlab create p50 {r['direct_create_p50_ms']:.1f} ms;"
              f" controller overhead p50 {r['overhead_p50_ms']:.1f} ms")  # fmt: skip
    t = throughput(100, CAP)
    results["throughput"] = t
    print(f"100 concurrent alerts, cap {t['cap']}: drained in {t['drain_s']:.2f} s (ideal {t['ideal_drain_s']:.1f} s,"
          f" ratio {t['drain_ratio_vs_ideal']:.2f}); at most {t['max_running_at_once']} running at once;"
          f" {t['pipelines']} pipelines for {t['runs']} runs, exactly one each: {t['exactly_one_each']}")  # fmt: skip
    print(json.dumps(results))
    z = results["latency_0ms"]
    print(json.dumps({"p50_ms": round(z["p50_ms"], 1), "p99_ms": round(z["p99_ms"], 1),
                      "p50_ms_gitlab_100ms": round(results["latency_100ms"]["p50_ms"], 1),
                      "p99_ms_gitlab_100ms": round(results["latency_100ms"]["p99_ms"], 1),
                      "pipelines_per_run": t["pipelines_per_run"], "max_running_at_once": t["max_running_at_once"],
                      "drain_ratio_vs_ideal": round(t["drain_ratio_vs_ideal"], 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the demo runs: its options, working directory, and the configs of Prometheus and the controller."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from controller.demo.processes import DemoError
from controller.demo.story import PRECISION_ALERT
from controller.demo.timescale import prom_duration

TIME_FACTOR = 1 / 180  # Prometheus and Alertmanager durations: an hour lasts 20 s
MIN_WINDOW = timedelta(seconds=4)  # a rate window spans at least four scrapes
# An alert holds at least this long: Prometheus scrapes a new target only after its first discovery update
# (about 5 s), and until then absent() is true.
MIN_FOR = timedelta(seconds=8)
SCRAPE = timedelta(seconds=1)
FLOOR_SHARE = 0.7  # the demo's precision floor: 70% of the fresh model's precision
MARKER = ".retrain-controller-demo"
MODEL = "recsys"


@dataclass
class Options:
    workdir: Path = Path("var/demo")
    port: int = 8080
    once: bool = False
    bad_model: bool = False
    seed: int = 5
    day_seconds: float = 14.0
    requests_per_day: int = 5000
    timeout_s: float = 300.0
    rules_dir: Path = field(default_factory=lambda: _repo_file("prometheus"))


def _repo_file(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / name


def prepare_workdir(path: Path) -> None:
    """A fresh directory each time; only one the demo made itself is ever emptied."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DemoError(f"{path} is not empty and was not made by the demo; pick another --workdir")
        shutil.rmtree(path)
    for sub in ("data", "models", "pipelines"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()


def prometheus_config(rules: list[Path], am_port: int, service_port: int, controller_port: int) -> str:
    scrape = prom_duration(SCRAPE)
    return yaml.safe_dump({
        "global": {"scrape_interval": scrape, "evaluation_interval": scrape, "scrape_timeout": scrape},
        "rule_files": [str(p) for p in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "recsys", "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]},
            {"job_name": "retrain-controller", "static_configs": [{"targets": [f"127.0.0.1:{controller_port}"]}]},
        ],
    }, sort_keys=False)  # fmt: skip


def controller_config(opts: Options, port: int, prometheus_port: int) -> dict[str, Any]:
    work = opts.workdir.resolve()
    window = prom_duration(MIN_WINDOW)
    canary = f'{{model="{MODEL}",track="canary"}}'
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_format": "json"},
        "store": {"path": str(work / "controller.db")},
        "prometheus": {"url": f"http://127.0.0.1:{prometheus_port}", "timeout": "3s"},
        "policy": {
            "cooldown": "40s", "daily_budget": 50, "max_concurrent_runs": 1, "tick_interval": "500ms",
            "deadlines": {"triggering": "30s", "training": "2m", "deploying": "30s", "analyzing": "2m",
                          "promoting": "30s", "rolling_back": "30s"},
        },  # fmt: skip
        "models": [{
            "name": MODEL,
            "matchers": [f'model="{MODEL}"'],
            "rules": [
                {"alertname": PRECISION_ALERT, "reason": "precision_drop"},
                {"alertname": "RecsysFeatureDrift", "reason": "drift"},
                {"alertname": "RecsysEventStreamDown", "notify_only": True},
            ],
            "pipeline": {
                "runner": "command",
                "command": [sys.executable, "-m", "controller.demo.train", "--data-dir", str(work / "data"),
                            "--models-dir", str(work / "models")],  # fmt: skip
            },
            # Names only: the demo's rollout is the service's two tracks, not Kubernetes.
            "canary": {
                "namespace": "demo", "stable": MODEL, "canary": f"{MODEL}-canary", "container": "model",
                "total_replicas": 10, "ready_timeout": "20s",
                "steps": [{"weight": 10, "min_duration": "3s"}, {"weight": 25, "min_duration": "3s"},
                          {"weight": 50, "min_duration": "4s"}],
            },  # fmt: skip
            "analysis": {
                "hits": f'recsys_slot_hits_total{{model="{MODEL}"}}',
                "trials": f'recsys_slots_served_total{{model="{MODEL}"}}',
                "units": f'recsys_requests_total{{model="{MODEL}"}}',
                "min_trials": 1000, "interval": "1s", "max_no_data": 5,
                "guardrails": [
                    {"name": "error_ratio", "max": 0.01,
                     "query": f"sum(rate(recsys_request_errors_total{canary}[{window}]))"
                              f" / sum(rate(recsys_requests_total{canary}[{window}]))"},
                    {"name": "p99_latency_seconds", "max": 0.25,
                     "query": "histogram_quantile(0.99, sum by (le)"
                              f" (rate(recsys_request_duration_seconds_bucket{canary}[{window}])))"},
                ],
            },  # fmt: skip
        }],
    }

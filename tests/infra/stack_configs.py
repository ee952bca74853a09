"""The small Prometheus and Alertmanager configs the integration tests and the chaos rig run: one alert on an
exporter's gauge, Alertmanager posting straight to the controller with a bearer token from a file."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

GAUGE = "recsys_precision_at_k"
ALERTNAME = "RecsysPrecisionAtKDrop"

RULES = textwrap.dedent(
    f"""
    groups:
      - name: recsys
        interval: 1s
        rules:
          - alert: {ALERTNAME}
            expr: {GAUGE} < 0.1
            for: 0s
            labels:
              action: retrain
            annotations:
              summary: precision@k of {{{{ $labels.model }}}} fell to {{{{ $value }}}}
    """
)


def prometheus_config(jobs: Mapping[str, str], am_port: int | None = None, rule_files: Sequence[str] = ()) -> str:
    """Every test's Prometheus: 1 s scrapes and evaluations, one static target per job, and optionally rule files
    and an Alertmanager on 127.0.0.1."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs.items()],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    if am_port is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]}
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(controller_port: int, token_file: Path, group_wait: str = "1s") -> str:
    return textwrap.dedent(
        f"""
        route:
          receiver: retrain-controller
          group_by: [model]
          group_wait: {group_wait}
          group_interval: 1s
          repeat_interval: 2s
        receivers:
          - name: retrain-controller
            webhook_configs:
              - url: http://127.0.0.1:{controller_port}/api/v1/alerts
                send_resolved: true
                http_config:
                  authorization:
                    type: Bearer
                    credentials_file: {token_file}
        """
    )

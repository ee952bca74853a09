"""The small Prometheus and Alertmanager configs the integration tests and the chaos rig run: one alert on an
exporter's gauge, Alertmanager posting straight to the controller with a bearer token from a file."""

from __future__ import annotations

import textwrap
from pathlib import Path

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


def prometheus_config(am_port: int, target: str) -> str:
    return textwrap.dedent(
        f"""
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
          evaluation_interval: 1s
        rule_files: [rules.yml]
        alerting:
          alertmanagers:
            - static_configs:
                - targets: ["127.0.0.1:{am_port}"]
        scrape_configs:
          - job_name: recsys
            static_configs:
              - targets: ["{target}"]
        """
    )


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

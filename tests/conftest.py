from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controller.config import Settings, load_settings

TOKEN = "am-token-7f3c9e1d2b"
SECRETS_ENV = {
    "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN": TOKEN,
    "RETRAIN_CONTROLLER_ADMIN_TOKEN": "admin-token-5b8d0a4c6e",
    "RETRAIN_CONTROLLER_CALLBACK_SECRET": "callback-secret-9a1e7f3b",
}


def write_config(tmp_path: Path, extra: str = "", command: str = '["true"]') -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            store:
              path: {tmp_path / "store" / "controller.db"}
            policy:
              cooldown: 1h
              daily_budget: 3
              max_concurrent_runs: 1
              tick_interval: 100ms
            models:
              - name: recsys
                matchers: ['model="recsys"']
                rules:
                  - alertname: RecsysPrecisionAtKDrop
                    reason: precision_drop
                  - alertname: RecsysFeatureDrift
                    reason: drift
                  - alertname: RecsysEventStreamDown
                    notify_only: true
                pipeline:
                  runner: command
                  command: {command}
              - name: search
                matchers: ['model="search"']
                rules:
                  - matchers: ['alertname=~"Search.*"']
                    reason: precision_drop
                pipeline:
                  command: {command}
            """
        )
        + textwrap.dedent(extra)
    )
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path), SECRETS_ENV)

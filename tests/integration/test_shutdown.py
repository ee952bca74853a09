"""SIGTERM ends the controller cleanly: it stops listening, closes the store and exits 0 inside the grace period."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import yaml

from tests.infra.procs import Deadline, controller_service, free_port, wait_until
from tests.integration.test_secrets_never_leak import SECRETS, call
from tests.unit.payloads import am_alert, notification



def test_sigterm_stops_cleanly_within_the_grace_period(tmp_path: Path) -> None:
    """SIGTERM: the process stops listening, closes the store and exits 0, well inside Kubernetes' grace period."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        server: {{port: {port}, shutdown_grace: 5s}}
        store: {{path: {tmp_path / "store.db"}}}
        models:
          - name: recsys
            matchers: ['model="recsys"']
            rules: [{{alertname: RecsysPrecisionAtKDrop, reason: precision_drop}}]
            pipeline: {{runner: command, command: ["true"]}}
        """))  # fmt: skip
    ctl = controller_service(tmp_path, config, port, SECRETS["RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"])
    ctl.start()
    try:
        status, _ = call(f"{ctl.url}/api/v1/alerts", "POST", notification(am_alert()),
                         SECRETS["RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"])  # fmt: skip
        assert status == 200
        started = time.monotonic()
        assert ctl.proc.pid is not None
        os.kill(ctl.proc.pid, signal.SIGTERM)
        wait_until(lambda: not ctl.proc.alive or None, "the controller to exit", Deadline(10), ctl.describe)
        took = time.monotonic() - started
    finally:
        ctl.stop()
    assert ctl.proc.returncode == 0, ctl.describe()
    log = ctl.proc.log()
    assert "store_closed" in log and "stopped" in log, log[-2000:]
    grace = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s" / "deployment.yaml").read_text())
    period = grace["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert took < 5 < period  # the default shutdown_grace (20s) is also below it

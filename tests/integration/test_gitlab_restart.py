"""The controller process, SIGKILLed while it is creating pipelines on the GitLab stand-in, still ends with exactly
one pipeline per run after a restart."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from tests.fakes.gitlab import DEFAULT_PROJECT_PATH, DEFAULT_TOKEN, FakeGitlab
from tests.infra.procs import Deadline, controller_service, free_port, get_json, wait_until
from tests.unit.payloads import am_alert, notification

TOKEN = "am-token-gitlab-restart-51c2"
MODELS = [f"m{i:02d}" for i in range(24)]
HELD_S = 60.0  # creates held this long: longer than the test needs to kill the controller


def _config(tmp_path: Path, port: int, gitlab_url: str) -> Path:
    models = "".join(
        textwrap.dedent(
            f"""
            - name: {m}
              matchers: ['model="{m}"']
              rules: [{{alertname: RecsysPrecisionAtKDrop, reason: precision_drop}}]
              pipeline: {{runner: gitlab, project: {DEFAULT_PROJECT_PATH}, ref: main}}
            """
        )
        for m in MODELS
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            server: {{port: {port}}}
            store: {{path: {tmp_path / "store.db"}}}
            policy: {{max_concurrent_runs: {len(MODELS)}, tick_interval: 200ms, cooldown: 1h}}
            gitlab: {{url: "{gitlab_url}", timeout: 30s, retry_total: 10s, poll_interval: 1s, create_settle: 3s}}
            models:
            """
        )
        + textwrap.indent(models, "  ")
    )
    return path


def _post_alerts(url: str) -> None:
    for i, m in enumerate(MODELS):
        body = json.dumps(notification(am_alert(model=m, fp=f"{i:016x}"))).encode()
        req = urllib.request.Request(
            f"{url}/api/v1/alerts", body, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200


def _runs(url: str) -> list[dict[str, Any]]:
    return list(get_json(f"{url}/api/v1/runs?limit=200")["runs"])


def test_sigkill_mid_trigger_then_restart_keeps_one_pipeline_per_run(tmp_path: Path) -> None:
    fake = FakeGitlab(timeout_delay=HELD_S)
    # Creates cycle through: recorded but the answer held (the crash loses it); held before recording; a 500.
    pattern = ["timeout-after", "timeout", "500"]
    deadline = Deadline(90)
    with fake.serve_in_thread() as gitlab_url:
        port = free_port()
        config = _config(tmp_path, port, gitlab_url)
        env = {"RETRAIN_CONTROLLER_GITLAB_TOKEN": DEFAULT_TOKEN, "RETRAIN_CONTROLLER_CALLBACK_SECRET": "s3cret-cb"}
        controller = controller_service(tmp_path, config, port, TOKEN, env)
        for i in range(len(MODELS)):
            fake.fail("create", pattern[i % 3])
        controller.start()
        url = controller.url
        try:
            _post_alerts(url)
            # Mid-trigger: every run has asked GitLab, some pipelines exist, none of the held answers came back.
            wait_until(
                lambda: len(fake.pipelines()) >= len(MODELS) // 3 and fake.pending_faults("create") == 0,
                "the controller to send its creates",
                deadline,
                controller.describe,
            )
            triggering = [r for r in _runs(url) if r["phase"] == "triggering"]
            assert len(triggering) >= len(MODELS) * 2 // 3, triggering
            assert controller.kill() == -9

            controller.start()
            wait_until(
                lambda: all(r["phase"] == "training" for r in _runs(url)) or None,
                "every run to reach `training` after the restart",
                deadline,
                controller.describe,
            )
            runs = _runs(url)
            assert len(runs) == len(MODELS)
            by_run: dict[str, list[int]] = {}
            for p in fake.pipelines():
                by_run.setdefault(p.vars["RETRAIN_RUN_ID"], []).append(p.id)
            assert sorted(by_run) == sorted(r["id"] for r in runs)
            assert all(len(ids) == 1 for ids in by_run.values()), by_run
            assert {r["id"]: [int(r["pipeline"]["id"])] for r in runs} == by_run
            found = [r for r in runs if "found the pipeline" in r["cause"]]
            assert found, "no run was reconciled from a pipeline created before the crash"
        finally:
            controller.stop()

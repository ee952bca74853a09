"""A whole scenario with distinctive secrets, then a search for them in every log line, every answer, the status
pages and the SQLite file: none may appear (the per-run callback token is derived, so it is never stored)."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from controller.core.callbacks import callback_token
from tests.fakes.gitlab import DEFAULT_PROJECT_PATH, FakeGitlab
from tests.infra.procs import Deadline, controller_service, free_port, wait_until
from tests.unit.payloads import am_alert, notification

SECRETS = {
    "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN": "AMTOKEN-7c1e9d5a3b-zebra",
    "RETRAIN_CONTROLLER_ADMIN_TOKEN": "ADMINTOKEN-4f2a8e6c1d-yak",
    "RETRAIN_CONTROLLER_CALLBACK_SECRET": "CBSECRET-9b3d7f1e5a-xerus",
    "RETRAIN_CONTROLLER_GITLAB_TOKEN": "glpat-GLTOKEN-2e6a4c8b0d-wombat",
    "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": "HOOKTOKEN-5d1f3b7e9c-vole",
}
IMAGE = "registry.example/ml/recsys@sha256:" + "d" * 64


def call(url: str, method: str = "GET", body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_no_secret_appears_in_logs_answers_pages_or_the_store(tmp_path: Path) -> None:
    fake = FakeGitlab(tokens={SECRETS["RETRAIN_CONTROLLER_GITLAB_TOKEN"]: "maintainer"})
    deadline = Deadline(60)
    answers: list[str] = []
    with fake.serve_in_thread() as gitlab_url:
        port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(textwrap.dedent(f"""
            server: {{port: {port}, log_level: debug}}
            store: {{path: {tmp_path / "store.db"}}}
            policy: {{tick_interval: 200ms}}
            gitlab: {{url: "{gitlab_url}", poll_interval: 1s}}
            models:
              - name: recsys
                matchers: ['model="recsys"']
                rules: [{{alertname: RecsysPrecisionAtKDrop, reason: precision_drop}}]
                pipeline: {{runner: gitlab, project: {DEFAULT_PROJECT_PATH}, ref: main}}
            """))  # fmt: skip
        env = {k: v for k, v in SECRETS.items() if k != "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"}
        ctl = controller_service(tmp_path, config, port, SECRETS["RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"], env)
        ctl.start()
        try:
            url = ctl.url
            am = SECRETS["RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"]
            # wrong tokens too: a refused secret-looking value must not be echoed either
            for token in (am, am + "x", SECRETS["RETRAIN_CONTROLLER_ADMIN_TOKEN"]):
                answers.append(call(f"{url}/api/v1/alerts", "POST", notification(am_alert()), token)[1])
            run_id = json.loads(answers[0])["alerts"][0]["run_id"]
            wait_until(lambda: fake.pipelines() or None, "the pipeline", deadline, ctl.describe)
            pipeline = fake.pipelines()[0]
            assert pipeline.vars["RETRAIN_CALLBACK_TOKEN"] == callback_token(SECRETS["RETRAIN_CONTROLLER_CALLBACK_SECRET"], run_id)
            wait_until(lambda: json.loads(call(f"{url}/api/v1/runs/{run_id}")[1])["run"]["phase"] == "training",
                       "training", deadline, ctl.describe)  # fmt: skip
            cb = pipeline.vars["RETRAIN_CALLBACK_TOKEN"]
            events = f"{url}/api/v1/runs/{run_id}/events"
            answers.append(call(events, "POST", {"event": "stage", "stage": "train", "status": "running"}, cb)[1])
            answers.append(call(events, "POST", {"event": "stage", "stage": "train", "status": "running"}, cb + "0")[1])
            hook = {"object_kind": "pipeline", "object_attributes": {"id": pipeline.id, "status": "running",
                    "ref": "main", "variables": [{"key": "RETRAIN_RUN_ID", "value": run_id}]}}  # fmt: skip
            for token in (SECRETS["RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN"], "wrong-hook-token"):
                answers.append(call(f"{url}/api/v1/gitlab/events", "POST", hook,
                                    headers={"X-Gitlab-Token": token, "X-Gitlab-Event": "Pipeline Hook"})[1])  # fmt: skip
            answers.append(call(events, "POST", {"event": "image", "image": IMAGE, "metrics": {"p": 0.1}}, cb)[1])
            admin = SECRETS["RETRAIN_CONTROLLER_ADMIN_TOKEN"]
            answers.append(call(f"{url}/api/v1/models/recsys/pause", "POST", {"reason": "check"}, admin)[1])
            answers.append(call(f"{url}/api/v1/models/recsys/pause", "POST", {}, admin + "x")[1])
            for path in ("/", f"/runs/{run_id}", "/api/v1/runs", f"/api/v1/runs/{run_id}", "/api/v1/alerts",
                         "/api/v1/models", "/metrics", "/healthz", "/readyz", "/api/v1/openapi.json"):  # fmt: skip
                status, text = call(url + path)
                assert status == 200, (path, status)
                answers.append(text)
        finally:
            ctl.stop()
    logs = ctl.proc.log()
    assert "pipeline_event" in logs and "alert_decided" in logs  # the log is really there, at debug level
    store = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    places = {"logs": logs, "answers": "\n".join(answers), "store": store.decode("latin-1")}
    leaks = [(name, where) for name, value in SECRETS.items() for where, text in places.items() if value in text]
    derived = callback_token(SECRETS["RETRAIN_CONTROLLER_CALLBACK_SECRET"], run_id)
    leaks += [("callback token", where) for where, text in places.items() if derived in text]
    assert leaks == [], leaks


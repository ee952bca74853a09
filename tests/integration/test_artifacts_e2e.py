"""The shipped artifacts end to end: real Prometheus loads prometheus/recording-rules.yml and alert-rules.yml, a real
Alertmanager runs prometheus/alertmanager.yml, and they deliver to the real controller process.

A test exporter plays the model service (the counters and gauges documented in recording-rules.yml). Precision@k
falls under the floor, RecsysPrecisionAtKDrop fires, Alertmanager routes it (action="retrain") to the controller
and, through `continue: true`, to a human receiver too; the controller records an `accepted` decision with
reason `precision_drop`. A second scenario proves the inhibition: while the event stream is down, the precision
alert is held back and the controller hears nothing; once the stream is back, it is delivered.

The shipped files are used as they are, with only these substitutions in the loaded copies (each one asserted):
  alert rules:   every `for: <duration>` -> `for: 1s` (a bounded test cannot wait 15 minutes);
  Alertmanager:  the controller's in-cluster URL -> the test controller's port, the token's credentials_file
                 -> a temp file, the human placeholder URL -> a local sink, group_wait 30s and
                 group_interval 5m -> 1s.
A fresh Prometheus has no data from a week ago, so the `offset 1w` side of RecsysPrecisionAtKDrop is empty here
and the absolute floor fires on its own (the week-ago side is covered by promtool unit tests).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.infra import promql
from tests.infra.stack_configs import prometheus_config
from tests.infra.exporter import HITS, SERVED, CounterExporter
from tests.infra.procs import (
    Deadline,
    Service,
    alertmanager_binary,
    controller_service,
    free_port,
    get_json,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
    wait_until,
)
from tests.integration.conftest import TOKEN, controller_config

pytestmark = pytest.mark.integration

BUDGET_S = 90.0
ALERTNAME = "RecsysPrecisionAtKDrop"
STREAM_DOWN = "RecsysEventStreamDown"
EVENTS = "recsys_events_ingested_total"
PSI = "recsys_feature_psi"
POD = {"model": "recsys", "version": "v1", "track": "stable", "pod": "recsys-0"}
STREAM = {"model": "recsys"}
FEATURES = {"age": 0.05, "country": 0.02, "device": 0.01}
SHIPPED_URL = "http://retrain-controller.retrain-controller.svc:8080/api/v1/alerts"
SHIPPED_TOKEN_FILE = "/etc/alertmanager/secrets/retrain-controller-token"
SHIPPED_HUMAN_URL = "http://alert-relay.monitoring.svc:8080/alertmanager"


# ---- the model service --------------------------------------------------------------------------------------


class ModelService:
    """Feeds the exporter every 0.1 s: healthy 10% precision, degraded 0.1% at 100x the traffic (so a fresh
    Prometheus' whole-history 1h ratio falls under the 0.02 floor within seconds), and a live event stream."""

    TICK = 0.1

    def __init__(self, exporter: CounterExporter):
        self.exporter = exporter
        self.degraded = False
        self.stream_alive = True
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a tick never re-creates the stream a test just removed
        self._thread = threading.Thread(target=self._run, name="model-service", daemon=True)
        for name in (HITS, SERVED):
            exporter.set(name, POD, 0)
        exporter.set(EVENTS, STREAM, 0)
        exporter.set_many(PSI, [({"model": "recsys", "feature": f}, v) for f, v in FEATURES.items()])

    def _run(self) -> None:
        while not self._stop.wait(self.TICK):
            with self._lock:
                served, hits = (10_000, 10) if self.degraded else (100, 10)
                self.exporter.add(SERVED, POD, served)
                self.exporter.add(HITS, POD, hits)
                if self.stream_alive:
                    self.exporter.add(EVENTS, STREAM, 50)

    def stop_stream(self) -> None:
        """The stream's counter disappears (the ingest pod is gone): absent() fires once it is marked stale."""
        with self._lock:
            self.stream_alive = False
            self.exporter.remove(EVENTS, STREAM)

    def restart_stream(self) -> None:
        with self._lock:
            self.exporter.set(EVENTS, STREAM, 0)
            self.stream_alive = True

    def start(self) -> "ModelService":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class WebhookSink:
    """The human receiver: records every Alertmanager notification it gets."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink._lock:
                    sink.notifications.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alertmanager"
        self._thread = threading.Thread(target=self.server.serve_forever, name="human-sink", daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.notifications)

    def alertnames(self, status: str = "firing", since: int = 0) -> set[str]:
        """Alert names with `status` in the notifications received after the first `since`."""
        with self._lock:
            return {
                a["labels"]["alertname"]
                for n in self.notifications[since:]
                for a in n["alerts"]
                if a["status"] == status
            }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# ---- the shipped files, loaded with the minimal substitutions ------------------------------------------------


def substitute(text: str, old: str, new: str, count: int) -> str:
    found = text.count(old)
    assert found == count, f"expected {count} occurrence(s) of {old!r} in the shipped file, found {found}"
    return text.replace(old, new)


def alert_rules_for_test() -> str:
    text = promql.ALERT_RULES.read_text()
    alerts = len([r for r in promql.rules(promql.ALERT_RULES) if "alert" in r])
    shortened, n = re.subn(r"(?m)^(\s+)for: \S+$", r"\1for: 1s", text)
    assert n == alerts == 9, f"{n} `for:` lines rewritten for {alerts} alerts"
    loaded = yaml.safe_load(shortened)
    assert all(r["for"] == "1s" for g in loaded["groups"] for r in g["rules"] if "alert" in r)
    # Nothing else changed: the expressions and labels are the shipped ones.
    shipped = yaml.safe_load(text)
    for g_test, g_shipped in zip(loaded["groups"], shipped["groups"]):
        for r_test, r_shipped in zip(g_test["rules"], g_shipped["rules"]):
            assert {k: v for k, v in r_test.items() if k != "for"} == {k: v for k, v in r_shipped.items() if k != "for"}
    return shortened


def alertmanager_for_test(controller_port: int, token_file: Path, human_url: str) -> str:
    text = promql.ALERTMANAGER_CONFIG.read_text()
    text = substitute(text, SHIPPED_URL, f"http://127.0.0.1:{controller_port}/api/v1/alerts", 1)
    text = substitute(text, SHIPPED_TOKEN_FILE, str(token_file), 1)
    text = substitute(text, SHIPPED_HUMAN_URL, human_url, 1)
    text = substitute(text, "group_wait: 30s", "group_wait: 1s", 2)
    text = substitute(text, "group_interval: 5m", "group_interval: 1s", 2)
    loaded = yaml.safe_load(text)
    assert loaded["route"]["routes"][0]["continue"] is True and loaded["inhibit_rules"]
    return text


# ---- the stack ----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    model: ModelService
    humans: WebhookSink
    controller: Service
    alertmanager: Service
    prometheus: Service

    def decisions(self, alertname: str | None = None) -> list[dict[str, Any]]:
        found = get_json(self.controller.url + "/api/v1/alerts?limit=500")["alerts"]
        return [d for d in reversed(found) if alertname is None or d["alertname"] == alertname]

    def runs(self) -> list[dict[str, Any]]:
        return list(get_json(self.controller.url + "/api/v1/runs?limit=50")["runs"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        return list(get_json(url)["data"]["result"])

    def prometheus_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = get_json(self.prometheus.url + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    def alertmanager_alerts(self, alertname: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        return list(get_json(self.alertmanager.url + "/api/v2/alerts?" + query))

    def logs(self) -> str:
        return "\n".join(
            [self.controller.describe(4000), self.alertmanager.describe(4000), self.prometheus.describe(3000)]
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    prometheus_binary()
    alertmanager_binary()  # skip (or fail under REQUIRE_INTEGRATION=1) before starting anything
    rules = {
        "recording-rules.yml": promql.RECORDING_RULES.read_text(),
        "alert-rules.yml": alert_rules_for_test(),
    }
    exporter = CounterExporter().start()
    model = ModelService(exporter).start()
    humans = WebhookSink()
    started: list[Service] = []
    try:
        port = free_port()
        cfg = controller_config(tmp_path, port, ["sh", "-c", "sleep 1"])
        config_path = tmp_path / "controller.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        controller = controller_service(tmp_path / "controller", config_path, port, TOKEN)
        started.append(controller)
        controller.start()

        token_file = tmp_path / "alertmanager-secrets" / "retrain-controller-token"
        token_file.parent.mkdir(parents=True)
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        alertmanager = start_alertmanager(
            tmp_path / "alertmanager", alertmanager_for_test(port, token_file, humans.url)
        )
        started.append(alertmanager)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            prometheus_config({"recsys": exporter.target, "retrain-controller": f"127.0.0.1:{port}"}, alertmanager.port,
                              ["recording-rules.yml", "alert-rules.yml"]),
            rules,
        )
        started.append(prometheus)
        yield Stack(model, humans, controller, alertmanager, prometheus)
    finally:
        for service in reversed(started):
            service.stop()
        model.close()
        humans.close()
        exporter.close()


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def wait_healthy(stack: Stack, deadline: Deadline) -> None:
    """Both rule files loaded and computing, and no alert of the model pending or firing anywhere."""
    groups = get_json(stack.prometheus.url + "/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} == {g["name"] for p in (promql.RECORDING_RULES, promql.ALERT_RULES)
                                            for g in promql.rule_groups(p)}  # fmt: skip
    assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
    precision = wait_until(
        lambda: _value(stack.query('model:recsys_precision_at_k:ratio_rate1h{model="recsys"}')),
        "the recording rule model:recsys_precision_at_k:ratio_rate1h",
        deadline,
        stack.logs,
    )
    assert 0.05 < precision < 0.2, precision  # 10%, give or take the extrapolation of a young window
    # The drift group is evaluated on its own schedule: wait for it too.
    wait_until(
        lambda: _value(stack.query('model:recsys_feature_psi:max{model="recsys"}')) == 0.05
        and _value(stack.query('model:recsys_feature_psi_over_0_1:ratio{model="recsys"}')) == 0.0,
        "the drift recording rules (max PSI 0.05, no feature over 0.1)",
        deadline,
        stack.logs,
    )
    # Before the first scrape, absent() makes RecsysEventStreamDown (and RetrainControllerDown) fire briefly with
    # the test's 1s `for:`; wait until the stream alert has resolved in Prometheus and in Alertmanager, or it
    # would inhibit the precision alert.
    wait_until(
        lambda: not stack.prometheus_alerts(STREAM_DOWN) and not stack.alertmanager_alerts(STREAM_DOWN),
        f"{STREAM_DOWN} to be quiet with the stream alive",
        deadline,
        stack.logs,
    )
    assert not stack.prometheus_alerts(ALERTNAME)
    assert stack.decisions(ALERTNAME) == []


def test_precision_drop_reaches_the_controller_and_humans(stack: Stack) -> None:
    deadline = Deadline(BUDGET_S)
    wait_healthy(stack, deadline)
    healthy_at = deadline.elapsed

    stack.model.degraded = True
    accepted = wait_until(
        lambda: next((d for d in stack.decisions(ALERTNAME) if d["decision"] == "accepted"), None),
        "an `accepted` decision for RecsysPrecisionAtKDrop",
        deadline,
        stack.logs,
    )
    assert accepted["model"] == "recsys" and accepted["reason"] == "precision_drop", accepted
    assert accepted["status"] == "firing"
    assert accepted["labels"] == {
        "alertname": ALERTNAME, "model": "recsys", "action": "retrain", "severity": "warning",
    }, accepted["labels"]  # fmt: skip
    (run,) = stack.runs()
    assert run["id"] == accepted["run_id"] and run["model"] == "recsys" and run["reasons"] == ["precision_drop"]
    fired_after = deadline.elapsed - healthy_at

    # The firing alert in Prometheus is the shipped rule's floor side: precision under 0.02.
    (firing,) = [a for a in stack.prometheus_alerts(ALERTNAME) if a["state"] == "firing"]
    assert float(firing["value"]) < 0.02
    assert firing["annotations"]["summary"].startswith("precision@k of recsys fell to 0.0")

    # continue: true: humans got the retrain alert too.
    wait_until(lambda: ALERTNAME in stack.humans.alertnames(), "humans to get the retrain alert", deadline, stack.logs)
    # Only action="retrain" reaches the controller: none of the notify-only or controller alerts did.
    assert {d["alertname"] for d in stack.decisions()} == {ALERTNAME}, stack.decisions()
    print(f"\nhealthy after {healthy_at:.1f}s; degraded -> accepted in {fired_after:.1f}s; {deadline.elapsed:.1f}s in all")


def test_stream_down_inhibits_the_precision_alert_until_it_is_back(stack: Stack) -> None:
    deadline = Deadline(BUDGET_S)
    wait_healthy(stack, deadline)

    heard = stack.humans.count
    stack.model.stop_stream()
    wait_until(
        lambda: any(a["status"]["state"] == "active" for a in stack.alertmanager_alerts(STREAM_DOWN)),
        f"{STREAM_DOWN} active in Alertmanager",
        deadline,
        stack.logs,
    )
    stack.model.degraded = True
    held = wait_until(
        lambda: [a for a in stack.alertmanager_alerts(ALERTNAME) if a["status"]["state"] == "suppressed"],
        f"{ALERTNAME} suppressed in Alertmanager",
        deadline,
        stack.logs,
    )
    assert held[0]["status"]["inhibitedBy"], held
    assert held[0]["labels"]["model"] == "recsys"
    # A few group intervals pass: nothing reaches the controller (the stream alert is notify-only, the precision
    # alert inhibited), while humans hear about the stream.
    wait_until(
        lambda: STREAM_DOWN in stack.humans.alertnames(since=heard),
        "humans to get the stream alert",
        deadline,
        stack.logs,
    )
    time.sleep(3)
    assert stack.decisions() == [], stack.decisions()
    assert stack.runs() == []
    assert ALERTNAME not in stack.humans.alertnames(since=heard)

    stack.model.restart_stream()
    accepted = wait_until(
        lambda: next((d for d in stack.decisions(ALERTNAME) if d["decision"] == "accepted"), None),
        "the precision alert to be delivered and `accepted` once the stream is back",
        deadline,
        stack.logs,
    )
    assert accepted["model"] == "recsys" and accepted["reason"] == "precision_drop", accepted
    assert {d["alertname"] for d in stack.decisions()} == {ALERTNAME}
    print(f"\nstream down -> inhibited -> stream back -> accepted in {deadline.elapsed:.1f}s")


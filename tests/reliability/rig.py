"""The chaos rig: every real part up once and kept up across crashes (etcd + kube-apiserver with the controller's
RBAC from k8s/, Prometheus scraping a controllable exporter, Alertmanager, the GitLab stand-in), and the controller
as a subprocess (`python -m controller serve`) that is SIGKILLed and started again on the same store and port.

Timings are short so a run goes from alert to promotion or rollback in seconds: a 200 ms tick, canary steps of
one second, a look every second.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.fakes.gitlab import DEFAULT_PROJECT_PATH, DEFAULT_TOKEN, FakeGitlab
from tests.infra import kube
from tests.infra.stack_configs import ALERTNAME, GAUGE, RULES, alertmanager_config, prometheus_config
from tests.infra.exporter import CounterExporter
from tests.infra.procs import (
    controller_service,
    free_port,
    start_alertmanager,
    start_prometheus,
)
from tests.reliability.world import CONTAINER, CiStandIn, Kubelet, Traffic

K8S = Path(__file__).resolve().parents[2] / "k8s"
NS, CONTROLLER_NS = "recsys", "retrain-controller"
STABLE, CANARY = "recsys", "recsys-canary"
INITIAL_IMAGE = "registry.example/recsys@sha256:" + "0" * 64
TOTAL_REPLICAS = 10
TOKEN = "am-chaos-token-6d1b9f"
CALLBACK_SECRET = "chaos-callback-secret-2e8a"

def controller_config(tmp: Path, port: int, gitlab_url: str, prometheus_url: str, kubeconfig: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_format": "json"},
        "store": {"path": str(tmp / "store" / "controller.db")},
        "policy": {
            "cooldown": "0s", "daily_budget": 100000, "max_concurrent_runs": 1, "tick_interval": "200ms",
            # Far beyond a healthy run (seconds): a run that needs one was stuck, and the checks say so.
            "deadlines": {"triggering": "60s", "training": "60s", "deploying": "45s", "analyzing": "60s",
                          "promoting": "45s", "rolling_back": "45s"},
        },  # fmt: skip
        "gitlab": {"url": gitlab_url, "timeout": "5s", "retry_total": "10s", "poll_interval": "1s", "create_settle": "2s"},
        "prometheus": {"url": prometheus_url, "timeout": "2s"},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
        "models": [
            {
                "name": "recsys",
                "matchers": ['model="recsys"'],
                "rules": [{"alertname": ALERTNAME, "reason": "precision_drop"}],
                "pipeline": {"runner": "gitlab", "project": DEFAULT_PROJECT_PATH, "ref": "main"},
                "canary": {
                    "namespace": NS, "stable": STABLE, "canary": CANARY, "container": CONTAINER,
                    "total_replicas": TOTAL_REPLICAS, "ready_timeout": "30s",
                    "steps": [{"weight": 10, "min_duration": "1s"}, {"weight": 50, "min_duration": "1s"}],
                },  # fmt: skip
                "analysis": {
                    "hits": 'recsys_slot_hits_total{model="recsys"}',
                    "trials": 'recsys_slots_served_total{model="recsys"}',
                    # Good canaries (ratio 1.0) sit far above the band, bad ones (0.5) far below it.
                    "tolerance": 0.2, "indifference": 0.1, "alpha": 0.01, "beta": 0.01, "overdispersion": 1.0,
                    "min_trials": 1000, "interval": "1s", "max_no_data": 5,
                },  # fmt: skip
            }
        ],
    }


class Rig:
    """Start with `with Rig(workdir, seed) as rig:`; everything stops at exit, in reverse order."""

    def __init__(self, workdir: Path, seed: int = 0):
        self.workdir = Path(workdir)
        self.seed = seed
        self.qualities: dict[str, float] = {}
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> "Rig":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._stack.close()

    def _start(self) -> None:
        s = self._stack
        self.cluster = kube.start_kube(self.workdir / "kube", timeout=60)
        s.callback(self.cluster.stop)
        self.admin = self.cluster.api_client()
        s.callback(self.admin.close)
        kubeconfig = self._model_objects()

        self.gitlab = FakeGitlab(timeout_delay=1.0)
        gitlab_url = s.enter_context(self.gitlab.serve_in_thread())
        self.exporter = CounterExporter().start()
        s.callback(self.exporter.close)
        self.exporter.set_type(GAUGE, "gauge")

        port = free_port()
        am_port, prom_port = free_port(), free_port()
        cfg = controller_config(self.workdir, port, gitlab_url, f"http://127.0.0.1:{prom_port}", kubeconfig)
        self.store_path = Path(cfg["store"]["path"])
        config_path = self.workdir / "controller.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {"RETRAIN_CONTROLLER_GITLAB_TOKEN": DEFAULT_TOKEN, "RETRAIN_CONTROLLER_CALLBACK_SECRET": CALLBACK_SECRET}
        self.controller = controller_service(self.workdir / "controller", config_path, port, TOKEN, env)
        self.controller.start()
        s.callback(self.controller.stop)

        token_file = self.workdir / "alertmanager" / "token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(TOKEN + "\n")
        self.alertmanager = start_alertmanager(self.workdir / "alertmanager", alertmanager_config(port, token_file, group_wait="500ms"),
                                               port=am_port)  # fmt: skip
        s.callback(self.alertmanager.stop)
        self.prometheus = start_prometheus(self.workdir / "prometheus", prometheus_config({"recsys": self.exporter.target}, am_port, ["rules.yml"]),
                                           {"rules.yml": RULES}, port=prom_port)  # fmt: skip
        s.callback(self.prometheus.stop)

        self.kubelet = Kubelet(self.cluster.api_client(), NS)
        self.traffic = Traffic(self.exporter, self.kubelet, self.qualities, self.seed)
        self.ci = CiStandIn(self.gitlab, self.qualities, self.seed + 1)
        for name, target in (("kubelet", self.kubelet.run), ("traffic", self.traffic.run), ("ci", self.ci.run)):
            self.background(name, target)

    def background(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """A thread that runs until the rig stops, and is joined then."""
        thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        thread.start()
        self._stack.callback(thread.join, 10)

    def _model_objects(self) -> Path:
        """The controller's identity from k8s/ and the model's two Deployments; a kubeconfig with its token."""
        c = kube.client
        core, apps, rbac = c.CoreV1Api(self.admin), c.AppsV1Api(self.admin), c.RbacAuthorizationV1Api(self.admin)
        for ns in (NS, CONTROLLER_NS):
            kube.create_namespace(self.admin, ns)
        create = {
            "ServiceAccount": core.create_namespaced_service_account,
            "Role": rbac.create_namespaced_role,
            "RoleBinding": rbac.create_namespaced_role_binding,
        }
        for name in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml"):
            doc = yaml.safe_load((K8S / name).read_text())
            create[doc["kind"]](doc["metadata"]["namespace"], doc)
        for name, track, replicas in ((STABLE, "stable", TOTAL_REPLICAS), (CANARY, "canary", 0)):
            labels = {"app": "recsys", "track": track}
            body = {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"containers": [{"name": CONTAINER, "image": INITIAL_IMAGE}]}},
                },
            }  # fmt: skip
            apps.create_namespaced_deployment(NS, body)
            kube.set_deployment_status(self.admin, NS, name)
        token = kube.service_account_token(self.admin, CONTROLLER_NS, "retrain-controller", seconds=6 * 3600)
        return self.cluster.write_kubeconfig(self.workdir / "kubeconfig", token, NS)

    # ---- the controller -----------------------------------------------------------------------------------

    def kill_controller(self) -> bool:
        """SIGKILL; False when it was not running."""
        if not self.controller.proc.alive:
            return False
        self.controller.kill()
        return True

    def start_controller(self) -> None:
        self.controller.start(timeout=30)

    def post_alert(self, alert: dict[str, Any], timeout: float = 5.0) -> int | None:
        """One delivery of a notification with `alert`, as Alertmanager makes it; the status, or None if none came."""
        body = {
            "version": "4", "groupKey": '{}:{model="recsys"}', "truncatedAlerts": 0, "status": alert["status"],
            "receiver": "retrain-controller", "groupLabels": {"model": "recsys"}, "commonLabels": alert["labels"],
            "commonAnnotations": {}, "externalURL": "http://alertmanager.invalid", "alerts": [alert],
        }  # fmt: skip
        req = urllib.request.Request(
            self.controller.url + "/api/v1/alerts", json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None

    def deliver_alert(self, alert: dict[str, Any], patience: float = 60.0) -> int:
        """Deliver until 2xx, retrying 5xx and silence the way Alertmanager does; the attempts it took."""
        deadline = time.monotonic() + patience
        attempts = 0
        while True:
            attempts += 1
            status = self.post_alert(alert)
            if status is not None and 200 <= status < 300:
                return attempts
            if status is not None and status < 500:
                raise AssertionError(f"alert refused with {status}: Alertmanager would drop it")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"alert not delivered in {patience:g}s")
            time.sleep(0.2)

    # ---- reading ------------------------------------------------------------------------------------------

    def read_store(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read-only query on the controller's store (WAL: never blocks the writer)."""
        if not self.store_path.exists():
            return []
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=5)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def live_runs(self) -> dict[str, str]:
        return {r["id"]: r["phase"] for r in self.read_store("SELECT id, phase FROM runs WHERE ended_at IS NULL")}

    def describe(self) -> str:
        return "\n".join([self.controller.describe(8000), self.alertmanager.describe(2000)])

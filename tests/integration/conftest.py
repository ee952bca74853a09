"""Fixtures that run the real parts: a gauge exporter, Prometheus, Alertmanager, the controller process, and a
Kubernetes API server.

Everything but the API server is function-scoped and lives in the test's tmp_path; every process is stopped at
teardown, and pipelines the controller started (own sessions, they outlive a controller crash on purpose) are
killed too. The API server (etcd + kube-apiserver, `cluster`) and its admin client are session-scoped: one
serves every module that asks for them, started on first use; each module sets up (and tidies) its own objects.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.infra import kube
from tests.infra.exporter import CounterExporter
from tests.infra.stack_configs import GAUGE, RULES, alertmanager_config, prometheus_config
from tests.infra.kube import KubeCluster
from tests.infra.procs import (
    Service,
    alertmanager_binary,
    controller_service,
    free_port,
    get_json,
    get_text,
    kill_process_groups,
    metric_value,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "local.yaml"
TOKEN = "am-integration-token-3c1f9a7e5d"
HEALTHY, DEGRADED = 0.35, 0.02


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


# ---- Kubernetes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver with RBAC; skipped (failed under REQUIRE_INTEGRATION=1) when binaries are missing."""
    started = time.monotonic()
    c = kube.start_kube(tmp_path_factory.mktemp("kube"), timeout=30)
    print(f"kube-apiserver ready in {time.monotonic() - started:.1f}s")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def admin(cluster: KubeCluster) -> Iterator[Any]:
    """An ApiClient with the admin's token (system:masters): sets up objects and plays the kubelet."""
    with cluster.api_client() as api:
        yield api


# ---- the exporter -------------------------------------------------------------------------------------------


class GaugeExporter:
    """/metrics with one gauge, recsys_precision_at_k{model="recsys"}, whose value the test sets."""

    def __init__(self, value: float = HEALTHY, model: str = "recsys"):
        self.model = model
        self._exporter = CounterExporter()
        self._exporter.set_type(GAUGE, "gauge")
        self.set(value)

    @property
    def target(self) -> str:
        return self._exporter.target

    def set(self, value: float) -> None:
        self._exporter.set(GAUGE, {"model": self.model}, value)

    def start(self) -> "GaugeExporter":
        self._exporter.start()
        return self

    def close(self) -> None:
        self._exporter.close()


@pytest.fixture
def exporter() -> Iterator[GaugeExporter]:
    e = GaugeExporter().start()
    yield e
    e.close()


# ---- configs ------------------------------------------------------------------------------------------------


def controller_config(
    tmp: Path,
    port: int,
    pipeline_command: list[str],
    pipeline_env: dict[str, str] | None = None,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """examples/local.yaml, with the store in tmp, a fast tick and a quick pipeline."""
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    data["server"] = {**data.get("server", {}), "host": "127.0.0.1", "port": port, "log_format": "json"}
    data["store"] = {**data.get("store", {}), "path": str(tmp / "store" / "controller.db"), **(store or {})}
    data["policy"] = {**data.get("policy", {}), "tick_interval": "200ms"}
    for m in data["models"]:
        if m["name"] == "recsys":
            m["pipeline"] = {"runner": "command", "command": pipeline_command, "env": dict(pipeline_env or {})}
    return data


# ---- the stack ----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    exporter: GaugeExporter
    controller: Service
    alertmanager: Service
    prometheus: Service
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return Path(self.config["store"]["path"])

    @property
    def cooldown(self) -> str:
        return str(self.config["policy"]["cooldown"])

    # -- the controller's API

    def api(self, path: str) -> Any:
        return get_json(self.controller.url + path)

    def decisions(self) -> list[dict[str, Any]]:
        """Every recorded alert decision, oldest first."""
        return list(reversed(self.api("/api/v1/alerts?limit=500")["alerts"]))

    def runs(self, model: str | None = None) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/runs?limit=500" + (f"&model={model}" if model else ""))["runs"])

    def model(self, name: str = "recsys") -> dict[str, Any]:
        return next(m for m in self.api("/api/v1/models")["models"] if m["name"] == name)

    def controller_metric(self, name: str, **labels: str) -> float:
        return metric_value(get_text(self.controller.url + "/metrics"), name, **labels)

    def alertmanager_metric(self, name: str, **labels: str) -> float:
        return metric_value(get_text(self.alertmanager.url + "/metrics"), name, **labels)

    # -- control

    def restart_controller(self, timeout: float = 30.0) -> None:
        """Start the controller again on the same port, with the same config and store."""
        self.controller.start(timeout)

    def pipeline_pid_files(self) -> list[Path]:
        return sorted((self.store_path.parent / "pipelines").glob("*/pid"))

    def logs(self, chars: int = 6000) -> str:
        parts = [self.controller.describe(chars), self.alertmanager.describe(chars)]
        parts.append(self.prometheus.describe(2000))
        return "\n".join(parts)


StackFactory = Callable[..., Stack]


@pytest.fixture
def start_stack(tmp_path: Path, exporter: GaugeExporter) -> Iterator[StackFactory]:
    """start_stack(pipeline_command=[...], pipeline_env={...}, store={...}) -> Stack, all processes up.

    Order: controller, then Alertmanager (which delivers to it), then Prometheus (which sends to Alertmanager),
    so no first notification is lost to a part that is not up yet. Teardown stops them in reverse.
    """
    # Skip (only) when the binaries are missing, before anything starts.
    prometheus_binary()
    alertmanager_binary()
    started: list[Service] = []
    stacks: list[Stack] = []

    def start(
        pipeline_command: list[str] | None = None,
        pipeline_env: dict[str, str] | None = None,
        store: dict[str, Any] | None = None,
    ) -> Stack:
        assert not stacks, "one stack per test"
        port = free_port()
        cfg = controller_config(tmp_path, port, pipeline_command or ["sh", "-c", "sleep 1"], pipeline_env, store)
        config_path = tmp_path / "controller.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        controller = controller_service(tmp_path / "controller", config_path, port, TOKEN)
        started.append(controller)
        controller.start()

        token_file = tmp_path / "alertmanager" / "token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        alertmanager = start_alertmanager(tmp_path / "alertmanager", alertmanager_config(port, token_file))
        started.append(alertmanager)

        prometheus = start_prometheus(
            tmp_path / "prometheus",
            prometheus_config({"recsys": exporter.target}, alertmanager.port, ["rules.yml"]),
            {"rules.yml": RULES},
        )
        started.append(prometheus)
        stack = Stack(tmp_path, exporter, controller, alertmanager, prometheus, cfg)
        stacks.append(stack)
        return stack

    try:
        yield start
    finally:
        for service in reversed(started):
            service.stop()
        for stack in stacks:
            kill_process_groups(stack.pipeline_pid_files())

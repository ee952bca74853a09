"""A real Kubernetes API server (etcd + kube-apiserver 1.20) for integration tests, and clients for it.

There is no controller-manager, scheduler or kubelet: Deployments never get pods, so tests simulate readiness
by patching a Deployment's /status with the admin client (`set_deployment_status`). RBAC is real.

Binaries: $KUBE_APISERVER, else the one tests/infra/build-kube-apiserver.sh caches, else PATH; $ETCD_BIN,
else `etcd` (Debian's etcd-server). Both processes listen on free loopback ports and keep everything in the
work dir; `KubeCluster.stop()` (and procs' atexit hook) ends them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from tests.infra.procs import Proc, ProcError, Service, find_binary, free_port

try:  # not needed by the rest of the suite; missing means skip (or fail under REQUIRE_INTEGRATION)
    from kubernetes import client, config, utils
except ImportError:  # pragma: no cover
    client = config = utils = None  # type: ignore[assignment]

KUBE_VERSION = "1.20.2"
CACHED_APISERVER = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "retrain-controller"
    / f"kube-apiserver-{KUBE_VERSION}"
    / "kube-apiserver"
)
ISSUER = "https://kubernetes.default.svc"
INSTALL_HINT = "run tests/infra/build-kube-apiserver.sh (as root; builds kube-apiserver, installs etcd-server)"


# ---- binaries -----------------------------------------------------------------------------------------------


def _missing(message: str) -> None:
    """Skip, or fail when REQUIRE_INTEGRATION is set (CI, where `make test` installed everything)."""
    if os.environ.get("REQUIRE_INTEGRATION", "") not in ("", "0"):
        pytest.fail(message + "; REQUIRE_INTEGRATION is set", pytrace=False)
    pytest.skip(message)


def apiserver_binary() -> str | None:
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access(CACHED_APISERVER, os.X_OK):
        return str(CACHED_APISERVER)
    return shutil.which("kube-apiserver")


def require_kube() -> tuple[str, str]:
    """(etcd, kube-apiserver) paths and the kubernetes client, or skip/fail saying what is missing."""
    if client is None:
        _missing("the `kubernetes` Python client is not installed (pip install kubernetes)")
    etcd = find_binary("ETCD_BIN", ("etcd",))
    if etcd is None:
        _missing(f"etcd not found (set ETCD_BIN or {INSTALL_HINT})")
    apiserver = apiserver_binary()
    if apiserver is None:
        where = os.environ.get("KUBE_APISERVER") or CACHED_APISERVER
        _missing(f"kube-apiserver not found at {where} (set KUBE_APISERVER or {INSTALL_HINT})")
    assert etcd and apiserver
    return etcd, apiserver


# ---- keys and certificates ----------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        _missing("openssl not found (apt-get install openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _make_keys(workdir: Path) -> None:
    """The service-account signing key, and a serving certificate for 127.0.0.1 that clients verify."""
    _openssl("genrsa", "-out", str(workdir / "sa.key"), "2048")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(workdir / "serving.key"), "-out", str(workdir / "serving.crt"),
        "-subj", "/CN=kube-apiserver",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    )  # fmt: skip


# ---- the cluster --------------------------------------------------------------------------------------------


@dataclass
class KubeCluster:
    workdir: Path
    etcd: Service
    apiserver: Proc
    port: int
    admin_token: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "serving.crt"

    def configuration(self, token: str | None = None) -> Any:
        """A kubernetes client Configuration for `token` (the admin's by default), verifying the serving cert."""
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return cfg

    def api_client(self, token: str | None = None) -> Any:
        return client.ApiClient(self.configuration(token))

    def write_kubeconfig(self, path: Path, token: str, namespace: str = "default") -> Path:
        """A kubeconfig for `token`, for a process that loads one (KUBECONFIG=path)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
            "current-context": "test",
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def wait_ready(self, timeout: float) -> None:
        """Poll /readyz as the admin; fail at once, with the logs, if the apiserver exits meanwhile."""
        deadline = time.monotonic() + timeout
        while (status := _readyz(self.url, self.admin_token, self.ca_file)) != 200:
            if not self.apiserver.alive:
                raise ProcError(f"kube-apiserver exited ({self.apiserver.returncode})\n{self.describe()}")
            if time.monotonic() >= deadline:
                raise ProcError(f"/readyz not 200 within {timeout:.0f}s (last {status})\n{self.describe()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.apiserver.stop(timeout=10)
        self.etcd.stop(timeout=10)

    def describe(self, chars: int = 6000) -> str:
        return f"{self.apiserver.describe(chars)}\n{self.etcd.describe(2000)}"


def _readyz(url: str, token: str, ca_file: Path) -> int | None:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    req = urllib.request.Request(url + "/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def start_kube(workdir: Path, timeout: float = 30.0) -> KubeCluster:
    """etcd, then kube-apiserver against it; returns when /readyz answers 200 to the admin token."""
    etcd_bin, apiserver_bin = require_kube()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _make_keys(workdir)
    admin_token = secrets.token_urlsafe(24)
    # The only static user: the admin. Everyone else authenticates as a ServiceAccount.
    (workdir / "tokens.csv").write_text(f'{admin_token},admin,admin,"system:masters"\n')

    client_port, peer_port, port = free_port(), free_port(), free_port()
    etcd = Service(
        Proc(
            "etcd",
            [
                etcd_bin,
                "--name=test",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
            ],
            workdir,
        ),
        client_port,
        "/health",
    )
    deadline = time.monotonic() + timeout
    etcd.start(timeout)
    apiserver = Proc(
        "kube-apiserver",
        [
            apiserver_bin,
            f"--etcd-servers=http://127.0.0.1:{client_port}",
            "--insecure-port=0",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            # Loopback would be refused in the `kubernetes` Endpoints, so that reconciler is off.
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={workdir / 'serving.crt'}",  # ours, so clients verify TLS against it
            f"--tls-private-key-file={workdir / 'serving.key'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--api-audiences={ISSUER}",
            f"--service-account-key-file={workdir / 'sa.key'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",  # allocation only: nothing is ever sent there
            "--disable-admission-plugins=ServiceAccount",  # no token controller here to make SA secrets
            "--enable-priority-and-fairness=false",
        ],
        workdir,
    )
    cluster = KubeCluster(workdir, etcd, apiserver, port, admin_token)
    try:
        apiserver.start()
        cluster.wait_ready(max(1.0, deadline - time.monotonic()))
    except BaseException:
        cluster.stop()  # never leave a half-started cluster behind
        raise
    return cluster


# ---- objects ------------------------------------------------------------------------------------------------


def create_namespace(api: Any, name: str) -> None:
    """Create namespace `name` unless it exists."""
    try:
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def apply_yaml(api: Any, paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Create every object in the YAML files (each namespaced object must name its namespace)."""
    docs = [d for p in paths for d in yaml.safe_load_all(Path(p).read_text()) if d]
    for doc in docs:
        utils.create_from_dict(api, doc)
    return docs


def service_account_token(api: Any, namespace: str, name: str, seconds: int = 3600) -> str:
    """A bound token for ServiceAccount `name`, from the TokenRequest API (no token controller needed)."""
    spec = client.V1TokenRequestSpec(audiences=[ISSUER], expiration_seconds=seconds)
    body = client.AuthenticationV1TokenRequest(spec=spec)
    resp = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, body)
    return str(resp.status.token)


def set_deployment_status(api: Any, namespace: str, name: str, ready: int | None = None) -> Any:
    """Play the kubelet and controller-manager: report `ready` (default: all) of spec.replicas as ready,
    updated and available at the current generation. Returns the Deployment as read back."""
    apps = client.AppsV1Api(api)
    dep = apps.read_namespaced_deployment(name, namespace)
    replicas = dep.spec.replicas or 0
    ready = replicas if ready is None else ready
    status = {
        "observedGeneration": dep.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return apps.patch_namespaced_deployment_status(name, namespace, {"status": status})


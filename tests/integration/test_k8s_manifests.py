"""k8s/ against a real kube-apiserver: every manifest of the kustomization (and the example recommender) is
accepted by the server (server-side dry run, then for real), and the RBAC it grants is exactly the controller's
job, proved with SubjectAccessReviews (and `kubectl auth can-i`) for the ServiceAccount's user.

The kustomization is rendered with `kubectl kustomize` (tests/infra/install-k8s-tools.sh installs Debian's
kubernetes-client) and compared with its resource list read in Python, which is what the rest of the module
applies (so the apply tests run without kubectl too).

`cluster` and `admin` come from conftest.py: one API server for the whole session, shared with
test_kube_rbac.py and test_kube_rollout.py. Those create the namespaces, the controller's RBAC and the model's
Deployments without looking, so this module creates an object only when it is absent (409: someone else's, left
alone) and deletes at its end exactly the objects it created; namespaces are never deleted (without the
controller-manager they would stay Terminating).
"""

from __future__ import annotations

import copy
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.infra import kube
from tests.infra.kube import KubeCluster, _missing
from tests.infra.procs import find_binary

K8S = Path(__file__).resolve().parents[2] / "k8s"
RECOMMENDER = K8S / "recommender"
CONTROLLER_NS, MODEL_NS = "retrain-controller", "recsys"
SA_USER = f"system:serviceaccount:{CONTROLLER_NS}:retrain-controller"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{CONTROLLER_NS}", "system:authenticated"]
FIELD_MANAGER = "retrain-controller-tests"
NOT_IN_KUSTOMIZATION = {"training-job.yaml", "podmonitor.yaml", "kustomization.yaml"}


# ---- rendering -----------------------------------------------------------------------------------------------


def load_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization that only lists resources (no patches, generators or transformers: what
    kubectl renders from it is then exactly its files' objects)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not extra, f"{directory}: {sorted(extra)} would make this loader differ from kustomize"
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = directory / entry
        if path.is_dir():
            docs += load_kustomization(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def kubectl_binary() -> str:
    found = find_binary("KUBECTL", ("kubectl",))
    if found is None:
        _missing("kubectl not found (run tests/infra/install-k8s-tools.sh, or set KUBECTL)")
    assert found is not None
    return found


def kubectl(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [kubectl_binary(), *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


CONTROLLER_DOCS = load_kustomization(K8S)
RECOMMENDER_DOCS = load_kustomization(RECOMMENDER)


# ---- what the files say (no server) --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_templates() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in K8S.glob("*.yaml")}
    assert listed == files - NOT_IN_KUSTOMIZATION
    assert {"namespace.yaml", "serviceaccount.yaml", "role.yaml", "rolebinding.yaml", "configmap.yaml",
            "deployment.yaml", "pvc.yaml", "service.yaml", "networkpolicy.yaml"} == listed  # fmt: skip
    kinds = sorted({d["kind"] for d in CONTROLLER_DOCS})
    assert kinds == sorted(["Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                            "PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"])  # fmt: skip
    # Nothing cluster-wide but the two namespaces; everything else names its namespace.
    for doc in CONTROLLER_DOCS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] in (CONTROLLER_NS, MODEL_NS)
        else:
            assert doc["metadata"]["namespace"] in (CONTROLLER_NS, MODEL_NS), key(doc)
    assert {d["metadata"]["namespace"] for d in CONTROLLER_DOCS if d["kind"] in ("Role", "RoleBinding")} == {MODEL_NS}


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    for directory, docs in ((K8S, CONTROLLER_DOCS), (RECOMMENDER, RECOMMENDER_DOCS)):
        rendered = [d for d in yaml.safe_load_all(kubectl("kustomize", str(directory)).stdout) if d]
        assert sorted(map(key, rendered)) == sorted(map(key, docs))
        by_key = {key(d): d for d in docs}
        for doc in rendered:
            assert doc == by_key[key(doc)], key(doc)


def test_deployment_is_hardened_and_single_writer() -> None:
    (dep,) = [d for d in CONTROLLER_DOCS if d["kind"] == "Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "retrain-controller" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["args"] == ["serve", "--config", "/etc/retrain-controller/config.yaml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "retrain-controller-store"
    assert volumes["tmp"]["emptyDir"] is not None and mounts["tmp"] == "/tmp"
    assert volumes["secrets"]["secret"]["secretName"] == "retrain-controller-secrets"
    # The store path in the ConfigMap is on the PVC's mount.
    (cm,) = [d for d in CONTROLLER_DOCS if d["kind"] == "ConfigMap"]
    store = yaml.safe_load(cm["data"]["config.yaml"])["store"]["path"]
    assert Path(store).parent == Path(mounts["store"])
    # No Secret with values is part of the manifests.
    assert not [d for d in CONTROLLER_DOCS + RECOMMENDER_DOCS if d["kind"] == "Secret"]


def test_network_policy_admits_only_monitoring_and_the_runners_on_8080() -> None:
    (np,) = [d for d in CONTROLLER_DOCS if d["kind"] == "NetworkPolicy"]
    (dep,) = [d for d in CONTROLLER_DOCS if d["kind"] == "Deployment"]
    spec = np["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]  # egress deliberately open (see the file's header)
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    sources = [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])  # namespaces only, no ipBlock
    assert sources == [{"kubernetes.io/metadata.name": "monitoring"}, {"kubernetes.io/metadata.name": "gitlab-runner"}]
    (svc,) = [d for d in CONTROLLER_DOCS if d["kind"] == "Service"]
    assert svc["spec"]["selector"] == spec["podSelector"]["matchLabels"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]


def test_recommender_matches_the_configmaps_canary() -> None:
    (cm,) = [d for d in CONTROLLER_DOCS if d["kind"] == "ConfigMap"]
    (model,) = yaml.safe_load(cm["data"]["config.yaml"])["models"]
    canary = model["canary"]
    deps = {d["metadata"]["name"]: d for d in RECOMMENDER_DOCS if d["kind"] == "Deployment"}
    assert set(deps) == {canary["stable"], canary["canary"]}
    for name, track in ((canary["stable"], "stable"), (canary["canary"], "canary")):
        dep = deps[name]
        assert dep["metadata"]["namespace"] == canary["namespace"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels == {"app": "recsys", model["analysis"]["track_label"]: track}
        assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == [canary["container"]]
    (svc,) = [d for d in RECOMMENDER_DOCS if d["kind"] == "Service"]
    assert svc["spec"]["selector"] == {"app": "recsys"}  # both tracks: traffic splits by ready replicas


# ---- against the API server ----------------------------------------------------------------------------------


class Applied:
    """Objects this module created, deleted (newest first) at its end; objects that already existed are left."""

    def __init__(self, dyn: Any) -> None:
        self.dyn = dyn
        self.created: list[dict[str, Any]] = []
        self.existing: list[dict[str, Any]] = []

    def resource(self, doc: dict[str, Any]) -> Any:
        return self.dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])

    def dry_run(self, doc: dict[str, Any]) -> Any:
        """Server-side apply with dryRun=All: admission and validation run, nothing is stored, and it works
        whether or not the object exists."""
        return self.dyn.server_side_apply(
            self.resource(doc), body=doc, field_manager=FIELD_MANAGER, force_conflicts=True, dry_run="All"
        )

    def ensure(self, doc: dict[str, Any]) -> None:
        try:
            self.dyn.create(self.resource(doc), body=doc)
        except kube.client.ApiException as exc:
            if exc.status != 409:
                raise
            self.existing.append(doc)
            return
        if doc["kind"] != "Namespace":
            self.created.append(doc)

    def remove_all(self) -> None:
        for doc in reversed(self.created):
            resource, meta = self.resource(doc), doc["metadata"]
            try:
                if doc["kind"] == "PersistentVolumeClaim":  # pvc-protection: no controller here to lift it
                    self.dyn.patch(
                        resource, body={"metadata": {"finalizers": None}}, name=meta["name"],
                        namespace=meta.get("namespace"), content_type="application/merge-patch+json",
                    )  # fmt: skip
                self.dyn.delete(resource, name=meta["name"], namespace=meta.get("namespace"))
            except kube.client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(scope="module")
def applied(admin: Any) -> Iterator[Applied]:
    """Every object of k8s/ and k8s/recommender/: dry run first (all of them), then created unless present."""
    from kubernetes.dynamic import DynamicClient

    objs = Applied(DynamicClient(admin))
    docs = CONTROLLER_DOCS + RECOMMENDER_DOCS
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    for doc in namespaces:  # a dry run in a namespace that does not exist is refused: namespaces first
        objs.dry_run(doc)
        objs.ensure(doc)
    try:
        for doc in docs:
            objs.dry_run(doc)
        for doc in docs:
            if doc["kind"] != "Namespace":
                objs.ensure(doc)
        yield objs
    finally:
        objs.remove_all()


def test_every_object_is_on_the_server(applied: Applied, admin: Any) -> None:
    for doc in CONTROLLER_DOCS + RECOMMENDER_DOCS:
        meta = doc["metadata"]
        got = applied.dyn.get(applied.resource(doc), name=meta["name"], namespace=meta.get("namespace"))
        assert got.metadata.name == meta["name"]
    apps = kube.client.AppsV1Api(admin)
    dep = apps.read_namespaced_deployment("retrain-controller", CONTROLLER_NS)
    pod = dep.spec.template.spec  # the fields a 1.20 server keeps (an unknown field would be dropped)
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    assert dep.spec.strategy.type == "Recreate"
    svc = kube.client.CoreV1Api(admin).read_namespaced_service("retrain-controller", CONTROLLER_NS)
    assert svc.metadata.annotations["prometheus.io/scrape"] == "true"
    assert [p.port for p in svc.spec.ports] == [8080]


def test_dry_run_validates_and_stores_nothing(applied: Applied, admin: Any) -> None:
    (dep,) = [d for d in CONTROLLER_DOCS if d["kind"] == "Deployment"]
    broken = copy.deepcopy(dep)
    broken["metadata"]["name"] = "retrain-controller-broken"
    broken["spec"]["replicas"] = -1
    with pytest.raises(kube.client.ApiException) as err:
        applied.dry_run(broken)
    assert err.value.status == 422, err.value.body
    fine = copy.deepcopy(dep)
    fine["metadata"]["name"] = "retrain-controller-dry"
    applied.dry_run(fine)
    with pytest.raises(kube.client.ApiException) as err:
        kube.client.AppsV1Api(admin).read_namespaced_deployment("retrain-controller-dry", CONTROLLER_NS)
    assert err.value.status == 404


# ---- RBAC: exactly the controller's job ----------------------------------------------------------------------

# (verb, group, resource, subresource, namespace, name); namespace "" means cluster-wide / all namespaces.
Access = tuple[str, str, str, str, str, str]

ALLOWED: list[Access] = [
    (verb, "apps", "deployments", "", MODEL_NS, name)
    for verb in ("get", "patch", "update")
    for name in ("recsys", "recsys-canary")
] + [
    ("list", "apps", "deployments", "", MODEL_NS, ""),
    ("watch", "apps", "deployments", "", MODEL_NS, ""),
    ("get", "", "services", "", MODEL_NS, "recsys"),
]

DENIED: list[Access] = [
    ("delete", "apps", "deployments", "", MODEL_NS, "recsys-canary"),
    ("delete", "apps", "deployments", "", MODEL_NS, "recsys"),
    ("create", "apps", "deployments", "", MODEL_NS, ""),
    ("deletecollection", "apps", "deployments", "", MODEL_NS, ""),
    ("patch", "apps", "deployments", "status", MODEL_NS, "recsys-canary"),
    ("update", "apps", "deployments", "status", MODEL_NS, "recsys"),
    ("patch", "apps", "deployments", "scale", MODEL_NS, "recsys-canary"),
    ("patch", "apps", "deployments", "", MODEL_NS, "recsys-shadow"),
    ("patch", "apps", "deployments", "", "search", "recsys"),
    ("patch", "apps", "deployments", "", "default", "recsys"),
    ("get", "apps", "deployments", "", CONTROLLER_NS, "retrain-controller"),
    ("patch", "apps", "deployments", "", CONTROLLER_NS, "retrain-controller"),
    ("list", "apps", "deployments", "", "", ""),
    ("get", "", "secrets", "", MODEL_NS, "db"),
    ("list", "", "secrets", "", MODEL_NS, ""),
    ("get", "", "secrets", "", CONTROLLER_NS, "retrain-controller-secrets"),
    ("get", "", "secrets", "", "kube-system", ""),
    ("list", "", "secrets", "", "", ""),
    ("list", "", "nodes", "", "", ""),
    ("list", "", "namespaces", "", "", ""),
    ("list", "", "pods", "", MODEL_NS, ""),
    ("create", "", "pods", "exec", MODEL_NS, "recsys-1"),
    ("create", "", "services", "", MODEL_NS, ""),
    ("patch", "", "services", "", MODEL_NS, "recsys"),
    ("get", "", "configmaps", "", CONTROLLER_NS, "retrain-controller-config"),
    ("create", "", "serviceaccounts", "token", CONTROLLER_NS, "retrain-controller"),
    ("patch", "rbac.authorization.k8s.io", "roles", "", MODEL_NS, "retrain-controller"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "cluster-admin"),
    ("escalate", "rbac.authorization.k8s.io", "roles", "", MODEL_NS, ""),
    ("impersonate", "", "users", "", "", "admin"),
    ("create", "batch", "jobs", "", MODEL_NS, ""),
]


def review(admin: Any, access: Access) -> Any:
    verb, group, resource, subresource, namespace, name = access
    c = kube.client
    attrs = c.V1ResourceAttributes(
        verb=verb, group=group, resource=resource, subresource=subresource or None,
        namespace=namespace or None, name=name or None,
    )  # fmt: skip
    body = c.V1SubjectAccessReview(
        spec=c.V1SubjectAccessReviewSpec(user=SA_USER, groups=SA_GROUPS, resource_attributes=attrs)
    )
    return c.AuthorizationV1Api(admin).create_subject_access_review(body).status


@pytest.fixture(scope="module")
def rbac_ready(admin: Any, applied: Applied) -> None:
    """The authorizer reads Roles from a watch cache: wait (bounded) until it has seen the RoleBinding."""
    deadline = time.monotonic() + 10
    while not review(admin, ALLOWED[0]).allowed:
        assert time.monotonic() < deadline, "the RoleBinding did not take effect within 10s"
        time.sleep(0.1)


def label(access: Access) -> str:
    verb, group, resource, sub, ns, name = access
    return f"{verb} {resource}{'/' + sub if sub else ''}.{group or 'core'} {name or '*'} in {ns or 'all namespaces'}"


@pytest.mark.parametrize("access", ALLOWED, ids=label)
def test_service_account_may(admin: Any, rbac_ready: None, access: Access) -> None:
    status = review(admin, access)
    assert status.allowed, status.reason


@pytest.mark.parametrize("access", DENIED, ids=label)
def test_service_account_may_not(admin: Any, rbac_ready: None, access: Access) -> None:
    status = review(admin, access)
    assert not status.allowed, status.reason


def test_kubectl_auth_can_i_agrees(cluster: KubeCluster, rbac_ready: None, tmp_path: Path) -> None:
    kubectl_binary()
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", cluster.admin_token)
    as_sa = ["--as", SA_USER, *(f"--as-group={g}" for g in SA_GROUPS)]

    def can_i(*args: str) -> str:
        proc = kubectl("auth", "can-i", *args, *as_sa, kubeconfig=kubeconfig, check=False)
        assert proc.returncode in (0, 1), proc.stderr  # 0 yes, 1 no, anything else an error
        return proc.stdout.strip()

    assert can_i("patch", "deployments.apps/recsys-canary", "-n", MODEL_NS) == "yes"
    assert can_i("get", "deployments.apps/recsys", "-n", MODEL_NS) == "yes"
    assert can_i("delete", "deployments.apps/recsys-canary", "-n", MODEL_NS) == "no"
    assert can_i("get", "secrets", "-n", MODEL_NS) == "no"
    assert can_i("list", "nodes") == "no"
    assert can_i("list", "deployments.apps", "--all-namespaces") == "no"
    assert can_i("patch", "deployments.apps/recsys", "-n", "search") == "no"

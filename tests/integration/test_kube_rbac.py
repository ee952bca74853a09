"""The controller's RBAC (k8s/role.yaml) against a real kube-apiserver: it can do its job and nothing more.

The controller authenticates with a real ServiceAccount token (TokenRequest API) whose only rights come from
k8s/rolebinding.yaml. The admin sets up the model's objects and plays the kubelet by patching /status.
`cluster` and `admin` come from conftest.py: one API server for the whole session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.infra import kube
from tests.infra.kube import KubeCluster

K8S = Path(__file__).resolve().parents[2] / "k8s"
NS, ELSEWHERE, CONTROLLER_NS = "recsys", "search", "retrain-controller"


def deployment(name: str, track: str, image: str = "registry.example/recsys:1", replicas: int = 2) -> Any:
    c = kube.client
    labels = {"app": "recsys", "track": track}
    container = c.V1Container(name="model", image=image, ports=[c.V1ContainerPort(container_port=8080)])
    return c.V1Deployment(
        metadata=c.V1ObjectMeta(name=name, labels=labels),
        spec=c.V1DeploymentSpec(
            replicas=replicas,
            selector=c.V1LabelSelector(match_labels=labels),
            template=c.V1PodTemplateSpec(
                metadata=c.V1ObjectMeta(labels=labels), spec=c.V1PodSpec(containers=[container])
            ),
        ),
    )


@pytest.fixture(scope="session")
def model(admin: Any) -> None:
    """The model's namespace as an SRE sets it up: stable and canary Deployments behind one Service,
    plus a namespace of another model, and the controller's ServiceAccount, Role and RoleBinding from k8s/."""
    c = kube.client
    for ns in (NS, ELSEWHERE, CONTROLLER_NS):
        kube.create_namespace(admin, ns)
    apps = c.AppsV1Api(admin)
    apps.create_namespaced_deployment(NS, deployment("recsys", "stable"))
    apps.create_namespaced_deployment(NS, deployment("recsys-canary", "canary", replicas=0))
    apps.create_namespaced_deployment(NS, deployment("recsys-shadow", "shadow"))  # not the controller's
    apps.create_namespaced_deployment(ELSEWHERE, deployment("recsys", "stable"))
    service = c.V1Service(
        metadata=c.V1ObjectMeta(name="recsys"),
        spec=c.V1ServiceSpec(selector={"app": "recsys"}, ports=[c.V1ServicePort(port=80, target_port=8080)]),
    )
    c.CoreV1Api(admin).create_namespaced_service(NS, service)
    secret = c.V1Secret(metadata=c.V1ObjectMeta(name="db"), string_data={"password": "not-for-the-controller"})
    c.CoreV1Api(admin).create_namespaced_secret(NS, secret)
    kube.apply_yaml(admin, [K8S / "serviceaccount.yaml", K8S / "role.yaml", K8S / "rolebinding.yaml"])


@pytest.fixture(scope="session")
def controller_token(admin: Any, model: None) -> str:
    return kube.service_account_token(admin, CONTROLLER_NS, "retrain-controller")


@pytest.fixture(scope="session")
def controller(cluster: KubeCluster, controller_token: str) -> Iterator[Any]:
    """An API client holding the controller ServiceAccount's token, bound only by k8s/role.yaml."""
    with cluster.api_client(controller_token) as api:
        yield api


def forbidden(call: Callable[[], Any]) -> None:
    with pytest.raises(kube.client.ApiException) as err:
        call()
    assert err.value.status == 403, err.value.body


def test_admin_sets_up_the_model(admin: Any, model: None) -> None:
    apps = kube.client.AppsV1Api(admin)
    found = apps.list_namespaced_deployment(NS, label_selector="app=recsys").items
    tracks = {d.metadata.name: d.metadata.labels["track"] for d in found}
    assert tracks == {"recsys": "stable", "recsys-canary": "canary", "recsys-shadow": "shadow"}
    svc = kube.client.CoreV1Api(admin).read_namespaced_service("recsys", NS)
    assert svc.spec.selector == {"app": "recsys"}


def test_token_is_the_service_accounts(admin: Any, controller_token: str) -> None:
    review = kube.client.V1TokenReview(spec=kube.client.V1TokenReviewSpec(token=controller_token))
    status = kube.client.AuthenticationV1Api(admin).create_token_review(review).status
    assert status.authenticated, status.error
    assert status.user.username == f"system:serviceaccount:{CONTROLLER_NS}:retrain-controller"


def test_kubeconfig_carries_the_token(cluster: KubeCluster, controller_token: str, tmp_path: Path) -> None:
    path = cluster.write_kubeconfig(tmp_path / "kubeconfig", controller_token, NS)
    with kube.config.new_client_from_config(str(path)) as api:
        assert kube.client.AppsV1Api(api).read_namespaced_deployment("recsys", NS).metadata.name == "recsys"


def test_controller_reads_deployments_and_services(controller: Any) -> None:
    apps = kube.client.AppsV1Api(controller)
    assert apps.read_namespaced_deployment("recsys", NS).metadata.labels["track"] == "stable"
    assert apps.read_namespaced_deployment("recsys-canary", NS).metadata.labels["track"] == "canary"
    names = {d.metadata.name for d in apps.list_namespaced_deployment(NS, label_selector="app=recsys").items}
    assert {"recsys", "recsys-canary"} <= names
    core = kube.client.CoreV1Api(controller)
    assert core.read_namespaced_service("recsys", NS).spec.selector == {"app": "recsys"}
    assert [s.metadata.name for s in core.list_namespaced_service(NS).items] == ["recsys"]


def image_patch(image: str) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "model", "image": image}]}}}}


def test_controller_sets_canary_image_and_replicas(controller: Any, admin: Any) -> None:
    apps = kube.client.AppsV1Api(controller)
    apps.patch_namespaced_deployment("recsys-canary", NS, image_patch("registry.example/recsys:2"))
    apps.patch_namespaced_deployment("recsys-canary", NS, {"spec": {"replicas": 1}})
    canary = kube.client.AppsV1Api(admin).read_namespaced_deployment("recsys-canary", NS)
    assert canary.spec.replicas == 1
    assert canary.spec.template.spec.containers[0].image == "registry.example/recsys:2"
    # Promotion: stable takes the new image; the canary goes back to zero.
    apps.patch_namespaced_deployment("recsys", NS, image_patch("registry.example/recsys:2"))
    apps.patch_namespaced_deployment("recsys-canary", NS, {"spec": {"replicas": 0}})
    assert apps.read_namespaced_deployment("recsys", NS).spec.template.spec.containers[0].image.endswith(":2")
    assert apps.read_namespaced_deployment("recsys-canary", NS).spec.replicas == 0


def test_controller_can_update_with_resource_version(controller: Any) -> None:
    apps = kube.client.AppsV1Api(controller)
    dep = apps.read_namespaced_deployment("recsys-canary", NS)
    dep.spec.replicas = 3
    assert apps.replace_namespaced_deployment("recsys-canary", NS, dep).spec.replicas == 3
    dep.spec.replicas = 4  # stale resourceVersion: a conflict the controller must re-read after
    with pytest.raises(kube.client.ApiException) as err:
        apps.replace_namespaced_deployment("recsys-canary", NS, dep)
    assert err.value.status == 409


def test_controller_cannot_do_anything_else(controller: Any) -> None:
    apps = kube.client.AppsV1Api(controller)
    core = kube.client.CoreV1Api(controller)
    forbidden(lambda: core.list_namespaced_secret(NS))
    forbidden(lambda: core.read_namespaced_secret("db", NS))
    forbidden(lambda: apps.delete_namespaced_deployment("recsys-canary", NS))
    forbidden(lambda: apps.create_namespaced_deployment(NS, deployment("recsys-evil", "canary")))
    status = {"status": {"readyReplicas": 1}}
    forbidden(lambda: apps.patch_namespaced_deployment_status("recsys-canary", NS, status))
    forbidden(lambda: apps.patch_namespaced_deployment("recsys-shadow", NS, {"spec": {"replicas": 0}}))
    forbidden(lambda: apps.read_namespaced_deployment("recsys", ELSEWHERE))
    forbidden(lambda: apps.list_namespaced_deployment(ELSEWHERE))
    forbidden(lambda: apps.patch_namespaced_deployment("recsys", ELSEWHERE, {"spec": {"replicas": 0}}))
    forbidden(lambda: apps.list_deployment_for_all_namespaces())
    forbidden(lambda: core.list_namespaced_pod(NS))
    service = kube.client.V1Service(metadata=kube.client.V1ObjectMeta(name="recsys-evil"))
    forbidden(lambda: core.create_namespaced_service(NS, service))
    forbidden(lambda: core.delete_namespaced_service("recsys", NS))


def test_admin_status_patch_simulates_readiness(admin: Any, model: None) -> None:
    apps = kube.client.AppsV1Api(admin)
    apps.patch_namespaced_deployment("recsys-canary", NS, {"spec": {"replicas": 2}})
    dep = kube.set_deployment_status(admin, NS, "recsys-canary", ready=1)
    assert (dep.status.replicas, dep.status.ready_replicas, dep.status.available_replicas) == (2, 1, 1)
    kube.set_deployment_status(admin, NS, "recsys-canary")
    dep = apps.read_namespaced_deployment("recsys-canary", NS)
    assert dep.status.ready_replicas == 2
    assert dep.status.observed_generation == dep.metadata.generation

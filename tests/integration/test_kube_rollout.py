"""KubeRollout against a real kube-apiserver, as the controller's ServiceAccount bound only by k8s/role.yaml.

The admin sets up the model (stable `recsys` on 10 pods, `recsys-canary` on 0, one Service) before every test and
plays the kubelet and the Deployment controller by patching /status. The adapter is built the way the service
builds it (`make_apps_api` from a kubeconfig holding the ServiceAccount's token).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from controller.adapters.kubernetes import KubeRollout, make_apps_api
from controller.ports import DeploymentStatus, RolloutError
from tests.infra import kube
from tests.infra.kube import KubeCluster
from tests.infra.procs import free_port

K8S = Path(__file__).resolve().parents[2] / "k8s"
NS, CONTROLLER_NS, READONLY = "recsys", "retrain-controller", "recsys-readonly"
STABLE, CANARY, CONTAINER = "recsys", "recsys-canary", "model"
OLD = "registry.example/recsys@sha256:" + "a" * 64
NEW = "registry.example/recsys@sha256:" + "b" * 64
SA_USER = f"system:serviceaccount:{CONTROLLER_NS}:retrain-controller"


class Sleeps:
    """The adapter's sleep: records the waits, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


# ---- the model's objects ------------------------------------------------------------------------------------


def deployment(name: str, track: str, image: str, replicas: int) -> Any:
    c = kube.client
    labels = {"app": "recsys", "track": track}
    containers = [
        c.V1Container(name=CONTAINER, image=image, ports=[c.V1ContainerPort(container_port=8080)]),
        c.V1Container(name="log-shipper", image="registry.example/shipper:3"),  # must survive every patch
    ]
    return c.V1Deployment(
        metadata=c.V1ObjectMeta(name=name, labels=labels),
        spec=c.V1DeploymentSpec(
            replicas=replicas,
            selector=c.V1LabelSelector(match_labels=labels),
            template=c.V1PodTemplateSpec(metadata=c.V1ObjectMeta(labels=labels), spec=c.V1PodSpec(containers=containers)),
        ),
    )


class Objects:
    """Objects the admin created for this module, deleted again (newest first) at its end, so that other modules
    of the session, which create theirs without looking, find the namespace as they expect."""

    def __init__(self) -> None:
        self.undo: list[Callable[[], Any]] = []

    def ensure(self, create: Callable[[], Any], delete: Callable[[], Any]) -> None:
        try:
            create()
        except kube.client.ApiException as exc:
            if exc.status != 409:
                raise
            return  # someone else's: left alone
        self.undo.append(delete)

    def remove_all(self) -> None:
        for delete in reversed(self.undo):
            ignore_404(delete)


# Deletes answer with a Status object, which some client versions fail to read as the deleted kind: not read.
RAW = {"_preload_content": False}


def ignore_404(call: Callable[[], Any]) -> None:
    try:
        drain(call())
    except kube.client.ApiException as exc:
        if exc.status != 404:
            raise


def drain(answer: Any) -> None:
    """Read and release a raw answer (from a call with RAW), so its connection goes back to the pool."""
    if hasattr(answer, "release_conn"):
        answer.read()
        answer.release_conn()


@pytest.fixture(scope="module")
def controller_token(admin: Any) -> Iterator[str]:
    """The controller's identity from k8s/ (ServiceAccount, Role, RoleBinding), the model's Service, a Deployment
    of the namespace the Role does not name, and a second namespace where the controller may only read."""
    c = kube.client
    core, apps, rbac = c.CoreV1Api(admin), c.AppsV1Api(admin), c.RbacAuthorizationV1Api(admin)
    for ns in (NS, CONTROLLER_NS, READONLY):
        kube.create_namespace(admin, ns)
    objs = Objects()
    kinds = {  # kind -> (create(namespace, body), delete(name, namespace))
        "ServiceAccount": (core.create_namespaced_service_account, core.delete_namespaced_service_account),
        "Role": (rbac.create_namespaced_role, rbac.delete_namespaced_role),
        "RoleBinding": (rbac.create_namespaced_role_binding, rbac.delete_namespaced_role_binding),
    }
    for path in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml"):
        doc = yaml.safe_load((K8S / path).read_text())
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        create, delete = kinds[doc["kind"]]
        objs.ensure(lambda: create(ns, doc), lambda delete=delete, name=name, ns=ns: delete(name, ns, **RAW))
    service = c.V1Service(
        metadata=c.V1ObjectMeta(name="recsys"),
        spec=c.V1ServiceSpec(selector={"app": "recsys"}, ports=[c.V1ServicePort(port=80, target_port=8080)]),
    )
    objs.ensure(
        lambda: core.create_namespaced_service(NS, service),
        lambda: core.delete_namespaced_service("recsys", NS, **RAW),
    )
    shadow = deployment("recsys-shadow", "shadow", OLD, 2)
    objs.ensure(
        lambda: apps.create_namespaced_deployment(NS, shadow),
        lambda: apps.delete_namespaced_deployment("recsys-shadow", NS, **RAW),
    )
    # A namespace where the controller may read the Deployments but not change them.
    reader = {
        "metadata": {"name": "deployment-reader", "namespace": READONLY},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}],
    }
    binding = {
        "metadata": {"name": "deployment-reader", "namespace": READONLY},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployment-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "retrain-controller", "namespace": CONTROLLER_NS}],
    }
    objs.ensure(
        lambda: rbac.create_namespaced_role(READONLY, reader),
        lambda: rbac.delete_namespaced_role("deployment-reader", READONLY, **RAW),
    )
    objs.ensure(
        lambda: rbac.create_namespaced_role_binding(READONLY, binding),
        lambda: rbac.delete_namespaced_role_binding("deployment-reader", READONLY, **RAW),
    )
    for name, track, replicas in ((STABLE, "stable", 10), (CANARY, "canary", 0)):
        body = deployment(name, track, OLD, replicas)
        objs.ensure(
            lambda body=body: apps.create_namespaced_deployment(READONLY, body),
            lambda name=name: apps.delete_namespaced_deployment(name, READONLY, **RAW),
        )
    try:
        yield kube.service_account_token(admin, CONTROLLER_NS, "retrain-controller")
    finally:
        for name in (STABLE, CANARY):
            ignore_404(lambda name=name: apps.delete_namespaced_deployment(name, NS, **RAW))
        objs.remove_all()


@pytest.fixture
def model(admin: Any, controller_token: str) -> Any:
    """Fresh stable (10 ready pods of OLD) and canary (0 pods) Deployments; returns the admin's AppsV1Api."""
    apps = kube.client.AppsV1Api(admin)
    for name, track, replicas in ((STABLE, "stable", 10), (CANARY, "canary", 0)):
        ignore_404(lambda: apps.delete_namespaced_deployment(name, NS, **RAW))
        apps.create_namespaced_deployment(NS, deployment(name, track, OLD, replicas))
        kube.set_deployment_status(admin, NS, name)
    return apps


Make = Callable[..., KubeRollout]


@pytest.fixture
async def make_rollout(cluster: KubeCluster, controller_token: str, tmp_path: Path) -> Any:
    """make_rollout(**overrides) -> a KubeRollout holding only the controller's token; closed at teardown."""
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", controller_token, NS)
    made: list[KubeRollout] = []

    def make(api: Any = None, **kw: Any) -> KubeRollout:
        fields: dict[str, Any] = {
            "namespace": NS, "stable": STABLE, "canary": CANARY, "container": CONTAINER,
            "call_timeout": 5.0, "retry_total": 5.0, "sleep": Sleeps(),
        }  # fmt: skip
        fields.update(kw)
        rollout = KubeRollout(api or make_apps_api(kubeconfig), **fields)
        made.append(rollout)
        return rollout

    yield make
    for rollout in made:
        await rollout.aclose()


def read(apps: Any, name: str, namespace: str = NS) -> Any:
    return apps.read_namespaced_deployment(name, namespace)


def image_of(dep: Any, container: str = CONTAINER) -> str:
    return str(next(c.image for c in dep.spec.template.spec.containers if c.name == container))


def containers(dep: Any) -> list[tuple[str, str]]:
    return [(c.name, c.image) for c in dep.spec.template.spec.containers]


# ---- the happy paths ----------------------------------------------------------------------------------------


async def test_status_of_both(model: Any, make_rollout: Make) -> None:
    status = await make_rollout().status()
    assert status.stable == DeploymentStatus(image=OLD, replicas=10, ready_replicas=10, updated_replicas=10, settled=True)
    assert status.canary == DeploymentStatus(image=OLD, replicas=0, ready_replicas=0, updated_replicas=0, settled=True)


async def test_set_canary_settles_when_pods_are_ready_and_repeats_change_nothing(
    model: Any, make_rollout: Make, admin: Any
) -> None:
    rollout = make_rollout()
    stable_before = read(model, STABLE)

    await rollout.set_canary(NEW, 1)
    canary = read(model, CANARY)
    assert (image_of(canary), canary.spec.replicas) == (NEW, 1)
    assert containers(canary)[1] == ("log-shipper", "registry.example/shipper:3")  # the other container kept
    assert "retrain-controller" in {f.manager for f in canary.metadata.managed_fields}
    status = await rollout.status()
    assert status.canary == DeploymentStatus(image=NEW, replicas=1, ready_replicas=0, updated_replicas=0, settled=False)
    assert status.stable.settled and status.stable.image == OLD

    kube.set_deployment_status(admin, NS, CANARY, ready=0)  # the spec is seen, the pod is not ready yet
    assert not (await rollout.status()).canary.settled
    kube.set_deployment_status(admin, NS, CANARY)  # the pod is ready
    status = await rollout.status()
    assert status.canary == DeploymentStatus(image=NEW, replicas=1, ready_replicas=1, updated_replicas=1, settled=True)

    before = read(model, CANARY).metadata
    await rollout.set_canary(NEW, 1)  # again, as after a crash: nothing is written
    after = read(model, CANARY).metadata
    assert (after.resource_version, after.generation) == (before.resource_version, before.generation)
    assert read(model, STABLE).metadata.resource_version == stable_before.metadata.resource_version


async def test_promote_moves_stable_to_the_image_and_canary_to_zero(model: Any, make_rollout: Make, admin: Any) -> None:
    rollout = make_rollout()
    await rollout.set_canary(NEW, 1)
    kube.set_deployment_status(admin, NS, CANARY)

    await rollout.promote(NEW)
    stable, canary = read(model, STABLE), read(model, CANARY)
    assert (image_of(stable), stable.spec.replicas) == (NEW, 10)
    assert containers(stable)[1] == ("log-shipper", "registry.example/shipper:3")
    assert (image_of(canary), canary.spec.replicas) == (NEW, 1)  # serving until the loop sees stable ready
    await rollout.set_canary(NEW, 0)
    canary = read(model, CANARY)
    assert (image_of(canary), canary.spec.replicas) == (NEW, 0)
    status = await rollout.status()
    assert not status.stable.settled and not status.canary.settled  # the Deployment controller has not seen it yet

    kube.set_deployment_status(admin, NS, STABLE)
    kube.set_deployment_status(admin, NS, CANARY)
    status = await rollout.status()
    assert status.stable == DeploymentStatus(image=NEW, replicas=10, ready_replicas=10, updated_replicas=10, settled=True)
    assert status.canary == DeploymentStatus(image=NEW, replicas=0, ready_replicas=0, updated_replicas=0, settled=True)

    versions = [read(model, n).metadata.resource_version for n in (STABLE, CANARY)]
    await rollout.promote(NEW)  # again: nothing is written
    assert [read(model, n).metadata.resource_version for n in (STABLE, CANARY)] == versions


async def test_rollback_scales_the_canary_to_zero_and_leaves_stable_alone(
    model: Any, make_rollout: Make, admin: Any
) -> None:
    rollout = make_rollout()
    stable_before = read(model, STABLE)
    await rollout.set_canary(NEW, 2)
    kube.set_deployment_status(admin, NS, CANARY)

    await rollout.set_canary(NEW, 0)
    canary, stable = read(model, CANARY), read(model, STABLE)
    assert (image_of(canary), canary.spec.replicas) == (NEW, 0)
    assert stable.metadata.resource_version == stable_before.metadata.resource_version
    assert (image_of(stable), stable.spec.replicas) == (OLD, 10)
    assert not (await rollout.status()).canary.settled  # two pods are still there until the controller sees it
    kube.set_deployment_status(admin, NS, CANARY)
    status = await rollout.status()
    assert status.canary.replicas == 0 and status.canary.settled
    assert status.stable == DeploymentStatus(image=OLD, replicas=10, ready_replicas=10, updated_replicas=10, settled=True)


# ---- conflicts ----------------------------------------------------------------------------------------------


async def test_a_concurrent_writer_causes_409_and_the_adapter_rereads(
    model: Any, make_rollout: Make, cluster: KubeCluster, controller_token: str, tmp_path: Path
) -> None:
    api = make_apps_api(cluster.write_kubeconfig(tmp_path / "kubeconfig-conflict", controller_token, NS))
    real_read, real_patch = api.read_namespaced_deployment, api.patch_namespaced_deployment
    reads: list[str] = []
    patches: list[int] = []
    restarted_at = "2026-03-01T12:00:00Z"

    def read_then_someone_writes(name: str, namespace: str, **kw: Any) -> Any:
        dep = real_read(name, namespace, **kw)
        reads.append(dep.metadata.resource_version)
        if len(reads) == 1:  # right after the adapter's first read: `kubectl rollout restart` by a human
            restarted = {"annotations": {"kubectl.kubernetes.io/restartedAt": restarted_at}}
            restart = {"spec": {"template": {"metadata": restarted}}}
            model.patch_namespaced_deployment(name, namespace, restart)
        return dep

    def patch_and_record(*args: Any, **kw: Any) -> Any:
        try:
            dep = real_patch(*args, **kw)
        except kube.client.ApiException as exc:
            patches.append(int(exc.status))
            raise
        patches.append(200)
        return dep

    api.read_namespaced_deployment = read_then_someone_writes
    api.patch_namespaced_deployment = patch_and_record
    await make_rollout(api).set_canary(NEW, 1)

    assert patches == [409, 200]  # the stale write was refused, not applied over the other writer's change
    assert len(reads) == 2 and reads[0] != reads[1]
    canary = read(model, CANARY)
    assert (image_of(canary), canary.spec.replicas) == (NEW, 1)  # ours
    assert canary.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == restarted_at  # theirs


# ---- permanent failures -------------------------------------------------------------------------------------


async def test_a_deployment_the_role_does_not_name_is_forbidden(model: Any, make_rollout: Make) -> None:
    sleeps = Sleeps()
    with pytest.raises(RolloutError) as err:
        await make_rollout(stable="recsys-shadow", sleep=sleeps).status()
    assert err.value.permanent
    message = str(err.value)
    assert message.startswith("get deployments/recsys-shadow in recsys: 403 Forbidden: "), message
    assert f'User "{SA_USER}" cannot get resource "deployments"' in message
    assert sleeps.waits == []  # never retried

    with pytest.raises(RolloutError) as err:
        await make_rollout(namespace="search").set_canary(NEW, 1)  # another model's namespace
    assert err.value.permanent
    assert str(err.value).startswith("get deployments/recsys-canary in search: 403 Forbidden: ")


async def test_a_deployment_it_may_read_but_not_change(model: Any, make_rollout: Make) -> None:
    rollout = make_rollout(namespace=READONLY)
    assert (await rollout.status()).stable.image == OLD  # reading is allowed there
    before = read(model, CANARY, READONLY).metadata.resource_version
    with pytest.raises(RolloutError) as err:
        await rollout.set_canary(NEW, 1)
    assert err.value.permanent
    message = str(err.value)
    assert message.startswith(f"patch deployments/recsys-canary in {READONLY}: 403 Forbidden: "), message
    assert 'cannot patch resource "deployments"' in message
    assert read(model, CANARY, READONLY).metadata.resource_version == before


async def test_a_missing_deployment_is_404(model: Any, make_rollout: Make) -> None:
    drain(model.delete_namespaced_deployment(CANARY, NS, **RAW))
    rollout = make_rollout()
    for call in (rollout.status(), rollout.set_canary(NEW, 1)):
        with pytest.raises(RolloutError) as err:
            await call
        assert err.value.permanent
        assert 'deployments/recsys-canary in recsys: 404 Not Found: deployments.apps "recsys-canary" not found' in str(
            err.value
        )
    await rollout.promote(NEW)  # promote touches stable only: the loop's status read is what meets the 404
    assert image_of(read(model, STABLE)) == NEW


async def test_a_missing_container_is_named_and_nothing_is_written(model: Any, make_rollout: Make) -> None:
    rollout = make_rollout(container="server")
    before = read(model, CANARY).metadata.resource_version
    for call in (rollout.status(), rollout.set_canary(NEW, 1)):
        with pytest.raises(RolloutError) as err:
            await call
        assert err.value.permanent
        assert "has no container 'server' (it has: model, log-shipper)" in str(err.value)
    assert read(model, CANARY).metadata.resource_version == before  # no container was added by a merge


# ---- transient failures -------------------------------------------------------------------------------------


def dead_kubeconfig(cluster: KubeCluster, path: Path, token: str, port: int) -> Path:
    """A kubeconfig like the real one, but for a port on loopback where nothing answers."""
    path = cluster.write_kubeconfig(path, token, NS)
    data = yaml.safe_load(path.read_text())
    data["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_an_unreachable_api_server_is_transient_after_the_retry_budget(
    make_rollout: Make, cluster: KubeCluster, controller_token: str, tmp_path: Path
) -> None:
    api = make_apps_api(dead_kubeconfig(cluster, tmp_path / "kubeconfig-dead", controller_token, free_port()))
    sleeps = Sleeps()
    started = time.monotonic()
    with pytest.raises(RolloutError) as err:
        await make_rollout(api, retry_total=5.0, sleep=sleeps).set_canary(NEW, 1)
    assert not err.value.permanent
    assert "get deployments/recsys-canary in recsys: API server unreachable: Failed to establish a new connection" in str(
        err.value
    )
    assert "within 5s" in str(err.value)
    assert len(sleeps.waits) >= 2 and 4.0 <= sum(sleeps.waits) <= 5.0 + 1e-6  # the budget, spent in backoff
    assert time.monotonic() - started < 10


async def test_an_api_server_that_never_answers_times_out(
    make_rollout: Make, cluster: KubeCluster, controller_token: str, tmp_path: Path
) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts connections, says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        api = make_apps_api(dead_kubeconfig(cluster, tmp_path / "kubeconfig-silent", controller_token, port))
        sleeps = Sleeps()
        started = time.monotonic()
        with pytest.raises(RolloutError) as err:
            await make_rollout(api, call_timeout=0.3, retry_total=1.0, sleep=sleeps).status()
        took = time.monotonic() - started
    assert not err.value.permanent
    assert "get deployments/recsys" in str(err.value) and "API server did not answer within 0.3s" in str(err.value)
    assert took < 8, took  # a few calls of 0.3s each (plus the TLS handshake's own bound), never a hang


# ---- the controller's canary loop on the real API server ----------------------------------------------------
# The loop of tests/unit/service/test_canary.py (fake clock, counters the test serves), with this adapter under the
# controller's own token instead of the fake rollout. The admin plays the kubelet by patching /status.


def kubelet(admin: Any, *names: str, unready: tuple[str, ...] = ()) -> None:
    for name in names:
        kube.set_deployment_status(admin, NS, name)
    for name in unready:  # the Deployment controller saw the spec, but no pod ever gets ready
        kube.set_deployment_status(admin, NS, name, ready=0)


async def canary_world(tmp_path: Path, make_rollout: Make):  # noqa: ANN201 - tests.unit.service.test_canary.CanaryWorld
    from tests.unit.service.test_canary import CanaryWorld

    w = CanaryWorld(tmp_path)
    w.rollout = make_rollout()
    await w.start()
    return w


async def drive(w: Any, admin: Any, run_id: str, traffic: Any, ready: tuple[str, ...] = (STABLE, CANARY),
                unready: tuple[str, ...] = (), limit: int = 300) -> list[Any]:  # fmt: skip

    seen: list[Any] = []
    for _ in range(limit):
        kubelet(admin, *ready, unready=unready)
        await w.minute(*traffic)
        run = await w.run(run_id)
        if not seen or seen[-1] is not run.phase:
            seen.append(run.phase)
        if run.phase.terminal:
            return seen
    raise AssertionError(f"no end: {seen}")


async def test_the_controller_promotes_a_good_canary(model: Any, make_rollout: Make, admin: Any, tmp_path: Path) -> None:
    from controller.core.runs import Phase
    from tests.unit.service.test_canary import EQUAL, IMAGE

    w = await canary_world(tmp_path, make_rollout)
    try:
        run_id = await w.deploying_run()
        phases = await drive(w, admin, run_id, EQUAL)
    finally:
        await w.stop()
    assert phases[-2:] == [Phase.PROMOTING, Phase.SUCCEEDED], phases
    stable, canary = read(model, STABLE), read(model, CANARY)
    assert image_of(stable) == IMAGE and stable.spec.replicas == 10 and canary.spec.replicas == 0


async def test_the_controller_rolls_back_a_worse_canary(model: Any, make_rollout: Make, admin: Any, tmp_path: Path) -> None:
    from controller.core.runs import Phase
    from tests.unit.service.test_canary import IMAGE, WORSE

    w = await canary_world(tmp_path, make_rollout)
    try:
        run_id = await w.deploying_run()
        phases = await drive(w, admin, run_id, WORSE)
        run = await w.run(run_id)
        looks = await w.looks(run_id)
    finally:
        await w.stop()
    assert phases[-2:] == [Phase.ROLLING_BACK, Phase.ROLLED_BACK], phases
    assert run.previous_image == OLD and looks[-1].verdict.outcome.value == "fail"
    stable, canary = read(model, STABLE), read(model, CANARY)
    assert image_of(stable) == OLD and stable.spec.replicas == 10  # stable untouched
    assert canary.spec.replicas == 0 and image_of(canary) == IMAGE


async def test_a_canary_that_never_gets_ready_is_rolled_back(model: Any, make_rollout: Make, admin: Any, tmp_path: Path) -> None:
    from controller.core.runs import Phase
    from tests.unit.service.test_canary import EQUAL

    w = await canary_world(tmp_path, make_rollout)
    try:
        run_id = await w.deploying_run()
        phases = await drive(w, admin, run_id, EQUAL, ready=(STABLE,), unready=(CANARY,))
        history = await w.store.history(run_id)
    finally:
        await w.stop()
    assert phases == [Phase.DEPLOYING, Phase.ROLLING_BACK, Phase.ROLLED_BACK], phases
    assert "canary not ready after 10m: 0/1 ready" in history[-2].cause
    assert read(model, CANARY).spec.replicas == 0 and read(model, STABLE).spec.replicas == 10


async def test_a_restart_mid_analysis_resumes_the_same_step(model: Any, make_rollout: Make, admin: Any, tmp_path: Path) -> None:
    from controller.core.runs import Phase
    from tests.unit.service.test_canary import EQUAL, IMAGE

    w = await canary_world(tmp_path, make_rollout)
    try:
        run_id = await w.deploying_run()
        for _ in range(3):
            kubelet(admin, STABLE, CANARY)
            await w.minute(*EQUAL)
        before = await w.run(run_id)
        assert before.phase is Phase.ANALYZING
        await w.stop()
        generation = read(model, CANARY).metadata.generation
        w.rollout = make_rollout()  # a new process: new client, same store, same cluster
        await w.start()
        kubelet(admin, STABLE, CANARY)
        await w.minute(*EQUAL)
        after = await w.run(run_id)
        assert before.canary is not None and after.canary is not None
        assert after.canary.step == before.canary.step
        assert after.canary.step_started_at == before.canary.step_started_at
        assert read(model, CANARY).metadata.generation == generation  # the restart changed nothing in the cluster
        phases = await drive(w, admin, run_id, EQUAL)
    finally:
        await w.stop()
    assert phases[-1] is Phase.SUCCEEDED and image_of(read(model, STABLE)) == IMAGE

"""The Kubernetes adapter's pure parts (settled, patches, error messages) and its retry policy over a fake API.

The fake below is not the API server (tests/integration/test_kube_rollout.py runs against a real one); it keeps
Deployments as the client's own model objects, checks the resourceVersion precondition of a patch as the API
server does, and fails calls on demand with the Status bodies the API server sends.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.adapters.kubernetes import (
    KubeFailure,
    KubeRollout,
    change_for,
    classify,
    deployment_status,
    is_settled,
    make_apps_api,
    server_message,
    transport_problem,
)
from controller.ports import DeploymentStatus, RolloutError

OLD = "registry.example/recsys@sha256:" + "a" * 64
NEW = "registry.example/recsys@sha256:" + "b" * 64
SA = "system:serviceaccount:retrain-controller:retrain-controller"


def status_body(code: int, reason: str, message: str) -> str:
    """A Status object as the API server sends it with an error."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                       "reason": reason, "code": code})  # fmt: skip


def api_error(code: int, phrase: str, message: str = "", headers: dict[str, str] | None = None) -> ApiException:
    body = status_body(code, phrase.replace(" ", ""), message) if message else None
    exc = ApiException(status=code, reason=phrase, body=body)
    exc.headers = headers
    return exc


FORBIDDEN_PATCH = (
    f'deployments.apps "recsys-canary" is forbidden: User "{SA}" cannot patch resource "deployments" in API group '
    '"apps" in the namespace "recsys"'
)


def dep(
    name: str = "recsys-canary",
    image: str = OLD,
    replicas: int | None = 0,
    generation: int = 1,
    observed: int | None = 1,
    have: int | None = None,
    ready: int | None = None,
    updated: int | None = None,
    rv: str = "100",
    containers: tuple[str, ...] = ("model", "log-shipper"),
) -> Any:
    c = client
    have = replicas if have is None else have
    pods = [c.V1Container(name=n, image=image if n == "model" else "registry.example/shipper:3") for n in containers]
    return c.V1Deployment(
        metadata=c.V1ObjectMeta(name=name, generation=generation, resource_version=rv),
        spec=c.V1DeploymentSpec(
            replicas=replicas,
            selector=c.V1LabelSelector(match_labels={"app": "recsys"}),
            template=c.V1PodTemplateSpec(spec=c.V1PodSpec(containers=pods)),
        ),
        status=c.V1DeploymentStatus(
            observed_generation=observed,
            replicas=have or None,  # the API server leaves zero counts out
            ready_replicas=(have if ready is None else ready) or None,
            updated_replicas=(have if updated is None else updated) or None,
        ),
    )


# ---- settled ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "generation, observed, replicas, have, ready, updated, settled",
    [
        (3, 3, 2, 2, 2, 2, True),
        (3, 4, 2, 2, 2, 2, True),  # observed ahead (a status written after a newer spec): caught up
        (3, 2, 2, 2, 2, 2, False),  # the Deployment controller has not seen the latest spec
        (3, None, 2, 2, 2, 2, False),  # ... nor any spec yet
        (3, 3, 2, 2, 1, 2, False),  # one pod not ready
        (3, 3, 2, 2, 2, 1, False),  # one pod still on the old template
        (3, 3, 2, 3, 2, 2, False),  # an old pod is still around (surge)
        (3, 3, 2, None, None, None, False),  # no pods at all yet
        (3, 3, 0, None, None, None, True),  # scaled to zero, and nothing left
        (3, 3, 0, 0, 0, 0, True),
        (3, 3, 0, 1, 1, 1, False),  # zero wanted, a pod is still there
        (3, 2, 0, None, None, None, False),  # zero wanted, but not seen yet
        (1, 1, 1, 1, None, 1, False),
    ],
)
def test_settled(
    generation: int, observed: int | None, replicas: int, have: int | None, ready: int | None, updated: int | None,
    settled: bool,
) -> None:  # fmt: skip
    assert is_settled(generation, observed, replicas, have, ready, updated) is settled


def test_status_of_a_deployment() -> None:
    assert deployment_status(dep(replicas=3, generation=2, observed=2), "model", "recsys") == DeploymentStatus(
        image=OLD, replicas=3, ready_replicas=3, updated_replicas=3, settled=True
    )
    fresh = dep(replicas=2, generation=2, observed=1, have=0)
    fresh.status = None  # as created, before the Deployment controller wrote anything
    assert deployment_status(fresh, "model", "recsys") == DeploymentStatus(OLD, 2, 0, 0, False)
    half = dep(replicas=4, generation=5, observed=5, have=4, ready=2, updated=3)
    assert deployment_status(half, "model", "recsys") == DeploymentStatus(OLD, 4, 2, 3, False)
    assert deployment_status(dep(replicas=None), "model", "recsys").replicas == 1  # the API server's default


def test_a_missing_container_is_a_permanent_failure_naming_it() -> None:
    with pytest.raises(KubeFailure) as err:
        deployment_status(dep(), "server", "recsys")
    assert err.value.permanent
    assert str(err.value).startswith(
        "deployments/recsys-canary in recsys has no container 'server' (it has: model, log-shipper)"
    )


# ---- patches ------------------------------------------------------------------------------------------------


def test_change_for_only_what_differs_with_the_read_resource_version() -> None:
    d = dep(replicas=1, rv="42")
    assert change_for(d, "model", "recsys", image=OLD, replicas=1) is None
    assert change_for(d, "model", "recsys", image=OLD) is None
    assert change_for(d, "model", "recsys", image=NEW, replicas=1) == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"template": {"spec": {"containers": [{"name": "model", "image": NEW}]}}},
    }
    assert change_for(d, "model", "recsys", replicas=0) == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"replicas": 0},
    }
    both = change_for(d, "model", "recsys", image=NEW, replicas=3)
    assert both is not None and both["spec"]["replicas"] == 3 and "template" in both["spec"]
    with pytest.raises(KubeFailure):
        change_for(d, "server", "recsys", image=NEW)  # a merge would add a container: refuse instead


# ---- messages and classes of failure ------------------------------------------------------------------------


def test_a_forbidden_patch_names_verb_deployment_namespace_and_reason() -> None:
    failure = classify(api_error(403, "Forbidden", FORBIDDEN_PATCH), "patch", "recsys-canary", "recsys")
    assert failure.permanent and not failure.conflict
    assert str(failure) == f"patch deployments/recsys-canary in recsys: 403 Forbidden: {FORBIDDEN_PATCH}"


@pytest.mark.parametrize(
    "code, phrase, permanent, conflict",
    [
        (400, "Bad Request", True, False),
        (401, "Unauthorized", True, False),
        (403, "Forbidden", True, False),
        (404, "Not Found", True, False),
        (422, "Unprocessable Entity", True, False),
        (409, "Conflict", False, True),
        (408, "Request Timeout", False, False),
        (429, "Too Many Requests", False, False),
        (500, "Internal Server Error", False, False),
        (503, "Service Unavailable", False, False),
        (504, "Gateway Timeout", False, False),
    ],
)
def test_classes_of_failure(code: int, phrase: str, permanent: bool, conflict: bool) -> None:
    failure = classify(api_error(code, phrase, "the server's words"), "get", "recsys", "recsys")
    assert (failure.permanent, failure.conflict) == (permanent, conflict)
    assert str(failure) == f"get deployments/recsys in recsys: {code} {phrase}: the server's words"


def test_retry_after_is_kept() -> None:
    failure = classify(api_error(429, "Too Many Requests", "slow down", {"Retry-After": "3"}), "get", "a", "b")
    assert failure.retry_after == 3.0 and not failure.permanent
    dated = api_error(429, "Too Many Requests", "x", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    odd = classify(dated, "get", "a", "b")
    assert odd.retry_after is None


def test_server_message() -> None:
    assert server_message(status_body(404, "NotFound", 'deployments.apps "x" not found')) == 'deployments.apps "x" not found'
    assert server_message(b"<html>\n  <body>Bad   Gateway</body>\n</html>") == "<html> <body>Bad Gateway</body> </html>"
    assert server_message("x" * 2000).endswith("...") and len(server_message("x" * 2000)) == 503
    assert server_message(None) == "" and server_message("") == ""
    # A 5xx from a proxy without a body: the status line is all there is.
    bare = classify(ApiException(status=502, reason="Bad Gateway"), "get", "a", "b")
    assert str(bare) == "get deployments/a in b: 502 Bad Gateway"


def test_client_side_failures_are_transient() -> None:
    failure = classify(ApiException(status=0, reason="SSLError\ncertificate verify failed"), "get", "a", "b")
    assert not failure.permanent
    assert str(failure) == "get deployments/a in b: no answer: SSLError certificate verify failed"
    conn = urllib3.connection.HTTPSConnection("127.0.0.1", 1)
    refused = urllib3.exceptions.NewConnectionError(
        conn, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    assert transport_problem(urllib3.exceptions.MaxRetryError(None, "/", refused), 10) == (  # type: ignore[arg-type]
        "API server unreachable: Failed to establish a new connection: [Errno 111] Connection refused"
    )
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")  # type: ignore[arg-type]
    assert transport_problem(urllib3.exceptions.MaxRetryError(None, "/", timeout), 2.5) == (  # type: ignore[arg-type]
        "API server did not answer within 2.5s"
    )
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    assert transport_problem(reset, 1) == (
        "API server unreachable: ('Connection aborted.', ConnectionResetError(104, 'reset'))"
    )


# ---- configuration ------------------------------------------------------------------------------------------


def test_make_apps_api_outside_a_cluster_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(RolloutError) as err:
        make_apps_api(None)
    assert err.value.permanent and "in-cluster config" in str(err.value)


def test_make_apps_api_from_a_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(RolloutError) as err:
        make_apps_api(tmp_path / "missing")
    assert err.value.permanent and str(tmp_path / "missing") in str(err.value)
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    api = make_apps_api(path)
    cfg = api.api_client.configuration
    assert cfg.host == "https://127.0.0.1:6443" and cfg.retries == 0
    assert cfg.get_api_key_with_prefix("BearerToken") == "Bearer t0ken"


# ---- the adapter over a fake API ----------------------------------------------------------------------------


class FakeApps:
    """AppsV1Api's two methods the adapter uses, over model objects, with the API server's precondition check."""

    def __init__(self, *deployments: Any) -> None:
        self.objects = {d.metadata.name: d for d in deployments}
        self.fail: dict[str, list[BaseException]] = {"read": [], "patch": []}
        self.calls: list[tuple[str, str]] = []
        self.patches: list[dict[str, Any]] = []

    def _maybe_fail(self, method: str) -> None:
        if self.fail[method]:
            raise self.fail[method].pop(0)

    def read_namespaced_deployment(self, name: str, namespace: str, **kw: Any) -> Any:
        assert kw.get("_request_timeout"), "every call carries a timeout"
        self.calls.append(("read", name))
        self._maybe_fail("read")
        if name not in self.objects:
            raise api_error(404, "Not Found", f'deployments.apps "{name}" not found')
        return copy.deepcopy(self.objects[name])

    def patch_namespaced_deployment(self, name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        assert kw.get("_request_timeout") and kw.get("_content_type") == "application/strategic-merge-patch+json"
        self.calls.append(("patch", name))
        self._maybe_fail("patch")
        d = self.objects[name]
        if body["metadata"]["resourceVersion"] != d.metadata.resource_version:
            raise api_error(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
        self.patches.append(body)
        spec = body["spec"]
        if "replicas" in spec:
            d.spec.replicas = spec["replicas"]
        for c in spec.get("template", {}).get("spec", {}).get("containers", []):
            next(x for x in d.spec.template.spec.containers if x.name == c["name"]).image = c["image"]
        d.metadata.resource_version = str(int(d.metadata.resource_version) + 1)
        d.metadata.generation += 1
        return copy.deepcopy(d)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def adapter(fake: FakeApps, sleeps: Sleeps, **kw: Any) -> KubeRollout:
    fields: dict[str, Any] = {"call_timeout": 1.0, "retry_total": 10.0, "sleep": sleeps}
    fields.update(kw)
    return KubeRollout(fake, "recsys", "recsys", "recsys-canary", "model", **fields)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeApps:
    return FakeApps(dep("recsys", replicas=10), dep("recsys-canary", replicas=0))


async def test_set_canary_patches_once_and_then_never_again(fake: FakeApps) -> None:
    sleeps = Sleeps()
    rollout = adapter(fake, sleeps)
    await rollout.set_canary(NEW, 1)
    await rollout.set_canary(NEW, 1)
    await rollout.aclose()
    assert fake.calls == [("read", "recsys-canary"), ("patch", "recsys-canary"), ("read", "recsys-canary")]
    assert sleeps.waits == []
    assert fake.objects["recsys"].spec.replicas == 10 and fake.objects["recsys"].metadata.resource_version == "100"


async def test_promote_changes_stable_only_and_is_idempotent(fake: FakeApps) -> None:
    fake.objects["recsys-canary"].spec.replicas = 2
    rollout = adapter(fake, Sleeps())
    await rollout.promote(NEW)
    # The canary keeps serving until stable is ready on the image; the loop scales it to 0 after that.
    assert [c for c in fake.calls if c[0] == "patch"] == [("patch", "recsys")]
    assert fake.objects["recsys-canary"].spec.replicas == 2
    fake.calls.clear()
    await rollout.promote(NEW)
    assert [c[0] for c in fake.calls] == ["read"]
    await rollout.aclose()


async def test_transient_failures_back_off_and_the_operation_is_repeated(fake: FakeApps) -> None:
    sleeps = Sleeps()
    fake.fail["read"] = [api_error(503, "Service Unavailable", "etcd leader changed")]
    fake.fail["patch"] = [api_error(429, "Too Many Requests", "too many requests", {"Retry-After": "2"})]
    rollout = adapter(fake, sleeps)
    await rollout.set_canary(NEW, 1)
    await rollout.aclose()
    assert len(sleeps.waits) == 2 and 0 <= sleeps.waits[0] <= 0.5 and sleeps.waits[1] == 2.0  # Retry-After honoured
    assert fake.objects["recsys-canary"].spec.replicas == 1


async def test_transient_failures_give_up_within_the_budget(fake: FakeApps) -> None:
    sleeps = Sleeps()
    fake.fail["read"] = [api_error(503, "Service Unavailable", "etcd leader changed")] * 1000
    with pytest.raises(RolloutError) as err:
        await adapter(fake, sleeps, retry_total=20.0).status()
    assert not err.value.permanent
    assert str(err.value).startswith("get deployments/recsys")
    assert "503 Service Unavailable: etcd leader changed (gave up after" in str(err.value)
    assert str(err.value).endswith("within 20s)")
    assert sum(sleeps.waits) == pytest.approx(20.0) and max(sleeps.waits) <= 5.0


async def test_a_conflict_is_reread_and_a_conflict_storm_is_transient(fake: FakeApps) -> None:
    sleeps = Sleeps()
    fake.fail["patch"] = [api_error(409, "Conflict", "the object has been modified")]
    rollout = adapter(fake, sleeps)
    await rollout.set_canary(NEW, 1)
    assert [c[0] for c in fake.calls] == ["read", "patch", "read", "patch"] and sleeps.waits == []  # no backoff

    fake.fail["patch"] = [api_error(409, "Conflict", "the object has been modified")] * 1000
    with pytest.raises(RolloutError) as err:
        await adapter(fake, sleeps, retry_total=1.0, max_conflicts=3).set_canary(OLD, 2)
    assert not err.value.permanent
    assert "409 Conflict: the object has been modified (still conflicting after 3 re-reads)" in str(err.value)
    await rollout.aclose()


async def test_permanent_failures_are_not_retried(fake: FakeApps) -> None:
    sleeps = Sleeps()
    fake.fail["patch"] = [api_error(403, "Forbidden", FORBIDDEN_PATCH)]
    with pytest.raises(RolloutError) as err:
        await adapter(fake, sleeps).set_canary(NEW, 1)
    assert err.value.permanent and sleeps.waits == []
    assert str(err.value) == f"patch deployments/recsys-canary in recsys: 403 Forbidden: {FORBIDDEN_PATCH}"
    del fake.objects["recsys-canary"]
    with pytest.raises(RolloutError) as err:
        await adapter(fake, sleeps).status()
    assert err.value.permanent
    assert str(err.value) == (
        'get deployments/recsys-canary in recsys: 404 Not Found: deployments.apps "recsys-canary" not found'
    )


async def test_connection_failures_are_transient(fake: FakeApps) -> None:
    sleeps = Sleeps()
    fake.fail["read"] = [urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))]
    rollout = adapter(fake, sleeps)
    assert (await rollout.status()).stable.replicas == 10
    assert len(sleeps.waits) == 1
    await rollout.aclose()


async def test_negative_replicas_are_a_bug(fake: FakeApps) -> None:
    with pytest.raises(ValueError):
        await adapter(fake, Sleeps()).set_canary(NEW, -1)

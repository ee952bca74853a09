"""Rollout on Kubernetes: one model's stable and canary Deployments, through the official (synchronous) client.

Traffic is split by replicas: stable and canary Deployments sit behind one Service, and the caller chooses the
canary's replica count (`set_canary(image, replicas)`). Promotion gives stable the new image and scales the
canary to zero; rollback is `set_canary(image, 0)`. Nothing here waits for pods: the controller polls `status()`.

Every change is read, compare, then a strategic-merge patch of only the fields that differ (the named
container's image, `spec.replicas`) carrying the `resourceVersion` that was read. A concurrent writer therefore
yields 409 Conflict instead of being overwritten, and the change is re-read and recomputed (a bounded number of
times). A Deployment that already matches is not written at all, so repeating a call after a crash or a timeout
changes nothing more. RBAC needs `get` and `patch` on the two Deployments, nothing else.

Failures:
  - 409: re-read and try again, up to `max_conflicts` times in a row.
  - 408, 429 (honouring Retry-After), 5xx, timeouts, refused or reset connections: back off with jitter and
    repeat the whole (idempotent) operation until `retry_total` is spent, then `RolloutError(permanent=False)`;
    the controller tries again on a later tick.
  - any other 4xx (401, 403, 404, 422, ...), or a Deployment without the named container:
    `RolloutError(permanent=True)` at once, naming the verb, the Deployment, the namespace and the API server's
    own reason, e.g. `patch deployments/recsys-canary in recsys: 403 Forbidden: ... cannot patch resource ...`.

The client runs in this adapter's own small thread pool, each call bounded by `call_timeout` (the HTTP timeout in
the worker thread, and `asyncio.wait_for` a little later on the loop); the event loop never blocks on it.
`aclose()` shuts the pool down. The `AppsV1Api` (and its ApiClient) stays the caller's.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from controller.observability import get_logger
from controller.ports import DeploymentStatus, RolloutError, RolloutStatus

T = TypeVar("T")

FIELD_MANAGER = "retrain-controller"
PATCH_TYPE = "application/strategic-merge-patch+json"
TRANSIENT_STATUSES = frozenset({0, 408, 429})  # and every 5xx; 0: the client failed before an answer (TLS)
CONFLICT = 409
SNIPPET = 500  # how much of an answer that is not a Status object goes into a message


# ---- pure parts ---------------------------------------------------------------------------------------------


class KubeFailure(Exception):
    """One classified failure of one API call. `conflict` is retried at once after a re-read; `permanent` is
    never retried; the rest back off. `retry_after` is the server's Retry-After, in seconds, when it sent one."""

    def __init__(
        self, message: str, *, permanent: bool = False, conflict: bool = False, retry_after: float | None = None
    ):
        super().__init__(message)
        self.permanent = permanent
        self.conflict = conflict
        self.retry_after = retry_after


def where(verb: str, name: str, namespace: str) -> str:
    """`patch deployments/recsys-canary in recsys`: how every message of this adapter starts."""
    return f"{verb} deployments/{name} in {namespace}"


def server_message(body: str | bytes | None) -> str:
    """The API server's explanation: the `message` of a Status object, else a whitespace-squeezed snippet."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
        return str(data["message"])
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("Retry-After")
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: the API server never sends one; back off as usual
    return seconds if seconds is not None and seconds >= 0 else None


def classify(exc: ApiException, verb: str, name: str, namespace: str) -> KubeFailure:
    """An ApiException as this adapter's failure, with a message a human can act on."""
    status = int(exc.status or 0)
    explanation = server_message(exc.body)
    if status == 0:  # raised by the client itself (TLS failure, unusable request): no answer from the server
        detail = " ".join(str(exc.reason or "client error").split())
        return KubeFailure(f"{where(verb, name, namespace)}: no answer: {detail}")
    reason = str(exc.reason or "").strip()
    head = f"{where(verb, name, namespace)}: {status}" + (f" {reason}" if reason else "")
    message = f"{head}: {explanation}" if explanation else head
    if status == CONFLICT:
        return KubeFailure(message, conflict=True)
    if status in TRANSIENT_STATUSES or status >= 500:
        return KubeFailure(message, retry_after=_retry_after(exc.headers))
    return KubeFailure(message, permanent=True)


def transport_problem(exc: BaseException, timeout: float) -> str:
    """A failure below HTTP (refused, reset, timed out, TLS), in a few words."""
    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):  # (a subclass of the connect timeout)
        # "HTTPSConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] ...": the
        # connection's repr says nothing the message's start does not.
        detail = str(cause).removeprefix(f"{getattr(cause, 'conn', None)}: ")
    elif isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"API server did not answer within {timeout:g}s"
    else:
        detail = str(cause) or type(cause).__name__
    return f"API server unreachable: {' '.join(detail.split())}"


def is_settled(
    generation: int | None,
    observed_generation: int | None,
    replicas: int,
    status_replicas: int | None,
    ready_replicas: int | None,
    updated_replicas: int | None,
) -> bool:
    """The Deployment controller has seen the latest spec, and every desired pod runs it and is ready, with no
    old pod left over. For 0 replicas: the spec was seen and no pod is left."""
    if observed_generation is None or observed_generation < (generation or 0):
        return False
    if replicas == 0:
        return not status_replicas
    return (updated_replicas or 0) == (ready_replicas or 0) == replicas and (status_replicas or 0) == replicas


def container_image(dep: Any, container: str, namespace: str) -> str | None:
    """The image of `container` in the Deployment's pod template; a permanent failure naming it if absent."""
    containers = list(getattr(getattr(getattr(dep.spec, "template", None), "spec", None), "containers", None) or [])
    for c in containers:
        if c.name == container:
            return c.image  # type: ignore[no-any-return]
    name = dep.metadata.name
    have = ", ".join(c.name for c in containers) or "none"
    raise KubeFailure(
        f"deployments/{name} in {namespace} has no container {container!r} (it has: {have}); "
        "check the model's canary.container setting",
        permanent=True,
    )


def deployment_status(dep: Any, container: str, namespace: str) -> DeploymentStatus:
    """What the port reports of one Deployment as read from the API server."""
    spec_replicas = dep.spec.replicas if dep.spec.replicas is not None else 1  # the API server's default
    st = dep.status
    ready = (st.ready_replicas if st else None) or 0
    updated = (st.updated_replicas if st else None) or 0
    settled = is_settled(
        dep.metadata.generation,
        st.observed_generation if st else None,
        spec_replicas,
        st.replicas if st else None,
        ready,
        updated,
    )
    return DeploymentStatus(
        image=container_image(dep, container, namespace),
        replicas=spec_replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        settled=settled,
    )


def change_for(
    dep: Any, container: str, namespace: str, image: str | None = None, replicas: int | None = None
) -> dict[str, Any] | None:
    """The strategic-merge patch that gives the Deployment `image` and `replicas` (None: leave as is), with the
    read resourceVersion as a precondition; None when it already has them."""
    spec: dict[str, Any] = {}
    if image is not None and container_image(dep, container, namespace) != image:
        # Containers merge by name: only this container's image changes; the others stay as they are.
        spec["template"] = {"spec": {"containers": [{"name": container, "image": image}]}}
    current = dep.spec.replicas if dep.spec.replicas is not None else 1
    if replicas is not None and current != replicas:
        spec["replicas"] = replicas
    if not spec:
        return None
    return {"metadata": {"resourceVersion": dep.metadata.resource_version}, "spec": spec}


# ---- the adapter --------------------------------------------------------------------------------------------


def make_apps_api(kubeconfig: Path | None) -> client.AppsV1Api:
    """An AppsV1Api from the pod's ServiceAccount (None) or from a kubeconfig file (its current context).

    urllib3 is told not to retry: the adapter's own policy decides, within its bounds, what is repeated.
    A configuration that cannot be loaded is a permanent RolloutError saying which source failed.
    """
    cfg = client.Configuration()
    try:
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=cfg)  # re-reads the rotated token on its own
        else:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        source = "in-cluster config (no kubernetes.kubeconfig set)" if kubeconfig is None else f"kubeconfig {kubeconfig}"
        raise RolloutError(f"cannot load Kubernetes {source}: {exc}", permanent=True) from exc
    cfg.retries = 0
    return client.AppsV1Api(client.ApiClient(cfg))


Sleep = Callable[[float], Awaitable[None]]


class KubeRollout:
    """The Rollout port over a stable and a canary Deployment in one namespace."""

    def __init__(
        self,
        api: client.AppsV1Api,
        namespace: str,
        stable: str,
        canary: str,
        container: str,
        call_timeout: float = 10.0,
        retry_total: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 5.0,
        max_conflicts: int = 5,
        max_threads: int = 4,
    ):
        self.api = api
        self.namespace = namespace
        self.stable = stable
        self.canary = canary
        self.container = container
        self.call_timeout = call_timeout
        self.retry_total = retry_total
        self.sleep = sleep
        self.backoff = wait_random_exponential(multiplier=backoff_initial, max=backoff_max)  # full jitter
        self.max_conflicts = max_conflicts
        self.log = get_logger()
        # Our own threads, so a slow API server never queues behind (or ahead of) other adapters' calls.
        self._threads = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="kube")

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # ---- the port -------------------------------------------------------------------------------------------

    async def status(self) -> RolloutStatus:
        async def attempt() -> RolloutStatus:
            stable, canary = await asyncio.gather(self._read(self.stable), self._read(self.canary))
            return RolloutStatus(
                stable=deployment_status(stable, self.container, self.namespace),
                canary=deployment_status(canary, self.container, self.namespace),
            )

        return await self._retrying(attempt)

    async def set_canary(self, image: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must not be negative: {replicas}")
        await self._retrying(lambda: self._converge(self.canary, image=image, replicas=replicas))

    async def promote(self, image: str) -> None:
        await self._retrying(lambda: self._converge(self.stable, image=image))

    # ---- read, compare, patch -------------------------------------------------------------------------------

    async def _read(self, name: str) -> Any:
        timeout = self.call_timeout
        return await self._call(
            "get", name, lambda: self.api.read_namespaced_deployment(name, self.namespace, _request_timeout=timeout)
        )

    async def _converge(self, name: str, image: str | None = None, replicas: int | None = None) -> None:
        """Read; if the Deployment differs, patch it with the read resourceVersion; on 409 read again."""
        last: KubeFailure | None = None
        for _ in range(self.max_conflicts):
            dep = await self._read(name)
            patch = change_for(dep, self.container, self.namespace, image=image, replicas=replicas)
            if patch is None:
                return
            try:
                await self._call(
                    "patch",
                    name,
                    lambda: self.api.patch_namespaced_deployment(
                        name,
                        self.namespace,
                        patch,
                        field_manager=FIELD_MANAGER,
                        _content_type=PATCH_TYPE,
                        _request_timeout=self.call_timeout,
                    ),
                )
                self.log.info("kube_patched", deployment=name, namespace=self.namespace, spec=patch["spec"])
                return
            except KubeFailure as exc:
                if not exc.conflict:
                    raise
                last = exc
                self.log.info("kube_conflict", deployment=name, namespace=self.namespace, error=str(exc))
        raise KubeFailure(f"{last} (still conflicting after {self.max_conflicts} re-reads)")

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _in_thread(self, verb: str, name: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiException as exc:
            raise classify(exc, verb, name, self.namespace) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeFailure(f"{where(verb, name, self.namespace)}: {transport_problem(exc, self.call_timeout)}") from exc

    async def _call(self, verb: str, name: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, functools.partial(self._in_thread, verb, name, fn))
        try:
            # The worker's HTTP timeout ends the request; this bound is only a little later, for a thread stuck
            # elsewhere (DNS, a token refresh).
            return await asyncio.wait_for(future, timeout=self.call_timeout + 1.0)
        except asyncio.TimeoutError:
            raise KubeFailure(
                f"{where(verb, name, self.namespace)}: no answer within {self.call_timeout:g}s"
            ) from None

    def _stop(self, state: RetryCallState) -> bool:
        # Time waited counts as well as time on the clock, so an injected sleep bounds the retries too.
        return self._spent(state) >= self.retry_total

    @staticmethod
    def _spent(state: RetryCallState) -> float:
        return max(state.seconds_since_start or 0.0, state.idle_for)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        wait = float(self.backoff(state))
        if isinstance(exc, KubeFailure) and exc.retry_after is not None:
            wait = exc.retry_after
        return max(0.0, min(wait, self.retry_total - self._spent(state)))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning("kube_retry", namespace=self.namespace, attempt=state.attempt_number, wait_s=round(wait, 2),
                         error=str(exc))  # fmt: skip

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        tries = 0
        try:
            async for round_ in AsyncRetrying(
                stop=self._stop,
                wait=self._wait,
                retry=retry_if_exception(lambda e: isinstance(e, KubeFailure) and not e.permanent),
                before_sleep=self._before_sleep,
                reraise=True,
                sleep=self.sleep,
            ):
                with round_:
                    tries += 1
                    return await attempt()
        except KubeFailure as exc:
            if exc.permanent:
                raise RolloutError(str(exc), permanent=True) from exc
            budget = f"{self.retry_total:g}s"
            raise RolloutError(f"{exc} (gave up after {tries} attempt(s) within {budget})", permanent=False) from exc
        raise AssertionError("unreachable")

"""PipelineRunner on GitLab CI, through python-gitlab (synchronous: always in a worker thread, under a timeout).

Exactly one pipeline per run: the run id travels as RETRAIN_RUN_ID; after any failure that may have happened
after GitLab recorded the pipeline (timeout, reset connection, 5xx) we look the pipeline up before creating
another. 429 waits Retry-After; 5xx and timeouts back off with jitter up to a total; 400/401/403/404 are
permanent and fail the run with GitLab's own message.

`parse_pipeline_hook` reads GitLab's Pipeline Hook (the web layer's HookParser), with the same table of finished
statuses as the poller.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import gitlab
import requests
from gitlab.exceptions import GitlabAuthenticationError, GitlabError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from controller.ports import HookInvalid, PipelineError, PipelineHook, PipelineRef, PipelineRequest, PipelineStatus

T = TypeVar("T")

# GitLab's finished statuses and what they mean for a run. Every other status, including ones newer than this
# code (waiting_for_callback, canceling, ...), is still running.
FINISHED = {"success": "success", "failed": "failed", "canceled": "canceled", "skipped": "canceled"}
PERMANENT = {400, 401, 403, 404, 422}
# How far back to look for a pipeline of this run: GitLab's clock and ours may disagree a little.
CLOCK_SKEW = timedelta(minutes=5)
MAX_CANDIDATES = 100
MAX_OWNERS = 10_000


class _Failure(Exception):
    """A classified GitLab failure, for the retry policy."""

    def __init__(self, message: str, *, permanent: bool = False, ambiguous: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.ambiguous = ambiguous  # the request may have taken effect
        self.retry_after = retry_after


class _Client(gitlab.Gitlab):
    """python-gitlab that never retries on its own.

    Our retry policy decides what is safe to repeat: a retried POST after a 5xx could start a second pipeline,
    and python-gitlab's own 429 sleep would block the worker thread past our timeout.
    """

    def http_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["obey_rate_limit"] = False
        kwargs["retry_transient_errors"] = False
        kwargs["max_retries"] = 0
        return super().http_request(*args, **kwargs)


def make_client(url: str, token: str | None, timeout: float) -> gitlab.Gitlab:
    return _Client(url, private_token=token, timeout=timeout, user_agent="retrain-controller")


class GitlabRunner:
    def __init__(
        self,
        client: gitlab.Gitlab,
        project: str | int,
        ref: str,
        variables: dict[str, str] | None = None,
        trigger_token: str | None = None,
        call_timeout: float = 30.0,
        retry_total: float = 120.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        poll_interval: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_threads: int = 8,
        create_settle: float = 60.0,
    ):
        # After an attempt whose outcome is unknown, the service only looks for its pipeline this long before
        # it lets another create go out: GitLab can commit a create well after the caller timed out.
        self.create_settle_s = create_settle
        self.gl = client
        self.project_id = project
        self.ref = ref
        self.variables = dict(variables or {})
        self.trigger_token = trigger_token
        # The HTTP timeout ends the worker thread's request; the asyncio bound is a little longer so a thread
        # never outlives the call by much (a late create is then found by the lookup, not created twice).
        self.call_timeout = call_timeout
        self.retry_total = retry_total
        self.backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max)
        self.poll_interval = poll_interval
        self.sleep = sleep
        self._polled: dict[str, tuple[float, PipelineStatus]] = {}
        # pipeline id -> the RETRAIN_RUN_ID it carries ("" for none). Variables never change, so each
        # pipeline's are fetched once, however many lookups scan it.
        self._owners: dict[int, str] = {}
        self._local = threading.local()
        # Our own threads: the loop's default pool (cpu + 4) would queue calls behind slow ones and count the
        # queueing against each call's timeout.
        self._threads = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="gitlab")
        client.session.hooks["response"].append(self._remember_headers)

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _remember_headers(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._local.headers = response.headers

    def _in_thread(self, fn: Callable[[], T]) -> T:
        self._local.headers = {}
        try:
            return fn()
        except GitlabError as exc:
            raise _classify_gitlab(exc, getattr(self._local, "headers", {})) from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Failure(f"GitLab unreachable: {type(exc).__name__}", ambiguous=True) from exc

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, self._in_thread, fn)
            return await asyncio.wait_for(future, timeout=self.call_timeout + 5)
        except asyncio.TimeoutError:
            raise _Failure("GitLab did not answer in time", ambiguous=True) from None

    def _project(self) -> Any:
        return self.gl.projects.get(self.project_id, lazy=True)

    def _stop(self, state: RetryCallState) -> bool:
        # Time spent waiting counts as well as time on the clock, so an injected sleep bounds the retries too.
        return (state.seconds_since_start or 0.0) >= self.retry_total or state.idle_for >= self.retry_total

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Failure) and exc.retry_after is not None:
            return exc.retry_after
        return float(self.backoff(state))

    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        try:
            async for round_ in AsyncRetrying(
                stop=self._stop,
                wait=self._wait,
                retry=retry_if_exception(lambda e: isinstance(e, _Failure) and not e.permanent),
                reraise=True,
                sleep=self.sleep,
            ):
                with round_:
                    return await attempt()
        except _Failure as exc:
            raise PipelineError(str(exc), permanent=exc.permanent) from exc
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # ---- the port -------------------------------------------------------------------------------------------

    async def find(self, request: PipelineRequest) -> PipelineRef | None:
        return await self._retrying(lambda: self._find(request))

    async def _find(self, request: PipelineRequest) -> PipelineRef | None:
        since = (request.created_at - CLOCK_SKEW).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")

        source = "trigger" if self.trigger_token else "api"

        def candidates() -> list[Any]:
            listing = self._project().pipelines.list(
                ref=self.ref, source=source, updated_after=since, order_by="id", sort="desc", iterator=True,
                per_page=100,
            )  # fmt: skip
            return [p for _, p in zip(range(MAX_CANDIDATES), listing)]

        for pipeline in await self._call(candidates):
            pid = int(pipeline.id)
            if pid not in self._owners:
                variables = await self._call(
                    lambda: self._project().pipelines.get(pid, lazy=True).variables.list(get_all=True)
                )
                if len(self._owners) >= MAX_OWNERS:
                    self._owners.pop(next(iter(self._owners)))
                self._owners[pid] = next((v.value for v in variables if v.key == "RETRAIN_RUN_ID"), "")
            if self._owners[pid] == request.run_id:
                return PipelineRef(id=str(pid), web_url=pipeline.attributes.get("web_url"))
        return None

    async def trigger(self, request: PipelineRequest) -> PipelineRef:
        variables = {**self.variables, **_run_variables(request)}
        state = {"ambiguous": False}

        async def attempt() -> PipelineRef:
            if state["ambiguous"]:
                # GitLab may commit a create after we gave up on it, even after a lookup missed it: never create
                # twice in one call; look until the retry budget ends, then the service decides (create_settle).
                found = await self._find(request)
                if found is not None:
                    return found
                raise _Failure("the last create may still land in GitLab; looked it up, not found yet", ambiguous=True)
            try:
                created = await self._call(lambda: self._create(variables))
            except _Failure as exc:
                state["ambiguous"] = state["ambiguous"] or exc.ambiguous
                raise
            return PipelineRef(id=str(created["id"]), web_url=created.get("web_url"))

        return await self._retrying(attempt)

    def _create(self, variables: dict[str, str]) -> dict[str, Any]:
        project = self._project()
        if self.trigger_token:
            pipeline = project.trigger_pipeline(self.ref, self.trigger_token, variables=variables)
        else:
            pipeline = project.pipelines.create(
                {"ref": self.ref, "variables": [{"key": k, "value": v, "variable_type": "env_var"} for k, v in variables.items()]}
            )
        return dict(pipeline.attributes)

    async def status(self, ref: PipelineRef) -> PipelineStatus:
        last = self._polled.get(ref.id)
        if last is not None and time.monotonic() - last[0] < self.poll_interval:
            return last[1]  # polled recently: spare GitLab; hooks and callbacks bring news sooner anyway
        result = await self._status(ref)
        self._polled[ref.id] = (time.monotonic(), result)
        if result.finished:
            self._polled.pop(ref.id, None)
        return result

    async def _status(self, ref: PipelineRef) -> PipelineStatus:
        attrs = await self._retrying(lambda: self._call(lambda: dict(self._project().pipelines.get(int(ref.id)).attributes)))
        status = str(attrs.get("status", ""))
        return pipeline_status(status, f"GitLab pipeline {ref.id} {status}")

    async def cancel(self, ref: PipelineRef) -> None:
        await self._retrying(lambda: self._call(lambda: self._project().pipelines.get(int(ref.id), lazy=True).cancel()))


def pipeline_status(status: str, detail: str) -> PipelineStatus:
    """A GitLab pipeline status as the port's: finished ones with `detail`, any other one running."""
    if status in FINISHED:
        return PipelineStatus(FINISHED[status], detail)
    return PipelineStatus("running")


def parse_pipeline_hook(body: Mapping[str, object]) -> PipelineHook | None:
    """GitLab's Pipeline Hook (`object_kind: pipeline`): the pipeline's id, status, RETRAIN_RUN_ID variable and
    page. None for a hook of another kind; HookInvalid naming the field when the id or the status is missing."""
    if body.get("object_kind") != "pipeline":
        return None
    attrs = body.get("object_attributes")
    if not isinstance(attrs, Mapping):
        raise HookInvalid("object_attributes", "must be an object with the pipeline's id and status")
    pipeline_id = attrs.get("id")
    if type(pipeline_id) not in (int, str):  # not bool, which is an int
        raise HookInvalid("object_attributes.id", "must be the pipeline's id (a number or a string)")
    status = attrs.get("status")
    if not isinstance(status, str):
        raise HookInvalid("object_attributes.status", "must be the pipeline's status (a string)")
    project = body.get("project")
    project = project if isinstance(project, Mapping) else {}
    base = project.get("web_url")
    project_id = project.get("id")
    return PipelineHook(
        pipeline_id=str(pipeline_id),
        status=pipeline_status(status, f"GitLab status {status}"),
        run_id=_hook_variables(attrs.get("variables")).get("RETRAIN_RUN_ID") or None,
        web_url=f"{base}/-/pipelines/{pipeline_id}" if isinstance(base, str) and base else None,
        project_id=str(project_id) if type(project_id) in (int, str) and project_id != "" else None,
    )


def _hook_variables(raw: Any) -> dict[str, str]:
    """`[{key, value}]` as GitLab sends them; entries of any other shape are not ours and are skipped."""
    if not isinstance(raw, list):
        return {}
    return {v["key"]: v["value"] for v in raw
            if isinstance(v, Mapping) and isinstance(v.get("key"), str) and isinstance(v.get("value"), str)}  # fmt: skip


def _run_variables(request: PipelineRequest) -> dict[str, str]:
    return {
        "RETRAIN_RUN_ID": request.run_id,
        "RETRAIN_MODEL": request.model,
        "RETRAIN_REASONS": ",".join(request.reasons),
        "RETRAIN_ALERTS": json.dumps(request.alerts, separators=(",", ":")),
        **request.variables,
    }


def _classify_gitlab(exc: GitlabError, headers: Any) -> _Failure:
    code = exc.response_code
    message = _message(exc)
    if isinstance(exc, GitlabAuthenticationError) or code in PERMANENT:
        return _Failure(f"GitLab {code}: {message}", permanent=True)
    if code == 429:
        retry_after = _seconds(headers.get("Retry-After")) if headers else None
        return _Failure("GitLab 429: rate limited", retry_after=retry_after if retry_after is not None else 5.0)
    # 5xx (and anything else): the request may or may not have been applied
    return _Failure(f"GitLab {code}: {message}", ambiguous=True)


def _message(exc: GitlabError) -> str:
    msg = exc.error_message
    if isinstance(msg, bytes):
        msg = msg.decode(errors="replace")
    if isinstance(msg, dict):  # {"base": ["Reference not found"]}
        parts = [f"{v}" if k == "base" else f"{k} {v}" for k, vs in msg.items() for v in (vs if isinstance(vs, list) else [vs])]
        msg = "; ".join(parts)
    return str(msg).strip()[:500] or "no message"


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:  # an HTTP date
            from email.utils import parsedate_to_datetime

            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None

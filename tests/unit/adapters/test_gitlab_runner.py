"""GitlabRunner through the real python-gitlab client against the GitLab stand-in: shapes, faults, exactly-once."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from controller.adapters.gitlab import GitlabRunner, make_client
from controller.ports import PipelineError, PipelineRef, PipelineRequest
from tests.fakes.gitlab import DEFAULT_PROJECT_ID, DEFAULT_PROJECT_PATH, DEFAULT_TOKEN, DEFAULT_TRIGGER_TOKEN, Fault, FakeGitlab

HTTP_TIMEOUT = 0.5


class Sleeps:
    """The runner's sleep: records what it was asked to wait, waits almost nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def request(run_id: str = "run-1", **kw: object) -> PipelineRequest:
    fields: dict[str, object] = {
        "run_id": run_id,
        "model": "recsys",
        "reasons": ("precision_drop", "drift"),
        "created_at": datetime.now(timezone.utc),
        "alerts": [{"alertname": "RecsysPrecisionAtKDrop", "fingerprint": "f1", "startsAt": "2026-03-01T12:00:00Z"}],
        "variables": {"RETRAIN_CALLBACK_URL": f"http://c.test/api/v1/runs/{run_id}/events", "RETRAIN_CALLBACK_TOKEN": "t"},
    }
    fields.update(kw)
    return PipelineRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def gitlab_url():
    fake = FakeGitlab(timeout_delay=HTTP_TIMEOUT * 3)
    async with fake.serve() as url:
        yield fake, url


def runner(url: str, sleeps: Sleeps | None = None, token: str = DEFAULT_TOKEN, **kw: object) -> GitlabRunner:
    options: dict[str, object] = {"call_timeout": HTTP_TIMEOUT, "retry_total": 30.0, "sleep": sleeps or Sleeps()}
    options.update(kw)
    return GitlabRunner(make_client(url, token, HTTP_TIMEOUT), DEFAULT_PROJECT_PATH, "main", {"DATA_WINDOW": "7d"},
                        **options)  # type: ignore[arg-type]  # fmt: skip


async def test_trigger_sends_every_variable_and_records_the_pipeline(gitlab_url) -> None:
    fake, url = gitlab_url
    ref = await runner(url).trigger(request())
    pipeline = fake.pipeline(int(ref.id))
    assert ref.web_url == pipeline.web_url and ref.web_url.endswith(f"/{DEFAULT_PROJECT_PATH}/-/pipelines/{ref.id}")
    assert pipeline.source == "api" and pipeline.ref == "main"
    assert pipeline.vars == {
        "DATA_WINDOW": "7d",
        "RETRAIN_RUN_ID": "run-1",
        "RETRAIN_MODEL": "recsys",
        "RETRAIN_REASONS": "precision_drop,drift",
        "RETRAIN_ALERTS": '[{"alertname":"RecsysPrecisionAtKDrop","fingerprint":"f1","startsAt":"2026-03-01T12:00:00Z"}]',
        "RETRAIN_CALLBACK_URL": "http://c.test/api/v1/runs/run-1/events",
        "RETRAIN_CALLBACK_TOKEN": "t",
    }
    assert json.loads(pipeline.vars["RETRAIN_ALERTS"])[0]["fingerprint"] == "f1"


async def test_trigger_token_uses_the_trigger_api(gitlab_url) -> None:
    fake, url = gitlab_url
    r = runner(url, trigger_token=DEFAULT_TRIGGER_TOKEN)
    ref = await r.trigger(request("run-t"))
    assert fake.pipeline(int(ref.id)).source == "trigger"
    assert fake.pipeline(int(ref.id)).vars["RETRAIN_RUN_ID"] == "run-t"
    assert [c.endpoint for c in fake.requests] == ["trigger"]
    assert await r.find(request("run-t")) == ref  # the lookup asks for trigger-sourced pipelines


@pytest.mark.parametrize(
    "setup, token, message",
    [
        (lambda f: f.remove_ref(DEFAULT_PROJECT_ID, "main"), DEFAULT_TOKEN, "GitLab 400: Reference not found"),
        (lambda f: f.add_token("glpat-novars", role="developer", can_set_variables=False), "glpat-novars",
         "GitLab 400: Insufficient permissions to set pipeline variables"),
        (lambda f: f.add_token("glpat-reporter", role="reporter"), "glpat-reporter", "GitLab 403: 403 Forbidden"),
        (lambda f: None, "glpat-wrong", "GitLab 401: 401 Unauthorized"),
    ],
    ids=["bad-ref", "no-variable-permission", "reporter", "bad-token"],
)  # fmt: skip
async def test_permanent_errors_fail_at_once_with_gitlabs_message(gitlab_url, setup, token, message) -> None:
    fake, url = gitlab_url
    setup(fake)
    sleeps = Sleeps()
    with pytest.raises(PipelineError) as err:
        await runner(url, sleeps, token=token).trigger(request())
    assert err.value.permanent and str(err.value) == message
    assert sleeps.waits == [] and fake.pipelines() == []


async def test_unknown_project_is_permanent(gitlab_url) -> None:
    _, url = gitlab_url
    r = GitlabRunner(make_client(url, DEFAULT_TOKEN, HTTP_TIMEOUT), "ml/nope", "main", sleep=Sleeps())
    with pytest.raises(PipelineError) as err:
        await r.trigger(request())
    assert err.value.permanent and str(err.value) == "GitLab 404: 404 Project Not Found"


async def test_429_waits_retry_after(gitlab_url) -> None:
    fake, url = gitlab_url
    fake.fail("create", Fault.rate_limited(retry_after=7), Fault.rate_limited(retry_after=2))
    sleeps = Sleeps()
    ref = await runner(url, sleeps).trigger(request())
    assert sleeps.waits == [7.0, 2.0]
    assert [p.id for p in fake.pipelines()] == [int(ref.id)]
    assert [c.endpoint for c in fake.requests] == ["create"] * 3  # 429 is not ambiguous: no lookup


@pytest.mark.parametrize("fault", ["500", "502", "503", "reset", "timeout"])
async def test_an_ambiguous_failure_is_looked_up_never_created_twice_in_one_call(gitlab_url, fault) -> None:
    fake, url = gitlab_url
    fake.fail("create", fault)
    sleeps = Sleeps()
    r = runner(url, sleeps, retry_total=10.0, backoff_initial=1.0, backoff_max=4.0)
    with pytest.raises(PipelineError) as err:
        await r.trigger(request())
    assert not err.value.permanent and "may still land" in str(err.value)
    # GitLab may have taken it: only lookups (with backoff) for the rest of the call, never a second create
    assert len(fake.calls("create")) <= 1 and len(fake.calls("list")) >= 2 and fake.pipelines() == []  # held: logged late
    assert 10.0 <= sum(sleeps.waits) < 10.0 + 4.0 + 1
    ref = await r.trigger(request())  # the service's next attempt, once create_settle has passed
    assert [p.id for p in fake.pipelines()] == [int(ref.id)]


async def test_a_create_gitlab_commits_after_the_client_gave_up_is_found_not_repeated(gitlab_url) -> None:
    fake, url = gitlab_url
    fake.fail("create", Fault.late(delay=HTTP_TIMEOUT * 3))  # committed well after our timeout and first lookups

    async def real_sleep(seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.2))

    r = runner(url, retry_total=HTTP_TIMEOUT * 8, backoff_initial=0.2, backoff_max=0.2, sleep=real_sleep)
    ref = await r.trigger(request("run-late"))
    assert [p.id for p in fake.pipelines()] == [int(ref.id)]
    assert len(fake.calls("create")) == 1


@pytest.mark.parametrize("fault", ["500-after", "502-after", "reset-after", "timeout-after"])
async def test_fault_after_recording_finds_the_pipeline_instead_of_a_second(gitlab_url, fault) -> None:
    fake, url = gitlab_url
    fake.create_pipeline(variables={"RETRAIN_RUN_ID": "someone-else"})  # a neighbour the lookup must skip
    fake.fail("create", fault)
    ref = await runner(url).trigger(request("run-7"))
    mine = [p for p in fake.pipelines() if p.vars.get("RETRAIN_RUN_ID") == "run-7"]
    assert [p.id for p in mine] == [int(ref.id)] and len(fake.pipelines()) == 2
    assert ref.web_url == mine[0].web_url


async def test_outage_longer_than_retry_total_is_transient_and_leaves_nothing(gitlab_url) -> None:
    fake, url = gitlab_url
    fake.fail_randomly("*", 1.0, ["503"], seed=1)
    sleeps = Sleeps()
    with pytest.raises(PipelineError) as err:
        await runner(url, sleeps, retry_total=20.0, backoff_initial=1.0, backoff_max=8.0).trigger(request())
    assert not err.value.permanent and "503" in str(err.value)
    assert 20.0 <= sum(sleeps.waits) < 20.0 + 8.0 + 1
    assert fake.pipelines() == []


async def test_find_on_restart_matches_only_this_runs_pipeline_and_caches_variables(gitlab_url) -> None:
    fake, url = gitlab_url
    for i in range(5):
        fake.create_pipeline(variables={"RETRAIN_RUN_ID": f"other-{i}"})
    fake.create_pipeline(variables={"A": "1"})  # pipelines not started by us at all
    fake.create_pipeline(ref="other-branch", variables={"RETRAIN_RUN_ID": "run-9"})  # wrong ref
    fake.create_pipeline(variables={"RETRAIN_RUN_ID": "run-9"}, source="push")  # wrong source
    r = runner(url)
    assert await r.find(request("run-9")) is None
    mine = fake.create_pipeline(variables={"RETRAIN_RUN_ID": "run-9"})
    fake.clear_log()
    found = await r.find(request("run-9"))
    assert found is not None and found.id == str(mine.id)
    assert [c.endpoint for c in fake.requests] == ["list", "variables"]  # the others' variables were cached


async def test_find_ignores_pipelines_older_than_the_run(gitlab_url) -> None:
    fake, url = gitlab_url
    old = datetime.now(timezone.utc) - timedelta(hours=2)
    fake.clock = lambda: old
    fake.create_pipeline(variables={"RETRAIN_RUN_ID": "run-9"})
    fake.clock = lambda: datetime.now(timezone.utc)
    fake.clear_log()
    assert await runner(url).find(request("run-9")) is None
    assert [c.endpoint for c in fake.requests] == ["list"]


@pytest.mark.parametrize(
    "status, state",
    [("created", "running"), ("waiting_for_resource", "running"), ("preparing", "running"), ("pending", "running"),
     ("running", "running"), ("manual", "running"), ("scheduled", "running"), ("canceling", "running"),
     ("waiting_for_callback", "running"), ("success", "success"), ("failed", "failed"), ("canceled", "canceled"),
     ("skipped", "canceled")],
)  # fmt: skip
async def test_status_mapping(gitlab_url, status, state) -> None:
    fake, url = gitlab_url
    p = fake.create_pipeline(variables={"RETRAIN_RUN_ID": "run-1"}, status=status)
    got = await runner(url).status(PipelineRef(str(p.id)))
    assert got.state == state
    if got.finished:
        assert got.detail == f"GitLab pipeline {p.id} {status}"


async def test_status_polls_at_most_once_per_interval_and_retries_5xx(gitlab_url) -> None:
    fake, url = gitlab_url
    p = fake.create_pipeline(status="running")
    r = runner(url, poll_interval=3600)
    fake.fail("get", "502")
    assert (await r.status(PipelineRef(str(p.id)))).state == "running"
    fake.set_status(p.id, "failed")
    assert (await r.status(PipelineRef(str(p.id)))).state == "running"  # cached within the interval
    assert len(fake.calls("get")) == 2
    r.poll_interval = 0
    assert (await r.status(PipelineRef(str(p.id)))).state == "failed"


async def test_cancel(gitlab_url) -> None:
    fake, url = gitlab_url
    p = fake.create_pipeline(status="running")
    fake.fail("cancel", "500-after")
    await runner(url).cancel(PipelineRef(str(p.id)))  # repeating a cancel is harmless
    assert fake.pipeline(p.id).status == "canceled"


async def test_sync_client_never_blocks_the_event_loop(gitlab_url) -> None:
    fake, url = gitlab_url
    fake.latency = 0.3
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    await runner(url).trigger(request())
    beat.cancel()
    assert ticks >= 15  # the loop kept running while python-gitlab waited in its thread


async def test_exactly_once_under_random_faults(gitlab_url) -> None:
    """200 runs against a GitLab failing 30% of creates (half after recording), rate limiting and timing out."""
    fake, url = gitlab_url
    # 30% of creates fail, half of those after the pipeline was recorded; then 10% of the rest are rate limited
    fake.fail_randomly("create", 0.30, {"500": 2, "timeout": 1, "500-after": 1, "timeout-after": 1, "reset-after": 1},
                       seed=11)  # fmt: skip
    fake.fail_randomly("create", 0.10, ["429:1"], seed=12)
    fake.fail_randomly("list", 0.05, ["503"], seed=13)
    r = runner(url)
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> PipelineRef:
        async with gate:
            while True:  # as the service does: after an unknown outcome, a later call looks first, then creates
                try:
                    return await r.trigger(request(f"run-{i:03d}"))
                except PipelineError as exc:
                    assert not exc.permanent

    refs = await asyncio.gather(*(one(i) for i in range(200)))
    by_run = {}
    for p in fake.pipelines():
        by_run.setdefault(p.vars["RETRAIN_RUN_ID"], []).append(p.id)
    assert len(fake.pipelines()) == 200 and all(len(ids) == 1 for ids in by_run.values())
    assert {f"run-{i:03d}": [int(refs[i].id)] for i in range(200)} == by_run
    faults = [c.fault for c in fake.calls("create") if c.fault]
    assert 40 <= len(faults) and {"500-after", "timeout-after", "429"} <= set(faults)

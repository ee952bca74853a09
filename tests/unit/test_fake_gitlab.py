"""The GitLab stand-in, driven through the real python-gitlab client: shapes, errors and injected faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import gitlab
import pytest
import requests

from controller.adapters.gitlab import make_client

from tests.fakes.gitlab import (
    DEFAULT_PROJECT_ID,
    DEFAULT_PROJECT_PATH,
    DEFAULT_TOKEN,
    DEFAULT_TRIGGER_TOKEN,
    Fault,
    FakeGitlab,
)

CLIENT_TIMEOUT = 0.3

PIPELINE_KEYS = {
    "id", "iid", "project_id", "sha", "ref", "status", "source", "web_url", "created_at", "updated_at",
    "started_at", "finished_at", "duration", "queued_duration", "coverage", "before_sha", "tag",
    "yaml_errors", "user", "detailed_status", "committed_at",
}  # fmt: skip
LIST_ITEM_KEYS = {"id", "iid", "project_id", "sha", "ref", "status", "source", "created_at", "updated_at", "web_url"}


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def client(url: str, token: str = DEFAULT_TOKEN) -> gitlab.Gitlab:
    return make_client(url, token, CLIENT_TIMEOUT)  # the controller's client: python-gitlab never retries


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeGitlab:
    return FakeGitlab(clock=clock, timeout_delay=1.0)


@pytest.fixture
def url(fake: FakeGitlab) -> Iterator[str]:
    with fake.serve_in_thread() as base:
        yield base


@pytest.fixture
def gl(url: str) -> gitlab.Gitlab:
    return client(url)


@pytest.fixture
def project(gl: gitlab.Gitlab):  # noqa: ANN201 - python-gitlab's lazy Project
    return gl.projects.get(DEFAULT_PROJECT_PATH, lazy=True)


def create(project, run_id: str = "run-1", **extra: object):  # noqa: ANN001, ANN201
    return project.pipelines.create(
        {
            "ref": "main",
            "variables": [
                {"key": "RETRAIN_RUN_ID", "value": run_id, "variable_type": "env_var"},
                {"key": "MODEL", "value": "recsys"},
            ],
            **extra,
        }
    )


# ------------------------------------------------------------------------------------------ create / read


def test_create_with_variables_and_read_them_back(fake: FakeGitlab, project, clock: ManualClock) -> None:
    pipeline = create(project)
    attrs = pipeline.attributes
    assert PIPELINE_KEYS <= set(attrs)
    assert attrs["status"] == "created" and attrs["source"] == "api"
    assert attrs["project_id"] == DEFAULT_PROJECT_ID and attrs["ref"] == "main" and attrs["iid"] == 1
    assert attrs["started_at"] is None and attrs["finished_at"] is None and attrs["duration"] is None
    assert attrs["created_at"] == "2026-03-01T12:00:00.000Z"
    assert attrs["web_url"].endswith(f"/{DEFAULT_PROJECT_PATH}/-/pipelines/{pipeline.id}")
    assert len(attrs["sha"]) == 40 and attrs["tag"] is False
    assert attrs["user"]["username"] and attrs["detailed_status"]["group"] == "created"

    again = project.pipelines.get(pipeline.id)
    assert again.id == pipeline.id and again.status == "created"
    # python-gitlab mixes the parent's ids into .attributes; compare what the server sent
    variables = {v.key: {k: v.attributes[k] for k in ("key", "value", "variable_type", "raw")} for v in again.variables.list(get_all=True)}
    assert variables == {
        "RETRAIN_RUN_ID": {"key": "RETRAIN_RUN_ID", "value": "run-1", "variable_type": "env_var", "raw": False},
        "MODEL": {"key": "MODEL", "value": "recsys", "variable_type": "env_var", "raw": False},
    }
    [stored] = fake.pipelines(DEFAULT_PROJECT_ID)
    assert stored.vars == {"RETRAIN_RUN_ID": "run-1", "MODEL": "recsys"}
    assert [(r.method, r.endpoint, r.status) for r in fake.requests] == [
        ("POST", "create", 201),
        ("GET", "get", 200),
        ("GET", "variables", 200),
    ]
    assert fake.requests[0].path == "/api/v4/projects/ml%2Frecsys/pipeline"


def test_ids_are_global_and_iids_per_project_numeric_id_or_path(fake: FakeGitlab, gl: gitlab.Gitlab) -> None:
    fake.add_project(7, "ml/search", refs=["main", "release"])
    by_path = gl.projects.get(DEFAULT_PROJECT_PATH, lazy=True)
    by_id = gl.projects.get(DEFAULT_PROJECT_ID, lazy=True)
    other = gl.projects.get(7, lazy=True)
    a = by_path.pipelines.create({"ref": "main"})
    b = other.pipelines.create({"ref": "release"})
    c = by_id.pipelines.create({"ref": "main"})
    assert [a.id, b.id, c.id] == sorted({a.id, b.id, c.id})
    assert (a.iid, b.iid, c.iid) == (1, 1, 2)
    assert [p.id for p in fake.pipelines(DEFAULT_PROJECT_PATH)] == [a.id, c.id]
    assert gl.projects.get(DEFAULT_PROJECT_PATH).default_branch == "main"


def test_bearer_token_and_inputs(fake: FakeGitlab, url: str) -> None:
    gl = gitlab.Gitlab(url, oauth_token=DEFAULT_TOKEN, retry_transient_errors=False, timeout=CLIENT_TIMEOUT)
    p = gl.projects.get(DEFAULT_PROJECT_ID, lazy=True).pipelines.create({"ref": "main", "inputs": {"epochs": 3}})
    assert fake.pipeline(p.id).inputs == {"epochs": 3}


def test_create_errors_look_like_gitlab(fake: FakeGitlab, url: str, project) -> None:
    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "nope"})
    assert err.value.response_code == 400
    assert err.value.error_message == {"base": ["Reference not found"]}

    with pytest.raises(gitlab.GitlabCreateError) as err:
        client(url).projects.get("ml/unknown", lazy=True).pipelines.create({"ref": "main"})
    assert err.value.response_code == 404 and err.value.error_message == "404 Project Not Found"

    with pytest.raises(gitlab.GitlabAuthenticationError) as auth:
        client(url, token="glpat-wrong").projects.get(DEFAULT_PROJECT_ID, lazy=True).pipelines.create(
            {"ref": "main"}
        )
    assert auth.value.response_code == 401 and auth.value.error_message == "401 Unauthorized"

    gl = client(url)
    with pytest.raises(gitlab.GitlabHttpError) as http:  # python-gitlab checks "ref" itself; go raw
        gl.http_post(f"/projects/{DEFAULT_PROJECT_ID}/pipeline", post_data={"variables": []})
    assert http.value.response_code == 400 and http.value.error_message == "ref is missing"

    with pytest.raises(gitlab.GitlabHttpError) as http:
        gl.http_post(f"/projects/{DEFAULT_PROJECT_ID}/pipeline", post_data={"ref": "main", "variables": {"A": "1"}})
    assert http.value.response_code == 400 and http.value.error_message == "variables is invalid"

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "main", "variables": [{"key": "A", "value": {"nested": 1}}]})
    assert err.value.response_code == 400 and err.value.error_message == "variables[0][value] is invalid"

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "main", "variables": [{"key": "A", "value": "x" * 10_001}]})
    assert err.value.response_code == 400

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "main", "variables": [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]})
    assert err.value.error_message == {"base": ["Duplicate variable name: A"]}

    fake.add_token("glpat-no-vars", role="developer", can_set_variables=False)
    restricted = client(url, token="glpat-no-vars").projects.get(DEFAULT_PROJECT_ID, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as err:
        create(restricted)
    assert err.value.response_code == 400
    assert err.value.error_message == {"base": ["Insufficient permissions to set pipeline variables"]}
    assert restricted.pipelines.create({"ref": "main"}).source == "api"  # without variables it is fine

    fake.add_token("glpat-reporter", role="reporter")
    reporter = client(url, token="glpat-reporter").projects.get(DEFAULT_PROJECT_ID, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as err:
        reporter.pipelines.create({"ref": "main"})
    assert err.value.response_code == 403 and err.value.error_message == "403 Forbidden"

    assert len(fake.pipelines()) == 1
    assert all(r.status in (400, 401, 403, 404) for r in fake.calls("create")[:-2])


# ------------------------------------------------------------------------------------------ trigger API


def test_trigger_pipeline_json_and_form(fake: FakeGitlab, url: str, project) -> None:
    triggered = project.trigger_pipeline("main", DEFAULT_TRIGGER_TOKEN, variables={"RETRAIN_RUN_ID": "run-9"})
    assert triggered.source == "trigger" and triggered.status == "created"
    assert PIPELINE_KEYS <= set(triggered.attributes)
    assert fake.pipeline(triggered.id).vars == {"RETRAIN_RUN_ID": "run-9"}

    # curl-style form fields, without any API token
    resp = requests.post(
        f"{url}/api/v4/projects/{DEFAULT_PROJECT_ID}/trigger/pipeline",
        data={"token": DEFAULT_TRIGGER_TOKEN, "ref": "main", "variables[RETRAIN_RUN_ID]": "run-10"},
        timeout=CLIENT_TIMEOUT,
    )
    assert resp.status_code == 201 and resp.headers["Content-Type"].startswith("application/json")
    assert fake.pipeline(resp.json()["id"]).vars == {"RETRAIN_RUN_ID": "run-10"}

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.trigger_pipeline("main", "glptt-wrong")
    assert err.value.response_code == 404 and err.value.error_message == "404 Not Found"

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.trigger_pipeline("nope", DEFAULT_TRIGGER_TOKEN)
    assert err.value.response_code == 400 and err.value.error_message == {"base": ["Reference not found"]}

    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.trigger_pipeline("main", DEFAULT_TRIGGER_TOKEN, variables={"N": 1})
    assert err.value.error_message == "variables needs to be a map of key-valued strings"
    assert len(fake.pipelines()) == 2


# ------------------------------------------------------------------------------------------ get / list


def test_get_unknown_pipeline_is_404(project) -> None:
    with pytest.raises(gitlab.GitlabGetError) as err:
        project.pipelines.get(999_999)
    assert err.value.response_code == 404 and err.value.error_message == "404 Not found"


def test_list_filters_and_pagination(fake: FakeGitlab, gl: gitlab.Gitlab, project, clock: ManualClock) -> None:
    fake.add_ref(DEFAULT_PROJECT_ID, "feature")
    for i in range(130):
        fake.create_pipeline(DEFAULT_PROJECT_ID, "main", {"RETRAIN_RUN_ID": f"r{i}"})
        clock.advance(1)
    cut = clock()
    feature = fake.create_pipeline(DEFAULT_PROJECT_ID, "feature", source="trigger")
    clock.advance(10)
    fake.set_status(fake.pipelines()[5].id, "running")  # updated after the cut

    everything = project.pipelines.list(get_all=True)
    assert len(everything) == 131
    assert [p.id for p in everything] == sorted((p.id for p in everything), reverse=True)  # id desc
    assert set(everything[0].attributes) >= LIST_ITEM_KEYS

    lazy = project.pipelines.list(iterator=True, per_page=50)
    assert lazy.total == 131 and lazy.total_pages == 3
    assert len(list(lazy)) == 131

    page2 = project.pipelines.list(per_page=100, page=2, ref="main", sort="asc")
    assert len(page2) == 30 and page2[0].iid == 101

    only_feature = project.pipelines.list(ref="feature", get_all=True)
    assert [p.id for p in only_feature] == [feature.id]
    assert [p.id for p in project.pipelines.list(source="trigger", get_all=True)] == [feature.id]

    recent = project.pipelines.list(updated_after=cut.isoformat().replace("+00:00", "Z"), get_all=True)
    assert sorted(p.id for p in recent) == sorted([feature.id, fake.pipelines()[5].id])
    assert [p.status for p in project.pipelines.list(status="running", get_all=True)] == ["running"]

    hooked: list[requests.Response] = []
    gl.session.hooks["response"].append(lambda r, *a, **k: hooked.append(r))
    project.pipelines.list(per_page=100, page=1)
    headers = hooked[-1].headers
    assert (headers["X-Page"], headers["X-Per-Page"], headers["X-Next-Page"]) == ("1", "100", "2")
    assert (headers["X-Total"], headers["X-Total-Pages"], headers["X-Prev-Page"]) == ("131", "2", "")
    assert 'rel="next"' in headers["Link"] and 'rel="last"' in headers["Link"]

    with pytest.raises(gitlab.GitlabListError) as err:
        project.pipelines.list(status="bogus")
    assert err.value.response_code == 400 and err.value.error_message == "status does not have a valid value"


# ------------------------------------------------------------------------------------------ status / cancel


def test_set_status_and_cancel(fake: FakeGitlab, project, clock: ManualClock) -> None:
    running = create(project, "a")
    clock.advance(2)
    fake.set_status(running.id, "running")
    clock.advance(5)
    running.refresh()
    assert running.status == "running" and running.started_at == "2026-03-01T12:00:02.000Z"
    assert running.queued_duration == 2.0

    canceled = running.cancel()
    assert canceled["status"] == "canceled" and canceled["finished_at"] == "2026-03-01T12:00:07.000Z"
    assert canceled["duration"] == 5

    done = create(project, "b")
    fake.set_status(done.id, "success")
    assert done.cancel()["status"] == "success"  # finished pipelines stay as they are

    odd = create(project, "c")
    fake.set_status(odd.id, "some_future_status")
    assert project.pipelines.get(odd.id).status == "some_future_status"
    assert odd.cancel()["status"] == "canceled"  # unknown statuses count as running

    fake.cancel_status = "canceling"
    slow = create(project, "d")
    assert slow.cancel()["status"] == "canceling"
    assert [r.status for r in fake.calls("cancel")] == [200, 200, 200, 200]


# ------------------------------------------------------------------------------------------ faults


def test_http_faults_on_create(fake: FakeGitlab, gl: gitlab.Gitlab, project) -> None:
    fake.fail("create", "500", "500-after", "502", Fault.rate_limited(retry_after=3), "401")
    hooked: list[requests.Response] = []
    gl.session.hooks["response"].append(lambda r, *a, **k: hooked.append(r))

    with pytest.raises(gitlab.GitlabCreateError) as err:
        create(project, "r1")
    assert err.value.response_code == 500 and err.value.error_message == "500 Internal Server Error"
    assert fake.pipelines() == []

    with pytest.raises(gitlab.GitlabCreateError) as err:
        create(project, "r2")
    assert err.value.response_code == 500
    [ambiguous] = fake.pipelines()  # created although the client saw a 500
    assert ambiguous.vars["RETRAIN_RUN_ID"] == "r2"
    found = [p for p in project.pipelines.list(ref="main", source="api", get_all=True)]
    assert [p.id for p in found] == [ambiguous.id]

    with pytest.raises(gitlab.GitlabCreateError) as err:
        create(project, "r3")
    assert err.value.response_code == 502 and hooked[-1].headers["Content-Type"].startswith("text/html")

    with pytest.raises(gitlab.GitlabCreateError) as err:
        create(project, "r4")
    assert err.value.response_code == 429
    headers = hooked[-1].headers
    assert headers["Retry-After"] == "3"
    assert headers["RateLimit-Remaining"] == "0" and int(headers["RateLimit-Limit"]) > 0
    assert int(headers["RateLimit-Reset"]) > 0

    with pytest.raises(gitlab.GitlabAuthenticationError) as auth:
        create(project, "r5")
    assert auth.value.response_code == 401

    assert create(project, "r6").status == "created"  # queue drained
    assert [r.fault for r in fake.calls("create")] == ["500", "500-after", "502", "429", "401", None]
    assert [r.status for r in fake.calls("create")] == [500, 500, 502, 429, 401, 201]
    assert [p.vars["RETRAIN_RUN_ID"] for p in fake.pipelines()] == ["r2", "r6"]


@pytest.mark.parametrize(
    ("spec", "exc", "recorded"),
    [
        ("timeout", requests.exceptions.ReadTimeout, False),
        ("timeout-after", requests.exceptions.ReadTimeout, True),
        ("reset", requests.exceptions.ConnectionError, False),
        ("reset-after", requests.exceptions.ConnectionError, True),
    ],
)
def test_connection_faults_on_create(
    fake: FakeGitlab, project, spec: str, exc: type[Exception], recorded: bool
) -> None:
    fake.fail("create", spec)
    started = time.monotonic()
    with pytest.raises(exc):
        create(project)
    assert time.monotonic() - started < 0.9
    assert len(fake.pipelines()) == (1 if recorded else 0)
    assert create(project, "next").status == "created"


def test_faults_on_other_endpoints(fake: FakeGitlab, project) -> None:
    pipeline = create(project)
    fake.set_status(pipeline.id, "running")
    fake.fail("get", "503")
    fake.fail("list", "502")
    fake.fail("variables", "reset")
    fake.fail("cancel", "500-after")
    fake.fail("trigger", "timeout")

    with pytest.raises(gitlab.GitlabGetError) as get_err:
        project.pipelines.get(pipeline.id)
    assert get_err.value.response_code == 503
    with pytest.raises(gitlab.GitlabListError) as list_err:
        project.pipelines.list(get_all=True)
    assert list_err.value.response_code == 502
    with pytest.raises(requests.exceptions.ConnectionError):
        pipeline.variables.list(get_all=True)
    with pytest.raises(gitlab.GitlabPipelineCancelError) as cancel_err:
        pipeline.cancel()
    assert cancel_err.value.response_code == 500
    assert fake.pipeline(pipeline.id).status == "canceled"  # the cancel happened nonetheless
    with pytest.raises(requests.exceptions.Timeout):
        project.trigger_pipeline("main", DEFAULT_TRIGGER_TOKEN)
    assert len(fake.pipelines()) == 1


def test_random_faults_are_seeded(clock: ManualClock) -> None:
    def run(seed: int) -> tuple[list[str | None], int]:
        fake = FakeGitlab(clock=clock)
        fake.fail_randomly("create", 0.3, ["500", "500-after"], seed=seed)
        with fake.serve_in_thread() as url:
            project = client(url).projects.get(DEFAULT_PROJECT_ID, lazy=True)
            for i in range(40):
                try:
                    project.pipelines.create({"ref": "main", "variables": [{"key": "N", "value": str(i)}]})
                except gitlab.GitlabCreateError as err:
                    assert err.response_code == 500
        faults = [r.fault for r in fake.calls("create")]
        return faults, len(fake.pipelines())

    faults, created = run(7)
    assert (faults, created) == run(7)
    failed = [f for f in faults if f]
    assert 4 <= len(failed) <= 20 and {"500", "500-after"} == set(failed)
    assert created == 40 - faults.count("500")
    assert run(8)[0] != faults


def test_latency_and_async_serve(fake: FakeGitlab) -> None:
    async def main() -> None:
        async with fake.serve() as url:
            project = client(url).projects.get(DEFAULT_PROJECT_ID, lazy=True)
            fake.latency = 0.05
            started = time.monotonic()
            pipeline = await asyncio.to_thread(create, project)
            assert time.monotonic() - started >= 0.05
            fake.fail("get", Fault.timeout(delay=5))
            with pytest.raises(requests.exceptions.ReadTimeout):
                await asyncio.to_thread(project.pipelines.get, pipeline.id)
        # leaving serve() dropped the held request instead of waiting 5 s for it

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 2


def test_unknown_routes_and_anonymous_reads(url: str) -> None:
    resp = requests.get(f"{url}/api/v4/projects/{DEFAULT_PROJECT_ID}/nothing", timeout=CLIENT_TIMEOUT)
    assert resp.status_code == 404 and resp.json() == {"error": "404 Not Found"}
    resp = requests.get(f"{url}/api/v4/projects/{DEFAULT_PROJECT_ID}/pipelines", timeout=CLIENT_TIMEOUT)
    assert resp.status_code == 404 and resp.json() == {"message": "404 Project Not Found"}
    assert resp.headers["Content-Type"].startswith("application/json")

"""parse_pipeline_hook: GitLab's Pipeline Hook body as the port's PipelineHook, with the poller's status table."""

from __future__ import annotations

from typing import Any

import pytest

from controller.adapters.gitlab import FINISHED, parse_pipeline_hook, pipeline_status
from controller.ports import HookInvalid, HookParser, PipelineHook, PipelineStatus


def hook(**attrs: Any) -> dict[str, Any]:
    """A Pipeline Hook as GitLab sends it (trimmed): `object_attributes` overridden by `attrs` (None drops a key)."""
    base: dict[str, Any] = {
        "id": 31, "iid": 3, "name": "retrain recsys run r-1", "ref": "main", "tag": False, "sha": "a" * 40,
        "source": "api", "status": "running", "detailed_status": "running", "stages": ["fetch-data", "train"],
        "created_at": "2016-08-12 15:23:28 UTC", "finished_at": None, "duration": None,
        "variables": [{"key": "RETRAIN_MODEL", "value": "recsys"}, {"key": "RETRAIN_RUN_ID", "value": "r-1"}],
    }  # fmt: skip
    base.update(attrs)
    return {
        "object_kind": "pipeline",
        "object_attributes": {k: v for k, v in base.items() if v is not None or k in ("finished_at", "duration")},
        "user": {"id": 1, "name": "Retrain Bot", "username": "retrain-bot"},
        "project": {"id": 42, "name": "recsys", "path_with_namespace": "ml/recsys",
                    "web_url": "https://gitlab.test/ml/recsys"},  # fmt: skip
        "builds": [],
    }


def test_it_is_a_hook_parser() -> None:
    parser: HookParser = parse_pipeline_hook  # what the web layer is handed
    assert parser(hook()) is not None


def test_a_pipeline_hook_gives_id_status_run_page_and_project() -> None:
    assert parse_pipeline_hook(hook()) == PipelineHook(
        pipeline_id="31",
        status=PipelineStatus("running"),
        run_id="r-1",
        web_url="https://gitlab.test/ml/recsys/-/pipelines/31",
        project_id="42",
    )


@pytest.mark.parametrize(
    "status, state",
    [
        ("success", "success"),
        ("failed", "failed"),
        ("canceled", "canceled"),
        ("skipped", "canceled"),
        ("created", "running"),
        ("waiting_for_resource", "running"),
        ("preparing", "running"),
        ("pending", "running"),
        ("running", "running"),
        ("manual", "running"),
        ("scheduled", "running"),
        ("waiting_for_callback", "running"),
        ("canceling", "running"),
        ("a-status-from-a-newer-gitlab", "running"),
    ],
)
def test_each_status_maps_to_the_ports_state(status: str, state: str) -> None:
    parsed = parse_pipeline_hook(hook(status=status))
    assert parsed is not None and parsed.status.state == state
    assert parsed.status.finished == (state != "running")
    if parsed.status.finished:
        assert parsed.status.detail == f"GitLab status {status}"


def test_hook_and_poller_share_one_table() -> None:
    assert FINISHED == {"success": "success", "failed": "failed", "canceled": "canceled", "skipped": "canceled"}
    for status, state in FINISHED.items():
        assert pipeline_status(status, "d") == PipelineStatus(state, "d")
    assert pipeline_status("running", "d") == PipelineStatus("running")


@pytest.mark.parametrize(
    "body, field",
    [
        (hook(id=None), "object_attributes.id"),
        (hook(id=True), "object_attributes.id"),
        (hook(id=[31]), "object_attributes.id"),
        (hook(status=None), "object_attributes.status"),
        (hook(status=3), "object_attributes.status"),
        ({"object_kind": "pipeline"}, "object_attributes"),
        ({"object_kind": "pipeline", "object_attributes": ["id", 31]}, "object_attributes"),
    ],
)
def test_a_malformed_pipeline_hook_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(HookInvalid) as err:
        parse_pipeline_hook(body)
    assert err.value.field == field and isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "variables, run_id",
    [
        ([{"key": "RETRAIN_RUN_ID", "value": "r-7"}], "r-7"),
        ([{"key": "OTHER", "value": "x"}, {"key": "RETRAIN_RUN_ID", "value": "r-8", "variable_type": "env_var"}], "r-8"),
        ([{"key": "OTHER", "value": "x"}], None),
        ([], None),
        (None, None),  # a pipeline started without variables: GitLab leaves the list out or empty
        ({"RETRAIN_RUN_ID": "r-9"}, None),  # not GitLab's shape
        ([{"key": "RETRAIN_RUN_ID", "value": 9}, "junk", {"key": "RETRAIN_RUN_ID"}], None),
        ([{"key": "RETRAIN_RUN_ID", "value": ""}], None),
    ],
)
def test_run_id_comes_from_the_retrain_run_id_variable(variables: Any, run_id: str | None) -> None:
    body = hook()
    if variables is None:
        del body["object_attributes"]["variables"]
    else:
        body["object_attributes"]["variables"] = variables
    parsed = parse_pipeline_hook(body)
    assert parsed is not None and parsed.run_id == run_id


def test_string_ids_and_a_missing_project() -> None:
    body = hook(id="1007")
    del body["project"]
    assert parse_pipeline_hook(body) == PipelineHook("1007", PipelineStatus("running"), "r-1", None, None)
    body = hook()
    body["project"] = {"id": 42, "web_url": ""}
    parsed = parse_pipeline_hook(body)
    assert parsed is not None and parsed.web_url is None and parsed.project_id == "42"


@pytest.mark.parametrize(
    "body",
    [
        {"object_kind": "push", "ref": "refs/heads/main"},
        {"object_kind": "build", "build_status": "failed"},
        {"object_kind": "merge_request", "object_attributes": {"id": 1, "status": "failed"}},
        {},
        {"object_attributes": {"id": 1, "status": "failed"}},
    ],
)
def test_a_hook_of_another_kind_is_none(body: dict[str, Any]) -> None:
    assert parse_pipeline_hook(body) is None

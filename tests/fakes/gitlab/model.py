"""What the stand-in knows of GitLab: constants from GitLab's source, and projects, tokens, pipelines and the
request log as plain records."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DEFAULT_TOKEN = "glpat-fake-maintainer-token"
DEFAULT_PROJECT_ID = 42
DEFAULT_PROJECT_PATH = "ml/recsys"
DEFAULT_TRIGGER_TOKEN = "glptt-fake-trigger-token"

ENDPOINTS = ("create", "trigger", "get", "list", "variables", "cancel", "project")

STATUSES = (
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
    # newer GitLab versions
    "waiting_for_callback",
    "canceling",
)
FINISHED_STATUSES = frozenset({"success", "failed", "canceled", "skipped"})
# Ci::HasStatus::CANCELABLE_STATUSES (+ waiting_for_callback in newer versions).
CANCELABLE_STATUSES = frozenset(
    {"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled", "waiting_for_callback"}
)
# Ci::Pipeline.sources.keys
SOURCES = frozenset(
    {
        "unknown", "push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
        "merge_request_event", "external_pull_request_event", "parent_pipeline", "ondemand_dast_scan",
        "ondemand_dast_validation", "security_orchestration_policy", "container_registry_push",
        "duo_workflow", "pipeline_execution_policy_schedule",
    }
)  # fmt: skip
LIST_SCOPES = frozenset({"running", "pending", "finished", "branches", "tags"})
ORDER_BY = ("id", "status", "ref", "updated_at", "user_id")
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
VARIABLE_TYPES = ("env_var", "file")
VARIABLE_KEY_RE = re.compile(r"\A[a-zA-Z0-9_]+\Z")

_DETAILED = {
    "created": ("created", "status_created"),
    "waiting_for_resource": ("waiting", "status_pending"),
    "preparing": ("preparing", "status_preparing"),
    "pending": ("pending", "status_pending"),
    "running": ("running", "status_running"),
    "success": ("passed", "status_success"),
    "failed": ("failed", "status_failed"),
    "canceled": ("canceled", "status_canceled"),
    "canceling": ("canceling", "status_canceled"),
    "skipped": ("skipped", "status_skipped"),
    "manual": ("manual", "status_manual"),
    "scheduled": ("delayed", "status_scheduled"),
    "waiting_for_callback": ("waiting", "status_pending"),
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(ts: datetime | None) -> str | None:
    """GitLab's API timestamp format: 2016-08-11T11:28:34.085Z."""
    if ts is None:
        return None
    ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


@dataclass
class FakeProject:
    id: int
    path: str  # full path, e.g. "ml/recsys"
    refs: dict[str, str] = field(default_factory=dict)  # ref -> sha
    default_branch: str = "main"
    visibility: str = "private"


@dataclass
class _Token:
    token: str
    role: str
    can_set_variables: bool
    user: dict[str, Any]


@dataclass
class _TriggerToken:
    token: str
    project_id: int
    owner: _Token


@dataclass
class FakePipeline:
    """A pipeline as the fake stores it. :meth:`FakeGitlab.pipelines` hands out copies."""

    id: int
    iid: int
    project_id: int
    ref: str
    sha: str
    status: str
    source: str
    created_at: datetime
    updated_at: datetime
    web_url: str
    user: dict[str, Any]
    variables: list[dict[str, Any]] = field(default_factory=list)  # [{key, value, variable_type, raw}]
    inputs: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tag: bool = False

    @property
    def vars(self) -> dict[str, str]:
        """Variables as a plain ``{key: value}`` dict."""
        return {v["key"]: v["value"] for v in self.variables}

    def basic_json(self) -> dict[str, Any]:
        """Entities::Ci::PipelineBasic(WithMetadata): the list item shape."""
        return {
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project_id,
            "sha": self.sha,
            "ref": self.ref,
            "status": self.status,
            "source": self.source,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "web_url": self.web_url,
        }

    def full_json(self) -> dict[str, Any]:
        """Entities::Ci::Pipeline: the create/get/cancel shape."""
        duration = None
        queued_duration = None
        if self.started_at is not None:
            queued_duration = round((self.started_at - self.created_at).total_seconds(), 3)
            if self.finished_at is not None:
                duration = int((self.finished_at - self.started_at).total_seconds())
        text, icon = _DETAILED.get(self.status, (self.status, "status_running"))
        details_path = "/" + self.web_url.split("/", 3)[3] if self.web_url.count("/") >= 3 else self.web_url
        return {
            **self.basic_json(),
            "before_sha": "0" * 40,
            "tag": self.tag,
            "yaml_errors": None,
            "user": dict(self.user),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "committed_at": None,
            "duration": duration,
            "queued_duration": queued_duration,
            "coverage": None,
            "detailed_status": {
                "icon": icon,
                "text": text,
                "label": text,
                "group": self.status,
                "tooltip": text,
                "has_details": True,
                "details_path": details_path,
                "illustration": None,
                "favicon": f"/assets/ci_favicons/favicon_{icon}.png",
            },
        }


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it. ``status`` is None when no answer was sent (reset / timeout)."""

    method: str
    path: str  # raw path without the query string, e.g. /api/v4/projects/ml%2Frecsys/pipeline
    status: int | None
    endpoint: str | None  # create / trigger / get / list / variables / cancel / project, None if unrouted
    query: Mapping[str, str] = field(default_factory=dict)
    fault: str | None = None  # str(Fault) if a fault was injected

"""The stand-in's in-memory state (projects, refs, tokens, trigger tokens, pipelines, request log) and the
calls tests use to seed, move and inspect it without HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tests.fakes.gitlab.model import (
    DEFAULT_PROJECT_ID,
    DEFAULT_PROJECT_PATH,
    DEFAULT_TOKEN,
    DEFAULT_TRIGGER_TOKEN,
    FINISHED_STATUSES,
    ROLES,
    FakePipeline,
    FakeProject,
    RequestRecord,
    _fake_sha,
    _Token,
    _TriggerToken,
    _utcnow,
)

if TYPE_CHECKING:
    from tests.fakes.gitlab.faults import Fault, _RandomRule


class GitlabState:
    """In-memory GitLab: projects, refs, tokens, trigger tokens, pipelines and the log of requests."""

    def __init__(
        self,
        *,
        project_id: int | None = DEFAULT_PROJECT_ID,
        project_path: str = DEFAULT_PROJECT_PATH,
        refs: Iterable[str] = ("main",),
        tokens: Mapping[str, str] | Iterable[str] = (DEFAULT_TOKEN,),
        trigger_tokens: Iterable[str] = (DEFAULT_TRIGGER_TOKEN,),
        latency: float = 0.0,
        timeout_delay: float = 2.0,
        seed: int = 0,
        clock: Callable[[], datetime] = _utcnow,
        cancel_status: str = "canceled",
        max_value_length: int = 10_000,
        first_pipeline_id: int = 1000,
    ) -> None:
        """
        project_id/project_path/refs: a first project (None: start without projects, use add_project).
        tokens: API tokens, either an iterable (role "maintainer") or a mapping token -> role
            ("guest" | "reporter" | "developer" | "maintainer" | "owner").
        trigger_tokens: pipeline trigger tokens of the first project (owned by the first API token's user).
        latency: seconds every request waits before being handled.
        timeout_delay: how long a "timeout" fault holds the request (must exceed the client's timeout).
        seed: seed of the RNG used by fail_randomly (unless that call gives its own).
        clock: returns an aware datetime; drives created_at / updated_at / started_at / finished_at.
        cancel_status: "canceled" (default) or "canceling" (newer GitLab with on_cancel jobs).
        max_value_length: longest accepted variable value (longer: 400).
        first_pipeline_id: ids are global and increase from here; iids count per project from 1.
        """
        self._lock = threading.RLock()
        self.latency = latency
        self.timeout_delay = timeout_delay
        self.clock = clock
        self.cancel_status = cancel_status
        self.max_value_length = max_value_length
        self.url: str | None = None
        self._seed = seed
        self._projects: dict[int, FakeProject] = {}
        self._tokens: dict[str, _Token] = {}
        self._triggers: dict[str, _TriggerToken] = {}
        self._pipelines: dict[int, FakePipeline] = {}
        self._next_id = first_pipeline_id
        self._next_iid: dict[int, int] = {}
        self._next_user_id = 1
        self._log: list[RequestRecord] = []
        self._fault_queue: dict[str, deque[Fault]] = {}
        self._fault_rules: dict[str, list[_RandomRule]] = {}
        self._closing: asyncio.Event | None = None
        self._closing_loop: asyncio.AbstractEventLoop | None = None

        token_roles = dict(tokens) if isinstance(tokens, Mapping) else {t: "maintainer" for t in tokens}
        for token, role in token_roles.items():
            self.add_token(token, role=role)
        if project_id is not None:
            self.add_project(project_id, project_path, refs=refs)
            for trigger in trigger_tokens:
                self.add_trigger_token(project_id, trigger)

    # ------------------------------------------------------------------------------------- state setup

    def add_project(
        self, project_id: int, path: str, *, refs: Iterable[str] = ("main",), default_branch: str | None = None
    ) -> FakeProject:
        refs = list(refs)
        with self._lock:
            project = FakeProject(
                id=project_id,
                path=path,
                refs={ref: _fake_sha(project_id, ref) for ref in refs},
                default_branch=default_branch or (refs[0] if refs else "main"),
            )
            self._projects[project_id] = project
            self._next_iid.setdefault(project_id, 1)
            return project

    def add_ref(self, project: int | str, ref: str, sha: str | None = None) -> None:
        with self._lock:
            p = self._project_or_raise(project)
            p.refs[ref] = sha or _fake_sha(p.id, ref)

    def remove_ref(self, project: int | str, ref: str) -> None:
        with self._lock:
            self._project_or_raise(project).refs.pop(ref, None)

    def add_token(
        self, token: str, *, role: str = "maintainer", can_set_variables: bool = True, username: str | None = None
    ) -> None:
        """An API token (PRIVATE-TOKEN or Authorization: Bearer). role decides what it may do: reading
        pipelines needs reporter, creating/canceling/reading variables developer. can_set_variables=False
        models ci_pipeline_variables_minimum_override_role above this user's role."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}, expected one of {sorted(ROLES)}")
        with self._lock:
            uid = self._next_user_id
            self._next_user_id += 1
            name = username or f"user{uid}"
            user = {
                "id": uid,
                "username": name,
                "name": name.replace("_", " ").title(),
                "state": "active",
                "locked": False,
                "avatar_url": f"https://www.gravatar.com/avatar/{_fake_sha(name)[:32]}?s=80&d=identicon",
                "web_url": f"https://gitlab.example.com/{name}",
            }
            self._tokens[token] = _Token(token, role, can_set_variables, user)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def add_trigger_token(
        self, project: int | str, token: str, *, owner_token: str | None = None, can_set_variables: bool = True
    ) -> None:
        """A pipeline trigger token of ``project``. It acts as its owner (default: the first API token's user)."""
        with self._lock:
            p = self._project_or_raise(project)
            if owner_token is not None:
                owner = self._tokens[owner_token]
            elif self._tokens:
                owner = next(iter(self._tokens.values()))
            else:
                owner = _Token("", "maintainer", True, {"id": 0, "username": "trigger", "name": "Trigger"})
            if not can_set_variables:
                owner = replace(owner, can_set_variables=False)
            self._triggers[token] = _TriggerToken(token, p.id, owner)

    def revoke_trigger_token(self, token: str) -> None:
        with self._lock:
            self._triggers.pop(token, None)

    def create_pipeline(
        self,
        project: int | str = DEFAULT_PROJECT_ID,
        ref: str = "main",
        variables: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
        *,
        source: str = "api",
        status: str = "created",
        token: str | None = None,
    ) -> FakePipeline:
        """Seed a pipeline directly (no HTTP, no validation, no faults). Returns a copy."""
        with self._lock:
            p = self._project_or_raise(project)
            if ref not in p.refs:
                p.refs[ref] = _fake_sha(p.id, ref)
            owner = self._tokens[token] if token else next(iter(self._tokens.values()), None)
            user = owner.user if owner else {"id": 0, "username": "system", "name": "System"}
            if isinstance(variables, Mapping):
                vlist = [{"key": k, "value": v} for k, v in variables.items()]
            else:
                vlist = [dict(v) for v in (variables or [])]
            pipeline = self._record_pipeline(p, ref, vlist, {}, source, user, "http://gitlab.invalid")
            if status != "created":
                self._set_status_locked(pipeline, status)
            return replace(pipeline, variables=[dict(v) for v in pipeline.variables])

    # ------------------------------------------------------------------------------------- test controls

    def set_status(self, pipeline_id: int, status: str) -> None:
        """Move a pipeline to ``status`` (any string; unknown ones are stored as given)."""
        with self._lock:
            pipeline = self._pipelines.get(int(pipeline_id))
            if pipeline is None:
                raise KeyError(f"no pipeline {pipeline_id}")
            self._set_status_locked(pipeline, status)

    def pipeline(self, pipeline_id: int) -> FakePipeline:
        """A copy of one pipeline (KeyError if unknown)."""
        with self._lock:
            p = self._pipelines[int(pipeline_id)]
            return replace(p, variables=[dict(v) for v in p.variables], inputs=dict(p.inputs))

    def pipelines(self, project: int | str | None = None) -> list[FakePipeline]:
        """Copies of the pipelines of ``project`` (all projects if None), oldest first."""
        with self._lock:
            pid = None if project is None else self._project_or_raise(project).id
            return [
                replace(p, variables=[dict(v) for v in p.variables], inputs=dict(p.inputs))
                for p in sorted(self._pipelines.values(), key=lambda p: p.id)
                if pid is None or p.project_id == pid
            ]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request handled so far (copy), in arrival order of their answers."""
        with self._lock:
            return list(self._log)

    def calls(self, endpoint: str | None = None, *, method: str | None = None) -> list[RequestRecord]:
        """The request log filtered by endpoint kind and/or method."""
        return [
            r
            for r in self.requests
            if (endpoint is None or r.endpoint == endpoint) and (method is None or r.method == method.upper())
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------------------------------- records

    def _project_or_raise(self, project: int | str) -> FakeProject:
        found = self._find_project(project)
        if found is None:
            raise KeyError(f"no project {project!r}")
        return found

    def _find_project(self, ident: int | str) -> FakeProject | None:
        with self._lock:
            if isinstance(ident, int) or str(ident).isdigit():
                return self._projects.get(int(ident))
            for p in self._projects.values():
                if p.path == ident:
                    return p
            return None

    def _record_pipeline(
        self,
        project: FakeProject,
        ref: str,
        variables: list[dict[str, Any]],
        inputs: dict[str, Any],
        source: str,
        user: dict[str, Any],
        base_url: str,
    ) -> FakePipeline:
        with self._lock:
            pid = self._next_id
            self._next_id += 1
            iid = self._next_iid.get(project.id, 1)
            self._next_iid[project.id] = iid + 1
            now = self.clock()
            pipeline = FakePipeline(
                id=pid,
                iid=iid,
                project_id=project.id,
                ref=ref,
                sha=project.refs.get(ref) or _fake_sha(project.id, ref),
                status="created",
                source=source,
                created_at=now,
                updated_at=now,
                web_url=f"{base_url}/{project.path}/-/pipelines/{pid}",
                user=dict(user),
                variables=[
                    {
                        "key": v["key"],
                        "value": v.get("value") if v.get("value") is not None else "",
                        "variable_type": v.get("variable_type", "env_var"),
                        "raw": False,
                    }
                    for v in variables
                ],
                inputs=dict(inputs),
            )
            self._pipelines[pid] = pipeline
            return pipeline

    def _set_status_locked(self, pipeline: FakePipeline, status: str) -> None:
        now = self.clock()
        if status == "running" and pipeline.started_at is None:
            pipeline.started_at = now
        if status in FINISHED_STATUSES:
            if pipeline.started_at is None and status in ("success", "failed"):
                pipeline.started_at = now
            pipeline.finished_at = now
        else:
            pipeline.finished_at = None
        pipeline.status = status
        pipeline.updated_at = now

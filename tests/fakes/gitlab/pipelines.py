"""The pipeline endpoints: create, trigger (trigger tokens), get, list, variables and cancel, with GitLab's
validation of refs and variables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from tests.fakes.gitlab.model import (
    CANCELABLE_STATUSES,
    FINISHED_STATUSES,
    LIST_SCOPES,
    ORDER_BY,
    SOURCES,
    STATUSES,
    VARIABLE_KEY_RE,
    VARIABLE_TYPES,
    FakePipeline,
    FakeProject,
    _Token,
)
from tests.fakes.gitlab.routes import Routes
from tests.fakes.gitlab.wire import _ApiError, _int_param, _json, _pagination_headers, _parse_time


class PipelineRoutes(Routes):
    """The ``_h_*`` handlers of the pipeline endpoints."""

    # ------------------------------------------------------------------------------------- validation

    def _validate_variables(self, variables: Any) -> list[dict[str, Any]]:
        """Grape's params block for ``variables`` (Array of {key, value, variable_type}) + model checks."""
        if variables is None:
            return []
        if not isinstance(variables, list) or not all(isinstance(v, dict) for v in variables):
            raise _ApiError(400, {"error": "variables is invalid"})
        out: list[dict[str, Any]] = []
        for i, var in enumerate(variables):
            row: dict[str, Any] = {}
            for name in ("key", "value"):
                val = var.get(name)
                if val is None:
                    row[name] = None
                elif isinstance(val, (str, int, float)) and not isinstance(val, bool):
                    row[name] = str(val)
                else:
                    raise _ApiError(400, {"error": f"variables[{i}][{name}] is invalid"})
            vtype = var.get("variable_type", "env_var")
            if vtype not in VARIABLE_TYPES:
                raise _ApiError(400, {"error": f"variables[{i}][variable_type] does not have a valid value"})
            row["variable_type"] = vtype
            out.append(row)
        return out

    def _check_variable_models(self, variables: list[dict[str, Any]]) -> None:
        """Ci::PipelineVariable validations (key presence/format/length, value length)."""
        for var in variables:
            key = (var.get("key") or "").strip()
            if not key or len(key) > 255 or not VARIABLE_KEY_RE.match(key):
                raise _ApiError(400, {"message": {"variables": ["is invalid"]}})
            var["key"] = key
            if var.get("value") is not None and len(var["value"]) > self.max_value_length:
                raise _ApiError(
                    400,
                    {"message": {"variables.value": [f"is too long (maximum is {self.max_value_length} characters)"]}},
                )

    @staticmethod
    def _check_chain(project: FakeProject, ref: str, variables: list[dict[str, Any]], user: _Token) -> None:
        """Gitlab::Ci::Pipeline::Chain: ref exists, permission to set variables, unique keys."""
        if ref not in project.refs:
            raise _ApiError(400, {"message": {"base": ["Reference not found"]}})
        if variables and not user.can_set_variables:
            raise _ApiError(400, {"message": {"base": ["Insufficient permissions to set pipeline variables"]}})
        seen: dict[str, int] = {}
        for var in variables:
            seen[var["key"]] = seen.get(var["key"], 0) + 1
        dups = [k for k, n in seen.items() if n > 1]
        if dups:
            word = "names" if len(dups) > 1 else "name"
            raise _ApiError(400, {"message": {"base": [f"Duplicate variable {word}: {', '.join(dups)}"]}})

    # ------------------------------------------------------------------------------------- handlers

    async def _h_create(self, request: web.Request, ident: str) -> web.Response:
        project, user = self._authorized_project(request, ident, write=True, min_role="developer")
        params = await self._params(request)
        ref = params.get("ref")
        if ref is None or (isinstance(ref, str) and ref == ""):
            raise _ApiError(400, {"error": "ref is missing" if ref is None else "ref is empty"})
        if not isinstance(ref, (str, int)):
            raise _ApiError(400, {"error": "ref is invalid"})
        ref = str(ref)
        variables = self._validate_variables(params.get("variables"))
        inputs = params.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise _ApiError(400, {"error": "inputs is invalid"})
        self._check_variable_models(variables)
        self._check_chain(project, ref, variables, user)
        pipeline = self._record_pipeline(
            project, ref, variables, inputs or {}, "api", user.user, f"{request.scheme}://{request.host}"
        )
        return _json(pipeline.full_json(), status=201)

    async def _h_trigger(self, request: web.Request, ident: str) -> web.Response:
        params = await self._params(request)
        missing = [name for name in ("ref", "token") if params.get(name) is None]
        if missing:
            raise _ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        if params.get("ref") == "":
            raise _ApiError(400, {"error": "ref is empty"})
        variables = params.get("variables") or {}
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise _ApiError(400, {"message": "variables needs to be a map of key-valued strings"})
        inputs = params.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise _ApiError(400, {"error": "inputs is invalid"})
        project = self._find_project(ident)
        if project is None:
            raise _ApiError(404, {"message": "404 Not Found"})
        with self._lock:
            trigger = self._triggers.get(str(params["token"]))
        if trigger is None or trigger.project_id != project.id:
            raise _ApiError(404, {"message": "404 Not Found"})
        ref = str(params["ref"])
        vlist = [{"key": k, "value": v, "variable_type": "env_var"} for k, v in variables.items()]
        self._check_variable_models(vlist)
        self._check_chain(project, ref, vlist, trigger.owner)
        pipeline = self._record_pipeline(
            project, ref, vlist, inputs, "trigger", trigger.owner.user, f"{request.scheme}://{request.host}"
        )
        return _json(pipeline.full_json(), status=201)

    async def _h_get(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="reporter")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            body = {**pipeline.full_json(), "name": None}
        return _json(body)

    async def _h_variables(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="developer")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            body = [
                {"variable_type": v["variable_type"], "key": v["key"], "value": v["value"], "raw": v["raw"]}
                for v in pipeline.variables
            ]
        return _json(body)

    async def _h_cancel(self, request: web.Request, ident: str, pipeline_id: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=True, min_role="developer")
        pipeline = self._pipeline_of(project, pipeline_id)
        with self._lock:
            if pipeline.status in CANCELABLE_STATUSES or pipeline.status not in (
                *STATUSES,
                *FINISHED_STATUSES,
            ):
                self._set_status_locked(pipeline, self.cancel_status)
            body = pipeline.full_json()
        return _json(body, status=200)

    async def _h_list(self, request: web.Request, ident: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="reporter")
        q = request.query
        for name, allowed in (("scope", LIST_SCOPES), ("status", frozenset(STATUSES)), ("source", SOURCES)):
            if name in q and q[name] not in allowed:
                raise _ApiError(400, {"error": f"{name} does not have a valid value"})
        order_by = q.get("order_by", "id")
        if order_by not in ORDER_BY:
            raise _ApiError(400, {"error": "order_by does not have a valid value"})
        sort = q.get("sort", "desc").lower()
        if sort not in ("asc", "desc"):
            raise _ApiError(400, {"error": "sort does not have a valid value"})
        bounds: dict[str, datetime] = {}
        for name in ("updated_after", "updated_before", "created_after", "created_before"):
            if name in q:
                bounds[name] = _parse_time(name, q[name])
        page, per_page = _int_param(q, "page", 1), _int_param(q, "per_page", 20)
        page = max(page, 1)
        per_page = 20 if per_page < 1 else min(per_page, 100)

        with self._lock:
            items = [p for p in self._pipelines.values() if p.project_id == project.id]
            if "ref" in q:
                items = [p for p in items if p.ref == q["ref"]]
            if "sha" in q:
                items = [p for p in items if p.sha == q["sha"]]
            if "status" in q:
                items = [p for p in items if p.status == q["status"]]
            if "source" in q:
                items = [p for p in items if p.source == q["source"]]
            else:  # child pipelines are left out unless asked for
                items = [p for p in items if p.source != "parent_pipeline"]
            scope = q.get("scope")
            if scope == "running":
                items = [p for p in items if p.status == "running"]
            elif scope == "pending":
                items = [p for p in items if p.status == "pending"]
            elif scope == "finished":
                items = [p for p in items if p.status in FINISHED_STATUSES]
            elif scope == "tags":
                items = [p for p in items if p.tag]
            elif scope == "branches":
                items = [p for p in items if not p.tag]
            if "updated_after" in bounds:
                items = [p for p in items if p.updated_at >= bounds["updated_after"]]
            if "updated_before" in bounds:
                items = [p for p in items if p.updated_at <= bounds["updated_before"]]
            if "created_after" in bounds:
                items = [p for p in items if p.created_at >= bounds["created_after"]]
            if "created_before" in bounds:
                items = [p for p in items if p.created_at <= bounds["created_before"]]

            def sort_key(p: FakePipeline) -> tuple[Any, int]:
                value = {"id": p.id, "status": p.status, "ref": p.ref, "updated_at": p.updated_at}.get(
                    order_by, p.user.get("id", 0)
                )
                return (value, p.id)

            items.sort(key=sort_key, reverse=(sort == "desc"))
            total = len(items)
            chunk = items[(page - 1) * per_page : page * per_page]
            body = [{**p.basic_json(), "name": None} for p in chunk]

        total_pages = max(1, -(-total // per_page))
        headers = _pagination_headers(request, page, per_page, total, total_pages)
        return _json(body, headers=headers)

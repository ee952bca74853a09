"""Routing of ``/api/v4/projects/:id/...`` on the raw path, GitLab's authentication and permission checks,
request parameters, and the project endpoint."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from tests.fakes.gitlab.model import ROLES, FakePipeline, FakeProject, _Token
from tests.fakes.gitlab.state import GitlabState
from tests.fakes.gitlab.wire import _ApiError, _json, _rack_parse


class Routes(GitlabState):
    """Finds the endpoint of a request and hands it to its ``_h_<endpoint>`` handler."""

    _ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
        ("POST", ("pipeline",), "create"),
        ("POST", ("trigger", "pipeline"), "trigger"),
        ("GET", ("pipelines",), "list"),
        ("GET", ("pipelines", "*"), "get"),
        ("GET", ("pipelines", "*", "variables"), "variables"),
        ("POST", ("pipelines", "*", "cancel"), "cancel"),
        ("GET", (), "project"),
    )

    def _route(self, method: str, raw_path: str) -> tuple[str | None, list[str]]:
        """Match ``/api/v4/projects/:id/...`` on the raw (still percent-encoded) path."""
        parts = raw_path.split("/")
        if parts[:4] != ["", "api", "v4", "projects"] or len(parts) < 5 or not parts[4]:
            return None, []
        tail = [unquote(p) for p in parts[5:]]
        if tail and tail[-1] == "":
            tail = tail[:-1]
        for m, pattern, name in self._ROUTES:
            if m != method.upper() and not (m == "GET" and method.upper() == "HEAD"):
                continue
            if len(pattern) == len(tail) and all(p == "*" or p == t for p, t in zip(pattern, tail)):
                return name, [unquote(parts[4]), *[t for p, t in zip(pattern, tail) if p == "*"]]
        return None, []

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        endpoint, args = self._route(request.method, raw_path)
        if endpoint is None:
            return _json({"error": "404 Not Found"}, status=404)
        try:
            handler = getattr(self, f"_h_{endpoint}")
            return await handler(request, *args)
        except _ApiError as err:
            return _json(err.body, status=err.status)

    # ------------------------------------------------------------------------------------- access

    def _authenticate(self, request: web.Request) -> _Token | None:
        """None = anonymous. Raises 401 for a token that is present but unknown."""
        token = request.headers.get("PRIVATE-TOKEN")
        if token is None:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        if token is None:
            return None
        with self._lock:
            found = self._tokens.get(token)
        if found is None:
            raise _ApiError(401, {"message": "401 Unauthorized"})
        return found

    def _authorized_project(
        self, request: web.Request, ident: str, *, write: bool, min_role: str
    ) -> tuple[FakeProject, _Token]:
        """GitLab's order: a bad token is 401 first; anonymous writes are 401; a private project is
        invisible (404) to anonymous readers; a member below ``min_role`` gets 403."""
        user = self._authenticate(request)
        if user is None and write:
            raise _ApiError(401, {"message": "401 Unauthorized"})
        project = self._find_project(ident)
        if project is None or user is None:
            raise _ApiError(404, {"message": "404 Project Not Found"})
        if ROLES[user.role] < ROLES[min_role]:
            raise _ApiError(403, {"message": "403 Forbidden"})
        return project, user

    def _pipeline_of(self, project: FakeProject, pipeline_id: str) -> FakePipeline:
        if not re.fullmatch(r"-?\d+", pipeline_id):
            raise _ApiError(400, {"error": "pipeline_id is invalid"})
        with self._lock:
            pipeline = self._pipelines.get(int(pipeline_id))
        if pipeline is None or pipeline.project_id != project.id:
            raise _ApiError(404, {"message": "404 Not found"})
        return pipeline

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        """Grape-like params: query string merged with a JSON or form body (rack nested names)."""
        params: dict[str, Any] = _rack_parse(list(request.query.items()))
        if not request.body_exists:  # (can_read_body turns False once the body was read)
            return params
        ctype = request.content_type
        if ctype == "application/json":
            raw = await request.read()
            if not raw.strip():
                return params
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise _ApiError(400, {"error": f"The provided content-type '{ctype}' is not supported."}) from exc
            if not isinstance(body, dict):
                raise _ApiError(400, {"error": "The request body must be a JSON object"})
            params.update(body)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update(_rack_parse([(k, v) for k, v in form.items() if isinstance(v, str)]))
        else:
            await request.read()
        return params

    def _web_url(self, request: web.Request, project: FakeProject, pipeline_id: int) -> str:
        return f"{request.scheme}://{request.host}/{project.path}/-/pipelines/{pipeline_id}"

    # ------------------------------------------------------------------------------------- handlers

    async def _h_project(self, request: web.Request, ident: str) -> web.Response:
        project, _ = self._authorized_project(request, ident, write=False, min_role="guest")
        base = f"{request.scheme}://{request.host}"
        namespace, _, name = project.path.rpartition("/")
        return _json(
            {
                "id": project.id,
                "name": name,
                "path": name,
                "path_with_namespace": project.path,
                "name_with_namespace": project.path.replace("/", " / "),
                "default_branch": project.default_branch,
                "visibility": project.visibility,
                "web_url": f"{base}/{project.path}",
                "namespace": {"full_path": namespace, "path": namespace.rsplit("/", 1)[-1]},
            }
        )

"""A protocol-faithful stand-in for the parts of GitLab's REST API v4 the controller uses.

It is an aiohttp application meant to be driven through the *real* python-gitlab client::

    fake = FakeGitlab()                      # project 42 "ml/recsys", ref "main", token DEFAULT_TOKEN
    with fake.serve_in_thread() as url:      # or: async with fake.serve() as url:
        gl = make_client(url, DEFAULT_TOKEN, timeout=0.5)   # controller.adapters.gitlab
        project = gl.projects.get("ml/recsys", lazy=True)
        pipeline = project.pipelines.create({"ref": "main", "variables": [{"key": "RUN_ID", "value": "r1"}]})
        fake.set_status(pipeline.id, "success")

Shapes and messages follow GitLab's own source (lib/api/ci/pipelines.rb, lib/api/ci/triggers.rb,
Gitlab::Ci::Pipeline::Chain::*) and the API documentation:

- ``POST /projects/:id/pipeline`` answers 201 with the full pipeline entity. Validation failures of the
  pipeline (unknown ref, insufficient permission to set variables, duplicate variable keys) are 400 with
  ``{"message": {"base": [...]}}`` (``render_validation_error!``); parameter errors are Grape's
  ``{"error": "ref is missing"}`` / ``{"error": "variables is invalid"}``.
- ``POST /projects/:id/trigger/pipeline`` takes ``token``, ``ref`` and ``variables`` as a hash, either as JSON
  (python-gitlab sends ``{"ref", "token", "variables": {...}, "inputs": {...}}``) or form fields
  ``variables[KEY]=value``. A trigger token not belonging to the project is ``404 {"message": "404 Not Found"}``.
- ``GET .../pipelines/:pipeline_id`` of a pipeline that does not exist: ``404 {"message": "404 Not found"}``
  (ActiveRecord::RecordNotFound, lower-case "found"); unknown project: ``404 Project Not Found``.
- Invalid token (any endpoint but trigger): ``401 {"message": "401 Unauthorized"}``. A missing token on a
  POST is 401 too; a missing token on a GET of a private project is ``404 Project Not Found`` (GitLab hides
  private projects from anonymous users).
- ``POST .../cancel`` answers 200 with the pipeline; a pipeline that cannot be canceled is returned as is.
- Rate limiting (fault "429") looks like Rack::Attack's throttle answer: ``text/plain`` body
  ``Retry later``, with ``Retry-After`` and ``RateLimit-*`` headers. A "502" fault looks like a proxy's
  HTML page. Everything else is JSON with ``Content-Type: application/json``.

Faults are injected per endpoint kind (``create``, ``trigger``, ``get``, ``list``, ``variables``, ``cancel``,
``project``, or ``*`` for all) from a queue (:meth:`FakeGitlab.fail`) or at random with a seeded RNG
(:meth:`FakeGitlab.fail_randomly`). "after" faults let the request take effect first (the pipeline IS
created) and then break the answer: the ambiguous case a client must resolve by looking the pipeline up.
"""

from __future__ import annotations

from tests.fakes.gitlab.faults import Fault
from tests.fakes.gitlab.model import (
    CANCELABLE_STATUSES,
    DEFAULT_PROJECT_ID,
    DEFAULT_PROJECT_PATH,
    DEFAULT_TOKEN,
    DEFAULT_TRIGGER_TOKEN,
    ENDPOINTS,
    FINISHED_STATUSES,
    STATUSES,
    FakePipeline,
    FakeProject,
    RequestRecord,
)
from tests.fakes.gitlab.server import FakeGitlab

__all__ = [
    "CANCELABLE_STATUSES",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_PROJECT_PATH",
    "DEFAULT_TOKEN",
    "DEFAULT_TRIGGER_TOKEN",
    "ENDPOINTS",
    "FINISHED_STATUSES",
    "Fault",
    "FakeGitlab",
    "FakePipeline",
    "FakeProject",
    "RequestRecord",
    "STATUSES",
]

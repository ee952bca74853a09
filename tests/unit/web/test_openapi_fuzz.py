"""Property-based requests generated from the OpenAPI document (schemathesis): no 5xx, and every answer's
status code and content type are ones the document declares. Skipped when schemathesis is not installed
(it is in the `test` extra)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from aiohttp import web  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance  # noqa: E402

from controller.adapters.clock import SystemClock  # noqa: E402
from controller.adapters.sqlite import SqliteStore  # noqa: E402
from controller.app import Adapters, create_app  # noqa: E402
from controller.config import load_settings  # noqa: E402
from controller.web.openapi import document  # noqa: E402
from tests.conftest import SECRETS_ENV, write_config  # noqa: E402
from tests.fakes.runner import ScriptedRunner  # noqa: E402

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app on a real port, on its own loop in a thread (the generated calls are blocking)."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    app_settings = load_settings(write_config(tmp), SECRETS_ENV)
    runner = ScriptedRunner()
    app = create_app(app_settings, Adapters(SqliteStore(app_settings.store.path),
                                            {"recsys": runner, "search": runner}, SystemClock()))  # fmt: skip
    loop = asyncio.new_event_loop()
    app_runner = web.AppRunner(app)
    ready = threading.Event()
    port: list[int] = []

    async def start() -> None:
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10), "the app did not start"
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(app_runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests(case, base_url):
    case.call_and_validate(
        base_url=base_url,
        headers={"Authorization": f"Bearer {SECRETS_ENV['RETRAIN_CONTROLLER_ADMIN_TOKEN']}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance],
        timeout=10,
    )

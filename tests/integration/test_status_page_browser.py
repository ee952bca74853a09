"""The status and run pages in a real headless Chromium, at desktop and phone widths (the pages carry no script).

Chromium comes from Debian's `chromium` package (tests/infra/install-browser.sh); set CHROMIUM_BIN to use
another. Screenshots are kept in the test's tmp dir (and in $STATUS_PAGE_SHOTS when set, for a look by eye).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controller.core.judge import Outcome, Verdict
from controller.core.runs import Phase, Run, Transition
from controller.core.state import CanaryStage, CanaryState, Look
from tests.infra.procs import require_binary
from tests.unit.web.test_ops import make_env
from tests.unit.web.test_pages import MEASUREMENTS

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars",
]  # fmt: skip
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
IMAGE = "registry.example/ml/search@sha256:" + "0f" * 32


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


async def shoot(binary: str, url: str, out: Path, size: tuple[int, int], profile: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        binary, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size[0]},{size[1]}",
        url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium took over 60 s on {url}")
    assert proc.returncode == 0 and out.exists(), err.decode(errors="replace")[-2000:]


async def test_pages_render_in_chromium(aiohttp_server, tmp_path):
    binary = require_binary("CHROMIUM_BIN", ["chromium", "chromium-browser", "google-chrome"])
    env = await make_env(lambda app: _client_on_port(aiohttp_server, app), tmp_path)
    await env.post("/api/v1/models/search/pause", {"by": "alice", "reason": "index rebuild"})
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    await put_canary_run(env.store, "c1", model="search")
    base = str(env.client.make_url("")).rstrip("/")
    keep = os.environ.get("STATUS_PAGE_SHOTS")
    for page, path in (("status", "/"), ("run", "/runs/c1")):
        for name, size in SIZES.items():
            out = tmp_path / f"{page}-{name}.png"
            await shoot(binary, base + path, out, size, tmp_path / f"profile-{page}-{name}")
            width, height = png_size(out)
            assert (width, height) == size
            assert out.stat().st_size > 10_000  # something was drawn
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(keep) / out.name)


async def put_canary_run(store, run_id: str, model: str) -> None:
    """A run in analysis at its second step with looks and a verdict, as if it had got there."""
    now = datetime.now(timezone.utc)
    run = Run(id=run_id, model=model, phase=Phase.ANALYZING, created_at=now, phase_entered_at=now,
              deadline_at=now + timedelta(hours=2), reasons=("precision_drop",), image=IMAGE, cause="test",
              canary=CanaryState(step=1, stage=CanaryStage.JUDGING, stage_since=now),
              verdict=Verdict(Outcome.PASS, "ok"))  # fmt: skip
    await store.create_run(run, Transition(run_id, now, None, Phase.ANALYZING, "test"))
    for m in MEASUREMENTS:
        await store.update_run(run, Look.from_json(m))


async def _client_on_port(aiohttp_server, app):
    """make_env wants a client; a real server on a port is what Chromium needs, so give it one with a client face."""
    from aiohttp.test_utils import TestClient

    server = await aiohttp_server(app)
    client = TestClient(server)
    await client.start_server()
    _clients.append(client)
    return client


_clients: list = []


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while _clients:
        await _clients.pop().close()

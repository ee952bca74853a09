"""A store whose disk really fills up: the controller as a subprocess, its store on a small mounted filesystem.

Two filesystems: ext4 on a loop device (journal, real fsync) and tmpfs. A filler file is written until the
kernel answers ENOSPC, so SQLite's own writes fail the way they would on a full volume (SQLITE_FULL,
"database or disk is full"); deleting the filler gives the space back. Mounting needs root: without it (or
without mount/mkfs.ext4) the tests skip, and fail under REQUIRE_INTEGRATION=1 (CI runs as root).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.infra.procs import (
    Service,
    controller_service,
    free_port,
    get_json,
    get_text,
    kill_process_groups,
    metric_value,
)
from tests.unit.payloads import am_alert, notification

pytestmark = pytest.mark.integration

TOKEN = "am-store-faults-5d1e8c2a7f"
MIB = 1024 * 1024


def _unavailable(message: str) -> None:
    if os.environ.get("REQUIRE_INTEGRATION", "") not in ("", "0"):
        pytest.fail(message + "; REQUIRE_INTEGRATION is set", pytrace=False)
    pytest.skip(message)


class Volume:
    """A small filesystem mounted at `path` that the test can fill to ENOSPC and empty again."""

    def __init__(self, kind: str, work: Path, size_mib: int = 16):
        self.kind = kind
        self.path = work / "vol"
        self.image = work / "vol.img"
        self.size_mib = size_mib
        self.filler = self.path / ".filler"
        self.mounted = False

    def mount(self) -> None:
        if os.geteuid() != 0:
            _unavailable("mounting a small filesystem for the store needs root")
        tools = ["mount", "umount"] + (["mkfs.ext4"] if self.kind == "ext4" else [])
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            _unavailable(f"{', '.join(missing)} not found (util-linux, e2fsprogs)")
        self.path.mkdir(parents=True)
        if self.kind == "ext4":
            with open(self.image, "wb") as f:
                f.truncate(self.size_mib * MIB)
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
            argv = ["mount", "-o", "loop", str(self.image), str(self.path)]
        else:
            argv = ["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.path)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            _unavailable(f"cannot mount {self.kind} here: {done.stderr.strip()}")
        self.mounted = True

    def fill(self) -> int:
        """Write the filler until the kernel refuses; the errno it refused with."""
        got = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = MIB
            while chunk >= 1:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    got = exc.errno or 0
                    chunk //= 2
            os.fsync(fd)
        finally:
            os.close(fd)
        return got

    def free(self) -> None:
        self.filler.unlink()
        os.sync()

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        _unavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@pytest.fixture(params=["ext4", "tmpfs"])
def volume(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Volume]:
    v = Volume(request.param, tmp_path)
    try:
        v.mount()
        yield v
    finally:
        v.unmount()


# ---- the controller ---------------------------------------------------------------------------------------


# The pipeline waits until the test drops a file named after its run, then exits 0.
PIPELINE = 'while [ ! -e "$GO_DIR/$RETRAIN_RUN_ID" ]; do sleep 0.05; done'


class StoreFaultRig:
    def __init__(self, tmp: Path, volume: Volume, max_concurrent: int = 2):
        self.go = tmp / "go"
        self.go.mkdir()
        self.store = volume.path / "controller.db"
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port, "log_format": "json"},
            "store": {"path": str(self.store), "busy_timeout": "1s"},
            "policy": {"cooldown": "1h", "daily_budget": 10, "max_concurrent_runs": max_concurrent,
                       "tick_interval": "200ms"},
            "models": [
                {"name": name, "matchers": [f'model="{name}"'],
                 "rules": [{"alertname": "RecsysPrecisionAtKDrop", "reason": "precision_drop"}],
                 "pipeline": {"runner": "command", "command": ["sh", "-c", PIPELINE],
                              "env": {"GO_DIR": str(self.go)}}}
                for name in ("recsys", "search")
            ],
        }  # fmt: skip
        path = tmp / "controller.yaml"
        path.write_text(yaml.safe_dump(config))
        self.service: Service = controller_service(tmp / "controller", path, port, TOKEN)

    @property
    def url(self) -> str:
        return self.service.url

    def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(
            self.url + "/api/v1/alerts", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(get_json(f"{self.url}/api/v1/runs/{run_id}"))

    def log_events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.service.proc.log().splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                if item.get("event") == event:
                    out.append(item)
        return out

    def release(self, run_id: str) -> None:
        (self.go / run_id).touch()

    def pipeline_dir(self, run_id: str) -> Path:
        return self.store.parent / "pipelines" / run_id


@pytest.fixture
def start_controller(tmp_path: Path, volume: Volume) -> Iterator[Callable[..., StoreFaultRig]]:
    made: list[StoreFaultRig] = []

    def start(**kw: Any) -> StoreFaultRig:
        c = StoreFaultRig(tmp_path, volume, **kw)
        made.append(c)
        c.service.start()
        return c

    try:
        yield start
    finally:
        for c in made:
            if c.service.proc.alive and c.service.proc.pid:
                os.kill(c.service.proc.pid, signal.SIGCONT)  # never leave it stopped
            c.service.stop()
            kill_process_groups(sorted((c.store.parent / "pipelines").glob("*/pid")))
        volume.unmount()  # the loop device cannot be detached while a pipeline keeps the volume busy


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rows(store: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(store)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# ---- the tests --------------------------------------------------------------------------------------------


def test_a_full_disk_answers_503_keeps_nothing_and_the_retry_is_accepted_once(volume, start_controller):
    c = start_controller()
    assert c.readyz()[0] == 200
    assert volume.fill() == errno.ENOSPC

    body = notification(am_alert(), am_alert("RecsysPrecisionAtKDrop", model="search", fp="bb22"))
    for _ in range(20):  # Alertmanager retrying, and more groups arriving
        status, answer, headers = c.post(body)
        assert status == 503, answer
        assert headers["Retry-After"] == "5"
        assert answer["error"] == "could not record the notification"
        assert "database or disk is full" in answer["detail"]
    status, ready = c.readyz()
    assert status == 503
    assert "database or disk is full" in ready["detail"]["store"]
    assert str(c.store) in ready["detail"]["store"]
    assert get_json(c.url + "/api/v1/alerts")["alerts"] == []
    assert get_json(c.url + "/api/v1/runs")["runs"] == []
    assert metric_value(get_text(c.url + "/metrics"), "retrain_controller_store_errors_total") >= 20

    # One line says what is wrong; the other 19 rejections are counted in the next line, not logged each.
    lines = [e for e in c.log_events("notification_rejected") if e.get("outcome") == "store_unavailable"]
    assert len(lines) == 1, lines
    assert lines[0]["status"] == 503 and "database or disk is full" in lines[0]["detail"]

    volume.free()
    wait_for("/readyz to recover", lambda: c.readyz()[0] == 200)
    status, answer, _ = c.post(body)  # the same notification, retried
    assert status == 200, answer
    assert answer["summary"] == {"accepted": 2}
    status, answer, _ = c.post(body)
    assert answer["summary"] == {"duplicate": 2}
    runs = get_json(c.url + "/api/v1/runs")["runs"]
    assert sorted(r["model"] for r in runs) == ["recsys", "search"]
    for r in runs:
        c.release(r["id"])
    c.service.stop()
    # Only what was acknowledged is in the store: two notifications, their four decisions, two episodes.
    assert rows(c.store, "SELECT COUNT(*) FROM notifications") == [(2,)]
    assert rows(c.store, "SELECT decision, COUNT(*) FROM decisions GROUP BY decision ORDER BY 1") == [
        ("accepted", 2), ("duplicate", 2)]  # fmt: skip
    assert rows(c.store, "SELECT COUNT(*) FROM episodes") == [(2,)]
    assert rows(c.store, "PRAGMA integrity_check") == [("ok",)]


def test_the_run_loop_neither_loses_nor_repeats_a_transition_it_could_not_write(volume, start_controller):
    c = start_controller(max_concurrent=1)
    status, answer, _ = c.post(notification(am_alert()))
    assert answer["summary"] == {"accepted": 1}
    first = answer["alerts"][0]["run_id"]
    wait_for("the first run to train", lambda: c.run(first)["run"]["phase"] == "training")
    wait_for("its pipeline to start", lambda: (c.pipeline_dir(first) / "pid").exists())
    status, answer, _ = c.post(notification(am_alert(model="search", fp="bb22")))
    assert answer["summary"] == {"queued": 1}
    second = answer["alerts"][0]["run_id"]

    # Hold the controller while the pipeline ends and the disk fills, so it sees both only afterwards.
    pid = c.service.proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        c.release(first)
        wait_for("the pipeline's exit status", lambda: (c.pipeline_dir(first) / "exit").exists())
        assert volume.fill() == errno.ENOSPC
    finally:
        os.kill(pid, signal.SIGCONT)

    time.sleep(3)  # 15 ticks, each trying to write `training -> failed`
    assert c.run(first)["run"]["phase"] == "training"
    assert c.run(second)["run"]["phase"] == "queued"
    assert not c.pipeline_dir(second).exists()
    assert c.readyz()[0] == 503
    errors = c.log_events("store_unavailable")
    assert 1 <= len(errors) <= 2, errors  # rate-limited, not one per tick
    assert "database or disk is full" in errors[0]["error"]

    volume.free()
    wait_for("the second run to train", lambda: c.run(second)["run"]["phase"] == "training")
    c.release(second)
    wait_for("the second run to end", lambda: c.run(second)["run"]["phase"] == "failed")
    moves = {r: [(h["from"], h["to"]) for h in c.run(r)["history"]] for r in (first, second)}
    assert moves[first] == [(None, "triggering"), ("triggering", "training"), ("training", "failed")]
    assert moves[second] == [(None, "queued"), ("queued", "triggering"), ("triggering", "training"),
                             ("training", "failed")]  # fmt: skip
    assert "pipeline succeeded without reporting an image" in c.run(first)["run"]["cause"]
    assert c.run(second)["run"]["pipeline"]["trigger_attempts"] == 1  # launched once
    assert c.readyz()[0] == 200


async def test_a_pipeline_that_cannot_be_prepared_on_a_full_disk_is_retried_not_marked_started(volume):
    from datetime import datetime, timezone

    from controller.adapters.command_runner import CommandRunner
    from controller.ports import PipelineError, PipelineRequest

    runner = CommandRunner(["true"], volume.path / "pipelines")
    request = PipelineRequest("r1", "recsys", ("precision_drop",), datetime.now(timezone.utc), alerts=[{"x": 1}])
    assert volume.fill() == errno.ENOSPC
    with pytest.raises(PipelineError) as failed:
        await runner.trigger(request)
    assert not failed.value.permanent  # the next tick tries again
    assert "No space left on device" in str(failed.value)
    assert await runner.find(request) is None  # nothing claims a launch that never happened

    volume.free()
    ref = await runner.trigger(request)
    assert await runner.find(request) == ref
    deadline = time.monotonic() + 10
    while (await runner.status(ref)).state != "success":
        assert time.monotonic() < deadline, await runner.status(ref)
        await asyncio.sleep(0.05)
    await runner.aclose()


async def test_a_pipeline_that_ends_while_the_disk_is_full_keeps_its_outcome(volume, tmp_path):
    from datetime import datetime, timezone

    from controller.adapters.command_runner import CommandRunner
    from controller.ports import PipelineRequest

    gates = {code: tmp_path / f"gate-{code}" for code in (0, 3)}
    runners, refs = {}, {}
    for code, gate in gates.items():  # the gates live off the volume: the commands wait, then exit with `code`
        runners[code] = CommandRunner(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit {code}"],
                                      volume.path / f"pipelines-{code}")  # fmt: skip
        request = PipelineRequest(f"r{code}", "recsys", ("drift",), datetime.now(timezone.utc), alerts=[{"x": 1}])
        refs[code] = await runners[code].trigger(request)
    assert volume.fill() == errno.ENOSPC
    for code, gate in gates.items():
        await asyncio.sleep(0.3)
        assert (await runners[code].status(refs[code])).state == "running"
        gate.touch()
    expected = {0: "success", 3: "failed"}
    for code, runner in runners.items():
        deadline = time.monotonic() + 10
        while (status := await runner.status(refs[code])).state == "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert status.state == expected[code], status
        assert not (volume.path / f"pipelines-{code}" / f"r{code}" / "exit").exists()  # the disk could not say it
    assert "exited with status 3" in (await runners[3].status(refs[3])).detail
    for runner in runners.values():
        await runner.aclose()


def test_sigterm_on_a_full_disk_exits_cleanly_and_the_store_opens_intact_afterwards(volume, start_controller):
    c = start_controller()
    status, answer, _ = c.post(notification(am_alert()))
    run_id = answer["alerts"][0]["run_id"]
    wait_for("the run to train", lambda: c.run(run_id)["run"]["phase"] == "training")
    assert volume.fill() == errno.ENOSPC
    assert c.post(notification(am_alert(model="search", fp="bb22")))[0] == 503
    assert c.service.stop(timeout=15) == 0, c.service.describe()
    volume.free()
    c.service.start()
    assert c.run(run_id)["run"]["phase"] == "training"
    assert [r["id"] for r in get_json(c.url + "/api/v1/runs")["runs"]] == [run_id]  # the 503 kept nothing
    c.release(run_id)
    wait_for("the run to end", lambda: c.run(run_id)["run"]["phase"] == "failed")
    assert len(c.run(run_id)["history"]) == 3

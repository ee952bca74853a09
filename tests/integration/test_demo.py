"""`retrain-controller demo` as a newcomer runs it: real Prometheus, Alertmanager, training processes.

The two --once stories (promotion, and a bad model rolled back) run side by side to halve the wall time; each
must exit 0, end with the JSON line, show precision@k falling before the alert and (promoted) recovering, and
leave no process behind. Ctrl-C on the endless demo stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.infra.procs import alertmanager_binary, prometheus_binary

BIN = Path(sys.executable).parent / "retrain-controller"


def _processes_mentioning(text: str, but: int | None = None) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (os.getpid(), but):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def _start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(BIN), "demo", "--port", "0", "--workdir", str(workdir), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str, Path]]]:
    prometheus_binary(), alertmanager_binary()  # fail (CI) or skip (elsewhere) with an install hint
    dirs = {name: tmp_path_factory.mktemp(name) / "demo" for name in ("good", "bad")}
    procs = {"good": _start(dirs["good"], "--once"), "bad": _start(dirs["bad"], "--once", "--bad-model")}
    out = {}
    try:
        for name, p in procs.items():
            text, _ = p.communicate(timeout=400)
            out[name] = (p.returncode, text, dirs[name])
    finally:
        for p in procs.values():
            _stop(p)
    yield out


def _stop(p: subprocess.Popen[str]) -> None:
    """Ctrl-C first, so the demo stops its children; a kill only if that did not work."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _summary(text: str) -> dict[str, object]:
    return json.loads(text.strip().splitlines()[-1])


def test_once_plays_the_story_and_promotes(stories):
    code, text, workdir = stories["good"]
    assert code == 0, text[-5000:]
    s = _summary(text)
    assert s["outcome"] == "promoted" and s["ok"] is True
    assert set(s) >= {"outcome", "precision_before", "precision_at_alert", "precision_after", "seconds"}
    before, at_alert, after = s["precision_before"], s["precision_at_alert"], s["precision_after"]
    assert before > at_alert * 1.15, s  # it really went stale before the alert
    assert after > at_alert * 1.05, s  # and the retrained model really does better
    assert s["seconds"] < 300
    for chapter in ("precision alert", "pipeline", "canary analysis", "promoted"):
        assert f"ok   {chapter}:" in text
    assert "Prometheus: RecsysPrecisionAtKDrop firing" in text
    assert "offline precision@k on the same held-out day: production model" in text
    assert _processes_mentioning(str(workdir)) == []


def test_once_with_a_bad_model_rolls_back(stories):
    code, text, workdir = stories["bad"]
    assert code == 0, text[-5000:]
    s = _summary(text)
    assert s["outcome"] == "rolled_back" and s["ok"] is True
    assert "ok   rolled_back:" in text and ": fail, canary/stable" in text
    assert _processes_mentioning(str(workdir)) == []
    # The bad model scored worse offline too, and stable was never replaced.
    offline = [line for line in text.splitlines() if "offline precision@k on the same held-out day" in line][-1]
    prod, new = (float(x.split()[-1].rstrip(",")) for x in offline.split("production model")[1].split("new model"))
    assert new < prod


def test_ctrl_c_stops_every_process_and_frees_the_port(tmp_path):
    prometheus_binary(), alertmanager_binary()
    workdir = tmp_path / "demo"
    p = _start(workdir)
    try:
        lines = _read_until(p, "status page http://", 60)
        url = lines[-1].split("status page ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and b"recsys" in resp.read()
        assert len(_processes_mentioning(str(workdir), but=p.pid)) >= 2  # Prometheus and Alertmanager are up
        second = subprocess.run([str(BIN), "demo", "--port", "0", "--workdir", str(workdir), "--once"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert second.returncode == 1 and "another demo is running" in second.stderr  # it empties nothing
        assert json.loads(second.stdout.strip().splitlines()[-1])["ok"] is False
        assert (workdir / "controller.db").exists()
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
    finally:
        _stop(p)
    assert p.returncode == 0, "".join(lines) + rest
    assert "stopped: controller, Prometheus, Alertmanager and the model service" in rest
    assert _processes_mentioning(str(workdir)) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def _read_until(p: subprocess.Popen[str], text: str, timeout_s: float) -> list[str]:
    """Lines of the demo's output up to the first containing `text`; a reader thread, so a silent demo cannot
    block the test past its deadline."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout_s), "".join(lines)
    return lines

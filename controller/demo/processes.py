"""Real Prometheus and Alertmanager for the demo, as child processes that never outlive it.

Each child gets its own session (a Ctrl-C reaches the demo, which stops them in order) and, on Linux, a parent
death signal, so even a demo killed with SIGKILL leaves nothing listening.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

PROMETHEUS = ("PROMETHEUS_BIN", ("prometheus",))
ALERTMANAGER = ("ALERTMANAGER_BIN", ("prometheus-alertmanager", "alertmanager"))  # Debian's name first
INSTALL_HINT = "install the Debian packages `prometheus` and `prometheus-alertmanager` (`make demo` does it)"


class DemoError(Exception):
    pass


def find_binary(spec: tuple[str, Sequence[str]]) -> str:
    env_var, names = spec
    if os.environ.get(env_var):
        path = os.environ[env_var]
        if not os.access(path, os.X_OK):
            raise DemoError(f"{env_var}={path} is not an executable file")
        return path
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if path:
            return path
    raise DemoError(f"{names[0]} not found: {INSTALL_HINT}, or set {env_var}")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, avoid: int = 0) -> list[int]:
    """`n` distinct free ports, none of them `avoid`: every socket stays bound until all are chosen."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] != avoid:
                ports.append(int(s.getsockname()[1]))
        return ports
    finally:
        for s in sockets:
            s.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Looked up once here: between fork and exec (preexec_fn) only the call itself is safe, not a dlopen.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Child":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        return self

    def wait_ready(self, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DemoError(f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise DemoError(f"{self.name} not ready at {url} after {timeout_s:.0f}s:\n{self.tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout_s)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def prometheus(workdir: Path, port: int, config: Path) -> Child:
    argv = [find_binary(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"]  # fmt: skip
    return Child("prometheus", argv, workdir / "prometheus.log")


def alertmanager(workdir: Path, port: int, config: Path) -> Child:
    argv = [find_binary(ALERTMANAGER), f"--config.file={config}", f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"]  # fmt: skip
    return Child("alertmanager", argv, workdir / "alertmanager.log")


def kill_pipelines(state_dir: Path, pid_wait_s: float = 1.0, grace_s: float = 3.0) -> int:
    """Stop training commands the controller started (they run in sessions of their own, as a CI pipeline
    outlives a controller restart); the demo owns them and must leave nothing behind. Finished ones are left
    alone (their process group id may be reused); one just launched gets a moment to write its pid."""
    groups = []
    deadline = time.monotonic() + pid_wait_s
    for run_dir in sorted(state_dir.glob("*/")) if state_dir.exists() else []:
        if (run_dir / "exit").exists() or not (run_dir / "started").exists():
            continue
        pid = _read_pid(run_dir / "pid")
        while pid is None and time.monotonic() < deadline and not (run_dir / "exit").exists():
            time.sleep(0.05)
            pid = _read_pid(run_dir / "pid")
        if pid is not None and _signal_group(pid, signal.SIGTERM):
            groups.append(pid)
    signaled, end = len(groups), time.monotonic() + grace_s
    while groups and time.monotonic() < end:
        time.sleep(0.1)
        groups = [g for g in groups if _group_alive(g)]
    for g in groups:
        _signal_group(g, signal.SIGKILL)
    return signaled


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _group_alive(pgid: int) -> bool:
    """Its leader runs (a zombie leader waits only to be reaped by a controller that is gone), or it is gone and
    others of the group remain."""
    if not _signal_group(pgid, 0):
        return False
    try:
        return Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False

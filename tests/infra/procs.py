"""Real processes for integration tests: free ports, logged subprocesses, HTTP readiness, bounded teardown.

Every process writes stdout and stderr to a log file in its work dir, so a failing test can show what happened.
`Proc.stop()` sends SIGTERM and SIGKILL after a bound; `Proc.kill()` sends SIGKILL; both always reap. Processes
still alive when the interpreter exits are killed by an atexit hook, so an interrupted run leaks nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import pytest

PROMETHEUS_CANDIDATES = ("prometheus",)
ALERTMANAGER_CANDIDATES = ("prometheus-alertmanager", "alertmanager")  # Debian's name first
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager (`make test` installs them)"

T = TypeVar("T")
_live: set["Proc"] = set()


def free_port() -> int:
    """A loopback port nobody listens on right now (the usual small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcError(RuntimeError):
    pass


class Proc:
    """One subprocess with its output in `<workdir>/<name>.log`. Can be started again after it ended."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.env = dict(env) if env is not None else None
        self.log_path = self.workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ---- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> "Proc":
        if self.alive:
            raise ProcError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start #{self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then tears down in order
            )
        _live.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds. Always reaps."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: the crash a controller must survive. Always reaps."""
        return self._end(signal.SIGKILL, 0.0)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        p = self.popen
        if p is None:
            return None
        try:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
                if sig != signal.SIGKILL:
                    try:
                        return p.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        p.kill()
            return p.wait(timeout=10)
        finally:
            _live.discard(self)

    # ---- diagnostics ------------------------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 6000, debug: bool = False) -> str:
        """The end of the log; debug lines (logfmt `level=debug`, JSON `"level": "debug"`) left out unless asked."""
        lines = self.log().splitlines(keepends=True)
        if not debug:
            lines = [ln for ln in lines if "level=debug" not in ln and '"level": "debug"' not in ln]
        text = "".join(lines)
        return text if len(text) <= chars else "...\n" + text[-chars:]

    def describe(self, chars: int = 6000) -> str:
        state = "running" if self.alive else f"exited with {self.returncode}"
        return f"===== {self.name} ({state}), log {self.log_path} =====\n{self.tail(chars)}"

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid})"


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_live):
        p.kill()


def http_status(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> int | None:
    """The status of a GET, or None when nothing answers."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None, interval: float = 0.1) -> None:
    """Poll `url` until it answers 200. Fails at once, with the log, if `proc` exits while we wait."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        last = http_status(url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        if last == 200:
            return
        if proc is not None and proc.popen is not None and not proc.alive:
            raise ProcError(f"{proc.name} exited ({proc.returncode}) before {url} answered\n{proc.describe()}")
        if time.monotonic() >= deadline:
            extra = f"\n{proc.describe()}" if proc is not None else ""
            raise ProcError(f"{url} did not answer 200 within {timeout:.0f}s (last status {last}){extra}")
        time.sleep(interval)


# ---- binaries -----------------------------------------------------------------------------------------------


def find_binary(env_var: str, candidates: Sequence[str]) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in candidates:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def require_binary(env_var: str, candidates: Sequence[str]) -> str:
    """The binary's path, or skip the test: the only reason an integration test may skip.

    With REQUIRE_INTEGRATION=1 (for CI, where `make test` installed them) a missing binary fails instead.
    """
    found = find_binary(env_var, candidates)
    if found is None:
        message = f"{' or '.join(candidates)} not found (set {env_var} or {INSTALL_HINT})"
        if os.environ.get("REQUIRE_INTEGRATION", "") not in ("", "0"):
            pytest.fail(message + "; REQUIRE_INTEGRATION is set", pytrace=False)
        pytest.skip(message)
    return found


def prometheus_binary() -> str:
    return require_binary("PROMETHEUS_BIN", PROMETHEUS_CANDIDATES)


def alertmanager_binary() -> str:
    return require_binary("ALERTMANAGER_BIN", ALERTMANAGER_CANDIDATES)


# ---- the real parts -----------------------------------------------------------------------------------------


class Service:
    """A started process listening on a loopback port."""

    def __init__(self, proc: Proc, port: int, ready_path: str):
        self.proc = proc
        self.port = port
        self.ready_path = ready_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> "Service":
        wait_http(self.url + self.ready_path, timeout, self.proc)
        return self

    def start(self, timeout: float = 30.0) -> "Service":
        self.proc.start()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.proc.kill()  # never leave a half-started process behind
            raise

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)

    def kill(self) -> int | None:
        return self.proc.kill()

    def describe(self, chars: int = 6000) -> str:
        return self.proc.describe(chars)


def start_prometheus(
    workdir: Path,
    config: str,
    files: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Service:
    """Prometheus with `config` (YAML text; rule files given in `files`, relative to workdir).

    Alerts are re-sent every second (`--rules.alert.resend-delay=1s`), or the first one is lost before
    Alertmanager is discovered and re-sent only a minute later. Set evaluation and scrape intervals in `config`.
    """
    binary = prometheus_binary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    (workdir / "prometheus.yml").write_text(config)
    port = port or free_port()
    proc = Proc(
        "prometheus",
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--rules.alert.resend-delay=1s",
            "--log.level=debug",
            *extra_args,
        ],
        workdir,
    )
    return Service(proc, port, "/-/ready").start(timeout)


def start_alertmanager(
    workdir: Path,
    config: str,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Service:
    """Alertmanager with `config` (YAML text), clustering disabled, debug logs (they show each notify attempt)."""
    binary = alertmanager_binary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config)
    port = port or free_port()
    proc = Proc(
        "alertmanager",
        [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
            *extra_args,
        ],
        workdir,
    )
    return Service(proc, port, "/-/ready").start(timeout)


def controller_env(token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any RETRAIN_CONTROLLER_* of the caller's, plus the Alertmanager token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_CONTROLLER_")}
    env["RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN"] = token
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def controller_service(
    workdir: Path,
    config_path: Path,
    port: int,
    token: str,
    env: Mapping[str, str] | None = None,
) -> Service:
    """The controller as a real subprocess (`python -m controller serve`), not yet started.

    `port` must match the config's server.port; it is also passed as --port so the two cannot disagree.
    Ready means /readyz answers 200: the store is open and writable.
    """
    proc = Proc(
        "controller",
        [sys.executable, "-m", "controller", "serve", "--config", str(config_path), "--port", str(port)],
        workdir,
        controller_env(token, env),
    )
    return Service(proc, port, "/readyz")


def start_controller(
    workdir: Path,
    config_path: Path,
    port: int,
    token: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Service:
    return controller_service(workdir, config_path, port, token, env).start(timeout)


def kill_process_groups(pid_files: Sequence[Path]) -> list[int]:
    """SIGKILL the process group led by each pid in `pid_files` (e.g. pipelines the controller left running)."""
    killed = []
    for f in pid_files:
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            if os.getpgid(pid) != pid:
                continue  # not the group leader we started: the pid was reused
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


# ---- talking to them ----------------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for line in exposition.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m["name"] != name:
            continue
        have = dict(_LABEL.findall(m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m["value"])
    return total


class Deadline:
    """One time budget shared by every wait of a test, so the whole scenario is bounded."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()
        self.at = self.started + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def wait_until(
    check: Callable[[], T | None],
    what: str,
    deadline: Deadline,
    diagnostics: Callable[[], str] = lambda: "",
    interval: float = 0.2,
    timeout: float | None = None,
) -> T:
    """Poll `check` until it returns something truthy; on timeout fail the test with what was last seen and logs.

    `timeout` bounds this wait further; the shared `deadline` bounds it always.
    """
    own = time.monotonic() + timeout if timeout is not None else deadline.at
    until = min(own, deadline.at)
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = check()
            error = None
            if result:
                return result
            last = result
        except (OSError, ValueError) as exc:  # not up yet, or answered garbage: keep polling, report if it lasts
            error = exc
        if time.monotonic() >= until:
            seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
            pytest.fail(
                f"timed out after {deadline.elapsed:.1f}s waiting for {what}; {seen}\n{diagnostics()}",
                pytrace=False,
            )
        time.sleep(interval)

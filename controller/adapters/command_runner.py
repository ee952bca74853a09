"""A pipeline runner that runs a local command: the embedded default, for laptops, demos and tests.

Each run gets a directory `<state_dir>/<run_id>/`. Creating its `started` marker is atomic, so a run is
launched at most once, even across restarts. A small shell wrapper writes the command's exit status to a file
when it ends, so the outcome survives a controller restart; a run whose process is gone without leaving
one is reported `lost`. While the process that launched a command lives, it also knows the outcome from the
child itself, so a full disk (no pid or exit file written) neither loses a finished run nor a running one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from controller.ports import PipelineError, PipelineRef, PipelineRequest, PipelineStatus

# Runs the command, then records its status atomically. $1 is the run directory; the rest is the command.
_WRAPPER = 'dir="$1"; shift; echo $$ > "$dir/pid.tmp" && mv "$dir/pid.tmp" "$dir/pid"; "$@" > "$dir/log" 2>&1; ' \
    'rc=$?; echo "$rc" > "$dir/exit.tmp" && mv "$dir/exit.tmp" "$dir/exit"; exit "$rc"'
# A wrapper that has not written its pid yet after this long is not coming.
_START_GRACE_S = 30.0
# Finished children whose return codes are kept in memory (dicts keep insertion order: oldest go first).
_KEPT = 1000


class CommandRunner:
    create_settle_s = 0.0  # a create is a local fork: never in doubt

    def __init__(
        self,
        command: list[str],
        state_dir: Path,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        start_grace_s: float = _START_GRACE_S,
    ):
        self.command = list(command)
        self.state_dir = Path(state_dir)
        self.env = dict(env or {})
        self.workdir = workdir
        self.start_grace_s = start_grace_s
        # run id -> the wrapper we launched: its return code is the command's, whatever the disk let it write.
        self._children: dict[str, asyncio.Task[int]] = {}
        self._pids: dict[str, int] = {}
        self._canceled: set[str] = set()

    def _dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise PipelineError(f"bad run id {run_id!r}", permanent=True)
        return self.state_dir / run_id

    async def find(self, request: PipelineRequest) -> PipelineRef | None:
        d = self._dir(request.run_id)
        return PipelineRef(id=f"cmd-{request.run_id}") if (d / "started").exists() else None

    async def trigger(self, request: PipelineRequest) -> PipelineRef:
        d = self._dir(request.run_id)
        ref = PipelineRef(id=f"cmd-{request.run_id}")
        variables = _variables(request)
        kept = {k: v for k, v in variables.items() if k != "RETRAIN_CALLBACK_TOKEN"}  # no secret on disk
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "started").exists():
                # Before the marker: a full disk must fail the attempt (retried), not leave a launch that never was.
                (d / "request.json").write_text(json.dumps(kept))
            (d / "started").mkdir()
        except FileExistsError:
            return ref  # launched before (we crashed after launching, or lost a race): never twice
        except OSError as exc:
            raise PipelineError(f"cannot prepare {d}: {exc.strerror}") from exc
        # The controller's own secrets (RETRAIN_CONTROLLER_*) never reach a pipeline.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
        env = {**inherited, **self.env, **variables}
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", _WRAPPER, "retrain-pipeline", str(d), *self.command,
                env=env,
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a pipeline outlives a controller restart, like a GitLab pipeline does
            )  # fmt: skip
        except OSError as exc:
            try:
                (d / "exit").write_text("127\n")
            except OSError:
                pass  # the permanent error below fails the run either way
            raise PipelineError(f"cannot start {self.command[0]}: {exc.strerror}", permanent=True) from exc
        # Reap the child so it never lingers as a zombie, and keep its return code.
        self._children[request.run_id] = asyncio.create_task(proc.wait())
        self._pids[request.run_id] = proc.pid
        self._forget_old()
        return ref

    def _forget_old(self) -> None:
        """Keep the outcomes of the newest _KEPT finished children; the disk has the rest in the normal case."""
        done = [run_id for run_id, task in self._children.items() if task.done()]
        for run_id in done[: max(0, len(done) - _KEPT)]:
            del self._children[run_id]
            self._pids.pop(run_id, None)
            self._canceled.discard(run_id)

    async def status(self, ref: PipelineRef) -> PipelineStatus:
        d = self._dir(ref.id.removeprefix("cmd-"))
        exit_file = d / "exit"
        if exit_file.exists():
            return _finished(exit_file.read_text().strip(), d)
        child = self._children.get(d.name)
        if child is not None and not child.cancelled():
            if not child.done():
                return PipelineStatus("running")
            if d.name in self._canceled or (d / "canceled").exists():
                return PipelineStatus("canceled", "the command was stopped")
            return _finished(str(child.result()), d)
        pid = _read_pid(d / "pid")
        if pid is not None and _alive(pid):
            return PipelineStatus("running")
        if (d / "canceled").exists():
            return PipelineStatus("canceled", "the command was stopped")
        started = d / "started"
        if pid is None and started.exists() and _age_s(started) < self.start_grace_s:
            return PipelineStatus("running")
        return PipelineStatus("lost", "the command's process is gone and left no exit status")

    async def cancel(self, ref: PipelineRef) -> None:
        d = self._dir(ref.id.removeprefix("cmd-"))
        self._canceled.add(d.name)
        try:
            (d / "canceled").touch()  # SIGTERM takes the wrapper too, so it cannot record the outcome itself
        except OSError:
            pass  # a full disk: this process still knows; after a restart the run is reported lost
        child = self._children.get(d.name)
        pid = _read_pid(d / "pid")
        if pid is None and child is not None and not child.done():
            pid = self._pids.get(d.name)
        if pid is not None and _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def aclose(self) -> None:
        for task in self._children.values():
            task.cancel()


def _finished(code: str, d: Path) -> PipelineStatus:
    if code == "0":
        return PipelineStatus("success")
    return PipelineStatus("failed", f"command exited with status {code}{_tail(d / 'log')}")


def _variables(request: PipelineRequest) -> dict[str, str]:
    return {
        "RETRAIN_RUN_ID": request.run_id,
        "RETRAIN_MODEL": request.model,
        "RETRAIN_REASONS": ",".join(request.reasons),
        "RETRAIN_ALERTS": json.dumps(request.alerts, separators=(",", ":")),
        **request.variables,
    }


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        try:  # a zombie has exited; it only waits to be reaped
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return False
    return True


def _age_s(path: Path) -> float:
    return datetime.now(timezone.utc).timestamp() - path.stat().st_mtime


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; last output: {text[-limit:]}" if text else ""

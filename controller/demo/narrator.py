"""What the demo prints: stamped story lines, the status line of the current day, and what each run does."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence, TextIO

from controller.core.runs import Run
from controller.core.state import Look


class Narrator:
    def __init__(self, out: TextIO, t0: float):
        self.out = out
        self.tty = out.isatty()
        self.t0 = t0
        self.run_line = ""  # the active run, shown at the end of the status line
        self._status = ""
        self._phases: dict[str, str] = {}
        self._looks: dict[str, int] = {}
        self._last_look: dict[str, tuple[object, object]] = {}
        self._alerts: dict[str, str] = {}

    def say(self, line: str) -> None:
        stamp = f"t+{time.monotonic() - self.t0:5.1f}s  "
        clear, redraw = ("\r\x1b[K", self._status) if self.tty and self._status else ("", "")
        self.write(clear + stamp + line + "\n" + redraw)

    def status_line(self, line: str, new_day: bool = False) -> None:
        self._status = line
        if self.tty:
            self.write("\r\x1b[K" + line)
        elif new_day:  # not a terminal (a pipe, a CI log): the summary once per simulated day
            self.write(f"t+{time.monotonic() - self.t0:5.1f}s  {line}\n")

    def write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away: keep stopping cleanly regardless
            pass

    def day(self, day: int, k: int, stable: float | None, canary: float | None, share: float, new_day: bool) -> None:
        line = f"day {day:3d}  precision@{k} stable {fmt(stable)}"
        if share:
            line += f"  canary {fmt(canary)} ({share:.0%} of traffic)"
        line += f"  {self.run_line}" if self.run_line else ""
        self.status_line(line, new_day)

    def alerts(self, now: Mapping[str, tuple[str, object]]) -> None:
        """Prometheus' alerts of the model by name, (state, value): a line when one changes state or ends."""
        for name, (state, value) in now.items():
            if self._alerts.get(name) != state:
                self._alerts[name] = state
                self.say(f"Prometheus: {name} {state} (value {fmt(number(value))})")
        for name in [n for n in self._alerts if n not in now]:
            del self._alerts[name]
            self.say(f"Prometheus: {name} no longer active")

    def decision(self, d: Mapping[str, object]) -> None:
        if d["status"] == "resolved":
            self.say(f"controller: {d['alertname']} resolved (recorded, nothing to do)")
            return
        run = f" -> run {d['run_id']}" if d.get("run_id") else ""
        self.say(f"controller: alert {d['alertname']} {d['decision']}{run}")

    def run(self, run: Run, looks: Sequence[Look]) -> None:
        short = run.id[:8]
        self._run_looks(run, short, looks)
        if self._phases.get(run.id) != run.phase.value:
            old = self._phases.get(run.id)
            self._phases[run.id] = run.phase.value
            reasons = f" for {','.join(run.reasons)}" if old is None else ""
            self.say(f"run {short}: {old + ' -> ' if old else ''}{run.phase.value}{reasons}: {run.cause}")
            metrics = dict(run.offline_metrics)
            if run.phase.value == "deploying" and metrics:
                k = next((m for m in metrics if m.startswith("precision_at_") and m.endswith("_new")), None)
                if k:
                    prod = metrics.get(k.replace("_new", "_prod"))
                    self.say(f"run {short}: offline {k.removesuffix('_new').replace('_at_', '@')} on the held-out day:"
                             f" production model {fmt(number(prod))}, new model {fmt(number(metrics[k]))}")  # fmt: skip

    def _run_looks(self, run: Run, short: str, looks: Sequence[Look]) -> None:
        # One line per look only when its step or verdict changes: a look a second would drown the story.
        measurements = [look.to_json() for look in looks]
        for m in measurements[self._looks.get(run.id, 0) :]:
            said = (m["step"], m["verdict"])
            if said != self._last_look.get(run.id):
                self._last_look[run.id] = said
                ratio = f", canary/stable {m['ratio']:.2f}" if isinstance(m.get("ratio"), (int, float)) else ""
                self.say(f"run {short}: canary step {m['step']} ({m['weight']}%): {m['verdict']}{ratio}: {m['reason']}")
        self._looks[run.id] = len(measurements)


def fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

"""`retrain-controller demo`: the whole loop on one machine.

A simulated recommender (controller.demo.simulation) serves traffic and goes stale as its world drifts; real
Prometheus scrapes it and evaluates the rules of `prometheus/` (durations scaled, see timescale.py); real
Alertmanager posts to the controller, which runs the local training script as its pipeline and drives the
service's stable and canary tracks through the same `Rollout` port as Kubernetes. Wall time is compressed: one
simulated day lasts `day_seconds`, and Prometheus' hours last `TIME_FACTOR` as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TextIO

import aiohttp
import yaml
from aiohttp import web

from controller.demo.configs import FLOOR_SHARE, MIN_FOR, MIN_WINDOW, MODEL, TIME_FACTOR, Options, controller_config
from controller.demo.configs import prepare_workdir, prometheus_config
from controller.demo.meter import Meter
from controller.demo.processes import ALERTMANAGER, PROMETHEUS, DemoError, alertmanager, find_binary, free_port
from controller.demo.processes import free_ports, kill_pipelines, port_free, prometheus
from controller.demo.simulation import Simulation
from controller.demo.story import PRECISION_ALERT, Story, check
from controller.demo.timescale import demo_alertmanager, demo_rules
from controller.demo.train import BAD_MODEL_FILE

@dataclass
class Outcome:
    story: Story | None = None
    run_id: str | None = None
    precision_before: float | None = None
    precision_at_alert: float | None = None
    precision_after: float | None = None
    offline: dict[str, float] = field(default_factory=dict)


class Demo:
    def __init__(self, opts: Options, out: TextIO):
        self.opts = opts
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self.meter = Meter()
        self.signal: int | None = None
        self._log_file: TextIO | None = None
        self.result = Outcome()
        self.stop = asyncio.Event()
        self._status = ""
        self._run_line = ""
        self._last_look: dict[str, tuple[object, object]] = {}
        self.day = 0

    # ---- output ----------------------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        stamp = f"t+{time.monotonic() - self.t0:5.1f}s  "
        clear, redraw = ("\r\x1b[K", self._status) if self.tty and self._status else ("", "")
        self._write(clear + stamp + line + "\n" + redraw)

    def status_line(self, line: str, new_day: bool = False) -> None:
        self._status = line
        if self.tty:
            self._write("\r\x1b[K" + line)
        elif new_day:  # not a terminal (a pipe, a CI log): the summary once per simulated day
            self._write(f"t+{time.monotonic() - self.t0:5.1f}s  {line}\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away: keep stopping cleanly regardless
            pass

    def precision(self, track: str, days: float = 1.0) -> float | None:
        now = time.monotonic()
        return self.meter.precision(track, now - days * self.opts.day_seconds, now)

    # ---- the play --------------------------------------------------------------------------------------------

    async def run(self) -> int:
        opts = self.opts
        find_binary(PROMETHEUS), find_binary(ALERTMANAGER)  # before anything is touched
        port = opts.port or free_port()
        if not port_free(port):
            raise DemoError(f"port {port} is in use (is `make run` or another demo running?); pick one with --port")
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(lock_workdir(opts.workdir).close)  # one demo per directory: a second must not empty it
            prepare_workdir(opts.workdir)
            await self._play(stack, port)
        self.say("stopped: controller, Prometheus, Alertmanager and the model service")
        return self._finish()

    async def _play(self, stack: contextlib.AsyncExitStack, port: int) -> None:
        """Start everything, registering how to stop each part as it starts (undone in reverse, each on its own)."""
        opts, work = self.opts, self.opts.workdir.resolve()
        prom_port, am_port = free_ports(2, avoid=port)
        self.say(f"simulating a recommender (seed {opts.seed}): 7 days of history, first model ...")
        sim = Simulation(work / "data", work / "models", seed=opts.seed, requests_per_day=opts.requests_per_day)
        sim.rollout.settle_s = 1.0  # a pod takes a moment to become ready
        await asyncio.to_thread(sim.bootstrap)
        warmup = await asyncio.to_thread(sim.service.serve, opts.requests_per_day)
        self._check_stop()
        before = warmup["stable"].precision
        self.result.precision_before = before
        floor = round(FLOOR_SHARE * before, 3)
        self.say(f"fresh model: online precision@{sim.service.k} {before:.3f}; the demo's alert floor is {floor:.3f}")
        if opts.bad_model:
            (work / "models" / BAD_MODEL_FILE).touch()
            self.say("--bad-model: the next model trained will rank upside down")

        rules = []
        for name in ("recording-rules.yml", "alert-rules.yml"):
            text = demo_rules((opts.rules_dir / name).read_text(), TIME_FACTOR, MIN_WINDOW, floor, MIN_FOR)
            (work / name).write_text(text)
            rules.append(work / name)
        token = secrets.token_urlsafe(24)
        token_file = work / "alertmanager-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        am_yml = demo_alertmanager((opts.rules_dir / "alertmanager.yml").read_text(), TIME_FACTOR, timedelta(seconds=1),
                                   f"http://127.0.0.1:{port}/api/v1/alerts", str(token_file))  # fmt: skip
        (work / "alertmanager.yml").write_text(am_yml)
        metrics = sim.service.serve_metrics(0)
        stack.callback(_safely, metrics.close)
        (work / "prometheus.yml").write_text(prometheus_config(rules, am_port, metrics.port, port))

        children = [prometheus(work, prom_port, work / "prometheus.yml"),
                    alertmanager(work, am_port, work / "alertmanager.yml")]  # fmt: skip
        for child in children:
            child.start()
            stack.push_async_callback(asyncio.to_thread, _safely, child.stop)
        for child, p in zip(children, (prom_port, am_port)):
            await asyncio.to_thread(child.wait_ready, f"http://127.0.0.1:{p}/-/ready")
            self._check_stop()
        stack.callback(_safely, kill_pipelines, work / "pipelines")  # after the controller stopped starting them
        runner = await self._start_controller(sim, port, prom_port, token)
        stack.push_async_callback(runner.cleanup)
        self.say(f"Prometheus http://127.0.0.1:{prom_port}/alerts  Alertmanager http://127.0.0.1:{am_port}/")
        self.say(f"status page http://127.0.0.1:{port}/   logs and data in {work}/")
        self.say("precision@k decays as users' tastes drift; watch for the alert" +
                 ("" if opts.once else "  (Ctrl-C stops everything)"))  # fmt: skip
        tasks = [asyncio.create_task(self._traffic(sim)), asyncio.create_task(self._watch(runner, prom_port))]
        stack.push_async_callback(_cancel, tasks)
        if self.tty:
            stack.callback(self._write, "\r\x1b[K")
        stopper = asyncio.create_task(self.stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], timeout=opts.timeout_s if opts.once else None,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        stopper.cancel()
        for t in done:
            if t is not stopper and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if opts.once and not done:
            self.say(f"timed out after {opts.timeout_s:.0f}s")

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

    async def _start_controller(self, sim: Simulation, port: int, prom_port: int, token: str) -> web.AppRunner:
        from controller.app import create_app
        from controller.bootstrap import build_adapters
        from controller.config import load_settings
        from controller.observability import setup_logging
        from controller.web.server import quiet_protocol_errors, server_options

        work = self.opts.workdir.resolve()
        config = work / "controller.yaml"
        config.write_text(yaml.safe_dump(controller_config(self.opts, port, prom_port), sort_keys=False))
        admin = secrets.token_urlsafe(24)
        (work / "admin-token").write_text(admin)
        (work / "admin-token").chmod(0o600)
        env = {"RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN": token, "RETRAIN_CONTROLLER_ADMIN_TOKEN": admin,
               "RETRAIN_CONTROLLER_CALLBACK_SECRET": secrets.token_urlsafe(32)}  # fmt: skip
        settings = load_settings(config, env)
        log = open(work / "controller.log", "a", buffering=1)  # noqa: SIM115 (closed when the demo ends)
        self._log_file = log
        setup_logging(settings.server.log_level, "json", settings.secrets.values(), stream=log)
        app = create_app(settings, build_adapters(settings, rollouts={MODEL: sim.rollout}))
        quiet_protocol_errors()
        runner = web.AppRunner(app, access_log=None, **server_options(settings.server))  # as `serve` runs it
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except BaseException:
            await runner.cleanup()  # the store and the loop are already running
            raise
        return runner

    async def _traffic(self, sim: Simulation) -> None:
        """Requests at a steady rate; a new simulated day (clicks recorded, the world drifts) every day_seconds."""
        opts, start, served, day = self.opts, time.monotonic(), 0, 0
        while True:
            await asyncio.sleep(0.2)
            elapsed = time.monotonic() - start
            due = int(elapsed / opts.day_seconds * opts.requests_per_day) - served
            if due > 0:
                counts = await asyncio.to_thread(sim.service.serve, due)
                served += due
                self.meter.add(time.monotonic(), counts)
            new_day = elapsed >= (day + 1) * opts.day_seconds
            while elapsed >= (day + 1) * opts.day_seconds:
                await asyncio.to_thread(sim.record_day)
                day += 1
            self.day = day
            self._show(sim, new_day)

    def _show(self, sim: Simulation, new_day: bool) -> None:
        stable, canary = self.precision("stable"), self.precision("canary", 0.5)
        share = sim.service.canary_share
        line = f"day {self.day:3d}  precision@{sim.service.k} stable {_f(stable)}"
        if share:
            line += f"  canary {_f(canary)} ({share:.0%} of traffic)"
        line += f"  {self._run_line}" if self._run_line else ""
        self.status_line(line, new_day)

    async def _watch(self, runner: web.AppRunner, prom_port: int) -> None:
        """Tells what happens (alerts in Prometheus, decisions, phases, verdicts) and ends the --once story."""
        from controller.app import SERVICE

        store = runner.app[SERVICE].views.store
        alerts_seen: dict[str, str] = {}
        decisions_seen: set[int] = set()
        phases: dict[str, str] = {}
        looks: dict[str, int] = {}
        first_run: str | None = None
        ended_at: float | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                await asyncio.sleep(0.5)
                await self._prometheus_alerts(http, prom_port, alerts_seen)
                for d in reversed(await store.list_decisions(50, model=MODEL)):
                    if d["id"] in decisions_seen:
                        continue
                    decisions_seen.add(d["id"])
                    if d["status"] == "resolved":
                        self.say(f"controller: {d['alertname']} resolved (recorded, nothing to do)")
                        continue
                    run = f" -> run {d['run_id']}" if d.get("run_id") else ""
                    self.say(f"controller: alert {d['alertname']} {d['decision']}{run}")
                    if d["alertname"] == PRECISION_ALERT and d["decision"] in ("accepted", "joined"):
                        if self.result.precision_at_alert is None:
                            self.result.precision_at_alert = self.precision("stable")
                runs = sorted(await store.list_runs(20, model=MODEL), key=lambda r: r.created_at)
                for r in runs:
                    first_run = first_run or r.id
                    self._narrate(r, phases, looks)
                active = [r for r in runs if not r.phase.terminal]
                self._run_line = f"run {active[-1].id[:8]} {active[-1].phase.value}" if active else ""
                if not self.opts.once or first_run is None:
                    continue
                run = next(r for r in runs if r.id == first_run)
                if not run.phase.terminal:
                    continue
                if ended_at is None:
                    ended_at = time.monotonic()
                    self.say("measuring stable's precision@k over the next simulated day ...")
                if time.monotonic() - ended_at < self.opts.day_seconds:
                    continue
                self.result.precision_after = self.meter.precision("stable", ended_at)
                history = await store.history(run.id)
                decisions = await store.list_decisions(500, run_id=run.id)
                expect = "rolled_back" if self.opts.bad_model else "promoted"
                self.result.story = check(run, history, decisions, expect)
                self.result.run_id = run.id
                self.result.offline = dict(run.offline_metrics)
                return

    async def _prometheus_alerts(self, http: aiohttp.ClientSession, port: int, seen: dict[str, str]) -> None:
        try:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/alerts") as resp:
                alerts = (await resp.json())["data"]["alerts"]
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            return
        now = {}
        for a in alerts:
            if a["labels"].get("model") == MODEL:
                now[a["labels"]["alertname"]] = (a["state"], a.get("value", ""))
        for name, (state, value) in now.items():
            if seen.get(name) != state:
                seen[name] = state
                self.say(f"Prometheus: {name} {state} (value {_f(_num(value))})")
        for name in [n for n in seen if n not in now]:
            del seen[name]
            self.say(f"Prometheus: {name} no longer active")

    def _narrate(self, run: Any, phases: dict[str, str], looks: dict[str, int]) -> None:
        short = run.id[:8]
        self._narrate_looks(run, short, looks)
        if phases.get(run.id) != run.phase.value:
            old = phases.get(run.id)
            phases[run.id] = run.phase.value
            reasons = f" for {','.join(run.reasons)}" if old is None else ""
            self.say(f"run {short}: {old + ' -> ' if old else ''}{run.phase.value}{reasons}: {run.cause}")
            metrics = dict(run.offline_metrics)
            if run.phase.value == "deploying" and metrics:
                k = next((m for m in metrics if m.startswith("precision_at_") and m.endswith("_new")), None)
                if k:
                    prod = metrics.get(k.replace("_new", "_prod"))
                    self.say(f"run {short}: offline {k.removesuffix('_new').replace('_at_', '@')} on the held-out day:"
                             f" production model {_f(_num(prod))}, new model {_f(_num(metrics[k]))}")  # fmt: skip

    def _narrate_looks(self, run: Any, short: str, looks: dict[str, int]) -> None:
        # One line per look only when its step or verdict changes: a look a second would drown the story.
        measurements = [look.to_json() for look in run.looks]
        for m in measurements[looks.get(run.id, 0):]:
            said = (m["step"], m["verdict"])
            if said != self._last_look.get(run.id):
                self._last_look[run.id] = said
                ratio = f", canary/stable {m['ratio']:.2f}" if isinstance(m.get("ratio"), (int, float)) else ""
                self.say(f"run {short}: canary step {m['step']} ({m['weight']}%): {m['verdict']}{ratio}: {m['reason']}")
        looks[run.id] = len(measurements)

    def _finish(self) -> int:
        r = self.result
        if not self.opts.once:
            return 0
        if self.signal is not None and r.story is None:
            self.say("interrupted before the story ended")
            self._write(json.dumps({"outcome": None, "ok": False, "error": "interrupted"}) + "\n")
            return 128 + self.signal
        story = r.story
        if story is None:
            self.say("the story did not finish")
            ok, outcome = False, None
        else:
            for c in story.chapters:
                self.say(f"{'ok  ' if c.ok else 'MISSING'} {c.name}: {c.detail}")
            ok, outcome = story.ok, story.outcome
        if r.offline:
            k = next((m for m in r.offline if m.startswith("precision_at_") and m.endswith("_new")), "")
            if k:
                self.say(f"offline precision@k on the same held-out day: production model "
                         f"{_f(r.offline.get(k.replace('_new', '_prod')))}, new model {_f(r.offline[k])}")  # fmt: skip
        self.say(f"online precision@k: before {_f(r.precision_before)}, at the alert {_f(r.precision_at_alert)},"
                 f" after {_f(r.precision_after)}")  # fmt: skip
        summary = {
            "outcome": outcome,
            "precision_before": _round(r.precision_before),
            "precision_at_alert": _round(r.precision_at_alert),
            "precision_after": _round(r.precision_after),
            "seconds": round(time.monotonic() - self.t0, 1),
            "run_id": r.run_id,
            "ok": ok,
        }
        self._write(json.dumps(summary) + "\n")
        return 0 if ok else 1


def _f(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class Interrupted(Exception):
    """A signal arrived while the demo was still starting."""


def lock_workdir(workdir: Path) -> TextIO:
    """An exclusive lock beside the working directory, held while the demo runs."""
    workdir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(workdir.parent / f".{workdir.name}.lock", "w")  # noqa: SIM115 (closed when the demo ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DemoError(f"another demo is running in {workdir}; stop it or pick another --workdir") from None
    return lock


def _safely(fn: Callable[..., Any], *args: Any) -> None:
    """One step of stopping: its failure is reported and the next step still runs."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 (stopping goes on regardless)
        print(f"demo: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


def main(opts: Options, out: TextIO = sys.stdout) -> int:
    demo = Demo(opts, out)

    def stop(sig: int) -> None:
        demo.signal = demo.signal or sig
        demo.stop.set()

    async def play() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop, int(sig))
        try:
            return await demo.run()
        finally:
            if demo._log_file is not None:
                demo._log_file.close()

    try:
        return asyncio.run(play())
    except Interrupted:
        return 128 + (demo.signal or signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 (say what broke, and keep the --once contract of a JSON last line)
        message = str(exc) if isinstance(exc, DemoError) else f"{type(exc).__name__}: {exc}"
        print(f"demo: {message}", file=sys.stderr)
        if opts.once:
            out.write(json.dumps({"outcome": None, "ok": False, "error": message}) + "\n")
            out.flush()
        return 1

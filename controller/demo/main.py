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
import secrets
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml
from aiohttp import web

from controller.demo.configs import FLOOR_SHARE, MIN_FOR, MIN_WINDOW, MODEL, TIME_FACTOR, Options, controller_config
from controller.demo.configs import prepare_workdir, prometheus_config
from controller.demo.meter import Meter
from controller.demo.narrator import Narrator, fmt
from controller.demo.processes import ALERTMANAGER, PROMETHEUS, DemoError, alertmanager, find_binary, free_port
from controller.demo.processes import free_ports, kill_pipelines, port_free, prometheus
from controller.demo.simulation import Simulation
from controller.demo.timescale import demo_alertmanager, demo_rules
from controller.demo.train import BAD_MODEL_FILE
from controller.demo.watcher import Outcome, Watcher


class Demo:
    def __init__(self, opts: Options, out: TextIO):
        self.opts = opts
        self.t0 = time.monotonic()
        self.narrator = Narrator(out, self.t0)
        self.meter = Meter()
        self.signal: int | None = None
        self._log_file: TextIO | None = None
        self.result = Outcome()
        self.stop = asyncio.Event()

    def say(self, line: str) -> None:
        self.narrator.say(line)

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
        sim, floor = await self._simulate(work)
        token = self._configure(stack, sim, work, floor, port, prom_port, am_port)
        await self._start_monitoring(stack, work, prom_port, am_port)
        stack.callback(_safely, kill_pipelines, work / "pipelines")  # after the controller stopped starting them
        runner = await self._start_controller(sim, port, prom_port, token)
        stack.push_async_callback(runner.cleanup)
        self.say(f"Prometheus http://127.0.0.1:{prom_port}/alerts  Alertmanager http://127.0.0.1:{am_port}/")
        self.say(f"status page http://127.0.0.1:{port}/   logs and data in {work}/")
        self.say("precision@k decays as users' tastes drift; watch for the alert" +
                 ("" if opts.once else "  (Ctrl-C stops everything)"))  # fmt: skip
        await self._until_done(stack, sim, runner, prom_port)

    async def _simulate(self, work: Path) -> tuple[Simulation, float]:
        """The service with its first model and a day of traffic; returns it and the demo's alert floor."""
        opts = self.opts
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
        return sim, floor

    def _configure(self, stack: contextlib.AsyncExitStack, sim: Simulation, work: Path, floor: float, port: int,
                   prom_port: int, am_port: int) -> str:  # fmt: skip
        """Rules, Alertmanager and Prometheus configs in the working directory; returns Alertmanager's token."""
        opts = self.opts
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
        return token

    async def _start_monitoring(self, stack: contextlib.AsyncExitStack, work: Path, prom_port: int,
                                am_port: int) -> None:  # fmt: skip
        children = [prometheus(work, prom_port, work / "prometheus.yml"),
                    alertmanager(work, am_port, work / "alertmanager.yml")]  # fmt: skip
        for child in children:
            child.start()
            stack.push_async_callback(asyncio.to_thread, _safely, child.stop)
        for child, p in zip(children, (prom_port, am_port)):
            await asyncio.to_thread(child.wait_ready, f"http://127.0.0.1:{p}/-/ready")
            self._check_stop()

    async def _until_done(self, stack: contextlib.AsyncExitStack, sim: Simulation, runner: web.AppRunner,
                          prom_port: int) -> None:  # fmt: skip
        """Traffic and watching until a signal, a failure, the end of the --once story, or its timeout."""
        from controller.app import SERVICE

        opts = self.opts
        watcher = Watcher(opts, runner.app[SERVICE].views.store, self.narrator, self.meter, self.precision, self.result)
        tasks = [asyncio.create_task(self._traffic(sim)), asyncio.create_task(watcher.run(prom_port))]
        stack.push_async_callback(_cancel, tasks)
        if self.narrator.tty:
            stack.callback(self.narrator.write, "\r\x1b[K")
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
            self.narrator.day(day, sim.service.k, self.precision("stable"), self.precision("canary", 0.5),
                              sim.service.canary_share, new_day)

    def _finish(self) -> int:
        r = self.result
        if not self.opts.once:
            return 0
        if self.signal is not None and r.story is None:
            self.say("interrupted before the story ended")
            self.narrator.write(json.dumps({"outcome": None, "ok": False, "error": "interrupted"}) + "\n")
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
                prod = r.offline.get(k.replace("_new", "_prod"))
                self.say(f"offline precision@k on the same held-out day: production model {fmt(prod)},"
                         f" new model {fmt(r.offline[k])}")  # fmt: skip
        self.say(f"online precision@k: before {fmt(r.precision_before)}, at the alert {fmt(r.precision_at_alert)},"
                 f" after {fmt(r.precision_after)}")  # fmt: skip
        summary = {
            "outcome": outcome,
            "precision_before": _round(r.precision_before),
            "precision_at_alert": _round(r.precision_at_alert),
            "precision_after": _round(r.precision_after),
            "seconds": round(time.monotonic() - self.t0, 1),
            "run_id": r.run_id,
            "ok": ok,
        }
        self.narrator.write(json.dumps(summary) + "\n")
        return 0 if ok else 1


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

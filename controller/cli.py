"""retrain-controller serve | demo | check-config | status | runs | run | pause | resume | retrain | abort | promote | retry

The operator commands talk to a running controller over its HTTP API (stdlib only). Exit codes: 0 done,
1 usage or configuration error, 2 refused by the controller (4xx: auth, not found, conflict), 3 controller
unreachable or failing (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NoReturn, Sequence

from controller.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    # Flags win over the file and the environment.
    if getattr(args, "host", None):
        env["RETRAIN_CONTROLLER__SERVER__HOST"] = args.host
    if getattr(args, "port", None) is not None:
        env["RETRAIN_CONTROLLER__SERVER__PORT"] = str(args.port)
    if getattr(args, "dry_run", False):
        env["RETRAIN_CONTROLLER__POLICY__DRY_RUN"] = "true"
    return load_settings(args.config, env)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{args.config or 'config'}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    models = ", ".join(m.name for m in settings.models)
    mode = " (dry run)" if settings.policy.dry_run else ""
    print(f"config OK{mode}: {len(settings.models)} model(s): {models}; store {settings.store.path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from controller.app import create_app
    from controller.observability import get_logger, setup_logging
    from controller.web.server import quiet_protocol_errors, server_options

    try:
        settings = _settings(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config: {p}", file=sys.stderr)
        return 1
    setup_logging(settings.server.log_level, settings.server.log_format, settings.secrets.values())
    quiet_protocol_errors()
    log = get_logger()
    app = create_app(settings)
    host, port = settings.server.host, settings.server.port

    def started(_banner: str) -> None:  # run_app calls this once the socket is bound and the store is open
        log.info("listening", host=host, port=port, models=[m.name for m in settings.models],
                 dry_run=settings.policy.dry_run)  # fmt: skip

    # SIGTERM: stop listening, let in-flight requests finish for up to shutdown_grace, then stop the loop and close
    # the store. Kubernetes' terminationGracePeriodSeconds (k8s/deployment.yaml) must be longer.
    web.run_app(app, host=host, port=port, print=started, access_log=None, handle_signals=True,
                shutdown_timeout=settings.server.shutdown_grace.total_seconds(),
                **server_options(settings.server))  # fmt: skip
    log.info("stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from controller.demo.main import Options, main as demo_main

    return demo_main(Options(workdir=Path(args.workdir), port=args.port, once=args.once, bad_model=args.bad_model,
                             seed=args.seed, day_seconds=args.day_seconds, timeout_s=args.timeout))  # fmt: skip


# ---- operator commands over the HTTP API ----------------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, code: int, message: str, body: Any = None):
        super().__init__(message)
        self.code = code
        self.body = body


class Parser(argparse.ArgumentParser):
    """Usage errors exit 1, like configuration errors (2 and 3 mean the controller answered or did not)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if os.environ.get("RETRAIN_CONTROLLER_ADMIN_TOKEN"):
        return os.environ["RETRAIN_CONTROLLER_ADMIN_TOKEN"].strip()
    path = os.environ.get("RETRAIN_CONTROLLER_ADMIN_TOKEN_FILE")
    if path:
        try:
            return open(path, encoding="utf-8").read().strip()
        except OSError as exc:
            raise CliError(EXIT_USAGE, f"RETRAIN_CONTROLLER_ADMIN_TOKEN_FILE: {exc}") from exc
    raise CliError(EXIT_USAGE, "no admin token: pass --token or set RETRAIN_CONTROLLER_ADMIN_TOKEN(_FILE)")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          token: str | None = None) -> Any:  # fmt: skip
    base = (args.url or os.environ.get("RETRAIN_CONTROLLER_URL") or DEFAULT_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CliError(EXIT_USAGE, f"--url must start with http:// or https://, got {base!r}")
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310 (http(s) only)
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"error": exc.reason, "detail": raw.decode("utf-8", "replace")[:500]}
        message = f"{parsed.get('error', exc.reason)}: {parsed.get('detail')}" if isinstance(parsed, dict) \
            else str(parsed)  # fmt: skip
        code = EXIT_REFUSED if 400 <= exc.code < 500 else EXIT_UNREACHABLE
        raise CliError(code, f"HTTP {exc.code} {message}", parsed) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(EXIT_UNREACHABLE, f"controller unreachable at {base}: {reason}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CliError(EXIT_UNREACHABLE, f"controller at {base} did not answer JSON") from exc


def _table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _short(value: Any, width: int = 60) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_status(data: dict[str, Any]) -> str:
    rows = []
    for m in data["models"]:
        live = m.get("live_run") or {}
        limited = m.get("rate_limited")
        paused = m.get("paused")
        last = m.get("last_outcome") or {}
        rows.append([
            m["name"],
            f"yes (by {paused['by']})" if paused else "no",
            live.get("id", "-"), live.get("phase", "-"),
            f"{limited['by']} until {limited['until']}" if limited else "-",
            f"{m.get('runs_in_window', 0)}/{m.get('daily_budget', '?')}",
            last.get("phase", "-"),
            _short(m.get("stable_image") or "-", 50),
        ])  # fmt: skip
    header = ["MODEL", "PAUSED", "LIVE RUN", "PHASE", "RATE LIMIT", "BUDGET", "LAST", "STABLE IMAGE"]
    return _table(rows, header) + f"\nconcurrency cap: {data.get('max_concurrent_runs')}"


def _show_runs(data: dict[str, Any]) -> str:
    rows = [[r["id"], r["model"], r["phase"], r["trigger"], r["created_at"], _short(r["cause"])] for r in data["runs"]]
    return _table(rows, ["RUN", "MODEL", "PHASE", "TRIGGER", "CREATED", "CAUSE"]) if rows else "no runs"


def _show_run(data: dict[str, Any]) -> str:
    r = data["run"]
    lines = [
        f"run {r['id']}  model {r['model']}  phase {r['phase']}  trigger {r['trigger']}",
        f"reasons: {', '.join(r['reasons']) or '-'}",
        f"image: {r['image'] or '-'}",
        f"pipeline: {r['pipeline']['url'] or r['pipeline']['id'] or '-'}",
        "history:",
    ]
    for h in data["history"]:
        lines.append(f"  {h['at']}  {h['from'] or '-':>12} -> {h['to']:<12}  {h['cause']}")
    audit = data.get("audit") or []
    if audit:
        lines.append("operator actions:")
        for a in audit:
            lines.append(f"  {a['at']}  {a['action']:<8} by {a['by']}  {a.get('reason') or ''}".rstrip())
    return "\n".join(lines)


def _show_action(data: dict[str, Any]) -> str:
    if "run_id" not in data:  # a model paused or resumed
        state = f"paused by {data['by']} since {data['since']}" if data.get("paused") else "not paused"
        return f"model {data.get('model')}: {'' if data.get('changed') else 'unchanged: '}{state}"
    changed = "" if data.get("changed", True) else "unchanged: "
    return f"run {data['run_id']}: {changed}{data.get('detail') or data.get('action')} (phase {data.get('phase')})"


def _by(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"by": args.by or os.environ.get("USER") or "cli"}
    if getattr(args, "reason", None):
        body["reason"] = args.reason
    return body


def cmd_remote(args: argparse.Namespace) -> int:
    try:
        if args.command == "status":
            data, text = _call(args, "GET", "/api/v1/models"), _show_status
        elif args.command == "runs":
            query = {"limit": str(args.limit)}
            query.update({k: v for k, v in (("model", args.model), ("phase", args.phase)) if v})
            data, text = _call(args, "GET", "/api/v1/runs?" + urllib.parse.urlencode(query)), _show_runs
        elif args.command == "run":
            data, text = _call(args, "GET", f"/api/v1/runs/{urllib.parse.quote(args.target, safe='')}"), _show_run
        else:
            kind = "models" if args.command in ("pause", "resume", "retrain") else "runs"
            path = f"/api/v1/{kind}/{urllib.parse.quote(args.target, safe='')}/{args.command}"
            data, text = _call(args, "POST", path, _by(args), token=_token(args)), _show_action
    except CliError as exc:
        if args.json and exc.body is not None:
            print(json.dumps(exc.body, indent=2))
        print(f"retrain-controller {args.command}: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(data, indent=2) if args.json else text(data))
    return EXIT_OK


def _remote(sub: Any, name: str, help: str, target: str | None = None, reason: bool = False) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    if target:
        p.add_argument("target", metavar=target)
    p.add_argument("--url", help=f"controller base URL (or RETRAIN_CONTROLLER_URL; default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the controller's JSON answer")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
    if name not in ("status", "runs", "run"):
        p.add_argument("--token", help="admin token (or RETRAIN_CONTROLLER_ADMIN_TOKEN / ..._FILE)")
        p.add_argument("--by", help="who acts, for the audit trail (default: $USER)")
        p.add_argument("--reason", required=reason, help="why, for the audit trail")
    p.set_defaults(func=cmd_remote)
    return p


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="retrain-controller", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _remote(sub, "status", "models: live run, pause, rate limits, stable image")
    runs = _remote(sub, "runs", "recent runs, newest first")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--model")
    runs.add_argument("--phase")
    _remote(sub, "run", "one run: reasons, image, pipeline, history, operator actions", "RUN")
    _remote(sub, "pause", "pause a model: its alerts are recorded and start nothing", "MODEL")
    _remote(sub, "resume", "resume a paused model", "MODEL")
    _remote(sub, "retrain", "start a manual run (queued if the concurrency cap is full)", "MODEL", reason=True)
    _remote(sub, "abort", "abort a run: cancel its pipeline or roll its canary back", "RUN")
    _remote(sub, "promote", "promote an analyzing run's canary now", "RUN")
    _remote(sub, "retry", "start a new run with the reasons of a failed, rolled back or canceled run", "RUN")

    serve = sub.add_parser("serve", help="run the controller")
    serve.add_argument("--config", help="YAML config (or RETRAIN_CONTROLLER_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--dry-run", action="store_true", help="decide and record everything, start no pipeline")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the whole loop on one machine: a recommender goes stale, is retrained, canaried"
                                       " and promoted (needs prometheus and prometheus-alertmanager)")
    demo.add_argument("--once", action="store_true", help="play the story once, check it, exit 0 only if it happened")
    demo.add_argument("--bad-model", action="store_true", help="the first retrained model is bad: a rollback")
    demo.add_argument("--port", type=int, default=8080, help="the controller's port (0: any free one)")
    demo.add_argument("--workdir", default="var/demo", help="data, models, configs and logs (emptied at start)")
    demo.add_argument("--seed", type=int, default=5)
    demo.add_argument("--day-seconds", type=float, default=14.0, help="wall seconds per simulated day")
    demo.add_argument("--timeout", type=float, default=300.0, help="--once gives up after this many seconds")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check-config", help="validate a config and the secrets it needs; exit 1 on problems")
    check.add_argument("--config", help="YAML config (or RETRAIN_CONTROLLER_CONFIG)")
    check.set_defaults(func=cmd_check_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))

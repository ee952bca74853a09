"""retrain-controller serve | check-config"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

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

    try:
        settings = _settings(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config: {p}", file=sys.stderr)
        return 1
    setup_logging(settings.server.log_level, settings.server.log_format, settings.secrets.values())
    log = get_logger()
    app = create_app(settings)
    host, port = settings.server.host, settings.server.port

    def started(_banner: str) -> None:  # run_app calls this once the socket is bound and the store is open
        log.info("listening", host=host, port=port, models=[m.name for m in settings.models],
                 dry_run=settings.policy.dry_run)  # fmt: skip

    web.run_app(app, host=host, port=port, print=started, access_log=None, handle_signals=True)
    log.info("stopped")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrain-controller", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the controller")
    serve.add_argument("--config", help="YAML config (or RETRAIN_CONTROLLER_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--dry-run", action="store_true", help="decide and record everything, start no pipeline")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and the secrets it needs; exit 1 on problems")
    check.add_argument("--config", help="YAML config (or RETRAIN_CONTROLLER_CONFIG)")
    check.set_defaults(func=cmd_check_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))

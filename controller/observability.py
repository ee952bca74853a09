"""Logs (structlog: JSON in production, console on a tty) and the controller's own Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, MutableMapping

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double the exposition and no dashboard uses them.
disable_created_metrics()

from controller.core.runs import Phase

REDACTED = "[redacted]"


class Redactor:
    """Last line of defence: replace any configured secret that reaches a log event."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = [s for s in secrets if len(s) >= 4]

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event
        for key, value in list(event.items()):
            text = value if isinstance(value, str) else None
            if text is None and isinstance(value, (dict, list, tuple)):
                text = repr(value)
            if text is not None and any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, REDACTED)
                event[key] = text
        return event


def setup_logging(level: str = "info", fmt: str = "auto", secrets: Iterable[str] = (), stream: Any = None) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log stays quiet; request metrics and our own lines carry what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Throttle:
    """At most one log line per key per interval, so a flood of bad requests cannot flood the log."""

    def __init__(self, interval_s: float = 10.0, clock: Any = None):
        import time

        self.interval_s = interval_s
        self.clock = clock or time.monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise how many lines were suppressed since the last one."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def get_logger(name: str = "retrain_controller") -> Any:
    return structlog.get_logger(name)


class Metrics:
    """Own metrics, all prefixed retrain_controller_, on a registry of their own (tests build many apps)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "retrain_controller_"
        self.notifications = Counter(p + "notifications_total", "Alertmanager notifications by outcome", ["outcome"], registry=r)
        self.alerts = Counter(p + "alerts_total", "Alerts by model and decision", ["model", "decision"], registry=r)
        self.runs = Gauge(p + "runs", "Runs in the store by phase", ["phase"], registry=r)
        self.transitions = Counter(p + "run_transitions_total", "Run phase changes", ["model", "phase"], registry=r)
        self.pipeline_errors = Counter(
            p + "pipeline_errors_total", "Pipeline runner errors", ["model", "kind"], registry=r
        )
        self.store_errors = Counter(p + "store_errors_total", "Store writes that could not be made durable", registry=r)
        self.requests = Histogram(
            p + "http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.ticks = Histogram(p + "tick_duration_seconds", "Duration of one reconcile step", registry=r)
        self.info = Gauge(p + "build_info", "Version and mode", ["version", "dry_run"], registry=r)
        self.canary_weight = Gauge(p + "canary_weight", "Percent of the replica budget on the canary", ["model"], registry=r)
        self.verdicts = Counter(p + "canary_verdicts_total", "Canary verdicts by kind", ["model", "verdict"], registry=r)
        self.analysis_duration = Histogram(
            p + "canary_analysis_duration_seconds", "From canary ready to the analysis' end", ["model", "outcome"],
            buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800), registry=r,
        )  # fmt: skip
        self.promotions = Counter(p + "promotions_total", "Canaries promoted to stable", ["model"], registry=r)
        self.rollbacks = Counter(p + "rollbacks_total", "Canaries rolled back", ["model"], registry=r)
        self.rollout_errors = Counter(
            p + "rollout_errors_total", "Kubernetes calls that failed", ["model", "permanent"], registry=r
        )

    def set_run_counts(self, counts: dict[str, int]) -> None:
        for phase in Phase:
            self.runs.labels(phase=phase.value).set(counts.get(phase.value, 0))

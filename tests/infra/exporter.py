"""A test exporter: /metrics in the Prometheus text format, with counters whose values the test sets.

    exporter = CounterExporter().start()
    exporter.set("recsys_slots_served_total", {"model": "recsys", "track": "canary", "pod": "c-1"}, 120)
    n = exporter.scrapes
    exporter.wait_scrapes(n + 2, timeout=10)   # Prometheus has now stored the value
    exporter.remove("recsys_slots_served_total", {"model": "recsys", "track": "canary", "pod": "c-1"})  # pod gone
    exporter.close()

Values are whatever the test says: a drop is a counter reset, a removed series is a pod that went away (Prometheus
marks it stale at the next scrape), NaN and negative values are served as such. Setting and scraping are
thread-safe; `wait_scrapes` blocks until Prometheus has scraped that many times (bounded).
"""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Mapping

Labels = tuple[tuple[str, str], ...]

HITS = "recsys_slot_hits_total"
SERVED = "recsys_slots_served_total"
HELP = {
    HITS: "Recommendation slots clicked (hits), per model, track and pod.",
    SERVED: "Recommendation slots served (trials), per model, track and pod.",
}


def _labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class CounterExporter:
    """Serves counters (TYPE counter) on 127.0.0.1; `target` is what goes into a scrape config."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self._scraped = threading.Condition(self._lock)
        self._series: dict[str, dict[Labels, float]] = {}
        self._help: dict[str, str] = dict(HELP)
        self._types: dict[str, str] = {}  # name -> exposition TYPE; counter unless set
        self._scrapes = 0
        self.failing = False
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                if exporter.failing:  # a failed scrape: Prometheus marks every series of this target stale
                    self.send_error(503)
                    return
                body = exporter.render(count=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="counter-exporter", daemon=True)
        self._started = False

    # ---- where ---------------------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    # ---- values --------------------------------------------------------------------------------------------

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        with self._lock:
            self._series.setdefault(name, {})[_labels(labels)] = float(value)

    def set_many(self, name: str, values: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """Set several series of one metric at once (one scrape never sees half of them)."""
        with self._lock:
            series = self._series.setdefault(name, {})
            for labels, value in values:
                series[_labels(labels)] = float(value)

    def add(self, name: str, labels: Mapping[str, str], delta: float) -> float:
        """Increase a series (created at 0) by `delta`; returns the new value."""
        with self._lock:
            series = self._series.setdefault(name, {})
            key = _labels(labels)
            series[key] = series.get(key, 0.0) + float(delta)
            return series[key]

    def set_type(self, name: str, kind: str) -> None:
        """Serve `name` with this TYPE (e.g. "gauge") instead of counter."""
        with self._lock:
            self._types[name] = kind

    def remove(self, name: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._series.get(name, {}).pop(_labels(labels), None)

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def value(self, name: str, labels: Mapping[str, str]) -> float | None:
        with self._lock:
            return self._series.get(name, {}).get(_labels(labels))

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        with self._lock:
            return {name: dict(series) for name, series in self._series.items()}

    def render(self, count: bool = False) -> str:
        """The exposition; `count` marks it as a scrape (the scrape handler does)."""
        with self._scraped:
            if count:
                self._scrapes += 1
                self._scraped.notify_all()
            lines: list[str] = []
            for name in sorted(self._series):
                lines.append(f"# HELP {name} {self._help.get(name, name)}")
                lines.append(f"# TYPE {name} {self._types.get(name, 'counter')}")
                for labels, value in sorted(self._series[name].items()):
                    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{inner}}} {format_value(value)}" if inner else f"{name} {format_value(value)}")
            return "\n".join(lines) + "\n"

    # ---- scrapes -------------------------------------------------------------------------------------------

    @property
    def scrapes(self) -> int:
        """Scrapes begun: each is counted when its body is rendered, under the same lock as the values."""
        with self._lock:
            return self._scrapes

    def wait_scrapes(self, count: int, timeout: float) -> int:
        """Block until `count` scrapes have begun in all; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._scraped:
            while self._scrapes < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"exporter {self.target}: {self._scrapes} scrapes after {timeout:g}s, wanted {count}")
                self._scraped.wait(left)
            return self._scrapes

    def settle(self, timeout: float = 10.0) -> int:
        """Wait until Prometheus has stored what is served now: two more scrapes begun from this call.

        The first scrape rendered after this call sees every value set before it; Prometheus appends a scrape's
        samples before it starts that target's next scrape, so once the second has begun the first is stored.
        """
        return self.wait_scrapes(self.scrapes + 2, timeout)

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> "CounterExporter":
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def close(self) -> None:
        if self._started:
            self.server.shutdown()
            self._started = False
            self._thread.join(timeout=5)
        self.server.server_close()

    def __enter__(self) -> "CounterExporter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

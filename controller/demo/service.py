"""The model service of the demo: a stable and a canary track, each serving one model version, answering
simulated requests whose clicks come from the world's ground truth, and exporting the metrics the Prometheus
rules expect (see the header of prometheus/recording-rules.yml) on its own registry.

A request picks a user, goes to the canary with probability `canary_share` (when a canary is set), gets the
track model's top k items, and each slot is clicked with the world's true probability. Latency is simulated.
The feedback stream counts the impressions and clicks of served requests and, through `ingest()`, the
click log of each simulated day; `ingest()` also counts events and keeps a window of the categories of recent clicks, whose
PSI against the stable model's training window is the `recsys_feature_psi{feature="item_category"}` gauge.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

from controller.demo.model import Model, category_share, psi
from controller.demo.world import Interactions, World

MODEL = "recsys"
TRACKS = ("stable", "canary")
_LABELS = ("model", "version", "track", "pod")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class TrackCounts:
    requests: int = 0
    slots: int = 0
    hits: int = 0
    requests_with_hit: int = 0
    errors: int = 0

    @property
    def precision(self) -> float:
        return self.hits / self.slots if self.slots else 0.0


@dataclass
class _Track:
    model: Model | None = None
    latency_s: float = 0.015  # median simulated latency
    error_rate: float = 0.0


class ModelService:
    def __init__(self, world: World, k: int = 10, seed: int = 0, psi_window: int = 5000):
        self.world = world
        self.k = k
        self.rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._tracks = {t: _Track() for t in TRACKS}
        self.canary_share = 0.0
        self.counts = {t: TrackCounts() for t in TRACKS}
        self._recent: deque[int] = deque(maxlen=psi_window)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.m_requests = Counter("recsys_requests", "Recommendation requests answered", _LABELS, registry=r)
        self.m_errors = Counter("recsys_request_errors", "Requests that failed", _LABELS, registry=r)
        self.m_slots = Counter("recsys_slots_served", "Recommended slots served (k per request)", _LABELS,
                               registry=r)  # fmt: skip
        self.m_hits = Counter("recsys_slot_hits", "Recommended slots the user clicked", _LABELS, registry=r)
        self.m_with_hit = Counter("recsys_requests_with_hit", "Requests with at least one clicked slot", _LABELS,
                                  registry=r)  # fmt: skip
        self.m_latency = Histogram("recsys_request_duration_seconds", "Serving latency (simulated)", _LABELS,
                                   buckets=_BUCKETS, registry=r)  # fmt: skip
        self.m_events = Counter("recsys_events_ingested", "Feedback events read from the input stream", ["model"],
                                registry=r)  # fmt: skip
        self.m_psi = Gauge("recsys_feature_psi", "Population stability index of an input feature, live vs training",
                           ["model", "feature"], registry=r)  # fmt: skip
        self.m_events.labels(MODEL)

    # ---- tracks ----------------------------------------------------------------------------------------------

    def model(self, track: str) -> Model | None:
        with self._lock:
            return self._tracks[track].model

    def set_model(self, track: str, model: Model | None) -> None:
        """Put `model` on `track` (None empties it). The series of the version it replaces go away, as a
        replaced pod's do; the new version's counters start from zero."""
        with self._lock:
            old = self._tracks[track].model
            if old is not None and (model is None or old.digest != model.digest):
                self._forget(old.version, track)
            self._tracks[track].model = model
            if model is not None:
                self._touch(model.version, track)
            if track == "stable":
                self._update_psi()

    def set_canary_share(self, share: float) -> None:
        with self._lock:
            self.canary_share = min(max(float(share), 0.0), 1.0)

    def set_behaviour(self, track: str, latency_s: float | None = None, error_rate: float | None = None) -> None:
        """Make a track slower or failing (to show the guardrails)."""
        with self._lock:
            if latency_s is not None:
                self._tracks[track].latency_s = latency_s
            if error_rate is not None:
                self._tracks[track].error_rate = error_rate

    # ---- traffic ---------------------------------------------------------------------------------------------

    def serve(self, n_requests: int, canary_share: float | None = None) -> dict[str, TrackCounts]:
        """Answer `n_requests` simulated requests; returns what each track did in this call."""
        with self._lock:
            share = self.canary_share if canary_share is None else canary_share
            stable, canary = self._tracks["stable"], self._tracks["canary"]
            users = self.rng.integers(0, self.world.n_users, size=n_requests)
            to_canary = self.rng.random(n_requests) < share if canary.model is not None else np.zeros(n_requests, bool)
            done: dict[str, TrackCounts] = {}
            for name, track, mask in (("stable", stable, ~to_canary), ("canary", canary, to_canary)):
                if track.model is None or not mask.any():
                    continue
                done[name] = self._serve_track(name, track, users[mask])
            return done

    def _serve_track(self, name: str, track: _Track, users: np.ndarray) -> TrackCounts:
        assert track.model is not None
        labels = (MODEL, track.model.version, name, f"{MODEL}-{name}")
        n = users.shape[0]
        failed = self.rng.random(n) < track.error_rate
        ok_users = users[~failed]
        recs = track.model.recommend_many(ok_users, self.k)
        probs = self.world.click_probabilities_many(ok_users, recs)
        clicks = self.rng.random(probs.shape) < probs
        hits_per_request = clicks.sum(axis=1)
        latencies = self.rng.lognormal(np.log(track.latency_s), 0.4, size=n)
        c = TrackCounts(
            requests=int(n),  # failed ones included: the error ratio is errors / requests
            slots=int(recs.size),
            hits=int(hits_per_request.sum()),
            requests_with_hit=int((hits_per_request > 0).sum()),
            errors=int(failed.sum()),
        )
        self.m_requests.labels(*labels).inc(c.requests)
        self.m_errors.labels(*labels).inc(c.errors)
        self.m_slots.labels(*labels).inc(c.slots)
        self.m_hits.labels(*labels).inc(c.hits)
        self.m_with_hit.labels(*labels).inc(c.requests_with_hit)
        self.m_events.labels(MODEL).inc(c.slots + c.hits)  # impressions and clicks flow into the stream too
        hist = self.m_latency.labels(*labels)
        for value in latencies:
            hist.observe(float(value))
        total = self.counts[name]
        for f in ("requests", "slots", "hits", "requests_with_hit", "errors"):
            setattr(total, f, getattr(total, f) + getattr(c, f))
        return c

    def ingest(self, events: Interactions) -> None:
        """The feedback stream: count the events, remember the categories of the latest ones, update PSI."""
        with self._lock:
            self.m_events.labels(MODEL).inc(len(events))
            cats = self.world.item_category[events.items]
            self._recent.extend(cats.tolist())
            self._update_psi()

    def feature_psi(self) -> float | None:
        with self._lock:
            model = self._tracks["stable"].model
            if model is None or model.reference.size == 0 or not self._recent:
                return None
            n = max(self.world.n_categories, model.reference.size)
            live = category_share(np.fromiter(self._recent, dtype=np.int64), n)
            return psi(model.reference, live)

    # ---- exposition ------------------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> "MetricsServer":
        """`/metrics` in the Prometheus text format on a background thread; `port=0` picks a free port."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(server, thread)

    # ---- internals -------------------------------------------------------------------------------------------

    def _update_psi(self) -> None:
        value = self.feature_psi()
        if value is None:
            try:
                self.m_psi.remove(MODEL, "item_category")
            except KeyError:
                pass
        else:
            self.m_psi.labels(MODEL, "item_category").set(value)

    def _metrics(self) -> list[Any]:
        return [self.m_requests, self.m_errors, self.m_slots, self.m_hits, self.m_with_hit, self.m_latency]

    def _touch(self, version: str, track: str) -> None:
        for m in self._metrics():
            m.labels(MODEL, version, track, f"{MODEL}-{track}")

    def _forget(self, version: str, track: str) -> None:
        for m in self._metrics():
            try:
                m.remove(MODEL, version, track, f"{MODEL}-{track}")
            except KeyError:
                pass


class MetricsServer:
    def __init__(self, server: Any, thread: threading.Thread):
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

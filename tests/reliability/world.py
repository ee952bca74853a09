"""What surrounds the controller in the chaos rig and must keep going while it is killed: the kubelet, the model's
traffic, and the retraining pipeline itself (its callbacks). Each is a thread with a stop event."""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from tests.fakes.gitlab import FakeGitlab
from tests.infra import kube
from tests.infra.exporter import HITS, SERVED, CounterExporter

TRACKS = {"recsys": "stable", "recsys-canary": "canary"}
CONTAINER = "model"
SLOTS_PER_POD_S = 2000.0
PRECISION = 0.1
CALLBACK_PATIENCE_S = 90.0  # ci/scripts/callback.sh retries for 120 s


def image_for(run_id: str, quality: float) -> str:
    digest = hashlib.sha256(f"{run_id}:{quality}".encode()).hexdigest()
    return f"registry.example/recsys@sha256:{digest}"


class Kubelet:
    """Plays the kubelet and the Deployment controller: a short lag after a spec change, every Deployment of the
    namespace is reported ready at its generation. Keeps each track's image and ready pods for the traffic."""

    def __init__(self, api: Any, namespace: str, lag: float = 0.1):
        self.api, self.namespace, self.lag = api, namespace, lag
        self._view: dict[str, tuple[str | None, int]] = {}
        self._synced = False
        self._lock = threading.Lock()
        self.errors = 0

    def run(self, stop: threading.Event) -> None:
        apps = kube.client.AppsV1Api(self.api)
        while not stop.wait(self.lag):
            try:
                synced = True
                for dep in apps.list_namespaced_deployment(self.namespace).items:
                    if not _synced(dep):
                        synced = False
                        dep = kube.set_deployment_status(self.api, self.namespace, dep.metadata.name)
                    if dep.metadata.name in TRACKS:
                        image = next((c.image for c in dep.spec.template.spec.containers if c.name == CONTAINER), None)
                        with self._lock:
                            self._view[TRACKS[dep.metadata.name]] = (image, int(dep.status.ready_replicas or 0))
                with self._lock:
                    self._synced = synced
            except Exception:  # the API server is shared and real: a hiccup is retried on the next round
                self.errors += 1
                with self._lock:
                    self._synced = False

    def view(self) -> dict[str, tuple[str | None, int]]:
        with self._lock:
            return dict(self._view)

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced


def _synced(dep: Any) -> bool:
    st, want = dep.status, dep.spec.replicas or 0
    if st is None or st.observed_generation != dep.metadata.generation:
        return False
    return (st.replicas or 0) == (st.ready_replicas or 0) == (st.updated_replicas or 0) == want


class Traffic:
    """Slots served and clicked on every ready pod, at a precision set by the quality of the image it runs."""

    def __init__(self, exporter: CounterExporter, kubelet: Kubelet, qualities: dict[str, float], seed: int):
        self.exporter, self.kubelet, self.qualities = exporter, kubelet, qualities
        self.rng = random.Random(seed)
        for track in ("stable", "canary"):
            for name in (HITS, SERVED):
                exporter.set(name, self.labels(track), 0)

    @staticmethod
    def labels(track: str) -> dict[str, str]:
        return {"model": "recsys", "track": track, "pod": f"{track}-0"}

    def run(self, stop: threading.Event, dt: float = 0.1) -> None:
        while not stop.wait(dt):
            for track, (image, ready) in self.kubelet.view().items():
                n = SLOTS_PER_POD_S * ready * dt
                if n <= 0:
                    continue
                p = PRECISION * self.qualities.get(image or "", 1.0)
                hits = min(n, max(0.0, self.rng.gauss(n * p, math.sqrt(n * p * (1 - p)))))
                self.exporter.add(SERVED, self.labels(track), n)
                self.exporter.add(HITS, self.labels(track), round(hits))


class CiStandIn:
    """The retraining pipeline: for every pipeline GitLab recorded, stage and image callbacks to the controller the
    way ci/scripts/callback.sh sends them (retrying while the controller is away), then `success` on GitLab."""

    def __init__(self, gitlab: FakeGitlab, qualities: dict[str, float], seed: int):
        self.gitlab, self.qualities = gitlab, qualities
        self.rng = random.Random(seed)
        self.quality = 1.0  # of the images built from now on
        self.before_image: Callable[[str], None] = lambda run_id: None  # where a crash test hooks in
        self.problems: list[str] = []
        self._seen: set[int] = set()
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            for p in self.gitlab.pipelines():
                if p.id in self._seen:
                    continue
                self._seen.add(p.id)
                with self._lock:
                    self._busy += 1
                threading.Thread(target=self._pipeline, args=(p.id, p.vars), daemon=True).start()

    def _pipeline(self, pipeline_id: int, variables: dict[str, str]) -> None:
        try:
            time.sleep(self.rng.uniform(0.1, 0.4))  # a pipeline takes a moment to be picked up
            run_id = variables["RETRAIN_RUN_ID"]
            url, token = variables["RETRAIN_CALLBACK_URL"], variables["RETRAIN_CALLBACK_TOKEN"]
            self._set_status(pipeline_id, "running")
            for stage in ("fetch-data", "train", "evaluate"):
                self._post(url, token, {"event": "stage", "stage": stage, "status": "success", "detail": ""})
            image = image_for(run_id, self.quality)
            self.qualities[image] = self.quality
            self.before_image(run_id)
            self._post(url, token, {"event": "image", "image": image, "metrics": {"precision_at_k": 0.1}})
            self._set_status(pipeline_id, "success")
        except Exception as exc:  # reported as a problem of the trial, never swallowed
            self.problems.append(f"pipeline {pipeline_id}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._busy -= 1

    def _set_status(self, pipeline_id: int, status: str) -> None:
        if self.gitlab.pipeline(pipeline_id).status not in ("canceled", "canceling"):
            self.gitlab.set_status(pipeline_id, status)

    def _post(self, url: str, token: str, event: dict[str, Any]) -> None:
        """Deliver or give up the way callback.sh does: 2xx, 409 and `run is finished` are final answers."""
        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + CALLBACK_PATIENCE_S
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=5) as resp:
                    resp.read()
                    return
            except urllib.error.HTTPError as exc:
                said = exc.read().decode(errors="replace")[:300]
                if exc.code == 409 or (exc.code == 403 and "run is finished" in said):
                    return
                if exc.code not in (408, 429) and exc.code < 500:
                    self.problems.append(f"callback {event['event']} to {url}: {exc.code} {said}")
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # the controller is down or restarting
            if time.monotonic() >= deadline:
                self.problems.append(f"callback {event['event']} to {url}: not delivered in {CALLBACK_PATIENCE_S:g}s")
                return
            time.sleep(0.2)

#!/usr/bin/env python3
"""A stand-in retraining pipeline for `make run` that speaks the callback protocol like ci/ does.

The controller's `command` runner starts it with RETRAIN_RUN_ID, RETRAIN_MODEL, RETRAIN_REASONS,
RETRAIN_CALLBACK_URL and RETRAIN_CALLBACK_TOKEN in the environment. It reports the stages fetch-data,
train, evaluate and build (each `running`, then `success`), then hands over an image pinned by digest
(derived from the run id, so every run's image differs) with a few offline metrics, and exits 0.
Nothing is trained: it only shows what a real pipeline tells the controller (see ci/scripts/callback.sh).

Python 3 standard library only. RETRAIN_EXAMPLE_STEP_SECONDS (default 1) is the pause inside each stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

STAGES = ("fetch-data", "train", "evaluate", "build")
REGISTRY = "registry.example.local"
ATTEMPTS = 5


def log(line: str) -> None:
    print(f"[example-pipeline] {line}", file=sys.stderr, flush=True)


def post(url: str, token: str, body: dict[str, object]) -> None:
    """POSTs one event. Connection errors, 408, 429 and 5xx are retried; 409 (conflict) and 403 for a finished
    run mean the event no longer matters; any other answer is an error."""
    data = json.dumps(body, separators=(",", ":")).encode()
    what = " ".join(str(body[k]) for k in ("event", "stage", "status", "image") if k in body)
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                log(f"callback {what}: {answer.status}")
                return
        except urllib.error.HTTPError as exc:
            said = exc.read(600).decode(errors="replace")
            if exc.code == 409 or (exc.code == 403 and "finished" in said):
                log(f"callback {what}: {exc.code}, no longer matters ({said})")
                return
            last = f"HTTP {exc.code} {said}"
            if exc.code not in (408, 429) and exc.code < 500:
                raise SystemExit(f"[example-pipeline] callback {what}: {last}") from None
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        log(f"callback {what}: attempt {attempt + 1} failed: {last}")
    raise SystemExit(f"[example-pipeline] callback {what}: gave up after {ATTEMPTS} attempts: {last}")


def main() -> int:
    url = os.environ.get("RETRAIN_CALLBACK_URL", "")
    token = os.environ.get("RETRAIN_CALLBACK_TOKEN", "")
    if not url or not token:
        log(
            "RETRAIN_CALLBACK_URL or RETRAIN_CALLBACK_TOKEN is not set, so this run cannot report its image. "
            "The controller passes them only when it has a callback secret: set RETRAIN_CONTROLLER_CALLBACK_SECRET "
            "or RETRAIN_CONTROLLER_CALLBACK_SECRET_FILE (`make run` makes var/callback-secret for you)."
        )
        return 2
    run_id = os.environ.get("RETRAIN_RUN_ID", "manual")
    model = os.environ.get("RETRAIN_MODEL", "model")
    reasons = os.environ.get("RETRAIN_REASONS", "")
    try:
        step_s = float(os.environ.get("RETRAIN_EXAMPLE_STEP_SECONDS", "1"))
    except ValueError:
        step_s = 1.0

    digest = hashlib.sha256(f"{model}/{run_id}".encode()).hexdigest()
    image = f"{REGISTRY}/{model}@sha256:{digest}"
    # Offline metrics the way ci/scripts/report.sh sends them: the candidate's, and production's as production_*.
    jitter = int(digest[:4], 16) / 0xFFFF  # 0..1, fixed for the run
    metrics = {
        "precision_at_k": round(0.30 + 0.04 * jitter, 4),
        "production_precision_at_k": 0.30,
        "train_rows": 100000.0,
    }
    details = {
        "fetch-data": f"reasons: {reasons or '-'}",
        "train": f"model {model}",
        "evaluate": json.dumps(metrics, separators=(",", ":")),
        "build": image,
    }

    log(f"retraining {model} for run {run_id} ({reasons or 'no reasons given'})")
    for stage in STAGES:
        post(url, token, {"event": "stage", "stage": stage, "status": "running", "detail": ""})
        time.sleep(max(step_s, 0.0))
        post(url, token, {"event": "stage", "stage": stage, "status": "success", "detail": details[stage]})
    post(url, token, {"event": "image", "image": image, "metrics": metrics})
    print(json.dumps({"run_id": run_id, "image": image, "metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's retraining "pipeline": what the CI pipeline does on EKS, done locally in a second or two.

    python -m controller.demo.train --data-dir DIR --models-dir DIR [--window-days 7] [--holdout-days 1]
                                    [--k 10] [--bad-model]

Run by the controller's `command` pipeline runner, it gets RETRAIN_RUN_ID, RETRAIN_MODEL, RETRAIN_REASONS,
RETRAIN_CALLBACK_URL and RETRAIN_CALLBACK_TOKEN from the environment. Stages, each reported `running` then
`success` (or a `failed` event and exit status 1):

    fetch-data   the last `window-days` day files of the data directory (see controller.demo.world.write_day);
                 the last `holdout-days` of them are held out
    train        implicit ALS on the rest
    evaluate     offline precision@k of the new model and of the production model on the same held-out days
    build        the model saved as <models-dir>/<digest>.npz: the "image" demo.local/recsys@sha256:<digest>

and finally an `image` event with the metrics {"precision_at_<k>_new", "precision_at_<k>_prod", ...}.
A bad model (one that ranks upside down) comes out with `--bad-model`, RETRAIN_BAD_MODEL=1, or when
the file <models-dir>/next-bad-model exists (it is consumed, so only the next run is bad).
Without RETRAIN_CALLBACK_URL the events are only printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from controller.demo.model import Model, offline_precision_at_k, train
from controller.demo.rollout import PRODUCTION_FILE, ModelRegistry
from controller.demo.world import Interactions, read_catalog, read_days

BAD_MODEL_FILE = "next-bad-model"
_TRUE = {"1", "true", "yes", "on"}


class CallbackError(Exception):
    pass


class Callbacks:
    """Posts pipeline events to the controller with the run's bearer token. Connection errors, timeouts, 408,
    429 and 5xx are retried with backoff; 409 (conflict) and 403 for a finished run mean the event can no
    longer matter and are not errors; any other answer is."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        attempts: int = 6,
        backoff_s: float = 0.2,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ):
        self.url = url
        self.token = token
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.log = log

    def stage(self, stage: str, status: str, detail: str = "") -> None:
        self.send({"event": "stage", "stage": stage, "status": status, "detail": detail[:1000]})

    def failed(self, stage: str, reason: str) -> None:
        self.send({"event": "failed", "stage": stage, "reason": reason[:2000] or "failed"})

    def image(self, image: str, metrics: Mapping[str, float]) -> None:
        self.send({"event": "image", "image": image, "metrics": dict(metrics)})

    def send(self, body: dict[str, object]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        what = " ".join(str(body.get(k)) for k in ("event", "stage", "status", "image") if body.get(k))
        if not self.url or not self.token:
            self.log(f"callback {what} (no RETRAIN_CALLBACK_URL/TOKEN: not sent)")
            return
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))
            req = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    self.log(f"callback {what}: {resp.status}")
                    return
            except urllib.error.HTTPError as exc:
                said = exc.read(600).decode(errors="replace")
                if exc.code == 409 or (exc.code == 403 and "finished" in said):
                    self.log(f"callback {what}: {exc.code}, no longer matters ({said})")
                    return
                last = f"HTTP {exc.code} {said}"
                if exc.code not in (408, 429) and exc.code < 500:
                    raise CallbackError(f"callback {what}: {last}") from exc
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            self.log(f"callback {what}: attempt {attempt + 1} failed: {last}")
        raise CallbackError(f"callback {what}: gave up after {self.attempts} attempts: {last}")


@dataclass(frozen=True)
class Data:
    fit: Interactions
    heldout: Interactions
    item_category: np.ndarray
    n_users: int


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = parse_args(argv, env)
    run_id = env.get("RETRAIN_RUN_ID", "manual")
    cb = Callbacks(env.get("RETRAIN_CALLBACK_URL"), env.get("RETRAIN_CALLBACK_TOKEN"))
    registry = ModelRegistry(args.models_dir)
    bad_file = registry.directory / BAD_MODEL_FILE
    bad = args.bad_model or bad_file.exists()
    seed = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big")
    stage = "fetch-data"  # the stage a failure is reported against
    try:
        data = fetch_data(args, cb)
        stage = "train"
        model, train_s = train_model(data, cb, bad_file, bad, seed)
        stage = "evaluate"
        metrics = evaluate(model, data, registry, args.k, train_s, cb)
        stage = "build"
        image = build(model, registry, cb)
    except CallbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (any failure of a stage is reported, then the job fails)
        print(f"error in {stage}: {exc}", file=sys.stderr)
        try:
            cb.stage(stage, "failed", str(exc))
            cb.failed(stage, f"{type(exc).__name__}: {exc}")
        except CallbackError as cb_exc:
            print(f"error: {cb_exc}", file=sys.stderr)
        return 1
    return report(cb, run_id, image, metrics)


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m controller.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=env.get("DEMO_DATA_DIR"), help="day files (env DEMO_DATA_DIR)")
    p.add_argument("--models-dir", default=env.get("DEMO_MODELS_DIR"), help="model registry (env DEMO_MODELS_DIR)")
    p.add_argument("--window-days", type=int, default=7)
    p.add_argument("--holdout-days", type=int, default=1)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--bad-model", action="store_true", default=env.get("RETRAIN_BAD_MODEL", "").lower() in _TRUE)
    args = p.parse_args(argv)
    if not args.data_dir or not args.models_dir:
        p.error("--data-dir and --models-dir (or DEMO_DATA_DIR and DEMO_MODELS_DIR) are required")
    if not 0 < args.holdout_days < args.window_days:
        p.error("need 0 < --holdout-days < --window-days")
    return args


def fetch_data(args: argparse.Namespace, cb: Callbacks) -> Data:
    cb.stage("fetch-data", "running")
    days = read_days(args.data_dir, args.window_days)
    if len(days) <= args.holdout_days:
        raise ValueError(f"need more than {args.holdout_days} day files in {args.data_dir}, found {len(days)}")
    item_category, n_users = read_catalog(args.data_dir)
    fit = Interactions.concat(days[: -args.holdout_days])
    heldout = Interactions.concat(days[-args.holdout_days :])
    cb.stage("fetch-data", "success", f"{len(fit)} clicks to train on, {len(heldout)} held out ({len(days)} days)")
    return Data(fit, heldout, item_category, n_users)


def train_model(data: Data, cb: Callbacks, bad_file: Path, bad: bool, seed: int) -> tuple[Model, float]:
    """The model and its training time; a requested bad model consumes the request file."""
    cb.stage("train", "running", "bad model requested" if bad else "")
    started = time.monotonic()
    n_items = len(data.item_category)
    model = train(data.fit, data.n_users, n_items, seed=seed, bad=bad, item_category=data.item_category)
    train_s = time.monotonic() - started
    if bad_file.exists():
        bad_file.unlink(missing_ok=True)
    cb.stage("train", "success", f"model {model.version} in {train_s:.2f}s")
    return model, train_s


def evaluate(model: Model, data: Data, registry: ModelRegistry, k: int, train_s: float,
             cb: Callbacks) -> dict[str, float]:  # fmt: skip
    """Offline precision@k of the new model and of the production one, on the same held-out days."""
    cb.stage("evaluate", "running")
    metrics: dict[str, float] = {
        f"precision_at_{k}_new": round(offline_precision_at_k(model, data.heldout, k), 6),
        "train_clicks": float(len(data.fit)),
        "heldout_clicks": float(len(data.heldout)),
        "train_seconds": round(train_s, 3),
    }
    prod = _production(registry)
    if prod is not None:
        metrics[f"precision_at_{k}_prod"] = round(offline_precision_at_k(prod, data.heldout, k), 6)
    cb.stage("evaluate", "success", json.dumps(metrics, separators=(",", ":")))
    return metrics


def build(model: Model, registry: ModelRegistry, cb: Callbacks) -> str:
    cb.stage("build", "running")
    image = registry.push(model)
    cb.stage("build", "success", image)
    return image


def report(cb: Callbacks, run_id: str, image: str, metrics: dict[str, float]) -> int:
    """The image event to the controller, then the result on stdout."""
    try:
        cb.image(image, metrics)
    except CallbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"run_id": run_id, "image": image, "metrics": metrics}))
    return 0


def _production(registry: ModelRegistry) -> Model | None:
    path = registry.directory / PRODUCTION_FILE
    if not path.exists():
        return None
    digest = path.read_text().strip()
    return registry.get(f"demo.local/recsys@sha256:{digest}")


if __name__ == "__main__":
    sys.exit(main())

"""The `Rollout` port over the demo service's two tracks, so the controller drives the demo exactly as it
drives Kubernetes.

Images are `demo.local/recsys@sha256:<model digest>`; the "registry" is a directory of models saved as
`<digest>.npz` by the training script (`Model.save`), read on first use and kept in memory. The canary's share of
traffic follows the replica ratio, as it does behind one Service: canary / (canary + stable replicas). Promotion
also writes `<models_dir>/production` (the stable digest), which the training script evaluates new models
against.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from controller.demo.model import Model
from controller.demo.service import ModelService
from controller.ports import DeploymentStatus, RolloutError, RolloutStatus

REGISTRY = "demo.local/recsys"
_IMAGE = re.compile(r"^demo\.local/recsys@sha256:([a-f0-9]{64})$")
PRODUCTION_FILE = "production"


def image_for(model: Model) -> str:
    return f"{REGISTRY}@sha256:{model.digest}"


def digest_of(image: str) -> str:
    match = _IMAGE.fullmatch(image)
    if not match:
        raise RolloutError(f"not a demo image: {image!r} (expected {REGISTRY}@sha256:<64 hex>)", permanent=True)
    return match.group(1)


class ModelRegistry:
    """image -> Model, backed by `<directory>/<digest>.npz`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._models: dict[str, Model] = {}

    def push(self, model: Model) -> str:
        model.save(self.directory)
        image = image_for(model)
        self._models[image] = model
        return image

    def get(self, image: str) -> Model:
        if image in self._models:
            return self._models[image]
        path = self.directory / f"{digest_of(image)}.npz"
        if not path.exists():
            raise RolloutError(f"image {image} is not in the demo registry ({self.directory})", permanent=True)
        try:
            model = Model.load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise RolloutError(f"cannot load {path}: {exc}", permanent=True) from exc
        self._models[image] = model
        return model


class LocalRollout:
    def __init__(
        self,
        service: ModelService,
        registry: ModelRegistry,
        stable_replicas: int = 10,
        settle_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.service = service
        self.registry = registry
        self.stable_replicas = stable_replicas
        self.settle_s = settle_s
        self._monotonic = monotonic
        self.canary_image: str | None = None
        self.canary_replicas = 0
        self.stable_image: str | None = None
        self._changed = {"stable": float("-inf"), "canary": float("-inf")}
        stable = service.model("stable")
        if stable is not None:
            self.stable_image = registry.push(stable)
            self._write_production(self.stable_image)

    def start(self, image: str) -> None:
        """Put the first stable model in place (what the initial deployment does)."""
        model = self.registry.get(image)
        self.service.set_model("stable", model)
        self.stable_image = image
        self._write_production(image)

    async def status(self) -> RolloutStatus:
        return RolloutStatus(
            stable=self._deployment("stable", self.stable_image, self.stable_replicas if self.stable_image else 0),
            canary=self._deployment("canary", self.canary_image, self.canary_replicas),
        )

    async def set_canary(self, image: str, replicas: int) -> None:
        if replicas < 0:
            raise RolloutError(f"replicas must be >= 0, got {replicas}", permanent=True)
        if replicas == 0:
            if self.canary_replicas or self.service.model("canary") is not None:
                self._changed["canary"] = self._monotonic()
            self.service.set_model("canary", None)
            self.service.set_canary_share(0.0)
            self.canary_replicas = 0
            self.canary_image = image  # a Deployment scaled to 0 keeps its image
            return
        model = self.registry.get(image)
        if (image, replicas) != (self.canary_image, self.canary_replicas):
            self._changed["canary"] = self._monotonic()
        self.service.set_model("canary", model)
        self.service.set_canary_share(replicas / (replicas + self.stable_replicas))
        self.canary_image = image
        self.canary_replicas = replicas

    async def promote(self, image: str) -> None:
        model = self.registry.get(image)
        if image != self.stable_image:
            self._changed["stable"] = self._monotonic()
        self.service.set_model("stable", model)
        self.stable_image = image
        self._write_production(image)

    def _deployment(self, track: str, image: str | None, replicas: int) -> DeploymentStatus:
        settled = self._monotonic() - self._changed[track] >= self.settle_s
        ready = replicas if settled else 0
        return DeploymentStatus(image=image, replicas=replicas, ready_replicas=ready, updated_replicas=ready,
                                settled=settled)  # fmt: skip

    def _write_production(self, image: str) -> None:
        path = self.registry.directory / PRODUCTION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(digest_of(image) + "\n")
        tmp.replace(path)

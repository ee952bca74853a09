"""What the retraining pipeline tells us about its run, and what that means for the run.

Events are idempotent: a replay changes nothing. The per-run token is HMAC-SHA256(callback secret, run id), so it
is never stored and a token for one run is worthless for another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from controller.core.runs import Phase, Run
from controller.core.state import Stage

# <registry>[:port]/<repository path>@sha256:<64 hex>: pinned by digest, never by a mutable tag.
IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"@sha256:[a-f0-9]{64}$"
)


def callback_token(secret: str, run_id: str) -> str:
    return hmac.new(secret.encode(), run_id.encode(), hashlib.sha256).hexdigest()


def token_matches(secret: str, run_id: str, presented: str) -> bool:
    return hmac.compare_digest(callback_token(secret, run_id).encode(), presented.encode())


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageEvent(_Event):
    event: Literal["stage"]
    stage: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,39}$")
    status: Literal["running", "success", "failed", "canceled", "skipped"]
    detail: str = Field(default="", max_length=1000)


class ImageEvent(_Event):
    event: Literal["image"]
    image: str = Field(max_length=512)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=50)

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not IMAGE_REF.fullmatch(value):
            raise ValueError("must be <registry>/<repository>@sha256:<64 hex digits>")
        return value


class FailedEvent(_Event):
    event: Literal["failed"]
    reason: str = Field(min_length=1, max_length=2000)
    stage: str = Field(default="", max_length=40)


PipelineEvent = Annotated[Union[StageEvent, ImageEvent, FailedEvent], Field(discriminator="event")]
EVENT = TypeAdapter(PipelineEvent)

# Where pipeline news can still change the run. Later phases only record it.
_BEFORE_DEPLOY = (Phase.TRIGGERING, Phase.TRAINING)


@dataclass(frozen=True)
class Effect:
    """What an event does: `move` to a phase, `record` fields only, `noop`, or `conflict` (HTTP 409).

    `apply` gives the run with what the event records (stages, image); the caller applies it to the stored copy."""

    kind: Literal["move", "record", "noop", "conflict"]
    detail: str
    to: Phase | None = None
    stage: Stage | None = None
    image: str | None = None
    offline_metrics: dict[str, float] | None = None

    def apply(self, run: Run) -> Run:
        if self.stage is not None and self.stage not in run.stages:
            run = replace(run, stages=run.stages + (self.stage,))
        if self.image is not None:
            run = replace(run, image=self.image, offline_metrics=dict(self.offline_metrics or {}))
        return run


def effect_of(run: Run, event: StageEvent | ImageEvent | FailedEvent) -> Effect:
    if isinstance(event, StageEvent):
        entry = Stage(event.stage, event.status, event.detail)
        if entry in run.stages:
            return Effect("noop", "stage already recorded")
        return Effect("record", f"stage {event.stage} {event.status}", stage=entry)
    if isinstance(event, ImageEvent):
        if run.image == event.image:
            return Effect("noop", "image already recorded")
        if run.image is not None:
            return Effect("conflict", f"run already has image {run.image}")
        if run.phase not in _BEFORE_DEPLOY:
            return Effect("conflict", f"run is {run.phase}; an image is only taken before deploying")
        detail = f"pipeline reported image {event.image}"
        to = Phase.DEPLOYING if run.phase is Phase.TRAINING else None
        return Effect("move" if to else "record", detail, to, image=event.image, offline_metrics=dict(event.metrics))
    if run.phase not in _BEFORE_DEPLOY:
        return Effect("noop", f"run is {run.phase}; pipeline failure ignored")
    where = f" in {event.stage}" if event.stage else ""
    return Effect("move", f"pipeline reported failure{where}: {event.reason}", Phase.FAILED)

"""Alertmanager webhook payload (version 4), validated strictly where it matters and tolerant elsewhere.

Unknown fields are accepted (newer Alertmanagers add e.g. `notification_reason`); a missing or mistyped field
we rely on is a validation error that names the field.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Alertmanager sends this for a firing alert's endsAt (Go's zero time).
ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (RFC 3339)")
    return value.astimezone(timezone.utc) if value != ZERO_TIME else ZERO_TIME


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime = ZERO_TIME
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=128)

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @property
    def episode(self) -> str:
        """One alert episode: the same firing of the same series, however often it is delivered."""
        return f"{self.fingerprint}@{format_ts(self.startsAt)}"

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


class Notification(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=10_000)


def format_ts(value: datetime) -> str:
    """Fixed-width UTC timestamp, so stored strings sort and compare like the times they stand for."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)

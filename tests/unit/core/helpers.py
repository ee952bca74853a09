"""Builders for alerts and policies used by the table tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.core.alerts import Alert
from controller.core.matchers import parse_matcher
from controller.core.policy import ModelPolicy, PolicyConfig, Route

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def alert(
    name: str = "RecsysPrecisionAtKDrop",
    model: str = "recsys",
    fp: str = "fp1",
    starts: datetime = T0,
    status: str = "firing",
    **labels: str,
) -> Alert:
    return Alert.model_validate(
        {
            "status": status,
            "labels": {"alertname": name, "model": model, **labels},
            "annotations": {"summary": "precision@10 fell"},
            "startsAt": starts.isoformat(),
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else (starts + timedelta(minutes=5)).isoformat(),
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fp,
        }
    )


def model_policy(
    name: str = "recsys", cooldown: timedelta = timedelta(hours=1), budget: int = 3
) -> ModelPolicy:
    return ModelPolicy(
        name=name,
        matchers=(parse_matcher(f'model="{name}"'),),
        routes=(
            Route((parse_matcher('alertname="RecsysPrecisionAtKDrop"'),), "precision_drop"),
            Route((parse_matcher('alertname=~"RecsysFeatureDrift|RecsysEmbeddingDrift"'),), "drift"),
            Route((parse_matcher('alertname="RecsysEventStreamDown"'),), "", notify_only=True),
        ),
        cooldown=cooldown,
        daily_budget=budget,
    )


def policy(max_concurrent: int = 2, **kw: object) -> PolicyConfig:
    return PolicyConfig(
        models=(model_policy(**kw), model_policy("search", **kw)),  # type: ignore[arg-type]
        max_concurrent=max_concurrent,
    )


def ids(prefix: str = "run"):
    n = 0
    while True:
        n += 1
        yield f"{prefix}{n}"

"""Alertmanager v4 webhook bodies as Alertmanager 0.25 sends them."""

from __future__ import annotations

from typing import Any


def am_alert(
    name: str = "RecsysPrecisionAtKDrop",
    model: str = "recsys",
    fp: str = "3c1f0a9e7b2d4c15",
    starts: str = "2026-11-24T10:00:00.123456789Z",
    status: str = "firing",
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "model": model, "severity": "page", "action": "retrain"},
        "annotations": {"summary": f"{name} on {model}", "runbook_url": "https://runbooks.example/recsys"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-24T10:30:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=recsys",
        "fingerprint": fp,
    }


def notification(*alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    alerts = alerts or (am_alert(),)
    body = {
        "version": "4",
        "groupKey": '{}/{action="retrain"}:{model="recsys"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "retrain-controller",
        "groupLabels": {"model": "recsys"},
        "commonLabels": {"model": "recsys"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }
    body.update(extra)
    return body

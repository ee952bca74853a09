"""POST /api/v1/alerts through the real app, with a real SQLite store on disk."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

import pytest

from controller.app import create_app
from controller.observability import setup_logging
from controller.web.common import CTX
from tests.conftest import SECRETS_ENV, TOKEN
from tests.unit.payloads import am_alert, notification

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


async def counts(client) -> dict[str, int]:
    store = client.server.app[CTX].store
    return {t: await store.count(t) for t in ("notifications", "decisions", "runs", "episodes")}


async def post(client, body, headers=None, **kw):
    data = body if isinstance(body, (bytes, str)) or hasattr(body, "__aiter__") else json.dumps(body)
    h = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    return await client.post("/api/v1/alerts", data=data, headers=h, **kw)


async def test_accepts_and_persists(client):
    r = await post(client, notification(am_alert(), am_alert("RecsysFeatureDrift", fp="aa11")))
    assert r.status == 200
    body = await r.json()
    assert body["summary"] == {"accepted": 1, "joined": 1}
    run_id = body["alerts"][0]["run_id"]
    assert body["alerts"][1]["run_id"] == run_id
    assert await counts(client) == {"notifications": 1, "decisions": 2, "runs": 1, "episodes": 2}
    r = await client.get(f"/api/v1/runs/{run_id}")
    detail = await r.json()
    assert detail["run"]["reasons"] == ["precision_drop", "drift"]
    assert [h["to"] for h in detail["history"]][0] == "triggering"
    assert {a["fingerprint"] for a in detail["alerts"]} == {"3c1f0a9e7b2d4c15", "aa11"}


async def test_replay_is_a_duplicate(client):
    body = notification()
    await post(client, body)
    r = await post(client, body)
    assert (await r.json())["summary"] == {"duplicate": 1}
    assert (await counts(client))["runs"] == 1


async def test_unknown_fields_are_tolerated(client):
    a = am_alert()
    a["silencedBy"] = []
    r = await post(client, notification(a, notification_reason="repeat", somethingNew={"x": 1}))
    assert r.status == 200


BAD = [
    ("no token", notification(), {"Authorization": ""}, 401, "unauthorized"),
    ("wrong token", notification(), {"Authorization": "Bearer nope"}, 401, "unauthorized"),
    ("basic auth", notification(), {"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
    ("token as prefix", notification(), {"Authorization": f"Bearer {TOKEN}x"}, 401, "unauthorized"),
    ("text/plain", notification(), {"Content-Type": "text/plain"}, 415, "unsupported media type"),
    ("form", "a=b", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported media type"),
    ("not json", b"{not json", None, 400, "malformed JSON"),
    ("not utf-8", b"\xff\xfe{}", None, 400, "malformed JSON"),
    ("json array", [1, 2], None, 400, "invalid payload"),
    ("missing alerts", {k: v for k, v in notification().items() if k != "alerts"}, None, 400, "alerts"),
    ("labels wrong type", notification({**am_alert(), "labels": ["a"]}), None, 400, "alerts.0.labels"),
    ("bad startsAt", notification({**am_alert(), "startsAt": "yesterday"}), None, 400, "alerts.0.startsAt"),
    ("naive startsAt", notification({**am_alert(), "startsAt": "2026-11-24T10:00:00"}), None, 400, "timezone"),
    ("bad status", notification({**am_alert(), "status": "pending"}), None, 400, "alerts.0.status"),
    ("no fingerprint", notification({k: v for k, v in am_alert().items() if k != "fingerprint"}), None, 400,
     "alerts.0.fingerprint"),
    ("unknown version", notification(version="3"), None, 400, "unsupported version '3'"),
    ("alerts not a list", notification(alerts={"a": 1}), None, 400, "alerts"),
]


@pytest.mark.parametrize("case,body,headers,status,needle", BAD, ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(client, case, body, headers, status, needle):
    r = await post(client, body, headers)
    assert r.status == status
    payload = await r.json()
    assert set(payload) == {"error", "detail"}
    assert needle in json.dumps(payload)
    assert await counts(client) == {"notifications": 0, "decisions": 0, "runs": 0, "episodes": 0}
    if status == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_oversized_body_is_413(client):
    big = notification(am_alert())
    big["commonAnnotations"] = {"blob": "x" * (2 * 1024 * 1024)}
    r = await post(client, big)
    assert r.status == 413
    assert "1048576" in (await r.json())["detail"]
    assert (await counts(client))["notifications"] == 0


async def test_oversized_chunked_body_is_413(client):
    async def chunks():
        yield b'{"version":"4","alerts":[],"x":"'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = await post(client, chunks())
    assert r.status == 413


async def test_store_that_cannot_write_answers_503_and_keeps_nothing(aiohttp_client, tmp_path):
    from controller.config import load_settings
    from tests.conftest import write_config

    env = {**SECRETS_ENV, "RETRAIN_CONTROLLER__STORE__BUSY_TIMEOUT": "100ms"}
    settings = load_settings(write_config(tmp_path), env)
    client = await aiohttp_client(create_app(settings))
    db = sqlite3.connect(settings.store.path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # another writer holds the lock: our write cannot be made durable
    try:
        r = await post(client, notification())
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert "could not record" in (await r.json())["error"]
        r = await client.get("/readyz")
        assert r.status == 503
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert await counts(client) == {"notifications": 0, "decisions": 0, "runs": 0, "episodes": 0}
    r = await post(client, notification())  # Alertmanager's retry
    assert (await r.json())["summary"] == {"accepted": 1}
    assert (await client.get("/readyz")).status == 200


async def test_concurrent_storm_starts_exactly_one_run(client):
    body = notification(am_alert(), am_alert("RecsysFeatureDrift", fp="aa11"))
    replies = await asyncio.gather(*(post(client, body) for _ in range(200)))
    assert {r.status for r in replies} == {200}
    kinds = [a["decision"] for r in replies for a in (await r.json())["alerts"]]
    assert kinds.count("accepted") == 1 and kinds.count("joined") == 1 and kinds.count("duplicate") == 398
    assert (await counts(client))["runs"] == 1


async def test_json_errors_for_unknown_routes_and_methods(client):
    r = await client.get("/nope")
    assert r.status == 404 and (await r.json())["error"] == "not found"
    r = await client.get("/api/v1/alerts/x")
    assert r.status == 404
    r = await client.put("/api/v1/alerts", data="{}")
    assert r.status == 405 and "Allow" in r.headers
    r = await client.get("/api/v1/runs/doesnotexist")
    assert r.status == 404 and (await r.json())["error"] == "unknown run"
    r = await client.get("/api/v1/runs?limit=0")
    assert r.status == 400
    r = await client.get("/api/v1/runs?phase=bogus")
    assert r.status == 400


async def test_health_and_metrics(client):
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await post(client, notification(am_alert(), am_alert(model="nobody", fp="zz")))
    await post(client, notification(), {"Authorization": "Bearer bad"})
    text = await (await client.get("/metrics")).text()
    assert 'retrain_controller_alerts_total{decision="accepted",model="recsys"} 1.0' in text
    assert 'retrain_controller_alerts_total{decision="unmatched",model="none"} 1.0' in text
    assert 'retrain_controller_notifications_total{outcome="unauthorized"} 1.0' in text
    assert 'retrain_controller_http_request_duration_seconds_count{method="POST",route="/api/v1/alerts"' in text


async def test_models_overview(client):
    await post(client, notification())
    models = (await (await client.get("/api/v1/models")).json())["models"]
    recsys = next(m for m in models if m["name"] == "recsys")
    assert recsys["live_run"]["phase"] in ("triggering", "training", "failed") or recsys["live_run"] is None
    assert recsys["runs_in_window"] == 1 and recsys["daily_budget"] == 3


async def test_no_secret_reaches_logs_or_responses(aiohttp_client, settings):
    stream = io.StringIO()
    setup_logging("debug", "json", settings.secrets.values(), stream=stream)
    client = await aiohttp_client(create_app(settings))
    bodies = []
    bodies.append(await (await post(client, notification())).text())
    bodies.append(await (await post(client, notification(), {"Authorization": f"Bearer {TOKEN[:-1]}"})).text())
    bodies.append(await (await post(client, b"{bad", None)).text())
    bodies.append(await (await post(client, notification(am_alert("RecsysFeatureDrift", fp="f2")))).text())
    await asyncio.sleep(0.3)  # let the loop run a step and log it
    for path in ("/api/v1/runs", "/api/v1/alerts", "/api/v1/models", "/metrics", "/readyz", "/"):
        bodies.append(await (await client.get(path)).text())
    logs = stream.getvalue()
    assert "alert_decided" in logs
    for secret in SECRETS_ENV.values():
        assert secret not in logs
        assert all(secret not in b for b in bodies)


async def test_a_flood_of_rejected_requests_logs_a_few_lines(aiohttp_client, settings):
    stream = io.StringIO()
    setup_logging("info", "json", settings.secrets.values(), stream=stream)
    client = await aiohttp_client(create_app(settings))
    for _ in range(300):
        r = await post(client, notification(), {"Authorization": "Bearer guess"})
        assert r.status == 401
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if "notification_rejected" in line]
    assert len(lines) == 1 and lines[0]["outcome"] == "unauthorized" and lines[0]["status"] == 401
    assert (await counts(client))["notifications"] == 0


def test_throttle_reports_what_it_suppressed():
    from controller.observability import Throttle

    t = [0.0]
    throttle = Throttle(10, clock=lambda: t[0])
    assert throttle.allow("x") == 0
    assert throttle.allow("x") is None and throttle.allow("x") is None
    assert throttle.allow("y") == 0
    t[0] = 10.0
    assert throttle.allow("x") == 2

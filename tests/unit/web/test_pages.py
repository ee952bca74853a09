"""The status page and the run page: what they show, that they escape, page, and never show a secret."""

from __future__ import annotations

import re
from dataclasses import replace

from controller.core.judge import Outcome, Verdict
from controller.core.runs import Phase
from controller.core.state import CanaryStage, CanaryState, Look, Stage
from controller.web.pages import chart
from tests.conftest import SECRETS_ENV
from tests.unit.service.test_canary import EQUAL, WORSE, CanaryWorld
from tests.unit.web.test_ops import AUTH, make_env

ALL_SECRETS = {
    **SECRETS_ENV,
    "RETRAIN_CONTROLLER_GITLAB_TOKEN": "glpat-secret-3f9d2c7a1b",
    "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": "hook-secret-8e1b4d0c6f",
}

MEASUREMENTS = [
    {"at": "2026-11-24T10:01:00Z", "step": 1, "weight": 10, "verdict": "inconclusive", "reason": "too few trials",
     "stable": {"hits": 450, "trials": 9000}, "canary": {"hits": 50, "trials": 1000}},
    {"at": "2026-11-24T10:02:00Z", "step": 1, "weight": 10, "verdict": "no_data", "reason": "no counters",
     "stable": {"hits": 0, "trials": 0}, "canary": {"hits": 0, "trials": 0}},
    {"at": "2026-11-24T10:03:00Z", "step": 2, "weight": 50, "verdict": "pass", "reason": "canary holds up",
     "stable": {"hits": 900, "trials": 18000}, "canary": {"hits": 480, "trials": 9500}},
]  # fmt: skip
LOOKS = tuple(Look.from_json(m) for m in MEASUREMENTS)


async def page(env, path, status=200):
    r = await env.client.get(path)
    text = await r.text()
    assert r.status == status, text
    assert r.content_type == "text/html"
    return text


async def test_status_page_shows_models_runs_queue_and_decisions(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    await env.post("/api/v1/models/search/pause", {"by": "alice", "reason": "index rebuild"})
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    await env.put_run("done1", Phase.SUCCEEDED, model="search")
    await env.put_run("failed1", Phase.FAILED, model="search")
    r = await env.post("/api/v1/runs/failed1/retry")  # search has no live run, but the cap (1) is full: queued
    queued = (await r.json())["run_id"]
    html = await page(env, "/")
    assert '<meta http-equiv="refresh" content="15">' in html and "<script" not in html
    assert 'name="viewport"' in html
    assert "paused by alice" in html and "index rebuild" in html and "last action: retry by operator" in html
    assert f'href="/runs/{decision["run_id"]}"' in html and "training" in html
    assert "1 of 1 concurrent run slots in use; 1 run(s) queued." in html and queued in html
    assert "held:" not in html  # search is paused, but an operator asked for this run
    assert "RecsysPrecisionAtKDrop" in html and "started run" in html
    assert "registry.example/ml/recsys@sha256:" in html  # search's stable image, from its succeeded run
    assert html.count("retrain-only: latest image") == 2  # neither test model has a canary: nothing was deployed
    models = (await (await env.client.get("/api/v1/models")).json())["models"]
    assert [m["retrain_only"] for m in models] == [True, True]
    assert " UTC" in html and re.search(r"\d+[smhd] ago|just now", html)


def runs_section(html: str) -> str:
    return html.split("<h2>Runs</h2>")[1].split("<h2>Recent decisions</h2>")[0]


async def test_status_page_pages_through_runs(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    for i in range(30):
        await env.put_run(f"old{i:02d}", Phase.FAILED)
    first = runs_section(await page(env, "/"))
    assert "old29" in first and "old04" not in first and 'href="/?page=2"' in first
    second = runs_section(await page(env, "/?page=2"))
    assert "old04" in second and "old29" not in second and 'href="/?page=1"' in second
    r = await env.client.get("/?page=0")
    assert r.status == 400 and set(await r.json()) == {"error", "detail"}


async def test_run_page_timeline_chart_audit_and_alerts(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    await env.put_run("c1", Phase.ANALYZING, model="search", looks=LOOKS,
                      canary=CanaryState(step=1, stage=CanaryStage.JUDGING, stage_since=LOOKS[0].at),
                      verdict=Verdict(Outcome.PASS, "canary holds up"),
                      previous_image="registry.example/ml/recsys@sha256:" + "aa" * 32)  # fmt: skip
    await env.post("/api/v1/runs/c1/pause", {"by": "bob", "reason": "checking dashboards"})
    html = await page(env, "/runs/c1")
    assert '<meta http-equiv="refresh" content="15">' in html and "<script" not in html
    assert "<svg" in html and html.count('<circle class="mark') == 3
    assert 'class="mark v-pass"' in html and 'class="mark v-no_data"' in html and "<polygon" in html
    assert "look 3, step 2 (50%): pass" in html
    assert "paused" in html and "checking dashboards" in html and "bob" in html
    assert "analyzing" in html and "test" in html  # the timeline's first transition and its cause
    html = await page(env, f"/runs/{decision['run_id']}")
    assert "RecsysPrecisionAtKDrop" in html and "precision_drop" in html and "accepted" in html
    assert 'href="https://gitlab.test/p/' in html  # the pipeline link
    assert "<svg" not in html  # no measurements, no chart


async def test_unknown_run_page_is_404(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    html = await page(env, "/runs/nosuch", status=404)
    assert "There is no run" in html


async def test_pages_escape_what_alerts_and_runs_carry(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    hostile = "<script>alert(1)</script>"
    await env.alert(name=hostile)  # unmatched, but recorded and shown
    await env.put_run("x1", Phase.FAILED, stages=(Stage(hostile, "failed", hostile),),
                      manual_reason=hostile)
    run = await env.store.get_run("x1")
    await env.store.update_run(replace(run, pipeline_url="javascript:alert(1)", pipeline_id="p-9", cause=hostile))
    for path in ("/", "/runs/x1"):
        html = await page(env, path)
        assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "javascript:" not in html


async def test_no_secret_is_ever_rendered(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path, ALL_SECRETS)
    await env.post("/api/v1/models/recsys/pause", {"by": "carol"}, headers=AUTH)
    await env.post("/api/v1/models/recsys/resume", headers=AUTH)
    decision = await env.alert()
    await env.wait_phase(decision["run_id"], "training")
    await env.put_run("c1", Phase.ANALYZING, model="search", looks=LOOKS)
    bodies = [await page(env, "/"), await page(env, f"/runs/{decision['run_id']}"), await page(env, "/runs/c1"),
              await page(env, "/runs/nosuch", status=404)]  # fmt: skip
    for path in ("/api/v1/models", "/api/v1/runs", f"/api/v1/runs/{decision['run_id']}", "/api/v1/alerts",
                 "/api/v1/openapi.json"):  # fmt: skip
        bodies.append(await (await env.client.get(path)).text())
    for body in bodies:
        for secret in ALL_SECRETS.values():
            assert secret not in body


def test_chart_marks_every_look_and_skips_arms_without_trials():
    c = chart(MEASUREMENTS, tolerance=0.05, indifference=0.05)
    assert c is not None and c["looks"] == 3
    assert [m["verdict"] for m in c["marks"]] == ["inconclusive", "no_data", "pass"]
    assert len(c["stable"].split()) == 2 and len(c["canary"].split()) == 2  # the no-data look has no point
    assert len(c["band"].split()) == 4
    assert chart([], 0.05, 0.05) is None
    assert chart([{"junk": 1}], 0.05, 0.05) is None


async def test_chart_from_a_real_canary_analysis(tmp_path):
    for counts, last in ((EQUAL, "pass"), (WORSE, "fail")):
        (tmp_path / last).mkdir()
        world = CanaryWorld(tmp_path / last)
        await world.start()
        try:
            run_id = await world.deploying_run()
            await world.service.reconciler.tick()
            await world.until_end(run_id, *counts)
            c = chart([look.to_json() for look in await world.looks(run_id)], 0.05, 0.05)
            assert c is not None and c["marks"][-1]["verdict"] == last
            assert all(re.fullmatch(r"[\d.]+,[\d.]+", p) for p in c["canary"].split())
        finally:
            await world.stop()


def test_pipeline_stages_show_one_row_each_with_the_latest_status_and_detail():
    from controller.web.pages import stage_rows

    events = [{"stage": "train", "status": "running", "detail": ""}, {"stage": "train", "status": "success",
              "detail": "model v1 in 1.3s"}, {"stage": "build", "status": "running", "detail": "queued"},
              "junk", {"stage": "build", "status": "failed", "detail": ""}]  # fmt: skip
    assert stage_rows(events) == [{"stage": "train", "status": "success", "detail": "model v1 in 1.3s"},
                                  {"stage": "build", "status": "failed", "detail": "queued"}]  # fmt: skip


def test_short_image_keeps_the_repository_and_the_start_of_the_digest():
    from controller.web.pages import short_image

    assert short_image("ecr.example/recsys@sha256:" + "a" * 64) == "ecr.example/recsys@sha256:aaaaaaaaaaaa…"
    assert short_image("recsys:v1") == "recsys:v1"

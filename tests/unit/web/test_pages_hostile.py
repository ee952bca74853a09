"""Hostile alert content on the status page and the run page: labels and annotations are shown as text, and a
link is only ever an http(s) URL or one of the pages' own paths."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from controller.web.pages import safe_url
from tests.conftest import TOKEN
from tests.unit.payloads import am_alert, notification
from tests.unit.web.test_ops import make_env

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)",
    "</td></tr></table><svg onload=alert(1)>",
    "{{ 7*7 }}{% raw %}",
]
BAD_URLS = ["javascript:alert(1)", " JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "\x00javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)", "//evil.example/x", "http://[::1",
            "", None, 42]  # fmt: skip


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def hostile_alert(i: int, text: str) -> dict:
    a = am_alert("RecsysFeatureDrift", fp=f"ee{i:02d}")
    a["labels"].update({"team": text, text[:20] or "x": "v"})
    a["annotations"] = {"summary": text, "description": text, "runbook_url": "javascript:alert(1)",
                        "dashboard_url": "https://grafana.example/d/recsys?x=<b>", "source_url": BAD_URLS[i % 6]}  # fmt: skip
    a["generatorURL"] = "javascript:alert(document.cookie)"
    return a


async def test_labels_and_annotations_are_text_and_only_http_links_are_made(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    alerts = [am_alert(), *(hostile_alert(i, text) for i, text in enumerate(HOSTILE))]
    r = await env.client.post("/api/v1/alerts", json=notification(*alerts, externalURL="javascript:alert(2)"),
                              headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert r.status == 200
    run_id = (await r.json())["alerts"][0]["run_id"]
    for path in ("/", f"/runs/{run_id}"):
        r = await env.client.get(path)
        html = await r.text()
        assert r.status == 200
        found = tags(html)
        assert not [t for t, _ in found if t in ("script", "img", "iframe", "object", "embed")]
        assert [t for t, _ in found if t == "svg"] == []  # no chart on these pages: any svg would be injected
        assert not [(t, a) for t, a in found for name in a if name.startswith("on")]
        hrefs = [a["href"] or "" for t, a in found if "href" in a]
        assert all(h.startswith(("/", "https://", "http://")) and not h.startswith("//") for h in hrefs), hrefs
        assert "javascript:" not in html.lower() and "vbscript:" not in html.lower() and "data:text" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the summary, as text
        assert "{{ 7*7 }}{% raw %}" in html  # data, never template
    assert 'href="https://grafana.example/d/recsys?x=&lt;b&gt;"' in html  # the run page links the http(s) one
    assert 'team="&#39; onmouseover=&#39;alert(1)"' in html  # labels shown, their quotes escaped
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.parametrize("url", BAD_URLS, ids=repr)
def test_safe_url_refuses_anything_but_http_and_https(url):
    assert safe_url(url) is None


@pytest.mark.parametrize("url", ["http://prometheus:9090/graph?g0.expr=up", "HTTPS://am.example/#/alerts"])
def test_safe_url_keeps_http_and_https(url):
    assert safe_url(url) == url



async def test_generator_and_alertmanager_urls_become_links_when_http(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    good = am_alert(fp="aa01")
    good["generatorURL"] = "http://prometheus.example:9090/graph?g0.expr=precision%3C0.02"
    bad = am_alert("RecsysFeatureDrift", fp="aa02")
    bad["generatorURL"] = "javascript:alert(1)"
    r = await env.client.post("/api/v1/alerts", json=notification(good, bad, externalURL="https://am.example/"),
                              headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    run_id = (await r.json())["alerts"][0]["run_id"]
    decisions = (await (await env.client.get(f"/api/v1/runs/{run_id}")).json())["alerts"]
    assert {d["generator_url"] for d in decisions} == {good["generatorURL"], "javascript:alert(1)"}  # kept as sent
    assert {d["external_url"] for d in decisions} == {"https://am.example/"}
    for path in ("/", f"/runs/{run_id}"):
        html = await (await env.client.get(path)).text()
        hrefs = [a["href"] for _, a in tags(html) if "href" in a]
        assert "http://prometheus.example:9090/graph?g0.expr=precision%3C0.02" in hrefs
        assert hrefs.count("https://am.example/") == 2  # both alerts came through that Alertmanager
        assert "javascript:" not in html

"""The OpenAPI document and the router agree: every route is documented, every documented path is routed."""

from __future__ import annotations

import json

from controller.app import create_app
from controller.web.openapi import document
from tests.unit.web.test_ops import make_env


def routed(app) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue  # aiohttp adds HEAD for every GET
        out.add((route.method.lower(), route.resource.canonical))
    return out


def documented(doc) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def test_every_route_is_documented_and_vice_versa(settings):
    app = create_app(settings)
    assert routed(app) == documented(document())


def test_the_document_is_openapi_3_1_with_resolvable_refs():
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "retrain-controller"
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref
    for path, ops in doc["paths"].items():
        params = {p["name"] for op in ops.values() for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
        for op in ops.values():
            assert op["responses"] and op["operationId"]
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_operator_routes_require_the_admin_scheme():
    doc = document()
    for path, ops in doc["paths"].items():
        if path.endswith(("/abort", "/promote", "/retry", "/pause", "/resume", "/retrain")):
            assert ops["post"]["security"] == [{"admin": []}]
            assert {"401", "403", "404", "409"} <= set(ops["post"]["responses"])


async def test_served_at_its_path(aiohttp_client, tmp_path):
    env = await make_env(aiohttp_client, tmp_path)
    r = await env.client.get("/api/v1/openapi.json")
    assert r.status == 200 and (await r.json()) == json.loads(json.dumps(document()))

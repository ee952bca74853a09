"""The demo model service (tracks, simulated traffic, /metrics) and the local rollout over it."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.demo.model import Model, train
from controller.demo.rollout import LocalRollout, ModelRegistry, image_for
from controller.demo.service import ModelService
from controller.demo.world import Interactions, World
from controller.ports import RolloutError


def _models(seed: int = 0) -> tuple[World, Model, Model]:
    w = World(seed=seed)
    parts = []
    for _ in range(5):
        parts.append(w.sample_interactions(3000))
        w.step()
    clicks = Interactions.concat(parts)
    good = train(clicks, w.n_users, w.n_items, item_category=w.item_category)
    bad = train(clicks, w.n_users, w.n_items, item_category=w.item_category, bad=True)
    return w, good, bad


@pytest.fixture(scope="module")
def trained() -> tuple[World, Model, Model]:
    return _models()


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_traffic_splits_and_a_bad_canary_shows(trained):
    w, good, bad = trained
    svc = ModelService(w, seed=1)
    svc.set_model("stable", good)
    svc.set_model("canary", bad)
    svc.set_canary_share(0.25)
    done = svc.serve(4000)
    share = done["canary"].requests / 4000
    assert 0.22 < share < 0.28
    assert done["stable"].slots == 10 * done["stable"].requests
    assert done["stable"].precision > 2 * done["canary"].precision  # measured ~0.26 vs ~0.07
    s = _samples(svc.metrics_text())
    for track, model in (("stable", good), ("canary", bad)):
        labels = {"model": "recsys", "version": model.version, "track": track, "pod": f"recsys-{track}"}
        assert _value(s, "recsys_requests_total", **labels) == done[track].requests
        assert _value(s, "recsys_slots_served_total", **labels) == done[track].slots
        assert _value(s, "recsys_slot_hits_total", **labels) == done[track].hits
        assert _value(s, "recsys_requests_with_hit_total", **labels) == done[track].requests_with_hit
        assert _value(s, "recsys_request_duration_seconds_count", **labels) == done[track].requests
        assert _value(s, "recsys_request_errors_total", **labels) == 0
    fast = _value(s, "recsys_request_duration_seconds_bucket", track="stable", le="0.05")
    assert fast > 0.95 * done["stable"].requests  # simulated latency: ~15 ms median


def test_a_bad_canary_is_worse_online_than_even_a_stale_stable():
    w, stale, _ = _models(seed=3)
    w.step(10)  # stale has drifted out of date
    fresh = []
    for _ in range(5):
        fresh.append(w.sample_interactions(3000))
        w.step()
    bad = train(Interactions.concat(fresh), w.n_users, w.n_items, bad=True)
    svc = ModelService(w, seed=3)
    svc.set_model("stable", stale)
    svc.set_model("canary", bad)
    done = svc.serve(4000, canary_share=0.5)
    assert done["canary"].precision < 0.6 * done["stable"].precision  # measured ~0.035 vs ~0.09


def test_no_canary_means_all_traffic_on_stable(trained):
    w, good, _ = trained
    svc = ModelService(w)
    svc.set_model("stable", good)
    svc.set_canary_share(0.5)
    assert set(svc.serve(200)) == {"stable"}


def test_errors_and_latency_can_be_injected(trained):
    w, good, bad = trained
    svc = ModelService(w, seed=2)
    svc.set_model("stable", good)
    svc.set_model("canary", good)
    svc.set_behaviour("canary", latency_s=0.4, error_rate=0.2)
    done = svc.serve(2000, canary_share=0.5)
    c = done["canary"]
    assert 0.15 < c.errors / c.requests < 0.25 and c.slots == 10 * (c.requests - c.errors) and done["stable"].errors == 0
    s = _samples(svc.metrics_text())
    fast = _value(s, "recsys_request_duration_seconds_bucket", track="canary", le="0.1")
    assert fast < 0.05 * c.requests


def test_replacing_a_version_drops_its_series(trained):
    w, good, bad = trained
    svc = ModelService(w)
    svc.set_model("canary", bad)
    svc.set_model("stable", good)
    svc.serve(100, canary_share=0.5)
    svc.set_model("canary", None)
    text = svc.metrics_text().decode()
    assert bad.version not in text and good.version in text


def test_feature_psi_grows_with_drift_and_events_are_counted(trained):
    w0, good, _ = trained
    w = World(seed=0)  # same seed, own copy: drift it further without touching the shared one
    w.step(5)
    svc = ModelService(w, psi_window=3000)
    assert svc.feature_psi() is None
    svc.set_model("stable", good)
    svc.ingest(w.sample_interactions(3000))
    near = svc.feature_psi()
    w.step(10)
    svc.ingest(w.sample_interactions(3000))
    far = svc.feature_psi()
    assert near is not None and far is not None and near < 0.1 and far > 2 * near
    s = _samples(svc.metrics_text())
    assert _value(s, "recsys_events_ingested_total", model="recsys") == 6000
    served = svc.serve(50)["stable"]
    s = _samples(svc.metrics_text())
    assert _value(s, "recsys_events_ingested_total", model="recsys") == 6000 + served.slots + served.hits
    assert _value(s, "recsys_feature_psi", model="recsys", feature="item_category") == pytest.approx(far)


def test_metrics_over_http_while_serving_from_threads(trained):
    w, good, bad = trained
    svc = ModelService(w)
    svc.set_model("stable", good)
    svc.set_model("canary", bad)
    server = svc.serve_metrics(0)
    try:
        workers = [threading.Thread(target=svc.serve, args=(300, 0.3)) for _ in range(4)]
        for t in workers:
            t.start()
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
                assert resp.status == 200 and b"recsys_slots_served_total" in resp.read()
        for t in workers:
            t.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            s = _samples(resp.read())
    finally:
        server.close()
    assert _value(s, "recsys_requests_total") == 1200
    assert svc.counts["stable"].requests + svc.counts["canary"].requests == 1200


# ---- LocalRollout ------------------------------------------------------------------------------------------


async def test_rollout_canary_then_promote(tmp_path, trained):
    w, good, bad = trained
    registry = ModelRegistry(tmp_path / "models")
    svc = ModelService(w)
    svc.set_model("stable", good)
    rollout = LocalRollout(svc, registry, stable_replicas=10)
    assert (tmp_path / "models" / f"{good.digest}.npz").exists()
    assert (tmp_path / "models" / "production").read_text().strip() == good.digest
    st = await rollout.status()
    assert st.stable.image == image_for(good) and st.stable.settled and st.stable.ready_replicas == 10
    assert st.canary.replicas == 0 and st.canary.image is None

    bad.save(registry.directory)  # what the training script does; the rollout loads it from disk
    image = image_for(bad)
    assert image.startswith("demo.local/recsys@sha256:") and len(image.split(":")[-1]) == 64
    await rollout.set_canary(image, 1)
    await rollout.set_canary(image, 1)  # idempotent
    st = await rollout.status()
    assert st.canary.image == image and st.canary.replicas == st.canary.ready_replicas == 1 and st.canary.settled
    assert svc.model("canary").digest == bad.digest and svc.canary_share == pytest.approx(1 / 11)
    await rollout.set_canary(image, 10)
    assert svc.canary_share == pytest.approx(0.5)

    await rollout.set_canary(image, 0)  # rollback: stable untouched
    st = await rollout.status()
    assert st.canary.replicas == 0 and svc.model("canary") is None and svc.canary_share == 0
    assert st.stable.image == image_for(good) and svc.model("stable").digest == good.digest

    await rollout.set_canary(image, 2)
    await rollout.promote(image)
    await rollout.promote(image)  # idempotent
    assert (await rollout.status()).canary.replicas == 2  # the canary goes only when the controller says so
    await rollout.set_canary(image, 0)
    st = await rollout.status()
    assert st.stable.image == image and st.canary.replicas == 0 and svc.model("canary") is None
    assert svc.model("stable").digest == bad.digest
    assert (tmp_path / "models" / "production").read_text().strip() == bad.digest


async def test_rollout_refuses_unknown_images(tmp_path, trained):
    w, good, _ = trained
    rollout = LocalRollout(ModelService(w), ModelRegistry(tmp_path))
    with pytest.raises(RolloutError, match="not in the demo registry") as err:
        await rollout.set_canary("demo.local/recsys@sha256:" + "a" * 64, 1)
    assert err.value.permanent
    with pytest.raises(RolloutError, match="not a demo image"):
        await rollout.promote("other.example/other@sha256:" + "a" * 64)
    assert rollout.stable_image is None
    rollout.start(ModelRegistry(tmp_path).push(good))
    assert (await rollout.status()).stable.image == image_for(good)


async def test_rollout_settles_after_a_delay(tmp_path, trained):
    w, good, bad = trained
    now = [100.0]
    svc = ModelService(w)
    svc.set_model("stable", good)
    registry = ModelRegistry(tmp_path)
    rollout = LocalRollout(svc, registry, settle_s=5.0, monotonic=lambda: now[0])
    image = registry.push(bad)
    await rollout.set_canary(image, 1)
    st = await rollout.status()
    assert not st.canary.settled and st.canary.ready_replicas == 0 and st.stable.settled
    now[0] += 5.0
    assert (await rollout.status()).canary.settled
    assert np.isclose(svc.canary_share, 1 / 11)

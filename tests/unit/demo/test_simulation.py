"""The whole demo loop without the controller: drift lowers online precision and raises PSI; a retrain run by
the training script, canaried and promoted through the LocalRollout, brings precision back."""

from __future__ import annotations

import json

from controller.demo.rollout import image_for
from controller.demo.simulation import Simulation
from controller.demo.train import main


async def test_drift_then_retrain_canary_and_promote(tmp_path, capsys):
    sim = Simulation(tmp_path / "data", tmp_path / "models", seed=7)
    first = sim.bootstrap(days=7)
    assert (await sim.rollout.status()).stable.image == image_for(first)
    fresh = sim.tick(1, requests=3000)["stable"].precision
    psi_fresh = sim.service.feature_psi()
    drifted = sim.tick(12)
    stale = sim.tick(1, requests=3000)["stable"].precision
    assert stale < 0.6 * fresh, (fresh, stale)
    psi_drifted = sim.service.feature_psi()
    assert psi_drifted > 2 * psi_fresh, (psi_fresh, psi_drifted)
    assert drifted["stable"].requests == 12 * sim.requests_per_day

    argv = ["--data-dir", str(sim.data_dir), "--models-dir", str(sim.registry.directory)]
    assert main(argv, {"RETRAIN_RUN_ID": "sim-1"}) == 0  # no callback URL: events are only logged
    image = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["image"]
    await sim.rollout.set_canary(image, 10)
    both = sim.tick(1, requests=4000)
    assert both["canary"].precision > 1.5 * both["stable"].precision, both
    await sim.rollout.promote(image)
    await sim.rollout.set_canary(image, 0)
    after = sim.tick(1, requests=3000)
    assert set(after) == {"stable"} and after["stable"].precision > 1.5 * stale
    assert sim.service.feature_psi() < 0.5 * psi_drifted  # drift is measured against the new training window

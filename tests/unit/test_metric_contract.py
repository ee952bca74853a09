"""Every recsys_* metric a config queries is one the model service exports (the contract at the top of
prometheus/recording-rules.yml), so a guardrail cannot silently read a series that never exists."""

import re
from pathlib import Path

import pytest

from controller.demo.main import Options, controller_config

ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"(?<![:\w])recsys_[a-z_]+\b")  # not the middle of a recorded name (level:metric:ops)


def _contract() -> set[str]:
    header = (ROOT / "prometheus" / "recording-rules.yml").read_text().split("groups:")[0]
    names = set()
    for name in _NAME.findall(header):
        names.add(name)
        if name == "recsys_request_duration_seconds":
            names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names


@pytest.mark.parametrize("source", ["k8s/configmap.yaml", "prometheus/alert-rules.yml", "prometheus/recording-rules.yml",
                                    "demo"])  # fmt: skip
def test_queried_metrics_are_exported(source):
    text = str(controller_config(Options(), 8080, 9090)) if source == "demo" else (ROOT / source).read_text()
    queried = set(_NAME.findall(text))
    assert queried, source
    assert queried <= _contract(), f"{source} queries {sorted(queried - _contract())}, not in the contract"

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.core.durations import format_duration, parse_duration
from controller.core.matchers import parse_matcher

LABELS = {"alertname": "RecsysFeatureDrift", "model": "recsys", "severity": "page"}


@pytest.mark.parametrize(
    "text,expected",
    [
        ('model="recsys"', True),
        ("model=recsys", True),
        ('model="search"', False),
        ('model!="search"', True),
        ('alertname=~"Recsys.*Drift"', True),
        ('alertname=~"Drift"', False),  # anchored, like Alertmanager
        ('alertname!~"Recsys.*"', False),
        ('team=""', True),  # a missing label is the empty string
        ('team!="x"', True),
        ('team=~".*"', True),
        ('team=~".+"', False),
        (' severity = "page" ', True),
        ('model="rec\\"sys"', False),
    ],
)
def test_matcher(text, expected):
    assert parse_matcher(text).matches(LABELS) is expected


@pytest.mark.parametrize("text", ['model', '="x"', 'model=~"("', 'model=a,b', 'model="unterminated', '1x="y"', ""])
def test_bad_matcher_says_why(text):
    with pytest.raises(ValueError) as err:
        parse_matcher(text)
    assert text.strip() in str(err.value) or "matcher" in str(err.value)


@pytest.mark.parametrize(
    "text,seconds",
    [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5), ("1w", 604800), (90, 90), ("0s", 0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["5x", "", "1h 30m", "-5s", "m", "1.5", True, -1])
def test_bad_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("30s", "15m", "1h30m", "2d", "1d2h3m4s"):
        assert format_duration(parse_duration(text)) == text

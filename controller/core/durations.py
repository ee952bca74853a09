"""Durations written as Prometheus writes them: 90s, 15m, 1h30m, 2d, 500ms."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"bad duration {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"bad duration {text!r}: negative")
        return timedelta(seconds=text)
    s = text.strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"bad duration {text!r} (use e.g. 500ms, 30s, 15m, 1h30m, 2d)")
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    seconds = int(round(delta.total_seconds()))
    if seconds <= 0:
        return f"{int(delta.total_seconds() * 1000)}ms"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)

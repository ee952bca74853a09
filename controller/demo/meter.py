"""Online precision@k per track over a sliding window of wall time, from what the service answered."""

from __future__ import annotations

from collections import deque
from typing import Mapping, Protocol


class Counts(Protocol):
    slots: int
    hits: int


class Meter:
    def __init__(self, horizon_s: float = 600.0):
        self.horizon_s = horizon_s
        self._seen: deque[tuple[float, str, int, int]] = deque()

    def add(self, at: float, served: Mapping[str, Counts]) -> None:
        for track, c in served.items():
            if c.slots:
                self._seen.append((at, track, c.slots, c.hits))
        while self._seen and self._seen[0][0] < at - self.horizon_s:
            self._seen.popleft()

    def precision(self, track: str, since: float, until: float = float("inf")) -> float | None:
        """Hits over slots served by `track` in [since, until); None without traffic."""
        slots = hits = 0
        for at, t, s, h in self._seen:
            if t == track and since <= at < until:
                slots += s
                hits += h
        return hits / slots if slots else None

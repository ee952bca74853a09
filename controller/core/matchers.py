"""Label matchers with Alertmanager's syntax and meaning: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.

Regexes are anchored at both ends, as in Alertmanager and Prometheus. A missing label matches as the empty string,
so `team!="x"` matches an alert without `team` and `team=~".*"` matches too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$')


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher; raise ValueError with a message that says what is wrong."""
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f"not a label matcher: {text!r} (expected e.g. model=\"recsys\" or alertname=~\"Recsys.*\")")
    name, op, raw = m.groups()
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"bad quoted value in matcher {text!r}") from None
        if not isinstance(value, str):
            raise ValueError(f"bad quoted value in matcher {text!r}")
    else:
        if not raw or any(c in raw for c in '"{},'):
            raise ValueError(f"bad value in matcher {text!r}; quote it")
        value = raw
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regex in matcher {text!r}: {exc}") from None
    return Matcher(name, op, value, regex)


def all_match(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)

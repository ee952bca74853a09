"""Hostile requests for every POST endpoint, as hypothesis strategies (the tests and bench/fuzz.py share them).

Each endpoint has a strategy for *valid* requests; `requests()` turns one into a hostile variant: sent as is or
twice, one field mutated / removed / of the wrong type / huge, the body replaced by random bytes, broken or
pathological JSON or JSON of the wrong shape, a wrong or missing token, another content type, an oversized or
lying body, junk headers, or an unknown run or model. Each case says what the answer must be: "ok" (2xx),
"bad" (4xx) or "any" (either, when the mutation may or may not have kept the input valid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote

from hypothesis import strategies as st

from controller.core.callbacks import callback_token
from controller.core.runs import Phase
from controller.web.common import BadJson, decode_json
from controller.web.ops import BODY_LIMIT
from controller.web.pipelines import CALLBACK_LIMIT, HOOK_LIMIT
from tests.conftest import SECRETS_ENV, TOKEN

ADMIN = SECRETS_ENV["RETRAIN_CONTROLLER_ADMIN_TOKEN"]
CALLBACK_SECRET = SECRETS_ENV["RETRAIN_CONTROLLER_CALLBACK_SECRET"]
HOOK_TOKEN = "hook-token-4d2a9c7e1b"
ALERTS_LIMIT = 1024 * 1024  # server.max_body_bytes, the default
FUZZ_ENV = {
    **SECRETS_ENV,
    "RETRAIN_CONTROLLER_GITLAB_WEBHOOK_TOKEN": HOOK_TOKEN,
    "RETRAIN_CONTROLLER__POLICY__TICK_INTERVAL": "1h",  # ticks only when a request wakes the loop
    "RETRAIN_CONTROLLER__STORE__SYNCHRONOUS": "normal",
}
MODELS = ("recsys", "search")
LIVE = tuple(p for p in Phase if not p.terminal)
JSON = b"application/json"


@dataclass(frozen=True)
class Seed:
    """A run to put in the store before the request, as if it had got to `phase`."""

    run_id: str
    model: str
    phase: Phase


@dataclass(frozen=True)
class Case:
    kind: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    chunked: bool = False
    declared: bytes | None = None  # a Content-Length that is not the body's
    expect: str = "any"  # "ok" (2xx), "bad" (4xx), "any"
    replay: bool = False
    replay_keeps: tuple[str, ...] = ()  # tables a replay answered 2xx must not grow; ("*",): nothing may change
    seed: Seed | None = None
    quiet_model: str | None = None  # end this model's live runs first (retry and retrain need that to succeed)


@dataclass(frozen=True)
class Valid:
    """One valid request, and what its endpoint does with variations of it."""

    target: str
    auth: tuple[bytes, bytes]
    payload: Any  # the JSON body; None: an empty body
    expect: str
    limit: int
    checks_type: bool  # answers 415 to a body that is not application/json
    replay_keeps: tuple[str, ...]
    seed: Seed | None = None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    run_id: str | None = None  # the run the path names, for unknown-run variants
    model: str | None = None  # the model the path names, for unknown-model variants
    quiet_model: str | None = None


# ---- small pieces --------------------------------------------------------------------------------------------

hexes = st.text("0123456789abcdef", min_size=8, max_size=8)
run_ids = hexes.map(lambda h: f"fz-{h}")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(timezone.utc))
urls = st.text(max_size=40) | st.sampled_from([
    "http://prometheus:9090/graph?g0.expr=up", "https://am.example/#/alerts", "", "javascript:alert(1)",
    " JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>",
])  # fmt: skip


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _bearer(token: str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + token.encode())


# ---- valid requests, per endpoint ------------------------------------------------------------------------------


@st.composite
def alert(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(["RecsysPrecisionAtKDrop", "RecsysFeatureDrift", "RecsysEventStreamDown",
                                 "SearchPrecisionDrop"]) | st.text(max_size=20))  # fmt: skip
    model = draw(st.sampled_from([*MODELS, "other"]) | st.text(max_size=12))
    labels = {**draw(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=3)),
              "alertname": name, "model": model}  # fmt: skip
    firing = draw(st.booleans())
    starts = draw(timestamps)
    return {
        "status": "firing" if firing else "resolved",
        "labels": labels,
        "annotations": draw(st.dictionaries(st.text(max_size=12), st.text(max_size=60), max_size=3)),
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z" if firing else draw(timestamps).isoformat(),
        "generatorURL": draw(urls),
        "fingerprint": draw(st.text("0123456789abcdef", min_size=16, max_size=16)),
    }


@st.composite
def valid_alerts(draw: st.DrawFn) -> Valid:
    alerts = draw(st.lists(alert(), min_size=1, max_size=3))
    payload = {
        "version": "4", "groupKey": draw(st.text(max_size=30)), "truncatedAlerts": draw(st.integers(0, 5)),
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "retrain-controller", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": draw(urls), "alerts": alerts,
    }  # fmt: skip
    if draw(st.booleans()):
        payload["notification_reason"] = "repeat"  # newer Alertmanagers add fields
    return Valid("/api/v1/alerts", _bearer(TOKEN), payload, "ok", ALERTS_LIMIT, True,
                 ("runs", "episodes", "transitions"))  # fmt: skip


stage_events = st.fixed_dictionaries({
    "event": st.just("stage"), "stage": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,39}", fullmatch=True),
    "status": st.sampled_from(["running", "success", "failed", "canceled", "skipped"]),
}, optional={"detail": st.text(max_size=100)})  # fmt: skip
image_events = st.fixed_dictionaries({
    "event": st.just("image"),
    "image": st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"registry.example/ml/r@sha256:{h}"),
}, optional={"metrics": st.dictionaries(st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False),
                                        max_size=5)})  # fmt: skip
failed_events = st.fixed_dictionaries({"event": st.just("failed"), "reason": st.text(min_size=1, max_size=200)},
                                      optional={"stage": st.text(max_size=40)})  # fmt: skip


@st.composite
def valid_events(draw: st.DrawFn) -> Valid:
    run_id = draw(run_ids)
    phase = draw(st.sampled_from([Phase.TRAINING, Phase.TRIGGERING]) | st.sampled_from(list(Phase)))
    event = draw(stage_events | image_events | failed_events)
    return Valid(f"/api/v1/runs/{run_id}/events", _bearer(callback_token(CALLBACK_SECRET, run_id)), event,
                 "ok" if phase in (Phase.TRAINING, Phase.TRIGGERING) else "any", CALLBACK_LIMIT, True, ("*",),
                 seed=Seed(run_id, "recsys", phase), run_id=run_id)  # fmt: skip


GITLAB_STATUSES = ["created", "waiting_for_resource", "preparing", "pending", "running", "success", "failed",
                   "canceled", "skipped", "manual", "scheduled", "canceling"]  # fmt: skip


@st.composite
def valid_hooks(draw: st.DrawFn) -> Valid:
    run_id = draw(run_ids)
    seed = draw(st.none() | st.sampled_from([Phase.TRIGGERING, Phase.TRAINING, Phase.FAILED]).map(
        lambda p: Seed(run_id, "recsys", p)))  # fmt: skip
    variables = [{"key": "RETRAIN_RUN_ID", "value": run_id}] if draw(st.booleans()) else []
    variables += draw(st.lists(st.fixed_dictionaries({"key": st.text(max_size=10), "value": st.text(max_size=20)}),
                               max_size=2))  # fmt: skip
    payload = {
        "object_kind": "pipeline",
        "object_attributes": {"id": draw(st.integers(1, 10**9)), "status": draw(st.sampled_from(GITLAB_STATUSES)),
                              "ref": "main", "variables": variables, "created_at": "2016-08-12 15:23:28 UTC"},
        "project": {"id": 7, "web_url": draw(urls)},
    }  # fmt: skip
    headers: tuple[tuple[bytes, bytes], ...] = ((b"X-Gitlab-Event", b"Pipeline Hook"),)
    if draw(st.booleans()):
        headers += ((b"Idempotency-Key", draw(hexes).encode() + b"-" + draw(hexes).encode()),)
    return Valid("/api/v1/gitlab/events", (b"X-Gitlab-Token", HOOK_TOKEN.encode()), payload, "ok", HOOK_LIMIT, True,
                 ("*",) if len(headers) > 1 else ("runs", "transitions"), seed=seed, extra_headers=headers)  # fmt: skip


action_bodies = st.none() | st.fixed_dictionaries({}, optional={
    "by": st.text("abcdefghijklmnopqrstuvwxyz.-@ ", min_size=1, max_size=30).filter(str.strip),
    "reason": st.text(max_size=200),
})  # fmt: skip
# Where an action on a run certainly succeeds (the rest may be a 409, which is fine too).
SURE = {"abort": set(LIVE) - {Phase.PROMOTING}, "promote": {Phase.ANALYZING}, "pause": {Phase.DEPLOYING, Phase.ANALYZING},
        "resume": set(LIVE), "retry": set()}  # fmt: skip
RETRYABLE = {Phase.FAILED, Phase.ROLLED_BACK, Phase.CANCELED}  # and its model has no live run


def valid_run_actions(action: str) -> st.SearchStrategy[Valid]:
    @st.composite
    def build(draw: st.DrawFn) -> Valid:
        run_id, model = draw(run_ids), draw(st.sampled_from(MODELS))
        phase = draw(st.sampled_from(list(Phase)))
        quiet = model if action == "retry" and draw(st.booleans()) else None
        sure = phase in SURE[action] or (quiet is not None and phase in RETRYABLE)
        return Valid(f"/api/v1/runs/{run_id}/{action}", _bearer(ADMIN), draw(action_bodies), "ok" if sure else "any",
                     BODY_LIMIT, False, ("runs", "transitions"), seed=Seed(run_id, model, phase), run_id=run_id,
                     quiet_model=quiet)  # fmt: skip

    return build()


def valid_model_actions(action: str) -> st.SearchStrategy[Valid]:
    @st.composite
    def build(draw: st.DrawFn) -> Valid:
        model = draw(st.sampled_from(MODELS))
        quiet = model if action == "retrain" and draw(st.booleans()) else None
        return Valid(f"/api/v1/models/{model}/{action}", _bearer(ADMIN), draw(action_bodies),
                     "any" if action == "retrain" and quiet is None else "ok", BODY_LIMIT, False,
                     ("runs", "transitions"), model=model, quiet_model=quiet)  # fmt: skip

    return build()


# ---- turning a valid request into a hostile one ------------------------------------------------------------------

Mutation = Callable[[st.DrawFn, Valid], Case]


def _case(v: Valid, kind: str, body: bytes | None = None, expect: str | None = None, **kw: Any) -> Case:
    fields: dict[str, Any] = {
        "target": v.target.encode(), "headers": (v.auth, (b"Content-Type", JSON), *v.extra_headers),
        "body": _dumps(v.payload) if body is None and v.payload is not None else (body or b""),
        "expect": v.expect if expect is None else expect, "replay_keeps": v.replay_keeps, "seed": v.seed,
        "quiet_model": v.quiet_model,
    }  # fmt: skip
    fields.update(kw)
    return Case(kind=kind, **fields)


def _parses(body: bytes) -> bool:
    try:
        decode_json(body)
    except BadJson:
        return False
    return True


def _junk_expect(body: bytes) -> str:
    return "any" if not body.strip() or _parses(body) else "bad"


def as_is(draw: st.DrawFn, v: Valid) -> Case:
    return _case(v, "valid")


def replayed(draw: st.DrawFn, v: Valid) -> Case:
    return _case(v, "replay", replay=True)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, item in value.items():
            out += _paths(item, (*prefix, k))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def _set(value: Any, path: tuple[Any, ...], new: Any, remove: bool = False) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if remove and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _set(value[head], rest, new, remove)
        return copy
    copy = list(value)
    if remove and not rest:
        del copy[head]
    else:
        copy[head] = _set(value[head], rest, new, remove)
    return copy


def mutated(draw: st.DrawFn, v: Valid) -> Case:
    payload = v.payload if v.payload is not None else {}
    paths = _paths(payload)
    how = draw(st.sampled_from(["remove", "retype", "huge", "add", "surrogate", "many"]))
    if how == "add" or not paths:
        new = {**payload, draw(st.text(max_size=12)): draw(json_values)} if isinstance(payload, dict) else payload
        return _case(v, "mutated:add", _dumps(new), "any")
    path = draw(st.sampled_from(paths))
    if how == "remove":
        new = _set(payload, path, None, remove=True)
    elif how == "retype":
        new = _set(payload, path, draw(json_values))
    elif how == "huge":
        size = draw(st.sampled_from([v.limit // 4, v.limit - 200, v.limit + 1, 2 * v.limit]))
        char = draw(st.sampled_from(["x", "é", "<", "\u2028"]))
        return _case(v, "mutated:huge", json.dumps(_set(payload, path, char * size), ensure_ascii=False).encode(), "any")
    elif how == "surrogate":  # a lone surrogate escape: valid JSON, but no UTF-8 text
        new = _set(payload, path, "\ud800" + draw(st.text(max_size=5)))
    else:
        new = _set(payload, path, [draw(json_values)] * draw(st.integers(2, 3000)))
    return _case(v, f"mutated:{how}", _dumps(new), "any")


PATHOLOGICAL = [
    b"[" * 100_000, b"[" * 3000 + b"]" * 3000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"1" * 5000,
    b'{"version": "4", "alerts": [' + b"9" * 10_000 + b"]}", b'"\\ud800"', b'{"\\udc00": 1}', b"NaN", b"-Infinity",
    b"\xef\xbb\xbf{}", b"{}garbage", b'{"a": 1,}', b"\x00", b'"' + b"\\" * 1001 + b'"', "{}".encode("utf-16"),
    b'{"version": "4", "version": "3"}', b"\xff\xfe\xfd", b"null", b"[]", b'""', b"0", b"{" * 2 + b"}",
]


def junk_body(draw: st.DrawFn, v: Valid) -> Case:
    kind = draw(st.sampled_from(["bytes", "broken", "shape", "pathological"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=2048))
    elif kind == "broken":
        text = _dumps(v.payload if v.payload is not None else {"by": "x"})
        cut = draw(st.integers(0, max(0, len(text) - 1)))
        body = text[:cut] + draw(st.binary(max_size=4)) + text[cut + draw(st.integers(0, 3)):]
    elif kind == "shape":
        body = _dumps(draw(json_values))
    else:
        body = draw(st.sampled_from(PATHOLOGICAL))
    return _case(v, f"junk:{kind}", body, _junk_expect(body))


BAD_HEADER_BYTES = st.binary(max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b)


def bad_auth(draw: st.DrawFn, v: Valid) -> Case:
    name, value = v.auth
    token = value.split(b" ", 1)[1] if value.startswith(b"Bearer ") else value
    other = draw(st.sampled_from([TOKEN, ADMIN, HOOK_TOKEN, callback_token(CALLBACK_SECRET, "fz-other")])).encode()
    choices = [None, b"", b"Bearer", b"Bearer ", b"Basic " + token, token + b"x", token[:-1], b"Bearer " + token[:-1],
               b"Bearer " + token + b"x", b"Bearer " + other, other, b"Bearer \xff\xfe" + token]  # fmt: skip
    wrong = draw(st.sampled_from(choices) | BAD_HEADER_BYTES | BAD_HEADER_BYTES.map(lambda b: b"Bearer " + b))
    if wrong is not None and wrong.removeprefix(b"Bearer ").strip() == token:
        wrong = b"Bearer nope"
    headers = tuple(h for h in (v.auth, (b"Content-Type", JSON), *v.extra_headers) if h[0] != name)
    if wrong is not None:
        headers = ((name, wrong), *headers)
    body = draw(st.just(_dumps(v.payload) if v.payload is not None else b"") | st.binary(max_size=256))
    return _case(v, "bad_auth", body, "bad", headers=headers, seed=v.seed)


def wrong_type(draw: st.DrawFn, v: Valid) -> Case:
    ctype = draw(st.sampled_from([None, b"", b"text/plain", b"application/x-www-form-urlencoded", b"text/json",
                                  b"multipart/form-data; boundary=x", b"application/jsonx"]) | BAD_HEADER_BYTES)  # fmt: skip
    if ctype is not None and ctype.split(b";")[0].strip().lower() == JSON:
        ctype = b"text/plain"
    headers = tuple(h for h in (v.auth, *v.extra_headers))
    if ctype is not None:
        headers += ((b"Content-Type", ctype),)
    return _case(v, "wrong_type", expect="bad" if v.checks_type else "any", headers=headers)


def oversized(draw: st.DrawFn, v: Valid) -> Case:
    how = draw(st.sampled_from(["length", "chunked", "declared"]))
    base = _dumps(v.payload if v.payload is not None else {})
    if how == "declared":  # claims more than the limit, sends a little
        declared = b"%d" % (v.limit + draw(st.integers(1, 10**12)))
        return _case(v, "oversized:declared", base[: v.limit], "bad", declared=declared)
    padded = base[:-1] + b" " * (v.limit + draw(st.integers(1, 70_000)) - len(base)) + base[-1:]
    return _case(v, f"oversized:{how}", padded, "bad", chunked=how == "chunked")


def bad_length(draw: st.DrawFn, v: Valid) -> Case:
    declared = draw(st.sampled_from([b"-1", b"abc", b"1e3", b"0x10", b"18446744073709551616"]))
    return _case(v, "bad_length", b"", "bad", declared=declared)


def junk_headers(draw: st.DrawFn, v: Valid) -> Case:
    names = st.text("abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=20).map(str.encode)
    extra = draw(st.lists(st.tuples(names, BAD_HEADER_BYTES), max_size=4))
    framing = (b"content-length", b"transfer-encoding", b"host", b"connection", b"content-type", v.auth[0].lower())
    extra = [(k, val) for k, val in extra if k.lower() not in framing]
    return _case(v, "junk_headers", expect="any", headers=(v.auth, (b"Content-Type", JSON), *v.extra_headers, *extra))


ID_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: not any(c in b for c in b" \r\n\t?#/%\x00"))


def unknown_target(draw: st.DrawFn, v: Valid) -> Case:
    if v.run_id is None and v.model is None:
        return junk_body(draw, v)
    known = v.run_id or v.model or ""
    other = draw(st.text(max_size=60).map(lambda s: quote(s, safe="").encode())
                 | ID_BYTES | st.just(b"x" * draw(st.integers(100, 9000))))  # fmt: skip
    if other.lower() in (b"", b".", b"..", known.encode(), *(m.encode() for m in MODELS)) or other.startswith(b"fz-"):
        other = b"nosuch"
    target = v.target.encode().replace(known.encode(), other, 1)
    headers = (v.auth, (b"Content-Type", JSON), *v.extra_headers)
    if v.run_id is not None and draw(st.booleans()) and b"/events" in target:
        headers = ((b"Authorization", b"Bearer " + callback_token(CALLBACK_SECRET, other.decode("latin-1")).encode()),
                   (b"Content-Type", JSON))  # fmt: skip
    return _case(v, "unknown_target", expect="bad", target=target, headers=headers, seed=None)


MUTATIONS: list[Mutation] = [as_is, replayed, mutated, mutated, junk_body, junk_body, bad_auth, wrong_type, oversized,
                             bad_length, junk_headers, unknown_target]  # fmt: skip


def requests(valid: st.SearchStrategy[Valid]) -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: st.DrawFn) -> Case:
        v = draw(valid)
        return draw(st.sampled_from(MUTATIONS))(draw, v)

    return build()


@dataclass(frozen=True)
class Endpoint:
    name: str
    cases: st.SearchStrategy[Case]


ENDPOINTS = [
    Endpoint("POST /api/v1/alerts", requests(valid_alerts())),
    Endpoint("POST /api/v1/runs/{id}/events", requests(valid_events())),
    Endpoint("POST /api/v1/gitlab/events", requests(valid_hooks())),
    *(Endpoint(f"POST /api/v1/runs/{{id}}/{a}", requests(valid_run_actions(a)))
      for a in ("abort", "promote", "retry", "pause", "resume")),
    *(Endpoint(f"POST /api/v1/models/{{model}}/{a}", requests(valid_model_actions(a)))
      for a in ("pause", "resume", "retrain")),
]  # fmt: skip

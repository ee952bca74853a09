"""GitLab's wire format: JSON answers, API errors, Grape/Rack parameter parsing, offset pagination headers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web


class _Abort(Exception):
    """Raised inside the app to drop the connection without an answer."""


class _ApiError(Exception):
    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def _json(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _int_param(q: Mapping[str, str], name: str, default: int) -> int:
    if name not in q or q[name] == "":
        return default
    try:
        return int(q[name])
    except ValueError as exc:
        raise _ApiError(400, {"error": f"{name} is invalid"}) from exc


def _parse_time(name: str, value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value.strip().replace(" ", "T", 1) if " " in value.strip() else value.strip())
    except ValueError as exc:
        raise _ApiError(400, {"error": f"{name} is invalid"}) from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _pagination_headers(
    request: web.Request, page: int, per_page: int, total: int, total_pages: int
) -> dict[str, str]:
    """GitLab's offset pagination headers (X-*, Link with prev/next/first/last)."""
    base = f"{request.scheme}://{request.host}{request.raw_path.split('?', 1)[0]}"
    params = [(k, v) for k, v in request.query.items() if k not in ("page", "per_page")]

    def link(p: int) -> str:
        query = urlencode([*params, ("page", str(p)), ("per_page", str(per_page))], quote_via=quote)
        return f"{base}?{query}"

    links = []
    if page > 1:
        links.append(f'<{link(page - 1)}>; rel="prev"')
    if page < total_pages:
        links.append(f'<{link(page + 1)}>; rel="next"')
    links.append(f'<{link(1)}>; rel="first"')
    links.append(f'<{link(total_pages)}>; rel="last"')
    return {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Prev-Page": str(page - 1) if page > 1 else "",
        "X-Next-Page": str(page + 1) if page < total_pages else "",
        "X-Total": str(total),
        "X-Total-Pages": str(total_pages),
        "Link": ", ".join(links),
    }


def _rack_parse(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Enough of Rack's nested parameter parsing: ``a=1``, ``variables[KEY]=v`` (hash) and
    ``variables[][key]=K&variables[][value]=V`` (array of hashes)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        m = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", name)
        if not m or not m.group(2):
            out[name] = value
            continue
        root, rest = m.group(1), re.findall(r"\[([^\[\]]*)\]", m.group(2))
        if rest[0] == "" and len(rest) == 2:  # variables[][key]=...
            items = out.setdefault(root, [])
            if not isinstance(items, list):
                continue
            if not items or rest[1] in items[-1]:
                items.append({})
            items[-1][rest[1]] = value
        elif rest[0] == "" and len(rest) == 1:  # list[]=a
            items = out.setdefault(root, [])
            if isinstance(items, list):
                items.append(value)
        elif len(rest) == 1:  # variables[KEY]=value
            d = out.setdefault(root, {})
            if isinstance(d, dict):
                d[rest[0]] = value
        else:  # deeper nesting: keep the flat name
            out[name] = value
    return out

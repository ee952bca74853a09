"""How the HTTP server treats slow and broken clients: its timeouts, and quiet logs about malformed requests."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from controller.config import ServerSettings
from controller.observability import Throttle


def server_options(server: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for web.run_app / web.AppRunner.

    aiohttp closes a connection that has not delivered a whole request head `keepalive_timeout` after it opened or
    after its last answer, so that is the header timeout. The body timeout is applied where bodies are read
    (web.common.read_limited); after an answer given before the whole body arrived (401, 408, 413), aiohttp reads
    and drops the rest for `lingering_time` so the client sees the answer rather than a reset: no longer than a body
    may take. A connection so lives at most header_timeout + 2 x body_timeout per request.
    """
    return {"keepalive_timeout": server.header_timeout.total_seconds(),
            "lingering_time": server.body_timeout.total_seconds()}  # fmt: skip


class QuietProtocolErrors(logging.Filter):
    """aiohttp logs every malformed request with a traceback and the offending header line, which may hold a
    token. Keep one line per interval, naming only the error's type, so garbage cannot flood or leak into logs."""

    def __init__(self, throttle: Throttle | None = None):
        super().__init__()
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else is ours to see in full
        suppressed = self.throttle.allow("bad_http")
        if suppressed is None:
            return False
        # One JSON line like the controller's own (stdlib logging has no handler here but the last-resort one).
        record.msg = json.dumps({"event": "malformed_http_request", "level": "warning", "status": exc.code,
                                 "error": type(exc).__name__, "suppressed": suppressed})  # fmt: skip
        record.args, record.exc_info, record.exc_text = (), None, None
        return True


def quiet_protocol_errors(logger_name: str = "aiohttp.server") -> QuietProtocolErrors:
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, QuietProtocolErrors):
            return existing
    quiet = QuietProtocolErrors()
    logger.addFilter(quiet)
    return quiet

"""What the server writes to its log about requests: one access line per request without the query string (it
may hold a token), and one short warning line — no traceback — for a request that is not valid HTTP (a NUL byte
in a header, a broken request line): any client can send those, so they must not fill the log."""
from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError


class AccessLogger(AbstractAccessLogger):
    """One line per request, without the query string."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.1fms", request.remote, request.method, request.path, response.status,
                         time * 1000)


class ProtocolLogger(logging.LoggerAdapter):
    """The logger aiohttp's connection handler reports to: a malformed request (aiohttp raises an
    ``HttpProcessingError`` from its parser) becomes one warning line; anything else is logged as aiohttp logs it."""

    def __init__(self, name: str = "chisel.http"):
        super().__init__(logging.getLogger(name), {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError):
            first = (exc.message or "").strip().splitlines()
            self.logger.warning("malformed request refused (HTTP %s): %s", exc.code, first[0] if first else "")
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)

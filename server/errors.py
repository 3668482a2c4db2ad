"""Structured JSON errors: every failure a client sees is ``{"error": {"kind", "message", ...}}`` with the right
status; a traceback is added only in debug mode."""
from __future__ import annotations

import asyncio
import json
import logging
import traceback
from typing import Any

from aiohttp import web

log = logging.getLogger("chisel.server")


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, *, errors: list[dict[str, Any]] | None = None,
                 extra: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.errors, self.extra, self.body, self.headers = errors, extra or {}, body, headers

    def payload(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        out: dict[str, Any] = {"error": {"kind": self.kind, "message": self.message, **self.extra}}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


_HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 409: "conflict", 413: "too_large", 414: "too_large",
               415: "unsupported_media_type", 429: "too_many_requests", 431: "too_large", 500: "internal_error",
               503: "unavailable"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data, default=repr), status=status, content_type="application/json",
                        headers=headers)


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> web.Response:
    return json_response({"error": {"kind": kind, "message": message, **extra}}, status, headers)


def error_middleware(debug: bool):
    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return json_response(exc.payload(), exc.status, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = _HTTP_KINDS.get(exc.status, "http_error")
            message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
            if exc.status == 404:
                message = f"no such route: {request.method} {request.path}"
            elif exc.status == 405:
                allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
                message = f"{request.method} is not allowed on {request.path}" + (
                    f" (allowed: {', '.join(allowed)})" if allowed else "")
            elif exc.status == 413:
                message = "the request body is too large"
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
            return error_response(exc.status, kind, message, headers or None)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: log it, tell the client only what debug allows
            log.exception("unhandled error on %s %s", request.method, request.path)
            extra: dict[str, Any] = {}
            if debug:
                extra["traceback"] = traceback.format_exc()
                return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}", **extra)
            return error_response(500, "internal_error", "internal server error (details are in the server log)")

    return middleware

"""Who may talk to the server and what a request may reach.

- Bearer token: with a token set, every request needs ``Authorization: Bearer TOKEN`` (GET requests, so that
  WebSockets and ``<img>`` URLs work from a browser, may pass ``?token=`` instead). The canvas page itself
  (``/``, ``/web/...``) and ``GET /v1/auth`` are served without it: the page has to load to ask for the token.
- Browser sign-in, for pages that send no token (ComfyUI's frontend): opening a page (``/``, ``/index.html``,
  ``/chisel``) with ``?token=TOKEN`` checks it like any token (failures count towards the lock-out), then answers
  303 to the same URL without it and sets an HttpOnly, SameSite=Strict cookie (path /) that holds a key derived from
  the token, not the token. The cookie then stands for the token on every request the browser sends from this
  origin (``Sec-Fetch-Site`` absent, ``same-origin`` or ``none``: a page on another port of the same host gets
  nothing from it); a wrong one is a failed check, and the reply deletes it.
- Same origin only: a request whose ``Origin`` is not this server (or one listed in ``allowed_origins``), or that
  a browser marks ``Sec-Fetch-Site: cross-site``, is refused — WebSocket upgrades included.
- DNS rebinding: without a token, the ``Host`` header must name a loopback address (``localhost``,
  ``127.0.0.1``, ``[::1]``) or an IP literal, so a hostile domain resolving to 127.0.0.1 gets nowhere.
- Files: names are joined to their folder and resolved (symlinks followed); anything outside is refused.
- Bodies are read with a byte limit (JSON and uploads apart).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import time
from collections import OrderedDict, deque
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from graph.paths import name_problem

from .errors import ApiError

AUTH_PATH = "/v1/auth"
SIGNED_IN = "chisel_signed_in"  # request key: the sign-in cookie stands for the token (set on AUTH_PATH)
PUBLIC_PATHS = ("/", "/index.html", "/chisel", "/v1/auth", "/favicon.ico")
PAGE_PATHS = ("/", "/index.html", "/chisel")  # where ``?token=`` signs a browser in (sets the cookie)
COOKIE = "chisel_auth"
COOKIE_SITES = (None, "same-origin", "none")  # the Sec-Fetch-Site values with which the cookie counts
PUBLIC_PREFIXES = ("/web/",)


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or "").lower(), port


def _origin_matches(origin: str, host_header: str, scheme: str) -> bool:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = {"http": 80, "https": 443}
    try:
        o_port = parts.port or default[parts.scheme]
    except ValueError:
        return False
    h_host, h_port = _split_host(host_header)
    if h_port == -1:
        return False
    h_port = h_port or default.get(scheme, 80)
    return parts.hostname.lower() == h_host and o_port == h_port


class AuthThrottle:
    """Failed token checks per client address: after ``max_failures`` within ``window`` seconds, the address is
    refused (429, before its token is even compared) until the window has passed, so a token cannot be guessed at
    network speed. Bounded memory: at most ``max_addresses`` addresses are tracked."""

    def __init__(self, max_failures: int = 10, window: float = 60.0, max_addresses: int = 10_000):
        self.max_failures, self.window, self.max_addresses = max_failures, window, max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and now - times[0] > self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, self.window - (now - times[-1]))

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        times.append(now)
        self._failures.move_to_end(address)


def cors_middleware(allowed_origins: tuple[str, ...]):
    """Cross-origin access for the origins a person allowed (``--allow-origin``), none otherwise: those get the
    ``Access-Control-Allow-*`` headers, and their preflight ``OPTIONS`` requests an empty 204."""
    allowed = {o.rstrip("/").lower() for o in allowed_origins}

    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is None or origin.rstrip("/").lower() not in allowed:
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers.update({"Access-Control-Allow-Methods": "GET, POST, DELETE",
                            "Access-Control-Allow-Headers": "Authorization, Content-Type",
                            "Access-Control-Max-Age": "600"})
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware


def security_middleware(token: str | None, allowed_origins: tuple[str, ...] = (),
                        throttle: AuthThrottle | None = None):
    allowed = {o.rstrip("/").lower() for o in allowed_origins}
    throttle = throttle or AuthThrottle()

    @web.middleware
    async def middleware(request: web.Request, handler):
        host = request.headers.get("Host", "")
        if not token:
            hostname, _ = _split_host(host)
            if not hostname or not (is_loopback_host(hostname) or _is_ip(hostname)):
                raise ApiError(403, "forbidden_host", f"Host {host!r} is not accepted: without a token the server "
                               "answers only to loopback names or IP addresses (DNS-rebinding protection)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in allowed:
            if not _origin_matches(origin, host, request.scheme):
                raise ApiError(403, "forbidden_origin", f"cross-origin request from {origin!r} refused")
        if request.headers.get("Sec-Fetch-Site") == "cross-site" and origin is None:
            raise ApiError(403, "forbidden_origin", "cross-site request refused")
        if token and request.path == AUTH_PATH:
            request[SIGNED_IN] = _cookie_signed_in(request, token, throttle)
        signing_in = bool(token) and _signs_in(request)
        if token and (signing_in or not _public(request)):
            address = request.remote or ""
            wait = throttle.retry_after(address)
            if wait > 0:
                raise ApiError(429, "too_many_auth_failures", "too many failed token checks from this address; try "
                               f"again in {wait:.0f} s", headers={"Retry-After": str(max(1, round(wait)))})
            if not _token_ok(request, token):
                throttle.failed(address)
                headers = {"WWW-Authenticate": 'Bearer realm="chisel"'}
                if cookie_name(request) in request.cookies:  # a stale or forged cookie: the browser drops it
                    headers["Set-Cookie"] = _cookie(request, "", max_age=0)
                raise ApiError(401, "unauthorized", "a valid token is required: send 'Authorization: Bearer TOKEN'"
                               + (" (or ?token=TOKEN on GET)" if request.method == "GET" else ""), headers=headers)
            if signing_in:
                return sign_in(request, token)
        return await handler(request)

    return middleware


def _cookie_signed_in(request: web.Request, token: str, throttle: AuthThrottle) -> bool:
    """Whether the browser's sign-in cookie (only the cookie: ``GET /v1/auth`` is answered without a token) stands
    for the token, so the page need not ask for it. A wrong cookie counts as a failed check, as anywhere else."""
    if cookie_name(request) not in request.cookies:
        return False
    address = request.remote or ""
    if throttle.retry_after(address) > 0:
        return False
    ok = _cookie_ok(request, token)
    if not ok:
        throttle.failed(address)
    return ok


def static_name_middleware():
    """A static file route asked for a name no file can have (a part over 255 bytes, a NUL byte) answers 404, as
    for any missing file, instead of failing in the file system."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        resource = getattr(request.match_info.route, "resource", None)
        if isinstance(resource, web.StaticResource) and name_problem(request.path):
            raise ApiError(404, "not_found", "no such file")
        return await handler(request)

    return middleware


def cookie_name(request: web.Request) -> str:
    """One cookie per port (browsers share cookies between the ports of a host): two servers do not overwrite each
    other's."""
    _, port = _split_host(request.headers.get("Host", ""))
    return f"{COOKIE}_{port}" if port and port > 0 else COOKIE


def cookie_key(token: str) -> str:
    """What the cookie holds: a key derived from the token, so that the token itself never sits in a cookie store."""
    return hmac.new(token.encode(), b"chisel browser cookie", hashlib.sha256).hexdigest()


def _cookie(request: web.Request, value: str, max_age: int | None = None) -> str:
    parts = [f"{cookie_name(request)}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if request.secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def _signs_in(request: web.Request) -> bool:
    return request.method == "GET" and request.path in PAGE_PATHS and "token" in request.query


def sign_in(request: web.Request, token: str) -> web.Response:
    """The page's URL without ``token`` (303), with the cookie that stands for it (the token was checked)."""
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    location = str(request.rel_url.with_query(query or None))
    return web.Response(status=303, headers={"Location": location, "Set-Cookie": _cookie(request, cookie_key(token)),
                                             "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _public(request: web.Request) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    return request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)


def _token_ok(request: web.Request, token: str) -> bool:
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() == "bearer" and given and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    if request.method in ("GET", "HEAD"):
        query = request.query.get("token")
        if query and hmac.compare_digest(query.encode(), token.encode()):
            return True
        if _signs_in(request):  # only the token in the URL signs in, never a cookie already held
            return False
    return _cookie_ok(request, token)


def _cookie_ok(request: web.Request, token: str) -> bool:
    """The browser's sign-in cookie stands for ``token`` (and comes from a page of this server)."""
    cookie = request.cookies.get(cookie_name(request))
    if cookie and request.headers.get("Sec-Fetch-Site") in COOKIE_SITES:
        return hmac.compare_digest(cookie.encode(), cookie_key(token).encode())
    return False


# -- files ----------------------------------------------------------------------------------------------------------
def clean_name(name: str, what: str = "filename") -> str:
    if not isinstance(name, str) or "\x00" in name:
        raise ApiError(400, "invalid_path", f"invalid {what}")
    return name.replace("\\", "/")


def safe_join(base: Path, subfolder: str, filename: str) -> Path:
    """``base/subfolder/filename`` resolved, refused (403) if it leaves ``base`` — through ``..``, an absolute path
    or a symlink."""
    subfolder, filename = clean_name(subfolder or "", "subfolder"), clean_name(filename)
    if not filename or filename.endswith("/"):
        raise ApiError(400, "invalid_path", "a file name is required")
    problem = name_problem(f"{subfolder}/{filename}" if subfolder else filename)
    if problem:  # refused before the file system sees it (a name over its limits is an OSError there)
        raise ApiError(400, "invalid_path", f"the path is not valid: {problem}")
    if subfolder.startswith("/") or filename.startswith("/") or PurePosixPath(filename).is_absolute():
        raise ApiError(403, "path_outside_folder", "absolute paths are not accepted")
    root = base.resolve()
    target = (root / subfolder / filename).resolve()
    if target == root or not target.is_relative_to(root):
        raise ApiError(403, "path_outside_folder", "the path leaves its folder")
    return target


def upload_name(name: str) -> str:
    """The last component of an uploaded file's name, refused when empty, hidden or too long."""
    base = PurePosixPath(clean_name(name or "")).name
    if not base or base in (".", "..") or base.startswith("."):
        raise ApiError(400, "invalid_filename", f"unusable file name {name!r}")
    if len(base.encode()) > 200:
        raise ApiError(400, "invalid_filename", "the file name is too long")
    return base


# -- bodies ---------------------------------------------------------------------------------------------------------
async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "too_large", f"the request body is {length} bytes; the limit is {limit}")
    chunks, total = [], 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, limit: int, *, allow_empty: bool = False) -> Any:
    body = await read_body(request, limit)
    if not body.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "invalid_json", "a JSON body is required")
    return parse_json(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid_json(message: str, **extra: Any) -> ApiError:
    return ApiError(400, "invalid_json", message, extra=extra, errors=[{"kind": "invalid_json", "message": message}])


def parse_json(body: bytes | str) -> Any:
    """Strict JSON: NaN and ±Infinity refused, integers bounded by Python's digit limit, nesting bounded by the
    recursion limit; every failure is a 400 ``invalid_json``."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise _invalid_json("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _invalid_json(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                            line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise _invalid_json("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with more digits than Python converts
        raise _invalid_json(f"invalid JSON: {str(exc).split(';')[0][:200]}") from None


async def read_json_object(request: web.Request, limit: int, *, allow_empty: bool = False) -> dict[str, Any]:
    data = await read_json(request, limit, allow_empty=allow_empty)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", f"the body must be a JSON object, not {type(data).__name__}")
    return data


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        return default

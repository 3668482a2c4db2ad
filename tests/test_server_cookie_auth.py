"""Browser sign-in for pages that send no token (ComfyUI's frontend with ``chisel serve --token``): opening
``/?token=TOKEN`` once sets an HttpOnly, SameSite=Strict cookie and redirects to the URL without the token; the cookie
then stands for the token on HTTP and WebSocket requests of the same origin. Against a real ``chisel serve``."""
from __future__ import annotations

import asyncio
import os
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import aiohttp
import pytest

from server.security import cookie_key
from test_server_support import ServeProcess, chain, client, make_root, run, wait_history

pytestmark = pytest.mark.timeout(120)


def parse_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes in lower case) of one Set-Cookie header."""
    jar = SimpleCookie()
    jar.load(header)
    (name, morsel), = jar.items()
    attrs = {k.lower(): str(v) for k, v in morsel.items() if v}
    return name, morsel.value, attrs


def test_page_token_sets_a_cookie_that_stands_for_the_token(tmp_path):
    token = "tok-" + os.urandom(8).hex()
    server = ServeProcess(make_root(tmp_path), "--debug", "--token", token, "--auth-max-failures", "5")
    port = urlsplit(server.url).port
    replies: list[str] = []

    def keep(r: aiohttp.ClientResponse, body: str = "") -> None:
        replies.append(body + " ".join(f"{k}: {v}" for k, v in r.headers.items()))

    try:
        async def go():
            async with aiohttp.ClientSession(server.url, cookie_jar=aiohttp.DummyCookieJar()) as s:
                # sign-in: 303 to the same page without the token, other query parameters kept
                r = await s.get(f"/?token={token}&tab=2", allow_redirects=False)
                keep(r, await r.text())
                assert r.status == 303 and r.headers["Location"] == "/?tab=2"
                assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "no-referrer"
                name, value, attrs = parse_cookie(r.headers["Set-Cookie"])
                assert name == f"chisel_auth_{port}" and value == cookie_key(token) and token not in value
                assert attrs["path"] == "/" and attrs["samesite"] == "Strict" and "httponly" in attrs
                assert "max-age" not in attrs and "expires" not in attrs  # ends with the browser session
                r = await s.get(f"/chisel?token={token}", allow_redirects=False)
                assert r.status == 303 and r.headers["Location"] == "/chisel"
                good = {"Cookie": f"{name}={value}"}

                # the cookie stands for the token: GET, POST, ComfyUI's and the native WebSocket
                r = await s.get("/v1/queue", headers=good)
                keep(r, await r.text())
                assert r.status == 200
                assert (await s.get("/object_info", headers=good)).status == 200
                r = await s.post("/v1/prompts", json={"workflow": chain(4)}, headers=good)
                assert r.status == 200, await r.text()
                pid = (await r.json())["prompt_id"]
                assert (await wait_history(s, pid, headers=good))["status"] == "success"
                ws = await s.ws_connect("/ws?clientId=c1", headers=good)
                assert (await ws.receive_json(timeout=10))["type"] == "status"
                await ws.close()
                ws = await s.ws_connect("/v1/ws", headers={**good, "Sec-Fetch-Site": "same-origin"})
                assert (await ws.receive_json(timeout=10))["type"] == "hello"
                await ws.close()

                # the page asks whether its cookie signs it in (GET /v1/auth, answered without a token)
                assert await (await s.get("/v1/auth", headers=good)).json() == {"required": True, "signed_in": True}
                assert await (await s.get("/v1/auth")).json() == {"required": True, "signed_in": False}

                # failures (the lock-out allows 5): a wrong token on the page sets nothing
                r = await s.get("/?token=wrong", allow_redirects=False)
                keep(r, await r.text())
                assert r.status == 401 and "Set-Cookie" not in r.headers
                # a wrong cookie is refused and deleted
                r = await s.get("/v1/queue", headers={"Cookie": f"{name}=forged"})
                assert r.status == 401 and (await r.json())["error"]["kind"] == "unauthorized"
                gone = parse_cookie(r.headers["Set-Cookie"])
                assert gone[0] == name and gone[1] == "" and gone[2]["max-age"] == "0"
                # the token itself in the cookie is no key either
                assert (await s.get("/v1/queue", headers={"Cookie": f"{name}={token}"})).status == 401
                # from a page on another port of the same host (same-site, not same-origin) the cookie does not count
                r = await s.get("/v1/queue", headers={**good, "Sec-Fetch-Site": "same-site"})
                assert r.status == 401
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await s.ws_connect("/ws?clientId=c2", headers={"Cookie": f"{name}=forged"})
                assert exc.value.status == 401
                # five failures: the address is locked out, sign-in and the right cookie included
                r = await s.get(f"/?token={token}", allow_redirects=False)
                assert r.status == 429 and "Set-Cookie" not in r.headers
                assert (await s.get("/v1/queue", headers=good)).status == 429
                assert (await (await s.get("/v1/auth", headers=good)).json())["signed_in"] is False
                assert (await s.get("/")).status == 200  # the page itself still loads

        asyncio.run(go())
    finally:
        server.stop()
    log = server.output()
    assert "/v1/queue" in log and "GET / " in log  # the access log is on (--debug) ...
    assert token not in log and cookie_key(token) not in log  # ... without the token or the cookie's key
    assert not any(token in r for r in replies)


def test_without_a_token_the_page_ignores_token_and_sets_no_cookie(tmp_path):
    async def go():
        async with client(make_root(tmp_path)) as c:
            r = await c.get("/?token=anything", allow_redirects=False)
            assert r.status == 200 and "Set-Cookie" not in r.headers

    run(go())

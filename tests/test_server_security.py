"""Bad requests, tokens, origins and paths: each gets the right status and a structured error; the server stays up."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from test_server_support import REPO, chain, client, make_root, run, submit, wait_history, wf

pytestmark = pytest.mark.timeout(60)

LIMITS = {"max_json_bytes": 64 << 10, "max_upload_bytes": 128 << 10}


@pytest.fixture
def root(tmp_path):
    root = make_root(tmp_path / "root")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "output" / "ok.png").write_bytes(_png())
    os.symlink(tmp_path / "secret.txt", root / "output" / "escape.png")
    os.symlink(tmp_path, root / "output" / "dirlink")
    os.symlink(tmp_path, root / "input" / "dirlink")
    (root / "output" / "page.html").write_text("<script>alert(1)</script>")
    return root


def _png(size=(8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def _form(name: str, content: bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False)  # send names as given, slashes included
    form.add_field("image", content, filename=name, content_type="image/png")
    for k, v in fields.items():
        form.add_field(k, v)
    return form


GOOD = chain()
BIG = {"workflow": chain(), "pad": "x" * (100 << 10)}

# (method, path, request kwargs (a callable for multipart forms), expected status, expected error kind)
BAD_REQUESTS = [
    ("POST", "/v1/prompts", {"data": "{not json"}, 400, "invalid_json"),
    ("POST", "/v1/prompts", {"data": b"\xff\xfe"}, 400, "invalid_json"),
    ("POST", "/v1/prompts", {"data": ""}, 400, "invalid_json"),
    ("POST", "/v1/prompts", {"json": [1, 2]}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"nope": 1}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "surprise": 1}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": 5}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": wf({"1": ("Number", {"value": "two"}),
                                                      "2": ("Show", {"value": ("1", "INT")})})}}, 400,
     "validation_failed"),
    ("POST", "/v1/prompts", {"json": {"workflow": wf({"1": ("Nope", {}), "2": ("Show", {"value": ("1", 0)})})}},
     400, "validation_failed"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "set": [1]}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "client_id": 12}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "client_id": "a b/c"}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "outputs": "3"}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "prompt_id": "../x"}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": {"workflow": GOOD, "front": "yes"}}, 400, "invalid_request"),
    ("POST", "/v1/prompts", {"json": BIG}, 413, "too_large"),
    ("POST", "/v1/validate", {"json": {}}, 400, "invalid_request"),
    ("POST", "/prompt", {"json": BIG}, 413, "too_large"),
    ("GET", "/v1/history?limit=abc", {}, 400, "invalid_parameter"),
    ("GET", "/v1/history?limit=0", {}, 400, "invalid_parameter"),
    ("GET", "/v1/history?status=bogus", {}, 400, "invalid_parameter"),
    ("GET", "/v1/history/nope", {}, 404, "not_found"),
    ("DELETE", "/v1/history/nope", {}, 404, "not_found"),
    ("DELETE", "/v1/prompts/nope", {}, 404, "not_found"),
    ("POST", "/v1/queue/move", {"json": {}}, 400, "invalid_request"),
    ("POST", "/v1/queue/move", {"json": {"prompt_id": "nope", "position": 0}}, 404, "not_found"),
    ("POST", "/v1/free", {"json": {"unload_models": "yes"}}, 400, "invalid_request"),
    ("POST", "/v1/interrupt", {"json": {"prompt_id": 5}}, 400, "invalid_request"),
    ("GET", "/v1/view", {}, 400, "invalid_parameter"),
    ("GET", "/v1/view?filename=missing.png", {}, 404, "file_not_found"),
    ("GET", "/v1/view?filename=ok.png&type=models", {}, 400, "invalid_parameter"),
    ("GET", "/v1/view?filename=../../secret.txt", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=..%2F..%2Fsecret.txt", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=secret.txt&subfolder=../..", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=..\\..\\secret.txt", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=/etc/passwd", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=escape.png", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=secret.txt&subfolder=dirlink", {}, 403, "path_outside_folder"),
    ("GET", "/v1/view?filename=ok.png%00.txt", {}, 400, "invalid_path"),
    ("GET", "/v1/view?filename=ok.png&thumb=5", {}, 400, "invalid_parameter"),
    ("GET", "/v1/view?filename=ok.png&thumb=big", {}, 400, "invalid_parameter"),
    ("GET", "/view?filename=../../secret.txt", {}, 403, "path_outside_folder"),
    ("GET", "/api/view?filename=escape.png", {}, 403, "path_outside_folder"),
    ("GET", "/web/../server/app.py", {}, 404, "not_found"),
    ("GET", "/web/%2E%2E/%2E%2E/secret.txt", {}, 404, "not_found"),
    # names no file can have: refused before the file system (where they were OSErrors, i.e. 500s)
    ("GET", "/web/" + "j" * 300, {}, 404, "not_found"),
    ("GET", "/web/" + "ab/" * 1500 + "c.js", {}, 404, "not_found"),
    ("GET", "/userdata/" + "j" * 300, {}, 400, "invalid_path"),
    ("POST", "/userdata/" + "j" * 300, {"data": b"x"}, 400, "invalid_path"),
    ("GET", "/v1/view?filename=" + "j" * 300, {}, 400, "invalid_path"),
    ("GET", "/v1/view?filename=ok.png&subfolder=" + "j" * 300, {}, 400, "invalid_path"),
    ("POST", "/v1/upload", {"data": b"raw"}, 415, "unsupported_media_type"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", b"not an image")}, 415, "not_an_image"),
    ("POST", "/v1/upload", {"form": lambda: _form("big.png", b"\x89PNG" + os.urandom(200 << 10))}, 413, "too_large"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", _png(), subfolder="../..")}, 403, "path_outside_folder"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", _png(), subfolder="/tmp")}, 403, "path_outside_folder"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", _png(), type="models")}, 400, "invalid_request"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", _png(), kind="AAA")}, 400, "invalid_request"),
    ("POST", "/v1/upload", {"form": lambda: _form("x.png", _png(), surprise="1")}, 400, "invalid_request"),
    ("POST", "/v1/upload", {"form": lambda: _form(".hidden.png", _png())}, 400, "invalid_filename"),
    ("POST", "/upload/image", {"form": lambda: _form("x.png", _png(), subfolder="dirlink")}, 403,
     "path_outside_folder"),
    ("POST", "/upload/mask", {"form": lambda: _form("m.png", _png(), original_ref='{"filename": "../../secret.txt"}')},
     403, "path_outside_folder"),
    ("GET", "/v1/models/custom_nodes", {}, 404, "not_found"),
    ("GET", "/v1/workflows/..%2F..%2Fsecret", {}, 400, "invalid_name"),
    ("GET", "/nope", {}, 404, "not_found"),
    ("PUT", "/v1/queue", {}, 405, "method_not_allowed"),
    ("POST", "/v1/prompts", {"json": GOOD, "headers": {"Origin": "http://evil.example"}}, 403, "forbidden_origin"),
    ("GET", "/v1/queue", {"headers": {"Origin": "null"}}, 403, "forbidden_origin"),
    ("GET", "/v1/queue", {"headers": {"Origin": "http://127.0.0.1:1"}}, 403, "forbidden_origin"),
    ("POST", "/prompt", {"json": {"prompt": {}}, "headers": {"Sec-Fetch-Site": "cross-site"}}, 403, "forbidden_origin"),
    ("GET", "/v1/queue", {"headers": {"Host": "evil.example:8188"}}, 403, "forbidden_host"),
]


def test_table_of_bad_requests(root):
    async def main():
        async with client(root, **LIMITS) as c:
            failures = []
            for method, path, kwargs, status, kind in BAD_REQUESTS:
                kwargs = dict(kwargs)
                if "form" in kwargs:
                    kwargs["data"] = kwargs.pop("form")()
                r = await c.request(method, path, **kwargs)
                try:
                    body = await r.json()
                except Exception:
                    body = {"raw": (await r.read())[:200]}
                error = body.get("error") if isinstance(body, dict) else None
                got_kind = error.get("kind", error.get("type")) if isinstance(error, dict) else None
                if r.status != status or got_kind != kind or not error.get("message"):
                    failures.append((method, path, status, kind, r.status, body))
                if r.status >= 500 or "Traceback" in json.dumps(body):
                    failures.append(("leak", method, path, body))
            assert not failures, "\n".join(map(repr, failures))
            # still up, and none of it was queued or written outside
            assert (await (await c.get("/v1/queue")).json()) == {"running": [], "pending": []}
            assert await wait_history(c, await submit(c, GOOD))
            assert not (root.parent / "x.png").exists() and not (root / "x.png").exists()
            # the page of this origin is allowed; a non-image file is served as an attachment, never inline
            r = await c.get("/v1/queue", headers={"Origin": str(c.make_url("/")).rstrip("/")})
            assert r.status == 200
            r = await c.get("/v1/view?filename=page.html")
            assert r.status == 200 and r.content_type == "application/octet-stream"
            assert r.headers["Content-Disposition"].startswith("attachment")
            # an upload named with a path keeps only its last part, inside input
            r = await c.post("/v1/upload", data=_form("../../evil.png", _png()))
            assert await r.json() == {"name": "evil.png", "subfolder": "", "type": "input"}
            assert (root / "input" / "evil.png").is_file()
            # a foreign origin cannot open the WebSocket either
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await c.ws_connect("/v1/ws", headers={"Origin": "http://evil.example"})
            assert exc.value.status == 403
    run(main())


def test_token_required_everywhere_but_the_page(root):
    async def main():
        async with client(root, token="s3cret", auth_max_failures=1000) as c:  # (many failures on purpose)
            auth = {"Authorization": "Bearer s3cret"}
            for method, path in [("GET", "/v1/queue"), ("POST", "/v1/prompts"), ("GET", "/v1/nodes"),
                                 ("GET", "/openapi.json"), ("GET", "/v1/view?filename=ok.png"), ("POST", "/prompt"),
                                 ("GET", "/object_info"), ("GET", "/api/queue"), ("POST", "/upload/image"),
                                 ("GET", "/system_stats"), ("POST", "/interrupt"), ("GET", "/nope")]:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    r = await c.request(method, path, headers=headers)
                    body = await r.json()
                    assert r.status == 401 and body["error"]["kind"] == "unauthorized", (method, path, headers)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert await (await c.get("/v1/auth")).json() == {"required": True, "signed_in": False}
            assert (await c.get("/")).status == 200
            assert (await c.get("/v1/queue", headers=auth)).status == 200
            assert (await c.get("/v1/view?filename=ok.png&token=s3cret")).status == 200  # <img> URLs
            assert (await c.get("/v1/view?filename=ok.png&token=wrong")).status == 401
            r = await c.post("/v1/prompts?token=s3cret", json={"workflow": GOOD})
            assert r.status == 401  # a query token is for GET only
            r = await c.post("/v1/prompts", json={"workflow": GOOD}, headers=auth)
            pid = (await r.json())["prompt_id"]
            await wait_history(c, pid, headers=auth)
            # WebSocket: no token, wrong token -> refused; ?token= or the header -> accepted
            for url in ("/v1/ws", "/ws?clientId=x", "/v1/ws?token=wrong"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await c.ws_connect(url)
                assert exc.value.status == 401
            ws = await c.ws_connect("/v1/ws?token=s3cret")
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
            ws = await c.ws_connect("/ws?clientId=x", headers=auth)
            assert (await ws.receive_json())["type"] == "status"
            await ws.close()
            # with a token, a non-loopback Host is fine (the server is meant to be reached by name)
            assert (await c.get("/v1/queue", headers={**auth, "Host": "gpu-box.lan:8188"})).status == 200
    run(main())


def test_refuses_public_address_without_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--root", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "CHISEL_TOKEN"})
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in proc.stderr and "--token" in proc.stderr


# -- repeated auth failures, CORS, the token kept out of logs and replies -----------------------------------------------
def test_repeated_auth_failures_lock_the_address_out(root):
    async def main():
        async with client(root, token="s3cret", auth_max_failures=3, auth_lockout=60.0) as c:
            good = {"Authorization": "Bearer s3cret"}
            assert (await c.get("/v1/queue", headers=good)).status == 200
            for _ in range(3):
                assert (await c.get("/v1/queue", headers={"Authorization": "Bearer guess"})).status == 401
            r = await c.get("/v1/queue", headers={"Authorization": "Bearer guess"})
            body = await r.json()
            assert r.status == 429 and body["error"]["kind"] == "too_many_auth_failures"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            # while locked out the token is not even compared: a right guess is not told apart from a wrong one
            assert (await c.get("/v1/queue", headers=good)).status == 429
            assert (await c.get("/v1/auth")).status == 200  # the public page and auth probe still answer

    run(main())


def test_auth_throttle_window():
    from server.security import AuthThrottle

    t = AuthThrottle(max_failures=2, window=10.0)
    assert t.retry_after("a", now=0.0) == 0.0
    t.failed("a", now=0.0)
    assert t.retry_after("a", now=1.0) == 0.0
    t.failed("a", now=1.0)
    assert t.retry_after("a", now=2.0) == pytest.approx(9.0)
    assert t.retry_after("b", now=2.0) == 0.0  # per address
    assert t.retry_after("a", now=11.5) == 0.0  # the failure at 0.0 has left the window
    small = AuthThrottle(max_failures=1, window=10.0, max_addresses=2)
    for i, address in enumerate("xyz"):
        small.failed(address, now=float(i))
    assert small.retry_after("x", now=3.0) == 0.0 and small.retry_after("z", now=3.0) > 0  # bounded memory


def test_no_cors_unless_an_origin_is_allowed(root):
    foreign = "http://app.example"

    async def main():
        async with client(root) as c:
            same = str(c.make_url("/")).rstrip("/")
            r = await c.get("/v1/queue", headers={"Origin": same})
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
            r = await c.get("/v1/queue", headers={"Origin": foreign})
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            r = await c.options("/v1/prompts", headers={"Origin": foreign, "Access-Control-Request-Method": "POST"})
            assert r.status in (403, 405) and "Access-Control-Allow-Origin" not in r.headers
        async with client(root, allowed_origins=(foreign,)) as c:
            r = await c.options("/v1/prompts", headers={"Origin": foreign, "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "content-type"})
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == foreign
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "Content-Type" in r.headers["Access-Control-Allow-Headers"]
            r = await c.get("/v1/queue", headers={"Origin": foreign})
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == foreign
            r = await c.get("/v1/history/nope", headers={"Origin": foreign})  # errors carry the headers too
            assert r.status == 404 and r.headers["Access-Control-Allow-Origin"] == foreign
            r = await c.get("/v1/queue", headers={"Origin": "http://other.example"})
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers

    run(main())


def test_the_token_is_never_logged_nor_echoed(tmp_path):
    from test_server_support import ServeProcess
    import requests

    token, wrong = "tok-" + os.urandom(8).hex(), "bad-" + os.urandom(8).hex()
    root = make_root(tmp_path / "root")
    proc = ServeProcess(root, "--debug", "--token", token, "--auth-max-failures", "100")
    replies = []
    try:
        s = requests.Session()
        for url, headers in [(f"/v1/queue?token={token}", {}), ("/v1/queue", {"Authorization": f"Bearer {token}"}),
                             (f"/v1/queue?token={wrong}", {}), ("/v1/queue", {"Authorization": f"Bearer {wrong}"}),
                             (f"/nope?token={token}", {}), (f"/v1/view?filename=x.png&token={token}", {}),
                             (f"/v1/history?limit=abc&token={token}", {}), (f"/system_stats?token={token}", {})]:
            r = s.get(proc.url + url, headers=headers, timeout=10)
            replies.append(r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items()))
        r = s.post(proc.url + "/v1/prompts", json={"workflow": {"nodes": {"1": {"type": token}}}},
                   headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 400
    finally:
        proc.stop()
    log = proc.output()
    assert "/v1/queue" in log  # the access log is on (--debug) ...
    assert token not in log and wrong not in log  # ... without tokens
    # no reply repeats a token it was sent (the prompt above echoes only its own workflow back)
    assert not any(token in r or wrong in r for r in replies)

"""The user's saved workflows (/v1/user/workflows) over real HTTP: save, list, open, rename, delete; where they are
kept (ComfyUI's user folder, so both frontends see them); and the clear 400 that bad names get."""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from test_server_support import client, make_root, run

pytestmark = pytest.mark.timeout(60)
WF = {"format": "chisel-workflow", "version": 1, "nodes": {"1": {"type": "Number", "inputs": {"value": 3}}}}


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def url(name: str) -> str:
    return "/v1/user/workflows/" + quote(name, safe="")


def test_save_list_open_rename_delete(root):
    async def main():
        async with client(root) as c:
            assert await (await c.get("/v1/user/workflows")).json() == []
            r = await c.put(url("My portrait, v2"), json={"workflow": WF})
            assert r.status == 200
            info = await r.json()
            assert info["name"] == "My portrait, v2" and info["size"] > 0
            stored = root / "user" / "default" / "workflows" / "My portrait, v2.json"
            assert json.loads(stored.read_text()) == WF  # where ComfyUI's frontend keeps its saved workflows
            # a workflow ComfyUI's frontend saved there is listed too
            (stored.parent / "from comfy.json").write_text(json.dumps({"nodes": [], "links": []}))
            (stored.parent / ".hidden.json").write_text("{}")
            (stored.parent / "notes.txt").write_text("not a workflow")
            names = [w["name"] for w in await (await c.get("/v1/user/workflows")).json()]
            assert names == ["from comfy", "My portrait, v2"]
            assert await (await c.get(url("My portrait, v2"))).json() == WF
            assert await (await c.get(url("My portrait, v2.json"))).json() == WF  # the extension may be given

            # save-as onto a taken name: refused when asked not to overwrite, replaced otherwise
            changed = {**WF, "nodes": {"1": {"type": "Number", "inputs": {"value": 4}}}}
            r = await c.put(url("My portrait, v2") + "?overwrite=false", json={"workflow": changed})
            assert r.status == 409 and (await r.json())["error"]["kind"] == "exists"
            assert json.loads(stored.read_text()) == WF
            r = await c.put(url("My portrait, v2"), json={"workflow": changed})
            assert r.status == 200 and json.loads(stored.read_text()) == changed

            # rename: onto a taken name refused unless asked; the old name is gone afterwards
            r = await c.post(url("My portrait, v2") + "/rename", json={"to": "from comfy"})
            assert r.status == 409 and (await r.json())["error"]["kind"] == "exists"
            r = await c.post(url("My portrait, v2") + "/rename", json={"to": "Portrait final"})
            assert r.status == 200 and (await r.json())["name"] == "Portrait final"
            assert not stored.exists()
            assert await (await c.get(url("Portrait final"))).json() == changed
            r = await c.get(url("My portrait, v2"))
            assert r.status == 404 and (await r.json())["error"]["kind"] == "not_found"
            r = await c.post(url("nothing here") + "/rename", json={"to": "x"})
            assert r.status == 404

            r = await c.delete(url("Portrait final"))
            assert r.status == 200 and await r.json() == {"deleted": "Portrait final"}
            assert [w["name"] for w in await (await c.get("/v1/user/workflows")).json()] == ["from comfy"]
            assert (await c.delete(url("Portrait final"))).status == 404

            # a stored file that is not JSON: a clear error, not a 500
            (stored.parent / "broken.json").write_text("{nope")
            r = await c.get(url("broken"))
            assert r.status == 422 and (await r.json())["error"]["kind"] == "invalid_workflow_file"
    run(main())


@pytest.mark.parametrize("name, says", [
    ("..", "dot"),
    ("../escape", "'/'"),
    ("..\\escape", "'\\\\'"),
    (".hidden", "dot"),
    (" padded", "space"),
    ("a:b", "':'"),
    ("tab\there", "control"),
    ("x" * 101, "at most 100 characters"),
    ("   ", "required"),
])
def test_bad_names_get_a_clear_error(root, name, says):
    async def main():
        async with client(root) as c:
            # (HTTP clients resolve a ".." path segment before sending: that name can only come in a body)
            calls = [] if name == ".." else [("PUT", url(name), {"json": {"workflow": WF}}), ("GET", url(name), {}),
                                              ("DELETE", url(name), {})]
            for method, path, kw in calls:
                r = await c.request(method, path, **kw)
                body = await r.json()
                assert r.status == 400 and body["error"]["kind"] == "invalid_name", (method, body)
                assert says in body["error"]["message"], body
            # renaming to a bad name is refused the same way, and the workflow stays where it was
            assert (await c.put(url("good"), json={"workflow": WF})).status == 200
            r = await c.post(url("good") + "/rename", json={"to": name})
            assert r.status == 400 and (await r.json())["error"]["kind"] == "invalid_name"
            assert (root / "user" / "default" / "workflows" / "good.json").is_file()
            assert not list((root / "user").rglob("escape*"))
    run(main())


def test_bad_bodies_are_refused(root):
    async def main():
        async with client(root) as c:
            for body in ([1, 2], {"workflow": "text"}, {"workflow": WF, "extra": 1}, {}):
                r = await c.put(url("w"), json=body)
                assert r.status == 400 and (await r.json())["error"]["kind"] in ("invalid_request", "invalid_json")
            r = await c.put(url("w") + "?overwrite=maybe", json={"workflow": WF})
            assert r.status == 400 and (await r.json())["error"]["kind"] == "invalid_parameter"
            r = await c.put(url("w"), json={"workflow": WF})
            assert r.status == 200
            r = await c.post(url("w") + "/rename", json={"to": 5})
            assert r.status == 400
            assert not (root / "user" / "default" / "workflows" / "5.json").exists()
    run(main())


def test_names_too_long_in_bytes_are_refused_before_the_file_system(root):
    async def main():
        async with client(root) as c:
            r = await c.put(url("é" * 100), json={"workflow": WF})  # 100 characters, 200 bytes: fine
            assert r.status == 200
            r = await c.put(url("漢" * 80), json={"workflow": WF})  # 80 characters, 240 bytes
            body = await r.json()
            assert r.status == 400 and "at most 200 bytes" in body["error"]["message"]
    run(main())

"""ComfyUI's newer HTTP details on a real in-process server, through real HTTP and WebSocket clients: ``/jobs``,
``/features`` and the ``feature_flags`` exchange, previews only with a preview method, ``queue_running`` holding only
the executing prompt, per-user settings and user data kept in the root, ``/extensions`` and ``/i18n``."""
from __future__ import annotations

import asyncio
import json

import pytest

from test_server_support import client, make_root, run, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def done(pid):
    return lambda f: f["type"] == "executing" and f["data"]["node"] is None and f["data"]["prompt_id"] == pid


PREVIEWS = {"1": {"class_type": "Number", "inputs": {"value": 4}},
            "2": {"class_type": "PreviewSteps", "inputs": {"x": ["1", 0], "steps": 3}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


async def _binary_frames(c, ws, client_id: str) -> int:
    pid = (await (await c.post("/prompt", json={"prompt": PREVIEWS, "client_id": client_id})).json())["prompt_id"]
    frames = await until(ws, done(pid))
    return sum(1 for f in frames if f["type"] == "<binary>")


def test_previews_on_comfy_ws_only_with_a_preview_method(root):
    async def main():
        async with client(root) as c:  # default: --preview-method none
            ws = await c.ws_connect("/ws?clientId=c1")
            native = await c.ws_connect("/v1/ws?client_id=c1")
            assert await _binary_frames(c, ws, "c1") == 0
            # the native WebSocket of the same client still gets them
            seen = 0
            while True:
                msg = await native.receive(timeout=10)
                if msg.type.name == "BINARY":
                    assert msg.data[:8] == (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
                    seen += 1
                elif json.loads(msg.data)["type"] == "finished":
                    break
            assert seen == 3
            await ws.close()
            await native.close()
        for method in ("auto", "latent2rgb", "taesd"):
            async with client(root, preview_method=method) as c:
                ws = await c.ws_connect("/api/ws?clientId=c2")
                assert await _binary_frames(c, ws, "c2") == 3
                await ws.close()
    run(main())


def test_features_and_feature_flags_message(root):
    async def main():
        async with client(root, max_upload_bytes=5 << 20) as c:
            for path in ("/features", "/api/features"):
                r = await c.get(path)
                assert r.status == 200
                assert await r.json() == {"supports_preview_metadata": False, "max_upload_size": 5 << 20}
            ws = await c.ws_connect("/ws?clientId=f1")
            first = await ws.receive_json()
            assert first["type"] == "status" and first["data"]["sid"] == "f1"
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            reply = await ws.receive_json(timeout=5)
            assert reply == {"type": "feature_flags", "data": {"supports_preview_metadata": False,
                                                                "max_upload_size": 5 << 20}}
            await ws.send_json({"type": "feature_flags", "data": {}})  # only the first message is an offer
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.3)
            await ws.close()
            assert await (await c.get("/api/extensions")).json() == []
            assert await (await c.get("/i18n")).json() == {}
    run(main())


SLOW = {"1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 200, "delay": 0.02}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def test_queue_running_lists_only_the_executing_prompt(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/ws?clientId=q")
            writing = {"1": {"class_type": "Number", "inputs": {"value": 1}},
                       "2": {"class_type": "SaveText", "inputs": {"value": ["1", 0], "write_delay": 3.0}}}
            first = (await (await c.post("/prompt", json={"prompt": writing, "client_id": "q"})).json())["prompt_id"]
            second = (await (await c.post("/prompt", json={"prompt": SLOW, "client_id": "q"})).json())["prompt_id"]
            await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == second)
            native = await (await c.get("/v1/queue")).json()
            assert {i["prompt_id"] for i in native["running"]} == {first, second}  # one still writing its file
            queue = await (await c.get("/api/queue")).json()
            assert [e[1] for e in queue["queue_running"]] == [second]
            assert [e[1] for e in queue["queue_pending"]] == [first]  # still saving: in the queue, not yet history
            assert await (await c.get(f"/history/{first}")).json() == {}
            jobs = await (await c.get("/api/jobs", params={"status": "in_progress,pending"})).json()
            assert {(j["id"], j["status"]) for j in jobs["jobs"]} == {(first, "in_progress"), (second, "in_progress")}
            await c.post("/interrupt")
            await until(ws, done(second))
            await until(ws, done(first), timeout=10)
            await ws.close()
    run(main())


def test_jobs_listing_and_detail(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/ws?clientId=j")
            ok = {"1": {"class_type": "Number", "inputs": {"value": 9}},
                  "2": {"class_type": "MakeImage", "inputs": {"value": 9, "size": 16}}}
            bad = {"1": {"class_type": "Number", "inputs": {"value": 3}},
                   "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
                   "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
            extra = {"extra_pnginfo": {"workflow": {"id": "wf-1", "nodes": [], "links": []}}}
            ids = []
            for prompt in (ok, bad):
                r = await c.post("/prompt", json={"prompt": prompt, "client_id": "j", "extra_data": extra})
                ids.append((await r.json())["prompt_id"])
                await until(ws, done(ids[-1]))
            running = (await (await c.post("/prompt", json={"prompt": SLOW, "client_id": "j"})).json())["prompt_id"]
            await until(ws, lambda f: f["type"] == "progress")
            pending = (await (await c.post("/prompt", json={"prompt": SLOW, "client_id": "j"})).json())["prompt_id"]

            body = await (await c.get("/api/jobs", params={"limit": "10", "offset": "0"})).json()
            assert body["pagination"] == {"offset": 0, "limit": 10, "total": 4, "has_more": False}
            by_id = {j["id"]: j for j in body["jobs"]}
            assert [j["id"] for j in body["jobs"]] == [pending, running, ids[1], ids[0]]  # newest first
            assert by_id[pending]["status"] == "pending" and by_id[running]["status"] == "in_progress"
            done_ok, failed = by_id[ids[0]], by_id[ids[1]]
            assert done_ok["status"] == "completed" and done_ok["outputs_count"] == 1
            assert done_ok["workflow_id"] == "wf-1" and isinstance(done_ok["create_time"], int)
            assert done_ok["preview_output"]["nodeId"] == "2" and done_ok["preview_output"]["mediaType"] == "images"
            assert done_ok["preview_output"]["filename"].endswith(".png")
            assert done_ok["execution_end_time"] >= done_ok["execution_start_time"]
            assert failed["status"] == "failed" and failed["execution_error"]["node_id"] == "2"
            assert failed["execution_error"]["exception_type"] == "ValueError"

            page = await (await c.get("/jobs", params={"status": "completed,failed", "limit": "1",
                                                       "offset": "1", "sort_order": "asc"})).json()
            assert [j["id"] for j in page["jobs"]] == [ids[1]]
            assert page["pagination"] == {"offset": 1, "limit": 1, "total": 2, "has_more": False}
            wf = await (await c.get("/jobs", params={"workflow_id": "wf-1"})).json()
            assert {j["id"] for j in wf["jobs"]} == set(ids)

            detail = await (await c.get(f"/api/jobs/{ids[0]}")).json()
            assert detail["outputs"]["2"]["images"][0]["type"] == "output"
            assert detail["workflow"]["prompt"] == ok
            assert detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
            assert detail["execution_status"]["status_str"] == "success"
            assert (await (await c.get(f"/api/jobs/{pending}")).json())["status"] == "pending"
            r = await c.get("/api/jobs/nope")
            assert r.status == 404
            for params in ({"status": "bogus"}, {"sort_by": "x"}, {"limit": "-5"}):
                r = await c.get("/api/jobs", params=params)
                assert r.status == 400 and "error" in await r.json()
            await c.post("/queue", json={"clear": True})
            await c.post("/interrupt")
            await until(ws, done(running))
            await ws.close()
    run(main())


def test_settings_and_userdata_in_the_root(root):
    async def main():
        async with client(root) as c:
            assert await (await c.get("/api/users")).json() == {"storage": "server", "migrated": False}
            # a first visit opens the default graph (no template browser: Chisel has no templates)
            assert await (await c.get("/api/settings")).json() == {"Comfy.TutorialCompleted": True}
            assert (await c.post("/api/settings", json={"Comfy.A": 1, "Comfy.B": "x"})).status == 200
            assert (await c.post("/settings/Comfy.B", json={"nested": [1, 2]})).status == 200
            expected = {"Comfy.TutorialCompleted": True, "Comfy.A": 1, "Comfy.B": {"nested": [1, 2]}}
            assert await (await c.get("/settings")).json() == expected
            assert await (await c.get("/api/settings/Comfy.A")).json() == 1
            # settings posted at once (as the frontend does at start) are all kept
            await asyncio.gather(*(c.post(f"/api/settings/Many.{i}", json=i) for i in range(20)))
            settings = await (await c.get("/api/settings")).json()
            assert all(settings.pop(f"Many.{i}") == i for i in range(20))
            assert settings == expected
            assert await (await c.get("/api/settings/Missing")).json() is None
            stored = json.loads((root / "user" / "default" / "comfy.settings.json").read_text())
            assert {k: v for k, v in stored.items() if not k.startswith("Many.")} == expected
            assert await (await c.get("/users")).json() == {"storage": "server", "migrated": True}

            workflow = json.dumps({"nodes": [], "links": [], "version": 0.4}).encode()
            r = await c.post("/api/userdata/workflows%2Fmine.json", data=workflow)
            assert r.status == 200 and await r.json() == "workflows/mine.json"
            assert (root / "user" / "default" / "workflows" / "mine.json").read_bytes() == workflow
            r = await c.post("/api/userdata/workflows%2Fmine.json?overwrite=false", data=b"{}")
            assert r.status == 409
            r = await c.get("/api/userdata/workflows%2Fmine.json")
            assert r.status == 200 and await r.read() == workflow
            assert await (await c.get("/api/userdata", params={"dir": "workflows"})).json() == ["mine.json"]
            full = await (await c.get("/api/userdata", params={"dir": "workflows", "full_info": "true"})).json()
            assert full[0]["path"] == "mine.json" and full[0]["size"] == len(workflow)
            r = await c.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fsub%2Fmoved.json?full_info=true")
            assert r.status == 200 and (await r.json())["path"] == "workflows/sub/moved.json"
            assert await (await c.get("/userdata", params={"dir": "workflows", "recurse": "true"})).json() == \
                ["sub/moved.json"]
            v2 = await (await c.get("/api/v2/userdata")).json()
            assert {e["path"]: e["type"] for e in v2} == {"workflows": "directory", "workflows/sub": "directory",
                                                          "comfy.settings.json": "file",
                                                          "workflows/sub/moved.json": "file"}
            assert (await c.delete("/api/userdata/workflows%2Fsub%2Fmoved.json")).status == 204
            assert (await c.get("/api/userdata/workflows%2Fsub%2Fmoved.json")).status == 404
            assert (await c.get("/api/userdata", params={"dir": "nothing"})).status == 404

            # nothing leaves the user's folder
            (root / "secret.txt").write_text("no")
            for path in ("/api/userdata/..%2F..%2Fsecret.txt", "/api/userdata/%2Fetc%2Fpasswd"):
                r = await c.get(path)
                assert r.status in (403, 404) and "error" in await r.json()
                r = await c.post(path, data=b"x")
                assert r.status in (403, 404)
            assert (root / "secret.txt").read_text() == "no"
            r = await c.get("/api/userdata", params={"dir": "../.."})
            assert r.status == 403
            r = await c.post("/api/settings", data=b"[1, 2]")
            assert r.status == 400 and "error" in await r.json()
    run(main())


def test_uploads_with_overwrite_subfolder_and_type(root):
    async def main():
        import aiohttp
        from PIL import Image

        def png(colour) -> bytes:
            import io
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
            return buf.getvalue()

        async def upload(data: bytes, **fields: str):
            form = aiohttp.FormData()
            form.add_field("image", data, filename="pic.png")
            for k, v in fields.items():
                form.add_field(k, v)
            r = await c.post("/api/upload/image", data=form)
            return r.status, await r.json()

        async with client(root) as c:
            red, blue = png("red"), png("blue")
            assert await upload(red, subfolder="a/b") == (200, {"name": "pic.png", "subfolder": "a/b", "type": "input"})
            assert await upload(red, subfolder="a/b") == (200, {"name": "pic.png", "subfolder": "a/b", "type": "input"})
            assert (await upload(blue, subfolder="a/b"))[1]["name"] == "pic (1).png"  # a different file: renamed
            assert (await upload(blue, subfolder="a/b", overwrite="true"))[1]["name"] == "pic.png"
            assert (root / "input" / "a" / "b" / "pic.png").read_bytes() == blue
            assert await upload(red, type="temp") == (200, {"name": "pic.png", "subfolder": "", "type": "temp"})
            r = await c.get("/view", params={"filename": "pic.png", "type": "temp"})
            assert r.status == 200 and await r.read() == red
            status, body = await upload(red, subfolder="../outside")
            assert status == 403 and "error" in body
            status, body = await upload(red, type="models")
            assert status == 400 and "error" in body
    run(main())


def test_comfyui_frontend_served_beside_the_api(root):
    pytest.importorskip("comfyui_frontend_package", reason="installed by the test extra (comfyui-frontend-package)")
    from test_server_support import REPO

    async def main():
        async with client(root, frontend="comfyui", web_dir=REPO / "web") as c:
            r = await c.get("/")
            page = await r.text()
            assert r.status == 200 and "text/html" in r.content_type and '<div id="vue-app"' in page
            asset = next(p for p in page.split('"') if p.startswith("./assets/") and p.endswith(".js"))
            r = await c.get(asset[1:])
            assert r.status == 200 and "javascript" in r.content_type
            r = await c.get("/chisel")  # Chisel's canvas moves here
            assert r.status == 200 and "web/js/main.js" in await r.text()
            assert (await c.get("/web/js/main.js")).status == 200
            assert "Slow" in await (await c.get("/api/object_info")).json()  # the API comes first
            assert await (await c.get("/api/extensions")).json() == []
            assert await (await c.get("/user.css")).text() == ""
            assert await (await c.get("/api/experiment/models/checkpoints")).json() == []
            for path in ("/nope.js", "/..%2F..%2Fpyproject.toml", "/assets/%2E%2E/%2E%2E/index.html/x"):
                r = await c.get(path)
                assert r.status == 404 and "error" in await r.json()
            assert (root / "user" / "default" / "workflows").is_dir()
    run(main())

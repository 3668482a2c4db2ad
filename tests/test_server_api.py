"""The native API on a real aiohttp server (ephemeral port) driven by aiohttp's HTTP and WebSocket clients."""
from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from test_server_support import chain, client, finished, make_root, run, submit, until, wait_history, wf

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def test_submit_events_in_order_results_and_history(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=me")
            hello = await ws.receive_json()
            assert hello == {"type": "hello", "data": {"client_id": "me", "version": hello["data"]["version"]}}
            pid = await submit(c, chain(steps=3), client_id="me")
            frames = await until(ws, finished(pid))
            events = [(f["type"], f["data"].get("node_id")) for f in frames if f["type"] != "queue"]
            assert events == [("started", None), ("executing", "1"), ("executed", "1"), ("executing", "2"),
                              ("progress", "2"), ("progress", "2"), ("progress", "2"), ("executed", "2"),
                              ("executing", "3"), ("executed", "3"), ("finished", None)]
            assert all(f["data"]["prompt_id"] == pid for f in frames if f["type"] != "queue")
            assert [f["data"]["value"] for f in frames if f["type"] == "progress"] == [1, 2, 3]
            done = frames[-1]["data"]
            assert done["status"] == "success" and done["outputs"] == {"3": {"text": ["2"]}}
            # a queue broadcast reached everyone
            assert any(f["type"] == "queue" for f in frames)

            entry = await (await c.get(f"/v1/history/{pid}")).json()
            assert entry["status"] == "success" and entry["executed"] == ["1", "2", "3"] and entry["cached"] == []
            assert entry["outputs"] == {"3": {"text": ["2"]}} and set(entry["timings"]) == {"1", "2", "3"}
            assert entry["workflow"]["nodes"]["2"]["inputs"]["steps"] == 3 and entry["errors"] == []
            assert entry["created"] <= entry["started"] <= entry["finished"] and entry["attempts"] == 1

            # the same workflow again: everything cached, still a full history entry
            pid2 = await submit(c, chain(steps=3), client_id="me")
            frames = await until(ws, finished(pid2))
            assert [f["type"] for f in frames if f["type"] not in ("queue",)][:2] == ["started", "cached"]
            entry2 = await wait_history(c, pid2)
            assert entry2["cached"] == ["1", "2", "3"] and entry2["executed"] == []
            assert entry2["outputs"] == {"3": {"text": ["2"]}}
            items = (await (await c.get("/v1/history?limit=10")).json())["items"]
            assert [i["prompt_id"] for i in items] == [pid2, pid]  # newest first
            assert [i["prompt_id"] for i in (await (await c.get("/v1/history?limit=1&offset=1")).json())["items"]] == [pid]
            await ws.close()
    run(main())


def test_validation_overrides_and_node_failure(root):
    async def main():
        async with client(root) as c:
            bad = wf({"1": ("Number", {"value": 5000}), "2": ("Show", {"value": ("1", "INT")}), "3": ("Nope", {}),
                      "4": ("Show", {"value": ("3", "x")})})
            r = await c.post("/v1/prompts", json={"workflow": bad})
            body = await r.json()
            assert r.status == 400 and body["error"]["kind"] == "validation_failed"
            kinds = {(e["kind"], e.get("node_id")) for e in body["errors"]}
            assert ("value_out_of_range", "1") in kinds and ("unknown_node_type", "3") in kinds
            assert (await (await c.get("/v1/queue")).json()) == {"running": [], "pending": []}  # nothing queued

            r = await c.post("/v1/validate", json={"workflow": bad})
            body = await r.json()
            assert r.status == 200 and body["valid"] is False and len(body["errors"]) >= 2
            r = await c.post("/v1/validate", json={"workflow": chain()})
            assert await r.json() == {"valid": True, "errors": []}

            # overrides fix the bad value; a random seed is resolved and recorded
            good = wf({"1": ("Number", {"value": 5000}), "2": ("Show", {"value": ("1", "INT")}),
                       "5": ("RandomPick", {"seed": -1}), "6": ("Show", {"value": ("5", "INT")})})
            pid = await submit(c, good, set={"1.value": 7})
            entry = await wait_history(c, pid)
            assert entry["status"] == "success" and entry["outputs"]["2"] == {"text": ["7"]}
            assert entry["workflow"]["nodes"]["1"]["inputs"]["value"] == 7
            assert isinstance(entry["resolved"]["5"]["seed"], int)
            r = await c.post("/v1/prompts", json={"workflow": good, "set": {"9.value": 1}})
            assert r.status == 400 and (await r.json())["errors"][0]["kind"] == "unknown_node"

            # a failing node fails its branch; the other branch finishes; no traceback without --debug
            mixed = wf({"1": ("Number", {"value": 1}), "2": ("Fail", {"x": ("1", "INT")}),
                        "3": ("Show", {"value": ("2", "INT")}), "4": ("Show", {"value": ("1", "INT")})})
            pid = await submit(c, mixed)
            entry = await wait_history(c, pid)
            assert entry["status"] == "error" and entry["outputs"] == {"4": {"text": ["1"]}}
            [err] = entry["errors"]
            assert err["kind"] == "execution_failed" and err["node_id"] == "2" and "refusing 1" in err["message"]
            assert "traceback" not in err.get("details", {})
    run(main())


def test_comfy_formats_accepted_on_native_route(root):
    async def main():
        async with client(root) as c:
            api = {"1": {"class_type": "Number", "inputs": {"value": 4}},
                   "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
            entry = await wait_history(c, await submit(c, api))
            assert entry["status"] == "success" and entry["outputs"]["2"] == {"text": ["4"]}
            ui = {"version": 0.4, "links": [[1, 1, 0, 2, 0, "INT"]],
                  "nodes": [{"id": 1, "type": "Number", "widgets_values": [6], "outputs": [{"links": [1]}]},
                            {"id": 2, "type": "Show", "inputs": [{"name": "value", "link": 1}]}]}
            entry = await wait_history(c, await submit(c, ui))
            assert entry["status"] == "success" and entry["outputs"]["2"] == {"text": ["6"]}
            # the same conversion, on its own
            r = await c.post("/v1/workflow/convert", json={"workflow": ui})
            native = (await r.json())["workflow"]
            assert native["nodes"]["1"] == {"type": "Number", "inputs": {"value": 6}}
            assert native["nodes"]["2"]["inputs"]["value"] == {"node": "1", "output": "INT"}
            r = await c.post("/v1/workflow/convert", json={"workflow": {"nodes": [{"id": 1, "type": "Nope"}],
                                                                        "links": []}})
            body = await r.json()
            assert r.status == 400 and body["errors"][0]["kind"] == "unknown_node_type"
    run(main())


def test_queue_move_cancel_interrupt_and_history_delete(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=q")
            slow = await submit(c, chain(value=1, steps=200, delay=0.02), client_id="q")
            await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == slow)
            a, b, d = [await submit(c, chain(value=v, steps=1), client_id="q") for v in (10, 11, 12)]
            q = await (await c.get("/v1/queue")).json()
            assert [i["prompt_id"] for i in q["running"]] == [slow]
            assert [i["prompt_id"] for i in q["pending"]] == [a, b, d]
            assert q["pending"][0]["client_id"] == "q" and q["pending"][0]["number"] == 2

            r = await c.post("/v1/queue/move", json={"prompt_id": d, "position": 0})
            assert [i["prompt_id"] for i in (await r.json())["pending"]] == [d, a, b]
            r = await c.post("/v1/queue/move", json={"prompt_id": a, "position": 99})
            assert [i["prompt_id"] for i in (await r.json())["pending"]] == [d, b, a]
            r = await c.post("/v1/queue/move", json={"prompt_id": slow, "position": 0})
            assert r.status == 409

            r = await c.delete(f"/v1/prompts/{b}")
            assert (await r.json()) == {"prompt_id": b, "status": "cancelled"}
            r = await c.delete(f"/v1/prompts/{b}")
            assert r.status == 409 and (await r.json())["error"]["status"] == "cancelled"

            r = await c.post("/v1/interrupt", json={})
            assert (await r.json()) == {"interrupted": slow}
            frames = await until(ws, finished(slow))
            assert ("interrupted", "2") in [(f["type"], f["data"].get("node_id")) for f in frames]
            assert frames[-1]["data"]["status"] == "interrupted"

            # the rest run in the new order
            order = []
            for _ in range(2):
                f = await until(ws, lambda f: f["type"] == "finished")
                order.append(f[-1]["data"]["prompt_id"])
            assert order == [d, a]
            statuses = {i["prompt_id"]: i["status"] for i in (await (await c.get("/v1/history")).json())["items"]}
            assert statuses == {slow: "interrupted", a: "success", b: "cancelled", d: "success"}
            items = (await (await c.get("/v1/history?status=cancelled,interrupted")).json())["items"]
            assert {i["prompt_id"] for i in items} == {slow, b}

            # deleting a running prompt interrupts it
            pid = await submit(c, chain(value=3, steps=200, delay=0.02), client_id="q")
            await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == pid)
            assert (await (await c.delete(f"/v1/prompts/{pid}")).json())["status"] == "interrupting"
            assert (await until(ws, finished(pid)))[-1]["data"]["status"] == "interrupted"

            r = await c.delete(f"/v1/history/{b}")
            assert r.status == 200 and (await c.get(f"/v1/history/{b}")).status == 404
            await ws.close()
    run(main())


def test_writing_files_does_not_hold_up_the_next_prompt(root):
    """MakeImage's file takes 0.8 s to write: the next prompt starts (and finishes) meanwhile; the first
    prompt is `success` in history only once its file is on disk; /view of the file waits for it."""
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=w")
            slow_write = await submit(c, wf({"1": ("MakeImage", {"value": 10, "write_delay": 0.8})}), client_id="w")
            quick = await submit(c, chain(value=5, steps=2), client_id="w")
            frames = await until(ws, lambda f: f["type"] == "executed" and f["data"]["prompt_id"] == slow_write)
            image = frames[-1]["data"]["ui"]["images"][0]
            path = root / "output" / image["filename"]
            assert not path.exists()  # still being written
            r = await c.get("/v1/view", params={"filename": image["filename"], "type": "output"})
            assert r.status == 200 and (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"  # waited for the writer

            frames = await until(ws, finished(slow_write))
            types = [(f["type"], f["data"].get("prompt_id")) for f in frames if f["type"] != "queue"]
            assert ("finished", quick) in types  # the next prompt ran while the file was being written
            assert path.stat().st_size > 0
            assert (await wait_history(c, slow_write))["status"] == "success"
            await ws.close()
    run(main())


def test_view_thumbnails_upload_and_workflow_from_png(root):
    async def main():
        from PIL import Image

        async with client(root) as c:
            pid = await submit(c, wf({"1": ("MakeImage", {"value": 200, "size": 300})}))
            entry = await wait_history(c, pid)
            ref = entry["outputs"]["1"]["images"][0]
            r = await c.get("/v1/view", params={"filename": ref["filename"], "subfolder": "", "type": "output"})
            data = await r.read()
            assert r.status == 200 and r.content_type == "image/png"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert Image.open(io.BytesIO(data)).size == (300, 300)
            r = await c.get("/v1/view", params={"filename": ref["filename"], "thumb": "64"})
            thumb = Image.open(io.BytesIO(await r.read()))
            assert r.content_type == "image/webp" and max(thumb.size) == 64
            r = await c.get("/v1/view", params={"filename": ref["filename"], "thumb": "64", "format": "jpeg"})
            assert r.content_type == "image/jpeg"

            # the workflow comes back out of the PNG
            r = await c.post("/v1/workflow/from-png", data=data, headers={"Content-Type": "image/png"})
            back = await r.json()
            assert r.status == 200 and back["workflow"]["nodes"]["1"]["inputs"]["size"] == 300
            r = await c.post("/v1/workflow/from-png", data=b"not a png")
            assert r.status == 415

            # uploads: an image into input (a second one with the same name is renamed), a subfolder, a mask
            buf = io.BytesIO()
            Image.new("RGB", (20, 10), "red").save(buf, format="PNG")
            png = buf.getvalue()

            async def upload(name, content, **fields):
                form = aiohttp.FormData()
                form.add_field("image", content, filename=name, content_type="image/png")
                for k, v in fields.items():
                    form.add_field(k, v)
                r = await c.post("/v1/upload", data=form)
                return r.status, await r.json()

            assert await upload("a.png", png) == (200, {"name": "a.png", "subfolder": "", "type": "input"})
            assert (root / "input" / "a.png").read_bytes() == png
            assert (await upload("a.png", png))[1]["name"] == "a.png"  # same bytes: reused
            buf2 = io.BytesIO()
            Image.new("RGB", (20, 10), "blue").save(buf2, format="PNG")
            assert (await upload("a.png", buf2.getvalue()))[1]["name"] == "a (1).png"
            assert (await upload("a.png", buf2.getvalue(), overwrite="true"))[1]["name"] == "a.png"
            assert (await upload("m.png", png, subfolder="masks/x", kind="mask")) == (
                200, {"name": "m.png", "subfolder": "masks/x", "type": "input"})
            r = await c.get("/v1/view", params={"filename": "m.png", "subfolder": "masks/x", "type": "input"})
            assert r.status == 200
            assert await (await c.get("/v1/models/input")).json() == ["a (1).png", "a.png", "masks/x/m.png"]
    run(main())


def test_meta_routes_nodes_schema_workflows_models_system_free_openapi(root):
    (root / "workflows").mkdir()
    (root / "workflows" / "add.json").write_text(json.dumps(wf({"1": ("Number", {})}, meta={"title": "Adding"})))
    (root / "workflows" / "plain.json").write_text(json.dumps(wf({"1": ("Number", {})})))
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / "m.safetensors").write_bytes(b"x")
    (root / "web").mkdir()
    (root / "web" / "index.html").write_text("<!doctype html><title>canvas</title>")
    (root / "web" / "app.js").write_text("export const x = 1;")

    async def main():
        async with client(root) as c:
            nodes = await (await c.get("/v1/nodes")).json()
            assert nodes["Scale"]["inputs"][2]["choices"] == ["round", "floor"]
            assert nodes["Show"]["output_node"] is True and nodes["RandomPick"]["inputs"][0]["seed"] is True
            schema = await (await c.get("/v1/schema/workflow")).json()
            jsonschema.validate(chain(), schema)
            assert await (await c.get("/v1/workflows")).json() == [{"name": "add", "title": "Adding"},
                                                                  {"name": "plain", "title": "plain"}]
            assert (await (await c.get("/v1/workflows/add")).json())["meta"]["title"] == "Adding"
            assert (await c.get("/v1/workflows/nope")).status == 404
            assert await (await c.get("/v1/models/checkpoints")).json() == ["m.safetensors"]
            assert await (await c.get("/v1/models/loras")).json() == []
            system = await (await c.get("/v1/system")).json()
            assert system["cache"]["budgets"]["ram"] > 0 and system["devices"][0]["type"] == "cpu"
            assert system["versions"]["python"] and system["queue"] == {"running": 0, "pending": 0}
            await wait_history(c, await submit(c, chain()))
            assert (await (await c.get("/v1/system")).json())["cache"]["entries"] == 3
            r = await c.post("/v1/free", json={"unload_models": True, "free_memory": True})
            assert await r.json() == {"unload_models": True, "free_memory": True, "done": True}
            assert (await (await c.get("/v1/system")).json())["cache"]["entries"] == 0
            assert await (await c.get("/v1/auth")).json() == {"required": False, "signed_in": False}

            r = await c.get("/")
            assert r.status == 200 and "canvas" in await r.text()
            r = await c.get("/web/app.js")
            assert r.status == 200 and r.content_type == "text/javascript"

            doc = await (await c.get("/openapi.json")).json()
            assert doc["openapi"].startswith("3.")
            # every route the app serves (ComfyUI's included) is documented, and every documented one is served
            routes = {(res.method, res.resource.canonical if res.resource.canonical != "/web" else "/web/{path}")
                      for res in c.app.router.routes() if res.resource is not None}
            documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
            assert {r for r in routes if r[0] != "HEAD"} == documented
            assert {"/prompt", "/api/prompt", "/object_info", "/upload/mask", "/ws"} <= set(doc["paths"])
    run(main())


def test_previews_reach_the_websocket_as_binary_frames(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=p")
            pid = await submit(c, wf({"1": ("Number", {"value": 1}), "2": ("PreviewSteps", {"x": ("1", "INT")}),
                                      "3": ("Show", {"value": ("2", "INT")})}), client_id="p")
            frames = await until(ws, finished(pid))
            binary = [f["data"] for f in frames if f["type"] == "<binary>"]
            assert len(binary) == 3
            for frame in binary:
                assert frame[:4] == (1).to_bytes(4, "big") and frame[4:8] == (1).to_bytes(4, "big")
                assert frame[8:10] == b"\xff\xd8"  # JPEG
            # a client that submitted nothing sees no events
            other = await c.ws_connect("/v1/ws?client_id=other")
            assert (await other.receive_json())["type"] == "hello"
            await wait_history(c, await submit(c, chain(value=9), client_id="p"))
            await asyncio.sleep(0.1)
            seen = []
            while True:
                try:
                    seen.append((await other.receive_json(timeout=0.2))["type"])
                except asyncio.TimeoutError:
                    break
            assert set(seen) <= {"queue"} and seen
            await ws.close()
            await other.close()
    run(main())


def test_a_websocket_that_asks_for_no_previews_gets_none(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=np&previews=none")
            pid = await submit(c, wf({"1": ("Number", {"value": 1}), "2": ("PreviewSteps", {"x": ("1", "INT")}),
                                      "3": ("Show", {"value": ("2", "INT")})}), client_id="np")
            frames = await until(ws, finished(pid))
            assert [f for f in frames if f["type"] == "<binary>"] == []
            assert any(f["type"] == "progress" for f in frames)
            await ws.close()
    run(main())


def test_internal_errors_are_structured_and_traceback_only_in_debug(root):
    async def boom(request):
        raise RuntimeError("secret detail")

    async def main():
        from test_server_support import build_app

        for debug in (False, True):
            app = build_app(root, debug=debug, db_path=root / f"db{debug}.sqlite3")
            app.router.add_get("/boom", boom)
            async with client(root, app=app) as c:
                r = await c.get("/boom")
                body = await r.json()
                assert r.status == 500 and body["error"]["kind"] == "internal_error"
                assert ("traceback" in body["error"]) is debug
                assert ("secret detail" in json.dumps(body)) is debug
                pid = await submit(c, wf({"1": ("Number", {}), "2": ("Fail", {"x": ("1", "INT")}),
                                          "3": ("Show", {"value": ("2", "INT")})}))
                err = (await wait_history(c, pid))["errors"][0]
                assert ("traceback" in err.get("details", {})) is debug
    run(main())


def test_queue_limit(root):
    async def main():
        async with client(root, max_queue=2) as c:
            ws = await c.ws_connect("/v1/ws?client_id=l")
            slow = await submit(c, chain(value=1, steps=100, delay=0.02), client_id="l")
            await until(ws, lambda f: f["type"] == "progress")
            await submit(c, chain(value=2))
            await submit(c, chain(value=3))
            r = await c.post("/v1/prompts", json={"workflow": chain(value=4)})
            assert r.status == 429 and (await r.json())["error"]["kind"] == "queue_full"
            assert r.headers["Retry-After"]
            await c.post("/v1/interrupt", json={"prompt_id": slow})
            await ws.close()
    run(main())


def test_a_prompt_can_be_submitted_with_its_own_id_and_at_the_front(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/v1/ws?client_id=f")
            slow = await submit(c, chain(value=1, steps=50, delay=0.02), client_id="f")
            await until(ws, lambda f: f["type"] == "progress")
            a = await submit(c, chain(value=2))
            b = await submit(c, chain(value=3), prompt_id="my-own-id", front=True)
            assert b == "my-own-id"
            r = await c.post("/v1/prompts", json={"workflow": chain(value=3), "prompt_id": "my-own-id"})
            assert r.status == 409
            q = await (await c.get("/v1/queue")).json()
            assert [i["prompt_id"] for i in q["pending"]] == [b, a]
            await c.post("/v1/interrupt")
            await wait_history(c, a)
            await ws.close()
    run(main())


def test_app_factory_is_an_aiohttp_application(root):
    from test_server_support import build_app

    assert isinstance(build_app(root), web.Application)

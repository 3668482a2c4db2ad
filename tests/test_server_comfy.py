"""The ComfyUI-compatible routes, driven with ComfyUI-shaped payloads and read back in ComfyUI's shapes."""
from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest

from test_server_support import client, make_root, run, until

pytestmark = pytest.mark.timeout(60)
REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-core-nodes.json"

API = {"1": {"class_type": "Number", "inputs": {"value": 2}, "_meta": {"title": "Two"}},
       "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 3, "delay": 0.0}},
       "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def done(pid):
    return lambda f: f["type"] == "executing" and f["data"]["node"] is None and f["data"]["prompt_id"] == pid


def test_prompt_websocket_messages_and_history(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/ws?clientId=comfy1")
            first = await ws.receive_json()
            assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                        "sid": "comfy1"}}
            extra = {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}}
            r = await c.post("/prompt", json={"prompt": API, "client_id": "comfy1", "extra_data": extra})
            reply = await r.json()
            assert r.status == 200 and set(reply) == {"prompt_id", "number", "node_errors"}
            pid = reply["prompt_id"]
            assert reply["node_errors"] == {}
            frames = await until(ws, done(pid))
            seq = [(f["type"], f["data"].get("node")) for f in frames if f["type"] != "status"]
            assert seq == [("execution_start", None), ("execution_cached", None), ("executing", "1"),
                           ("executing", "2"), ("progress", "2"), ("progress", "2"), ("progress", "2"),
                           ("executing", "3"), ("executed", "3"), ("execution_success", None), ("executing", None)]
            by_type = {f["type"]: f["data"] for f in frames}
            assert by_type["execution_cached"] == {"nodes": [], "prompt_id": pid,
                                                   "timestamp": by_type["execution_cached"]["timestamp"]}
            assert by_type["progress"] == {"value": 3, "max": 3, "prompt_id": pid, "node": "2"}
            assert by_type["executed"] == {"node": "3", "display_node": "3", "output": {"text": ["2"]},
                                           "prompt_id": pid}
            assert any(f["type"] == "status" for f in frames)  # queue status went to everyone

            hist = await (await c.get(f"/history/{pid}")).json()
            item = hist[pid]
            number, hid, prompt, extra_data, outputs = item["prompt"]
            assert (number, hid, prompt, outputs) == (reply["number"], pid, API, ["3"])
            assert extra_data["extra_pnginfo"] == extra["extra_pnginfo"] and extra_data["client_id"] == "comfy1"
            assert item["outputs"] == {"3": {"text": ["2"]}}
            assert item["status"]["status_str"] == "success" and item["status"]["completed"] is True
            assert [m[0] for m in item["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                  "execution_success"]
            assert item["meta"]["3"]["node_id"] == "3"

            # again: cached this time, and ComfyUI still hears the output node's result
            pid2 = (await (await c.post("/api/prompt", json={"prompt": API, "client_id": "comfy1"})).json())["prompt_id"]
            frames = await until(ws, done(pid2))
            by_type = {f["type"]: f["data"] for f in frames}
            assert by_type["execution_cached"]["nodes"] == ["1", "2", "3"]
            assert by_type["executed"]["output"] == {"text": ["2"]}
            all_hist = await (await c.get("/api/history")).json()
            assert list(all_hist) == [pid, pid2]  # oldest first, as ComfyUI lists them
            assert list(await (await c.get("/history?max_items=1")).json()) == [pid2]
            assert await (await c.get("/history/nope")).json() == {}
            assert await (await c.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}

            r = await c.post("/history", json={"delete": [pid]})
            assert r.status == 200 and list(await (await c.get("/history")).json()) == [pid2]
            await c.post("/api/history", json={"clear": True})
            assert await (await c.get("/history")).json() == {}
            await ws.close()
    run(main())


def test_validation_errors_in_comfy_shape(root):
    async def main():
        async with client(root) as c:
            bad = {"1": {"class_type": "Number", "inputs": {"value": 5000}},
                   "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                   "3": {"class_type": "Scale", "inputs": {"x": ["1", 0], "mode": "ceil"}},
                   "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
                   "5": {"class_type": "Add", "inputs": {"b": 1}},
                   "6": {"class_type": "Show", "inputs": {"value": ["5", 0]}}}
            r = await c.post("/prompt", json={"prompt": bad})
            body = await r.json()
            assert r.status == 400
            assert body["error"] == {"type": "prompt_outputs_failed_validation",
                                     "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}
            ne = body["node_errors"]
            assert ne["1"]["class_type"] == "Number" and sorted(ne["1"]["dependent_outputs"]) == ["2", "4"]
            [e1] = ne["1"]["errors"]
            assert e1["type"] == "value_bigger_than_max" and e1["extra_info"]["input_name"] == "value"
            assert e1["extra_info"]["received_value"] == 5000
            assert ne["3"]["errors"][0]["type"] == "value_not_in_list"
            assert ne["5"]["errors"][0]["type"] == "required_input_missing"

            r = await c.post("/prompt", json={"prompt": {"1": {"class_type": "Number", "inputs": {}}}})
            assert r.status == 400 and (await r.json())["error"]["type"] == "prompt_no_outputs"
            r = await c.post("/prompt", json={"prompt": {"1": {"class_type": "Bogus", "inputs": {}},
                                                         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}})
            body = await r.json()
            assert r.status == 400 and body["error"]["type"] == "invalid_prompt" and "Bogus" in body["error"]["message"]
            for payload in ({"prompt": "nope"}, {"no_prompt": 1}, {"prompt": API, "extra_data": 3}):
                r = await c.post("/prompt", json=payload)
                body = await r.json()
                assert r.status == 400 and body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
            r = await c.post("/prompt", data="{oops")
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_prompt"
            assert (await (await c.get("/queue")).json()) == {"queue_running": [], "queue_pending": []}
    run(main())


def test_queue_delete_clear_interrupt(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/ws?clientId=q")
            slow = {"1": {"class_type": "Number", "inputs": {"value": 1}},
                    "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 300, "delay": 0.02}},
                    "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
            running = (await (await c.post("/prompt", json={"prompt": slow, "client_id": "q"})).json())["prompt_id"]
            await until(ws, lambda f: f["type"] == "progress")
            ids = []
            for v in (5, 6, 7):
                p = json.loads(json.dumps(API))
                p["1"]["inputs"]["value"] = v
                ids.append((await (await c.post("/prompt", json={"prompt": p, "client_id": "q"})).json())["prompt_id"])
            q = await (await c.get("/queue")).json()
            assert [e[1] for e in q["queue_running"]] == [running]
            assert [e[1] for e in q["queue_pending"]] == ids
            number, pid, prompt, extra, outputs = q["queue_pending"][0]
            assert prompt["1"]["inputs"]["value"] == 5 and extra["client_id"] == "q" and outputs == ["3"]
            assert (await (await c.get("/prompt")).json())["exec_info"]["queue_remaining"] == 4

            await c.post("/queue", json={"delete": [ids[1]]})
            assert [e[1] for e in (await (await c.get("/queue")).json())["queue_pending"]] == [ids[0], ids[2]]
            await c.post("/api/queue", json={"clear": True})
            assert (await (await c.get("/queue")).json())["queue_pending"] == []

            r = await c.post("/interrupt", json={"prompt_id": "someone-else"})
            assert r.status == 200
            r = await c.post("/interrupt")
            assert r.status == 200
            frames = await until(ws, done(running))
            interrupted = [f["data"] for f in frames if f["type"] == "execution_interrupted"]
            assert interrupted and interrupted[0]["node_id"] == "2" and interrupted[0]["node_type"] == "Slow"
            assert interrupted[0]["executed"] == ["1"]
            hist = (await (await c.get(f"/history/{running}")).json())[running]
            assert hist["status"]["status_str"] == "error" and hist["status"]["completed"] is False
            assert hist["status"]["messages"][-1][0] == "execution_interrupted"
            assert await (await c.get(f"/history/{ids[1]}")).json() == {}  # cancelled prompts are not ComfyUI history
            await ws.close()
    run(main())


def test_execution_error_message(root):
    async def main():
        async with client(root) as c:
            ws = await c.ws_connect("/ws?clientId=e")
            await ws.receive_json()
            prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}},
                      "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
                      "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
            pid = (await (await c.post("/prompt", json={"prompt": prompt, "client_id": "e"})).json())["prompt_id"]
            frames = await until(ws, done(pid))
            [err] = [f["data"] for f in frames if f["type"] == "execution_error"]
            assert err["node_id"] == "2" and err["node_type"] == "Fail" and err["exception_type"] == "ValueError"
            assert "refusing 3" in err["exception_message"] and err["traceback"] == [] and err["executed"] == ["1"]
            assert "execution_success" not in [f["type"] for f in frames]
            item = (await (await c.get(f"/history/{pid}")).json())[pid]
            assert item["status"]["status_str"] == "error" and item["status"]["messages"][-1][0] == "execution_error"
            await ws.close()
    run(main())


def test_object_info_shapes(root):
    async def main():
        async with client(root) as c:
            info = await (await c.get("/object_info")).json()
            assert info == await (await c.get("/api/object_info")).json()
            scale = info["Scale"]
            assert scale["input"]["required"]["mode"] == [["round", "floor"], {"default": "round"}]
            assert scale["input"]["required"]["factor"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0,
                                                                      "step": 0.5}]
            assert scale["input"]["required"]["x"] == ["INT", {}]
            assert scale["input_order"] == {"required": ["x", "factor", "mode"]}
            assert scale["output"] == ["FLOAT"] and scale["output_name"] == ["FLOAT"]
            assert scale["output_is_list"] == [False] and scale["output_node"] is False
            assert info["RandomPick"]["input"]["required"]["seed"][1]["control_after_generate"] is True
            assert info["Show"]["output_node"] is True and info["Text"]["input"]["required"]["text"][1]["multiline"]
            reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
            for entry in info.values():  # every key the reference has per class is there
                for key in ("input", "input_order", "output", "output_name", "output_node", "category"):
                    assert key in entry
                    if reference:
                        assert type(entry[key]) is type(reference["KSampler"][key])
            assert await (await c.get("/object_info/Scale")).json() == {"Scale": scale}
            assert await (await c.get("/object_info/Nope")).json() == {}
    run(main())


def test_upload_image_mask_view_and_system(root):
    async def main():
        from PIL import Image

        def png(img):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        async with client(root) as c:
            form = aiohttp.FormData()
            form.add_field("image", png(Image.new("RGB", (16, 16), "green")), filename="photo.png")
            form.add_field("type", "input")
            r = await c.post("/upload/image", data=form)
            assert await r.json() == {"name": "photo.png", "subfolder": "", "type": "input"}

            mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
            mask.putpixel((0, 0), (0, 0, 0, 255))
            form = aiohttp.FormData()
            form.add_field("image", png(mask), filename="clipspace-mask.png")
            form.add_field("original_ref", json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"}))
            r = await c.post("/api/upload/mask", data=form)
            ref = await r.json()
            assert r.status == 200 and ref["name"] == "clipspace-mask.png"
            out = Image.open(root / "input" / ref["name"])
            assert out.mode == "RGBA" and out.getpixel((0, 0)) == (0, 128, 0, 255) and out.getpixel((5, 5))[3] == 0

            r = await c.get("/view", params={"filename": "photo.png", "type": "input"})
            assert r.status == 200 and r.content_type == "image/png"
            r = await c.get("/api/view", params={"filename": "photo.png", "type": "input", "preview": "webp;50"})
            assert r.content_type == "image/webp"
            for preview, ctype in (("jpeg;80", "image/jpeg"), ("png", "image/webp"), ("webp", "image/webp")):
                r = await c.get("/view", params={"filename": ref["name"], "type": "input", "preview": preview})
                assert r.status == 200 and r.content_type == ctype  # as ComfyUI: jpeg (alpha dropped) or webp
            r = await c.get("/view", params={"filename": ref["name"], "type": "input", "channel": "a"})
            alpha = Image.open(io.BytesIO(await r.read()))
            assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 255) and alpha.getpixel((5, 5))[3] == 0

            stats = await (await c.get("/system_stats")).json()
            assert set(stats["system"]) >= {"os", "ram_total", "ram_free", "python_version", "pytorch_version"}
            dev = stats["devices"][0]
            assert set(dev) >= {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                                "torch_vram_free"}
            assert (await c.post("/free", json={"unload_models": True})).status == 200
            assert await (await c.get("/embeddings")).json() == []
            assert "checkpoints" in await (await c.get("/models")).json()
            assert await (await c.get("/api/models/checkpoints")).json() == []
    run(main())

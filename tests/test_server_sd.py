"""The real Stable Diffusion nodes behind a real ``chisel serve``, driven the way a ComfyUI script drives ComfyUI:
queue an API-format prompt over /prompt, follow /ws until ``executing`` is null, read /history, fetch the image over
/view. A tiny SD1 checkpoint (the real file layout, a few MB) stands in for a real one."""
from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest
from test_server_support import REPO, ServeProcess

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-core-nodes.json"


def test_txt2img_through_comfyui_routes_and_native_api(tmp_path):
    import torch

    from graph.comfy_format import to_comfy_api
    from graph.registry import NodeRegistry
    from graph.workflow import Workflow
    from nodes.testing import tiny

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    tiny.write("sd1", tmp_path / "models" / "checkpoints" / "tiny-sd1.safetensors", seed=0, dtype=torch.float16)
    native = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    native["nodes"]["3"]["inputs"]["steps"] = 3
    native["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny-sd1.safetensors"
    prompt = to_comfy_api(Workflow.model_validate(native), NodeRegistry.discover())
    server = ServeProcess(tmp_path, "--preview-method", "latent2rgb")  # ComfyUI's /ws sends previews only then
    try:
        async def main():
            from PIL import Image

            async with aiohttp.ClientSession(server.url) as s:
                ws = await s.ws_connect("/ws?clientId=script")
                r = await s.post("/prompt", json={"prompt": prompt, "client_id": "script"})
                pid = (await r.json())["prompt_id"]
                previews, types, progress = 0, [], []
                while True:
                    msg = await ws.receive(timeout=120)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        previews += 1
                        continue
                    m = json.loads(msg.data)
                    types.append(m["type"])
                    if m["type"] == "progress":
                        progress.append((m["data"]["node"], m["data"]["value"], m["data"]["max"]))
                    if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == pid:
                        break
                assert "execution_success" in types and previews == 3
                # the sampler's steps, after the loader's stages (nodes.loading.progress)
                assert [p for p in progress if p[0] == "3"] == [("3", 1, 3), ("3", 2, 3), ("3", 3, 3)]
                assert [p[0] for p in progress] == ["4"] * 8 + ["3"] * 3
                item = (await (await s.get(f"/history/{pid}")).json())[pid]
                [image] = item["outputs"]["9"]["images"]
                r = await s.get("/view", params=image)
                data = await r.read()
                png = Image.open(io.BytesIO(data))
                assert r.status == 200 and png.size == (64, 64)
                assert json.loads(png.text["prompt"])["3"]["class_type"] == "KSampler"
                # the workflow comes back out of the image
                back = await (await s.post("/v1/workflow/from-png", data=data)).json()
                assert back["workflow"]["nodes"]["3"]["inputs"]["steps"] == 3

                # the model manager's figures, and freeing them
                system = await (await s.get("/v1/system")).json()
                assert system["models"]["files_loaded"] == 1 and system["versions"]["torch"]
                r = await s.post("/v1/free", json={"unload_models": True, "free_memory": True})
                assert (await r.json())["done"] is True
                system = await (await s.get("/v1/system")).json()
                assert system["models"]["files_loaded"] == 0 and system["cache"]["entries"] == 0
                assert await (await s.get("/v1/models/checkpoints")).json() == ["tiny-sd1.safetensors"]

                # ComfyUI's object_info for the shared classes: same inputs, order, types and ranges
                info = await (await s.get("/object_info")).json()
                reference = json.loads(REFERENCE.read_text())
                checked = 0
                for name, ref in reference.items():
                    if name not in info:
                        continue
                    mine = info[name]
                    for key in ("input_order", "output", "output_name", "output_node", "category"):
                        assert mine[key] == ref[key], (name, key)
                    for section, inputs in ref["input"].items():
                        for inp, spec in inputs.items():
                            got = mine["input"][section][inp]
                            if isinstance(spec[0], str) and not spec[0].startswith("<"):
                                assert got[0] == spec[0], (name, inp)
                            for k in ("default", "min", "max", "step"):
                                if len(spec) > 1 and k in spec[1]:
                                    assert got[1].get(k) == spec[1][k], (name, inp, k)
                    checked += 1
                assert checked >= 10 or not reference
                await ws.close()

        asyncio.run(main())
    finally:
        assert server.stop() == 0

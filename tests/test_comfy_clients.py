"""Third-party ComfyUI API clients from PyPI, unchanged, against a real ``chisel serve`` on the bundled demo
model: ComfyScript (builds typed nodes from ``/object_info``, queues, follows ``/ws``, reads ``/history`` and
``/view``), comfy-api-simplified (takes every binary WebSocket frame for an output image, so it needs ComfyUI's
default of no previews, then reads the saved image from ``/history`` and ``/view``) and comfyui-utils (asserts
text-only frames and a single running prompt)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from test_server_support import REPO, ServeProcess

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
DEMO = REPO / "models" / "checkpoints" / "chisel-demo-v1.safetensors"
STEPS = 4

COMFY_SCRIPT = textwrap.dedent("""
    import json, sys
    from comfy_script.runtime import load, Workflow
    load(sys.argv[1])
    from comfy_script.runtime.nodes import (CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler,
                                            VAEDecode, SaveImage)
    with Workflow(wait=True):
        model, clip, vae = CheckpointLoaderSimple('chisel-demo-v1.safetensors')
        positive = CLIPTextEncode('a red circle on a white background', clip)
        negative = CLIPTextEncode('', clip)
        latent = KSampler(model, 42, %d, 6.0, 'euler', 'normal', positive, negative, EmptyLatentImage(64, 64, 1), 1.0)
        saved = SaveImage(VAEDecode(latent, vae), 'comfyscript')
    batch = saved.wait()
    image = batch[0]
    print('RESULT ' + json.dumps({'images': batch._output['images'], 'size': list(image.size)}))
""" % STEPS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(DEMO, root / "models" / "checkpoints" / DEMO.name)
    proc = ServeProcess(root)
    yield proc
    assert proc.stop() == 0


def test_comfy_script_reads_object_info_and_gets_the_saved_image(server, tmp_path):
    script = tmp_path / "comfyscript_txt2img.py"
    script.write_text(COMFY_SCRIPT)
    done = subprocess.run([sys.executable, str(script), server.url + "/"], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Nodes: " in done.stdout  # ComfyScript built its node classes from /object_info
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    [ref] = result["images"]
    assert ref["type"] == "output" and ref["filename"].startswith("comfyscript_") and result["size"] == [64, 64]
    saved = server.root / "output" / ref["subfolder"] / ref["filename"]
    prompt = _png_prompt(saved.read_bytes())
    assert {n["class_type"] for n in prompt.values()} >= {"KSampler", "SaveImage", "CheckpointLoaderSimple"}


def test_comfy_api_simplified_gets_the_saved_image_not_previews(server, tmp_path):
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    from graph.comfy_format import to_comfy_api
    from graph.registry import NodeRegistry
    from graph.workflow import Workflow

    native = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    native["nodes"]["3"]["inputs"]["steps"] = STEPS
    path = tmp_path / "txt2img_api.json"
    path.write_text(json.dumps(to_comfy_api(Workflow.model_validate(native), NodeRegistry.discover())))
    workflow = ComfyWorkflowWrapper(str(path))
    workflow.set_node_param("Positive prompt", "text", "a blue square on a white background")
    api = ComfyApiWrapper(server.url)
    images = api.queue_and_wait_images(workflow, "SaveImage")
    [(name, data)] = images.items()
    assert name.startswith("chisel_") and name.endswith(".png")  # the saved file, not a preview frame
    from PIL import Image

    png = Image.open(io.BytesIO(data))
    assert png.format == "PNG" and png.size == (64, 64)
    prompt = _png_prompt(data)
    assert prompt["6"]["inputs"]["text"] == "a blue square on a white background"
    assert (server.root / "output" / name).read_bytes() == data


def _png_prompt(data: bytes) -> dict:
    from PIL import Image

    return json.loads(Image.open(io.BytesIO(data)).text["prompt"])


def test_comfyui_utils_two_prompts_at_once(server, tmp_path):
    """comfyui-utils asserts that every WebSocket frame is text and that ``queue_running`` never holds more than one
    prompt (it reads ``/queue`` on every ``status``); two prompts queued at once keep both true."""
    import asyncio

    from comfyui_utils import comfy

    from graph.comfy_format import to_comfy_api
    from graph.registry import NodeRegistry
    from graph.workflow import Workflow

    native = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    native["nodes"]["3"]["inputs"]["steps"] = STEPS
    base = to_comfy_api(Workflow.model_validate(native), NodeRegistry.discover())
    address = server.url.split("//", 1)[1].rstrip("/")
    api = comfy.ComfyAPI(address)
    results: dict[int, dict] = {}

    class Callbacks(comfy.Callbacks):
        def __init__(self, seed: int):
            self.seed, self.steps = seed, []

        async def queue_position(self, position):
            pass

        async def in_progress(self, node_id, progress, total):
            if total:
                self.steps.append(progress)

        async def completed(self, outputs, cached):
            results[self.seed] = {"outputs": outputs, "cached": cached, "steps": self.steps}

    async def one(seed: int) -> None:
        prompt = json.loads(json.dumps(base))
        prompt["3"]["inputs"]["seed"] = seed
        await api.submit(prompt, Callbacks(seed))

    async def main() -> dict[int, bytes]:
        await asyncio.gather(one(7), one(8))
        files = {}
        for seed, result in results.items():
            [ref] = result["outputs"]["images"]

            async def keep(data, seed=seed):
                files[seed] = data.getvalue()

            await api.fetch(ref, keep)
        return files

    files = asyncio.run(main())
    assert sorted(results) == [7, 8] and all(not r["cached"] and r["steps"][-1] == STEPS for r in results.values())
    assert files[7] != files[8]
    for seed, data in files.items():
        assert _png_prompt(data)["3"]["inputs"]["seed"] == seed

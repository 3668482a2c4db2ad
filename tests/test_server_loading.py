"""Model loading and saving behind a real ``chisel serve``, followed by real WebSocket clients: the server imports the
model libraries by itself once it listens; a loader's stages reach both WebSocket dialects as progress; an interrupt
while a checkpoint loads, or while SaveImage writes a batch, ends the prompt as interrupted, leaves no half-loaded
model and no partial file, keeps the history true to the disk, and the next prompt runs.

To interrupt *during* a stage, whatever the machine's speed, the server's root holds a test-only plug-in
(``custom_nodes/hold_points.py``) that wraps two functions of the real code path — building the VAE module and
converting an image for saving — so that, when a test arms it, the call waits until the test has sent its
interrupt. Everything else is the shipped server, loader and SaveImage on a tiny checkpoint in the real layout.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from sd_fixtures import tiny_file
from test_server_support import REPO, ServeProcess

from graph.comfy_format import to_comfy_api
from graph.registry import NodeRegistry
from graph.workflow import Workflow
from nodes.loading.checkpoint import CHECKPOINT_STAGES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOLD_POINTS = '''
"""Test-only hold points: an armed call waits until the test releases it (tests/test_server_loading.py)."""
import time
from pathlib import Path

import nodes.imaging.files as files
import nodes.loading.checkpoint as checkpoint

HOLDS = Path(__file__).resolve().parent.parent / "holds"


def hold(name):
    arm = HOLDS / (name + ".arm")
    if not arm.exists():
        return
    arm.unlink()
    (HOLDS / (name + ".held")).touch()
    deadline = time.monotonic() + 60
    while not (HOLDS / (name + ".release")).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def wrap(module, attr):
    original = getattr(module, attr)

    def held(*args, **kwargs):
        hold(attr)
        return original(*args, **kwargs)

    setattr(module, attr, held)


wrap(checkpoint, "build_vae")
wrap(files, "_to_pil")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-loading")
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), root / "models" / "checkpoints" / "tiny.safetensors")
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "hold_points.py").write_text(HOLD_POINTS)
    (root / "holds").mkdir()
    (root / "output").mkdir()
    srv = ServeProcess(root)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.output()


def txt2img(steps: int = 1) -> dict:
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    wf["nodes"]["3"]["inputs"].update(steps=steps, seed=1)
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    wf["nodes"]["5"]["inputs"].update(width=64, height=64)
    wf.pop("layout", None)
    return wf


def red_batch(n: int, prefix: str) -> dict:
    return {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": n, "color": 0xFF0000}},
        "2": {"type": "SaveImage", "inputs": {"images": {"node": "1", "output": "IMAGE"}, "filename_prefix": prefix}}}}


async def fresh(s: aiohttp.ClientSession) -> None:
    """Forget loaded models and cached results, so the next prompt loads its checkpoint again."""
    r = await s.post("/v1/free", json={"unload_models": True, "free_memory": True})
    assert (await r.json())["done"] is True


async def queue(s: aiohttp.ClientSession, workflow: dict, client_id: str) -> str:
    r = await s.post("/v1/prompts", json={"workflow": workflow, "client_id": client_id})
    assert r.status == 200, await r.text()
    return (await r.json())["prompt_id"]


async def frames_until_finished(ws, pid: str, timeout: float = 120) -> list[dict]:
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        frames.append(frame)
        if frame["type"] == "finished" and frame["data"]["prompt_id"] == pid:
            return frames


async def history(s: aiohttp.ClientSession, pid: str) -> dict:
    for _ in range(600):
        entry = await (await s.get(f"/v1/history/{pid}")).json()
        if entry.get("status") in ("success", "error", "interrupted", "cancelled"):
            return entry
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {pid} did not finish")


async def wait_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.01)


async def models(s: aiohttp.ClientSession) -> dict:
    return (await (await s.get("/v1/system")).json())["models"]


def test_the_server_imports_the_model_libraries_by_itself(server):
    deadline = time.monotonic() + 120
    while "model libraries imported in" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)


def test_loader_stages_reach_both_websocket_dialects(server):
    async def main():
        async with aiohttp.ClientSession(server.url) as s:
            await fresh(s)
            ws = await s.ws_connect("/v1/ws?client_id=stages")
            pid = await queue(s, txt2img(), "stages")
            frames = await frames_until_finished(ws, pid)
            assert frames[-1]["data"]["status"] == "success"
            loading = [f["data"] for f in frames if f["type"] == "progress" and f["data"]["node_id"] == "4"]
            assert [d["stage"] for d in loading] == list(CHECKPOINT_STAGES)
            assert {d["activity"] for d in loading} == {"loading"}
            assert [(d["value"], d["max"]) for d in loading] == [(i, len(CHECKPOINT_STAGES))
                                                                 for i in range(len(CHECKPOINT_STAGES))]
            sampling = [f["data"] for f in frames if f["type"] == "progress" and f["data"]["node_id"] == "3"]
            assert sampling and all("activity" not in d for d in sampling)  # sampling stays plain progress

            # ComfyUI's dialect: the loader's progress as ComfyUI's progress messages on its node
            await fresh(s)
            comfy = await s.ws_connect("/ws?clientId=comfy-stages")
            prompt = to_comfy_api(Workflow.model_validate(txt2img()), NodeRegistry.discover())
            r = await s.post("/prompt", json={"prompt": prompt, "client_id": "comfy-stages"})
            pid = (await r.json())["prompt_id"]
            progress = []
            while True:
                m = json.loads((await comfy.receive(timeout=120)).data)
                if m["type"] == "progress":
                    progress.append(m["data"])
                if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == pid:
                    break
            assert [(p["value"], p["max"]) for p in progress if p["node"] == "4"] == [
                (i, len(CHECKPOINT_STAGES)) for i in range(len(CHECKPOINT_STAGES))]

    asyncio.run(main())


def test_an_interrupt_while_the_checkpoint_loads_leaves_no_half_loaded_model(server):
    holds = server.root / "holds"

    async def main():
        async with aiohttp.ClientSession(server.url) as s:
            await fresh(s)
            ws = await s.ws_connect("/v1/ws?client_id=load-interrupt")
            (holds / "build_vae.arm").touch()
            pid = await queue(s, txt2img(), "load-interrupt")
            await wait_file(holds / "build_vae.held")  # the loader is building the VAE now
            r = await s.post("/v1/interrupt", json={"prompt_id": pid})
            assert (await r.json())["interrupted"] == pid
            (holds / "build_vae.release").touch()
            frames = await frames_until_finished(ws, pid)
            entry = await history(s, pid)
            assert entry["status"] == "interrupted" and frames[-1]["data"]["status"] == "interrupted"
            (err,) = entry["errors"]
            assert err["kind"] == "interrupted" and err["node_id"] == "4"
            stages = [f["data"]["stage"] for f in frames if f["type"] == "progress"]
            # the load stopped where the next stage was to start: no weights were read
            assert stages == list(CHECKPOINT_STAGES[:CHECKPOINT_STAGES.index("building the VAE") + 2])
            before = await models(s)
            assert before["files_loaded"] == 0 and before["models"] == []

            # the server is fine, and the next prompt loads the checkpoint completely and runs
            pid = await queue(s, txt2img(), "load-interrupt")
            entry = await history(s, pid)
            assert entry["status"] == "success", entry["errors"]
            after = await models(s)
            assert after["files_loaded"] == 1
            assert sorted(m["name"] for m in after["models"]) == ["text_encoder", "unet", "vae"]

    try:
        asyncio.run(main())
    finally:
        for p in holds.iterdir():
            p.unlink()


def test_an_interrupt_while_saving_leaves_only_whole_files_and_a_true_history(server):
    holds, output = server.root / "holds", server.root / "output"

    async def main():
        async with aiohttp.ClientSession(server.url) as s:
            ws = await s.ws_connect("/v1/ws?client_id=save-interrupt")
            (holds / "_to_pil.arm").touch()
            pid = await queue(s, red_batch(5, "held"), "save-interrupt")
            await wait_file(holds / "_to_pil.held")  # SaveImage is converting its first image
            r = await s.post("/v1/interrupt", json={"prompt_id": pid})
            assert (await r.json())["interrupted"] == pid
            (holds / "_to_pil.release").touch()
            frames = await frames_until_finished(ws, pid)
            entry = await history(s, pid)
            assert entry["status"] == "interrupted" and [e["node_id"] for e in entry["errors"]] == ["2"]
            # the image in hand was written whole and is listed; the rest were never started
            written = sorted(p.name for p in output.iterdir() if p.name.startswith("held"))
            assert written == ["held_00001_.png"]
            assert [i["filename"] for i in entry["outputs"]["2"]["images"]] == written
            assert frames[-1]["data"]["outputs"]["2"]["images"][0]["filename"] == "held_00001_.png"
            assert not [p for p in output.iterdir() if p.name.endswith(".part")]
            r = await s.get("/v1/view", params=entry["outputs"]["2"]["images"][0])
            assert r.status == 200 and (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"

            # the next prompt writes its whole batch after it
            pid = await queue(s, red_batch(3, "held"), "save-interrupt")
            entry = await history(s, pid)
            assert entry["status"] == "success"
            assert [i["filename"] for i in entry["outputs"]["2"]["images"]] == [
                "held_00002_.png", "held_00003_.png", "held_00004_.png"]

    try:
        asyncio.run(main())
    finally:
        for p in holds.iterdir():
            p.unlink()

"""ComfyUI's own frontend (PyPI ``comfyui-frontend-package``, pinned in the test extra) served by a real
``chisel serve --frontend comfyui``, in Debian's Chromium driven by Playwright: the default graph loads, the
checkpoint list shows the demo model, Run produces the image on the Save Image node, progress reaches the page, the
queue/history (``/jobs``) shows the finished job, and no request to Chisel fails except the few ComfyUI answers with
404 too. The widgets are set the way the page's own code sets them (``widget.value``); the Run button is clicked.
Screenshots go to test-artifacts/comfy-frontend/."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_server_support import REPO, ServeProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(400)]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "comfy-frontend"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEMO = REPO / "models" / "checkpoints" / "chisel-demo-v1.safetensors"
# Files the frontend asks for that a fresh ComfyUI does not have either (it answers 404 there too).
ABSENT_AS_IN_COMFYUI = {"/api/userdata/user.css", "/api/userdata/comfy.templates.json"}

if not CHROMIUM.exists():
    pytest.skip("the browser tests need Debian's Chromium at /usr/bin/chromium (scripts/setup_browser.sh)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")
pytest.importorskip("comfyui_frontend_package", reason="installed by the test extra (comfyui-frontend-package)")

NODES = "(window.app.graph.nodes || window.app.graph._nodes)"


def test_comfyui_frontend_runs_the_default_graph_on_chisel(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(DEMO, tmp_path / "models" / "checkpoints" / DEMO.name)
    server = ServeProcess(tmp_path, "--frontend", "comfyui")
    origin = server.url.rstrip("/")
    failed: list[str] = []
    frames: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
            page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()

            def on_response(r):
                if r.status >= 400 and r.url.startswith(origin):
                    failed.append(f"{r.status} {r.request.method} {urlsplit(r.url).path}")

            page.on("response", on_response)
            page.on("requestfailed", lambda r: failed.append(f"failed {r.method} {urlsplit(r.url).path}")
                    if r.url.startswith(origin) and "ERR_ABORTED" not in (r.failure or "") else None)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f)
                                                   if isinstance(f, str) else None))
            page.goto(server.url)
            page.wait_for_function(f"window.app && window.app.graph && {NODES}.length > 0", timeout=90_000)

            types = page.evaluate(f"{NODES}.map(n => n.type).sort()")
            assert types == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                                    "KSampler", "VAEDecode", "SaveImage"])
            ckpt = page.evaluate(f"""(() => {{ const n = {NODES}.find(n => n.type === 'CheckpointLoaderSimple');
                const w = n.widgets.find(w => w.name === 'ckpt_name'); return [w.value, w.options.values]; }})()""")
            assert ckpt == ["chisel-demo-v1.safetensors", ["chisel-demo-v1.safetensors"]]
            shot(page, "1-default-graph.png")

            # a small image: 64 px and 4 steps (the demo model's size)
            page.evaluate(f"""(() => {{ const set = (t, name, v) => {{
                    const n = {NODES}.find(n => n.type === t); n.widgets.find(w => w.name === name).value = v; }};
                set('EmptyLatentImage', 'width', 64); set('EmptyLatentImage', 'height', 64);
                set('KSampler', 'steps', 4); }})()""")
            page.get_by_role("button", name="Run").first.click()
            page.wait_for_function(f"""(() => {{ const n = {NODES}.find(n => n.type === 'SaveImage');
                return n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }})()""",
                                   timeout=240_000)
            src, width = page.evaluate(f"""(() => {{ const i = {NODES}.find(n => n.type === 'SaveImage').imgs[0];
                return [i.src, i.naturalWidth]; }})()""")
            assert "/api/view?" in src and "filename=ComfyUI_00001_.png" in src and width == 64
            assert (tmp_path / "output" / "ComfyUI_00001_.png").is_file()

            messages = [json.loads(f) for f in frames]
            progress = [m["data"] for m in messages if m["type"] == "progress"]
            ids = page.evaluate(f"Object.fromEntries({NODES}.map(n => [n.type, String(n.id)]))")
            sampling = [p for p in progress if p["node"] == ids["KSampler"]]
            assert [p["value"] for p in sampling] == [1, 2, 3, 4] and sampling[-1]["max"] == 4
            # the checkpoint loader's stages reach the page the same way, before the sampler's steps
            loading = [p["value"] for p in progress if p["node"] == ids["CheckpointLoaderSimple"]]
            assert loading == list(range(8)) and progress[:8] == [p for p in progress if p["node"] != ids["KSampler"]]
            assert any(m["type"] == "execution_success" for m in messages)

            # the queue/history panel reads /api/jobs: the finished job with its image shows in the assets panel
            page.get_by_role("button", name="Assets").first.click()
            page.wait_for_function("""[...document.querySelectorAll('img')].some(
                i => i.src.includes('ComfyUI_00001_.png') && i.complete && i.naturalWidth > 0)""", timeout=30_000)
            shot(page, "2-image-and-history.png")
            browser.close()
    finally:
        assert server.stop() == 0
    unexpected = [f for f in failed if f.split(" ", 2)[2] not in ABSENT_AS_IN_COMFYUI]
    assert not unexpected, unexpected


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))

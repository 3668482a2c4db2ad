"""The web canvas in a real browser: Debian's Chromium driven by Playwright against a real ``chisel serve``.

Everything is done the way a user does it (double-clicks, drags between sockets, typing, keys, dropping a file);
``window.chisel`` is used only to *read* where things are and what the page shows. Screenshots of the key states
go to test-artifacts/web-canvas/. Skipped (not failed) only when /usr/bin/chromium or Playwright is missing;
``make test`` installs Chromium first (scripts/setup_browser.sh).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "web-canvas"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1800, "height": 1000}

if not CHROMIUM.exists():
    pytest.skip("the browser tests need Debian's Chromium at /usr/bin/chromium (scripts/setup_browser.sh "
                "installs it as root: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")


# -- the server ------------------------------------------------------------------------------------------------------
def bundled_checkpoint_name() -> str:
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    for node in wf["nodes"].values():
        if node["type"] == "CheckpointLoaderSimple":
            return node["inputs"]["ckpt_name"]
    raise AssertionError("workflows/txt2img.json has no CheckpointLoaderSimple")


def provide_checkpoint(root: Path) -> str:
    """The checkpoint the bundled txt2img names: the repo's file when it is there, else a tiny SD1 one by that name."""
    name = bundled_checkpoint_name()
    dest = root / "models" / "checkpoints" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shipped = REPO / "models" / "checkpoints" / name
    if shipped.is_file():
        shutil.copyfile(shipped, dest)  # a copy: the server refuses symlinks that leave their folder
    else:
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), "sd1", str(dest)],
                       check=True, capture_output=True, timeout=120, cwd=REPO)
    return name


class Server:
    def __init__(self, root: Path, token: str | None = None):
        self.root, self.token = root, token
        # --port 0: the server binds a free port itself and prints it (no port chosen up front that another
        # process could take before the server binds it)
        args = [sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0", "--device", "cpu"]
        if token:
            args += ["--token", token]
        self.log = open(root / f"serve-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chisel serve exited: {self.output()}")
            m = re.search(r"serving on (http://\S+?):(\d+)", self.output())
            if m:
                self.port = int(m.group(2))
                self.url = f"http://127.0.0.1:{self.port}/"
                self.get("v1/auth")
                return
            time.sleep(0.3)
        raise RuntimeError(f"chisel serve did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def request(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def get(self, path: str):
        return self.request("GET", path)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas-root")
    provide_checkpoint(root)
    return root


@pytest.fixture(scope="module")
def server(root):
    srv = Server(root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


class Page:
    """A fresh browser context (empty storage) on the canvas, collecting console errors."""

    def __init__(self, browser, url: str, wait_ready: bool = True):
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.goto(url)
        if wait_ready:
            self.ready()

    def ready(self):
        self.page.wait_for_function("window.chisel && window.chisel.ready === true", timeout=30000)

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def nodes(self) -> list[dict]:
        return self.js("chisel.nodes()")

    def node(self, node_id: str) -> dict:
        return next(n for n in self.nodes() if n["id"] == node_id)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))

    # -- user actions --------------------------------------------------------------------------------------------
    def add_node(self, x: float, y: float, search: str) -> str:
        """Double-click the empty canvas, search the palette, press Enter; returns the new node's id."""
        before = {n["id"] for n in self.nodes()}
        self.page.mouse.dblclick(x, y)
        box = self.page.locator(".chisel-palette input")
        box.wait_for(state="visible", timeout=5000)
        self.page.keyboard.type(search)
        self.page.keyboard.press("Enter")
        self.page.wait_for_function("n => chisel.nodes().length > n", arg=len(before), timeout=5000)
        [new] = [n["id"] for n in self.nodes() if n["id"] not in before]
        return new

    def drag(self, a, b) -> None:
        m = self.page.mouse
        m.move(*a)
        m.down()
        m.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=4)
        m.move(*b, steps=4)
        m.up()

    def connect(self, src: str, output: str, dst: str, input_: str) -> None:
        a = self.js("([i, o]) => chisel.slotPos(i, 'output', o)", [src, output])
        b = self.js("([i, o]) => chisel.slotPos(i, 'input', o)", [dst, input_])
        assert a and b, (src, output, dst, input_)
        self.drag(a, b)

    def set_number(self, node_id: str, name: str, value) -> None:
        x, y = self.js("([i, n]) => chisel.widgetPos(i, n)", [node_id, name])
        self.page.mouse.click(x, y)
        box = self.page.locator(".graphdialog input.value")
        box.wait_for(state="visible", timeout=5000)
        box.fill(str(value))
        box.press("Enter")
        self.page.wait_for_function("([i, n, v]) => chisel.nodes().find(x => x.id === i).widgets[n] === v",
                                    arg=[node_id, name, value], timeout=5000)

    def choose(self, node_id: str, name: str, value: str) -> None:
        x, y = self.js("([i, n]) => chisel.widgetPos(i, n)", [node_id, name])
        self.page.mouse.click(x, y)
        self.page.locator(".litecontextmenu .litemenu-entry", has_text=value).first.click()
        self.page.wait_for_function("([i, n, v]) => chisel.nodes().find(x => x.id === i).widgets[n] === v",
                                    arg=[node_id, name, value], timeout=5000)

    def type_text(self, node_id: str, name: str, text: str) -> None:
        x, y = self.js("([i, n]) => chisel.widgetPos(i, n)", [node_id, name])
        self.page.mouse.click(x, y)
        editor = self.page.locator("textarea.chisel-text-editor")
        editor.wait_for(state="visible", timeout=5000)
        editor.press("Control+a")
        self.page.keyboard.type(text)
        self.page.mouse.click(VIEWPORT["width"] - 600, VIEWPORT["height"] - 60)  # click away: keeps the text
        editor.wait_for(state="detached", timeout=5000)

    def wait_finished(self, count: int, timeout: float = 90000) -> dict:
        self.page.wait_for_function("c => chisel.events().filter(e => e.type === 'finished').length >= c",
                                    arg=count, timeout=timeout)
        return [e for e in self.js("chisel.events()") if e["type"] == "finished"][count - 1]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server.url)
    yield p
    errors = list(p.errors)
    p.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


# -- the tests -------------------------------------------------------------------------------------------------------
def test_build_txt2img_from_an_empty_canvas_and_queue_it(page, server):
    # first open: the bundled txt2img is on the canvas
    bundled = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    assert sorted(n["type"] for n in page.nodes()) == sorted(n["type"] for n in bundled["nodes"].values())
    page.shot("01-default-workflow.png")

    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")

    # the palette lists node types by category and finds them by name
    page.page.mouse.dblclick(700, 700)
    page.page.locator(".chisel-palette input").wait_for()
    cats = [c.lower() for c in page.page.locator(".palette-category").all_inner_texts()]
    assert {"loaders", "sampling", "conditioning", "latent", "image"} <= set(cats)
    page.page.keyboard.type("ksamp")
    assert page.page.locator(".palette-item.active").inner_text().startswith("KSampler")
    page.shot("02-palette.png")
    page.page.keyboard.press("Escape")
    assert page.page.locator(".chisel-palette").count() == 0

    loader = page.add_node(30, 150, "Load Checkpoint")
    pos = page.add_node(440, 90, "CLIP Text Encode")
    neg = page.add_node(440, 330, "CLIP Text Encode")
    latent = page.add_node(440, 560, "Empty Latent Image")
    sampler = page.add_node(860, 110, "KSampler")
    decode = page.add_node(1190, 110, "VAE Decode")
    save = page.add_node(1190, 260, "Save Image")
    types = {n["id"]: n["type"] for n in page.nodes()}
    assert [types[i] for i in (loader, pos, neg, latent, sampler, decode, save)] == [
        "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
        "SaveImage"]

    # a link between sockets of different types is refused
    page.connect(loader, "MODEL", pos, "clip")
    assert "clip" not in page.js("chisel.workflow()")["nodes"][pos]["inputs"]

    for src, out, dst, inp in [(loader, "MODEL", sampler, "model"), (loader, "CLIP", pos, "clip"),
                               (loader, "CLIP", neg, "clip"), (loader, "VAE", decode, "vae"),
                               (pos, "CONDITIONING", sampler, "positive"), (neg, "CONDITIONING", sampler, "negative"),
                               (latent, "LATENT", sampler, "latent_image"), (sampler, "LATENT", decode, "samples"),
                               (decode, "IMAGE", save, "images")]:
        page.connect(src, out, dst, inp)
    # dropping a link on empty canvas offers only the nodes that can take it, and connects the one chosen
    page.drag(page.js("([i, o]) => chisel.slotPos(i, 'output', o)", [decode, "IMAGE"]), (1250, 700))
    page.page.locator(".chisel-palette input").wait_for(timeout=5000)
    offered = page.page.locator(".chisel-palette .palette-item").evaluate_all("els => els.map(e => e.dataset.type)")
    assert "PreviewImage" in offered and "SaveImage" in offered and "KSampler" not in offered
    page.page.keyboard.type("Preview Image")
    page.page.keyboard.press("Enter")
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'PreviewImage')")
    preview = next(n["id"] for n in page.nodes() if n["type"] == "PreviewImage")
    assert page.js("chisel.workflow()")["nodes"][preview]["inputs"] == {"images": {"node": decode, "output": "IMAGE"}}
    page.type_text(pos, "text", "a red circle on a white background")
    page.set_number(latent, "width", 64)
    page.set_number(latent, "height", 64)
    page.set_number(sampler, "steps", 4)

    wf = page.js("chisel.workflow()")
    link = lambda n, o: {"node": n, "output": o}  # noqa: E731
    assert wf["nodes"][sampler]["inputs"]["model"] == link(loader, "MODEL")
    assert wf["nodes"][sampler]["inputs"]["positive"] == link(pos, "CONDITIONING")
    assert wf["nodes"][sampler]["inputs"]["negative"] == link(neg, "CONDITIONING")
    assert wf["nodes"][sampler]["inputs"]["latent_image"] == link(latent, "LATENT")
    assert wf["nodes"][decode]["inputs"] == {"samples": link(sampler, "LATENT"), "vae": link(loader, "VAE")}
    assert wf["nodes"][save]["inputs"]["images"] == link(decode, "IMAGE")
    assert wf["nodes"][pos]["inputs"]["text"] == "a red circle on a white background"
    assert wf["nodes"][latent]["inputs"]["width"] == 64 and wf["nodes"][sampler]["inputs"]["steps"] == 4
    assert set(wf["layout"]["nodes"]) == set(wf["nodes"])
    seed_before = wf["nodes"][sampler]["inputs"]["seed"]
    page.shot("03-built-graph.png")

    server.request("POST", "v1/free", {"unload_models": True, "free_memory": True})  # so the checkpoint loads now
    page.page.locator("#graph-canvas").focus()
    page.page.keyboard.press("Control+Enter")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length > 0", arg=save,
                                timeout=90000)
    done = page.wait_finished(1)
    assert done["status"] == "success"
    events = page.js("chisel.events()")
    steps = [e for e in events if e["type"] == "progress" and e["node_id"] == sampler]
    assert [e["value"] for e in steps][-1] == 4 and steps[-1]["max"] == 4
    # the loader's stages reached the page as "loading" progress on its node
    loading = [e for e in events if e["type"] == "progress" and e["node_id"] == loader]
    assert loading and {e["activity"] for e in loading} == {"loading"}
    assert loading[0]["stage"] == "importing the model libraries" and loading[-1]["value"] == loading[-1]["max"] - 1
    assert page.page.locator("#gallery-grid .gallery-item").count() >= 1
    image = page.node(save)["images"][0]
    assert "v1/view" in image and ".png" in image
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length > 0", arg=preview)
    assert "type=temp" in page.node(preview)["images"][0]
    # the new KSampler's seed control was "randomize": the seed moved on after queueing
    assert page.js("chisel.workflow()")["nodes"][sampler]["inputs"]["seed"] != seed_before
    page.shot("04-built-graph-result.png")


def test_bundled_workflow_seed_change_reruns_only_what_changed(page, server):
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    page.page.select_option("#workflows-select", "txt2img")
    page.page.wait_for_function("chisel.nodes().length === 7")
    ids = {n["type"]: n["id"] for n in page.nodes()}
    sampler, save = ids["KSampler"], ids["SaveImage"]
    page.set_number(sampler, "steps", 3)
    page.page.click("#queue-btn")
    first = page.wait_finished(1)
    assert first["status"] == "success"
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length > 0", arg=save)
    image1 = page.node(save)["images"][0]

    # a new seed, and "increment" for the run after this one
    page.set_number(sampler, "seed", 1234)
    page.choose(sampler, "seed control", "increment")
    page.page.keyboard.press("Control+Enter")
    second = page.wait_finished(2)
    assert second["status"] == "success"
    unchanged = {n["id"] for n in page.nodes() if n["type"] in
                 ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage")}
    assert unchanged <= set(second["cached"])
    assert {sampler, ids["VAEDecode"], save} <= set(second["executed"])
    page.page.wait_for_function("([i, old]) => { const n = chisel.nodes().find(n => n.id === i);"
                                " return n.images.length && n.images[0] !== old; }", arg=[save, image1])
    statuses = {n["id"]: n["status"] for n in page.nodes()}
    assert all(statuses[i] == "cached" for i in unchanged) and statuses[sampler] == "done"
    assert page.js("chisel.workflow()")["nodes"][sampler]["inputs"]["seed"] == 1235  # incremented after queueing
    page.shot("05-seed-changed-cache-skipped.png")

    # the queue view and interrupt: a long run shows as running, and Interrupt stops it
    page.set_number(sampler, "steps", 400)
    page.page.click("#queue-btn")
    page.page.wait_for_function("chisel.events().filter(e => e.type === 'progress').length > "
                                f"{len([e for e in page.js('chisel.events()') if e['type'] == 'progress'])}",
                                timeout=60000)
    page.page.locator("#queue-list .queue-item.running").wait_for(timeout=10000)
    page.page.wait_for_function("(chisel.previews || 0) > 0 && document.querySelector('#preview-img').src", timeout=30000)
    assert page.page.locator("#progress-step").inner_text().startswith("step ")
    page.shot("06-running-with-queue-and-preview.png")
    page.page.click("#interrupt-btn")
    third = page.wait_finished(3)
    assert third["status"] == "interrupted"
    page.page.locator("#queue-list .queue-item").wait_for(state="detached", timeout=10000)


def test_a_broken_graph_shows_its_errors_on_the_right_nodes(page, server, root):
    broken = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    ids = {n["type"]: i for i, n in broken["nodes"].items()}
    sampler, loader = ids["KSampler"], ids["CheckpointLoaderSimple"]
    del broken["nodes"][sampler]["inputs"]["model"]  # a socket left unconnected
    broken["nodes"][sampler]["inputs"]["steps"] = 0  # below the minimum
    broken["nodes"][loader]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    path = root / "broken.json"
    path.write_text(json.dumps(broken))
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("chisel.nodes().length === 7 && document.title.startsWith('broken')")
    page.page.keyboard.press("Control+Enter")
    page.page.locator("#error-list .error-item").first.wait_for(timeout=10000)
    errors = {n["id"]: n["errors"] for n in page.nodes() if n["errors"]}
    assert set(errors) == {sampler, loader}
    assert {e["input"] for e in errors[sampler]} == {"model", "steps"}
    assert [e["input"] for e in errors[loader]] == ["ckpt_name"]
    texts = " ".join(e["text"] for es in errors.values() for e in es)
    assert "“model” is not connected" in texts and "out of range" in texts and "was not found" in texts
    items = page.page.locator("#error-list .error-item").all_inner_texts()
    assert len(items) == 3 and any("KSampler" in t and "steps" in t for t in items)
    assert not page.js("chisel.events()")  # nothing ran
    page.shot("07-broken-graph-errors.png")
    # clicking an error brings its node into view; fixing the value clears the errors on the next check
    page.page.locator("#error-list .error-item", has_text="steps").click()
    page.set_number(sampler, "steps", 2)
    page.page.click("#check-btn")
    page.page.wait_for_function("document.querySelectorAll('#error-list .error-item').length === 2")


def test_dropping_a_chisel_png_restores_its_graph(page, server, root):
    pngs = sorted((root / "output").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    if not pngs:  # this test alone: make one through the API
        wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
        sampler = next(i for i, n in wf["nodes"].items() if n["type"] == "KSampler")
        wf["nodes"][sampler]["inputs"]["steps"] = 2
        pid = server.request("POST", "v1/prompts", {"workflow": wf})["prompt_id"]
        for _ in range(300):
            if server.get(f"v1/history/{pid}")["status"] in ("success", "error"):
                break
            time.sleep(0.3)
        pngs = sorted((root / "output").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    png = pngs[-1]
    from PIL import Image

    with Image.open(png) as im:
        embedded = json.loads(im.text["workflow"])
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    data = base64.b64encode(png.read_bytes()).decode()
    transfer = page.page.evaluate_handle("""async ([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/png'}));
        return dt; }""", [data, png.name])
    page.page.dispatch_event("#graph-canvas", "dragover", {"dataTransfer": transfer})
    page.page.dispatch_event("#graph-canvas", "drop", {"dataTransfer": transfer})
    page.page.wait_for_function("n => chisel.nodes().length === n", arg=len(embedded["nodes"]), timeout=10000)
    restored = page.js("chisel.workflow()")
    assert {i: n["type"] for i, n in restored["nodes"].items()} == {i: n["type"] for i, n in embedded["nodes"].items()}
    for i, n in embedded["nodes"].items():
        assert restored["nodes"][i]["inputs"] == n["inputs"], i
    if embedded.get("layout", {}).get("nodes"):
        for i, lay in embedded["layout"]["nodes"].items():
            assert restored["layout"]["nodes"][i]["pos"] == lay["pos"]
    page.shot("08-png-dropped.png")


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def comfy_files(native: dict, schemas: dict) -> tuple[dict, dict]:
    """The bundled workflow as ComfyUI would save it: the API format and the UI format (links by slot index)."""
    def out_index(link):
        src = native["nodes"][link["node"]]
        return [o["name"] for o in schemas[src["type"]]["outputs"]].index(link["output"])

    api, ui_nodes, ui_links = {}, [], []
    for nid, n in native["nodes"].items():
        schema = schemas[n["type"]]
        api[nid] = {"class_type": n["type"], "_meta": {"title": n.get("title", schema["display_name"])},
                    "inputs": {k: [v["node"], out_index(v)] if isinstance(v, dict) else v for k, v in n["inputs"].items()}}
        inputs, values = [], []
        for inp in schema["inputs"]:
            v = n["inputs"].get(inp["name"], inp.get("default"))
            if isinstance(v, dict):
                ui_links.append([len(ui_links) + 1, int(v["node"]), out_index(v), int(nid), len(inputs), inp["type"]])
                inputs.append({"name": inp["name"], "type": inp["type"], "link": len(ui_links)})
            elif inp["type"] in WIDGET_TYPES:
                values.append(v)
                if inp.get("seed"):
                    values.append("fixed")
        pos = native["layout"]["nodes"][nid]["pos"]
        ui_nodes.append({"id": int(nid), "type": n["type"], "pos": [pos[0] + 7, pos[1]], "size": [300, 120],
                         "inputs": inputs, "outputs": [{"name": o["name"], "type": o["type"]} for o in schema["outputs"]],
                         "widgets_values": values, "mode": 0, **({"title": n["title"]} if "title" in n else {})})
    ui = {"last_node_id": 9, "last_link_id": len(ui_links), "nodes": ui_nodes, "links": ui_links, "groups": [],
          "version": 0.4}
    return api, ui


def test_comfyui_api_and_ui_files_open(page, server, root):
    native = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    api, ui = comfy_files(native, server.get("v1/nodes"))
    for name, data in (("comfy-api", api), ("comfy-ui", ui)):
        path = root / f"{name}.json"
        path.write_text(json.dumps(data))
        page.page.click("#new-btn")
        page.page.wait_for_function("chisel.nodes().length === 0")
        page.page.set_input_files("#file-input", str(path))
        page.page.wait_for_function("n => chisel.nodes().length === 7 && document.title.startsWith(n)", arg=name)
        opened = page.js("chisel.workflow()")
        for nid, n in native["nodes"].items():
            assert opened["nodes"][nid]["type"] == n["type"], (name, nid)
            assert opened["nodes"][nid]["inputs"] == n["inputs"], (name, nid)
        if name == "comfy-ui":  # the UI format brings its layout
            assert opened["layout"]["nodes"]["3"]["pos"] == [native["layout"]["nodes"]["3"]["pos"][0] + 7,
                                                             native["layout"]["nodes"]["3"]["pos"][1]]
    page.shot("10-comfyui-ui-file-opened.png")


def test_upload_an_image_into_a_load_image_node(page, server, root):
    from PIL import Image

    picture = root / "my picture.png"
    Image.new("RGB", (32, 24), (200, 40, 40)).save(picture)
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    node = page.add_node(200, 200, "Load Image")
    button = next(k for k in page.js("i => chisel.app.nodeFor(i).widgets.map(w => w.name)", node) if k.startswith("upload"))
    with page.page.expect_file_chooser() as chooser:
        page.page.mouse.click(*page.js("([i, n]) => chisel.widgetPos(i, n)", [node, button]))
    chooser.value.set_files(str(picture))
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.image === 'my picture.png'", arg=node)
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length === 1", arg=node)
    assert (root / "input" / "my picture.png").is_file()
    assert page.js("chisel.workflow()")["nodes"][node]["inputs"] == {"image": "my picture.png"}
    page.shot("11-image-uploaded.png")


def test_undo_redo_copy_paste_delete_and_save(page, server):
    assert page.js("chisel.nodes().length") == 7
    save = next(n for n in page.nodes() if n["type"] == "SaveImage")
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", save["id"]))
    page.page.keyboard.press("Control+c")
    page.page.mouse.move(700, 850)
    page.page.keyboard.press("Control+v")
    page.page.wait_for_function("chisel.nodes().length === 8")
    pasted = [n for n in page.nodes() if n["type"] == "SaveImage" and n["id"] != save["id"]]
    assert len(pasted) == 1 and pasted[0]["widgets"]["filename_prefix"] == save["widgets"]["filename_prefix"]
    # each edit is a step once the editor has looked (it waits for a burst of events to end): as a person's hands
    page.page.wait_for_function("chisel.undoDepth() === 1")
    page.page.keyboard.press("Delete")
    page.page.wait_for_function("chisel.nodes().length === 7")
    page.page.wait_for_function("chisel.undoDepth() === 2")
    # move a node by its title bar
    x, y = page.js("i => chisel.titlePos(i)", save["id"])
    page.drag((x, y), (x + 40, y + 60))
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).pos[1] > 0", arg=save["id"])
    moved = page.node(save["id"])["pos"]
    assert moved != save["pos"]
    page.page.wait_for_function("chisel.undoDepth() >= 3")
    page.page.keyboard.press("Control+z")  # the move
    page.page.wait_for_function("([i, p]) => chisel.nodes().find(n => n.id === i).pos[0] === p[0]",
                                arg=[save["id"], save["pos"]])
    page.page.keyboard.press("Control+z")  # the delete
    page.page.wait_for_function("chisel.nodes().length === 8")
    page.page.keyboard.press("Control+Shift+z")
    page.page.wait_for_function("chisel.nodes().length === 7")
    page.page.keyboard.press("Control+y")
    page.page.wait_for_function("([i, p]) => Math.abs(chisel.nodes().find(n => n.id === i).pos[0] - p[0]) < 0.5",
                                arg=[save["id"], moved])
    # download: a native workflow file with the layout
    with page.page.expect_download() as dl:
        page.page.click("#download-btn")
    saved = json.loads(Path(dl.value.path()).read_text())
    assert saved["format"] == "chisel-workflow" and saved["version"] == 1 and len(saved["nodes"]) == 7
    assert saved["layout"]["nodes"][save["id"]]["pos"] == pytest.approx(moved, abs=0.5)
    # the graph survives a reload of the page (kept in the browser's storage)
    page.page.reload()
    page.ready()
    assert page.node(save["id"])["pos"] == pytest.approx(moved, abs=0.5)


def test_the_page_asks_once_for_the_token_when_the_server_needs_one(browser, root, tmp_path):
    # a second server needs its own root (the queue database is locked per root); it shares the checkpoint
    name = bundled_checkpoint_name()
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(root / "models" / "checkpoints" / name, tmp_path / "models" / "checkpoints" / name)
    srv = Server(tmp_path, token="s3cret-token")
    try:
        p = Page(browser, srv.url, wait_ready=False)
        dialog = p.page.locator("#token-dialog")
        dialog.wait_for(timeout=15000)
        p.page.fill("#token-input", "wrong")
        p.page.keyboard.press("Enter")
        p.page.wait_for_function("document.querySelector('#token-dialog')?.textContent.includes('not accepted')")
        p.shot("09-token-prompt.png")
        p.page.fill("#token-input", "s3cret-token")
        p.page.keyboard.press("Enter")
        p.ready()
        p.page.wait_for_function("document.querySelector('#conn-status').dataset.state === 'connected'")
        assert len(p.nodes()) == 7
        p.page.reload()  # kept for the session: not asked again
        p.ready()
        assert p.page.locator("#token-dialog").count() == 0
        # the wrong token's 401 is the only failed request; nothing else went wrong on the page
        assert all("401" in e for e in p.errors), p.errors
        p.close()
        # signed in by a link with ?token= (the server sets its cookie): the page does not ask, and works
        p = Page(browser, srv.url + "?token=s3cret-token", wait_ready=False)
        p.page.wait_for_function("window.chisel && (window.chisel.ready === true || !!document.querySelector('#token-dialog'))",
                                 timeout=30000)
        assert p.page.locator("#token-dialog").count() == 0 and "token" not in p.page.url
        p.page.wait_for_function("document.querySelector('#conn-status').dataset.state === 'connected'")
        assert len(p.nodes()) == 7 and p.js("chisel.app.api.token") is None
        assert p.js("chisel.app.api.get('v1/queue').then(q => typeof q)") == "object"
        assert not p.errors, p.errors
        p.close()
    finally:
        srv.stop()

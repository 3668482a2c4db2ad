"""The canvas's editing and run feedback in a real browser (Debian's Chromium, Playwright) against a real
``chisel serve``: errors that stay whatever order the server's messages arrive in, runs that are not edits,
"cached" badges, stale badges cleared by an edit, fuzzy node search, refused links that say why, reroute dots
saved and restored, bypass and mute, a mask painted in the mask editor changing an inpaint result. Screenshots go to
test-artifacts/web-canvas/.
"""
from __future__ import annotations

import json
import time

import pytest

from test_web_canvas import REPO, Page, provide_checkpoint
from test_web_canvas import browser, page, server  # noqa: F401 (fixtures: the module's own root)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
FINISHED = ("success", "error", "interrupted", "cancelled")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas-edit-root")
    provide_checkpoint(root)
    # a checkpoint file that exists (so the workflow validates) but cannot be read: the run fails at once
    (root / "models" / "checkpoints" / "broken.safetensors").write_bytes(b"not a checkpoint" * 8)
    return root


def txt2img(steps: int = 2) -> dict:
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    for node in wf["nodes"].values():
        if node["type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return wf


def open_workflow(page: Page, root, wf: dict, name: str) -> dict[str, str]:
    """Open a workflow file the way a user does (the Open button's file input); returns {type: id}."""
    path = root / f"{name}.json"
    path.write_text(json.dumps(wf))
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("n => document.title.startsWith(n)", arg=name)
    page.page.wait_for_function("n => chisel.nodes().length === n", arg=len(wf["nodes"]))
    return {n["type"]: n["id"] for n in page.nodes()}


def select(page: Page, node_id: str) -> None:
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", node_id))


def finished(page: Page, count: int) -> dict:
    return page.wait_finished(count, timeout=120000)


# -- errors and runs -------------------------------------------------------------------------------------------------
def test_a_run_error_stays_when_it_arrives_before_the_queue_reply(page, server, root):
    wf = txt2img()
    loader = next(i for i, n in wf["nodes"].items() if n["type"] == "CheckpointLoaderSimple")
    wf["nodes"][loader]["inputs"]["ckpt_name"] = "broken.safetensors"
    open_workflow(page, root, wf, "broken-run")

    def hold_reply(route):
        # the reply to POST /v1/prompts is held until the run has failed and its events have gone out
        response = route.fetch()
        pid = response.json()["prompt_id"]
        for _ in range(300):
            if server.get(f"v1/history/{pid}")["status"] in FINISHED:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        route.fulfill(response=response)

    page.page.route("**/v1/prompts", hold_reply)
    page.page.click("#queue-btn")
    done = finished(page, 1)
    assert done["status"] == "error"
    pid = done["prompt_id"]
    # the reply came after the error: it must not wipe the error
    page.page.wait_for_function("p => chisel.app.prompts.get(p)?.number != null", arg=pid, timeout=30000)
    page.page.wait_for_timeout(300)
    assert page.page.locator("#error-list .error-item").count() >= 1
    node = page.node(loader)
    assert node["status"] == "error" and node["errors"], node
    page.shot("20-run-error-kept.png")
    page.page.unroute("**/v1/prompts")
    # the next edit clears it
    page.choose(loader, "ckpt_name", provide_checkpoint(root))
    page.page.wait_for_function("document.querySelectorAll('#error-list .error-item').length === 0")
    assert not page.node(loader)["errors"]


def test_a_run_is_not_an_edit_cached_nodes_say_so_and_edits_clear_stale_badges(page, server, root):
    ids = open_workflow(page, root, txt2img(), "runs")
    sampler, save = ids["KSampler"], ids["SaveImage"]
    page.choose(sampler, "seed control", "increment")
    page.page.wait_for_function("chisel.undoDepth() === 1")
    seed = page.node(sampler)["widgets"]["seed"]
    size_before = page.node(save)["size"]
    page.page.click("#queue-btn")
    assert finished(page, 1)["status"] == "success"
    page.page.wait_for_function("([i, h]) => chisel.nodes().find(n => n.id === i).size[1] > h", arg=[save, size_before[1]],
                                timeout=30000)
    # the result grew the node and the seed moved on: neither is an undo step, and the saved size is the user's
    page.page.wait_for_timeout(200)
    assert page.node(sampler)["widgets"]["seed"] == seed + 1
    assert page.js("chisel.undoDepth()") == 1
    assert page.js("chisel.workflow()")["layout"]["nodes"][save]["size"] == size_before
    page.shot("21-after-a-run.png")

    page.choose(sampler, "seed control", "fixed")
    page.page.wait_for_function("chisel.undoDepth() === 2")
    page.page.click("#queue-btn")
    finished(page, 2)
    page.page.click("#queue-btn")
    second = finished(page, 3)
    assert second["status"] == "success" and set(second["cached"]) == {n["id"] for n in page.nodes()}
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).status === 'cached'", arg=save)
    statuses = {n["id"]: n["status"] for n in page.nodes()}
    assert set(statuses.values()) == {"cached"}, statuses
    assert page.js("chisel.undoDepth()") == 2
    page.shot("22-all-cached.png")

    page.set_number(sampler, "steps", 3)
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).status === null", arg=sampler)
    statuses = {n["id"]: n["status"] for n in page.nodes()}
    assert statuses[sampler] is None and statuses[ids["VAEDecode"]] is None and statuses[save] is None
    assert statuses[ids["CheckpointLoaderSimple"]] == "cached" and statuses[ids["EmptyLatentImage"]] == "cached"


def test_a_refused_workflow_brings_its_first_broken_node_into_view(page, root):
    wf = txt2img()
    sampler = next(i for i, n in wf["nodes"].items() if n["type"] == "KSampler")
    wf["nodes"][sampler]["inputs"]["steps"] = 0
    open_workflow(page, root, wf, "refused")
    page.page.mouse.click(20, 900)  # nothing selected
    page.page.click("#queue-btn")
    page.page.locator("#error-list .error-item").first.wait_for(timeout=10000)
    assert page.js("Object.keys(chisel.app.lgcanvas.selected_nodes)") == [sampler]
    assert not page.js("chisel.events()")


# -- search and links ------------------------------------------------------------------------------------------------
def test_node_search_forgives_typos_and_finds_initials(page):
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    for query, expected in [("samplr", "KSampler"), ("ksampelr", "KSampler"), ("cte", "CLIPTextEncode"),
                            ("vae decdoe", "VAEDecode"), ("chekpoint", "CheckpointLoaderSimple"),
                            ("eli", "EmptyLatentImage"), ("Save Image", "SaveImage")]:
        page.page.mouse.dblclick(600, 500)
        box = page.page.locator(".chisel-palette input")
        box.wait_for()
        page.page.keyboard.type(query)
        assert page.page.locator(".palette-item.active").get_attribute("data-type") == expected, query
        if query == "samplr":
            page.shot("23-fuzzy-search.png")
        page.page.keyboard.press("Escape")


def test_a_refused_link_says_why(page):
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    loader = page.add_node(60, 200, "Load Checkpoint")
    text = page.add_node(560, 200, "CLIP Text Encode")
    page.connect(loader, "MODEL", text, "clip")
    toast = page.page.locator(".toast.link-refused")
    toast.wait_for(timeout=5000)
    assert "MODEL cannot go into CLIP" in toast.inner_text()
    assert "clip" not in page.js("chisel.workflow()")["nodes"][text]["inputs"]
    page.shot("24-refused-link.png")
    page.connect(loader, "CLIP", text, "clip")
    assert page.js("chisel.workflow()")["nodes"][text]["inputs"]["clip"] == {"node": loader, "output": "CLIP"}


def test_reroute_dots_are_saved_and_survive_undo_redo_and_reload(page, root):
    ids = open_workflow(page, root, txt2img(), "reroutes")
    decode, loader = ids["VAEDecode"], ids["CheckpointLoaderSimple"]
    page.page.wait_for_function("i => chisel.linkCenter(i, 'vae')", arg=decode)
    x, y = page.js("i => chisel.linkCenter(i, 'vae')", decode)
    page.page.keyboard.down("Alt")  # Alt+click on a link puts a reroute dot there
    page.page.mouse.click(x, y)
    page.page.keyboard.up("Alt")
    page.page.wait_for_function("chisel.reroutes().length === 1")
    page.page.wait_for_function("chisel.undoDepth() >= 1")
    wf = page.js("chisel.workflow()")
    [dot] = wf["layout"]["reroutes"]
    assert wf["layout"]["nodes"][decode]["reroutes"] == {"vae": dot["id"]}
    assert wf["nodes"][decode]["inputs"]["vae"] == {"node": loader, "output": "VAE"}
    page.shot("25-reroute.png")
    page.page.keyboard.press("Control+z")
    page.page.wait_for_function("chisel.reroutes().length === 0")
    page.page.keyboard.press("Control+Shift+z")
    page.page.wait_for_function("chisel.reroutes().length === 1")
    assert page.js("chisel.reroutes()")[0]["links"] == 1
    assert page.js("chisel.workflow()")["layout"]["reroutes"] == [dot]
    page.page.reload()
    page.ready()
    assert page.js("chisel.workflow()")["layout"]["reroutes"] == [dot]


# -- bypass and mute -------------------------------------------------------------------------------------------------
def with_upscale_and_preview(steps: int = 2) -> dict:
    """txt2img with an Upscale Image (to 96 px) between VAE Decode and Save Image, and a Preview Image of the decode."""
    wf = txt2img(steps)
    decode = next(i for i, n in wf["nodes"].items() if n["type"] == "VAEDecode")
    save = next(i for i, n in wf["nodes"].items() if n["type"] == "SaveImage")
    wf["nodes"]["20"] = {"type": "ImageScale", "inputs": {"image": {"node": decode, "output": "IMAGE"},
                                                         "upscale_method": "nearest-exact", "width": 96, "height": 96,
                                                         "crop": "disabled"}}
    wf["nodes"]["21"] = {"type": "PreviewImage", "inputs": {"images": {"node": decode, "output": "IMAGE"}}}
    wf["nodes"][save]["inputs"]["images"] = {"node": "20", "output": "IMAGE"}
    wf["layout"]["nodes"]["9"] = {"pos": [1700, 180]}
    wf["layout"]["nodes"]["20"] = {"pos": [1460, 180]}
    wf["layout"]["nodes"]["21"] = {"pos": [1460, 600]}
    return wf


def saved_image_size(root, page, save_id):
    from PIL import Image

    url = page.node(save_id)["images"][0]
    name = url.split("filename=")[1].split("&")[0]
    with Image.open(next((root / "output").rglob(name))) as im:
        return im.size


def test_bypass_passes_inputs_through_and_mute_stops_what_it_feeds(page, server, root):
    ids = open_workflow(page, root, with_upscale_and_preview(), "modes")
    upscale, save, decode = ids["ImageScale"], ids["SaveImage"], ids["VAEDecode"]
    select(page, upscale)
    page.page.keyboard.press("Control+b")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 4", arg=upscale)
    wf = page.js("chisel.workflow()")
    assert wf["layout"]["nodes"][upscale]["mode"] == "bypass"
    assert wf["nodes"][save]["inputs"]["images"] == {"node": decode, "output": "IMAGE"}  # what runs
    assert wf["layout"]["nodes"][save]["links"] == {"images": {"node": upscale, "output": "IMAGE"}}  # what was drawn
    page.shot("26-bypassed.png")
    page.page.click("#queue-btn")
    run = finished(page, 1)
    assert run["status"] == "success" and upscale not in run["executed"] and save in run["executed"] + run["cached"]
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length", arg=save)
    assert saved_image_size(root, page, save) == (64, 64)  # not upscaled: the decode's image passed through

    # Ctrl+M on a bypassed node mutes it: Save Image (fed only through it) does not run, Preview Image does
    page.page.keyboard.press("Control+m")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 2", arg=upscale)
    wf = page.js("chisel.workflow()")
    assert wf["layout"]["nodes"][upscale]["mode"] == "mute" and wf["outputs"] == [ids["PreviewImage"]]
    page.shot("27-muted.png")
    page.page.click("#queue-btn")
    run = finished(page, 2)
    assert run["status"] == "success" and save not in run["executed"] + run["cached"]
    assert upscale not in run["executed"] and ids["PreviewImage"] in run["executed"] + run["cached"]

    # saved and restored: the modes and the drawn links survive a reload; undo takes the mute back
    page.page.reload()
    page.ready()
    assert page.node(upscale)["mode"] == 2
    assert page.js("chisel.workflow()")["nodes"][save]["inputs"]["images"] == {"node": upscale, "output": "IMAGE"}
    page.page.keyboard.press("Control+m")  # nothing selected after a reload: nothing changes
    assert page.node(upscale)["mode"] == 2
    select(page, upscale)
    page.page.keyboard.press("Control+m")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 0", arg=upscale)
    assert "outputs" not in page.js("chisel.workflow()")


# -- ComfyUI files, history, export ---------------------------------------------------------------------------------
def test_a_comfyui_file_keeps_bypass_notes_and_seed_controls_and_says_what_was_lost(page, server, root):
    from test_web_canvas import comfy_files

    native = txt2img()
    _, ui = comfy_files(native, server.get("v1/nodes"))
    by_type = {n["type"]: n for n in ui["nodes"]}
    sampler, save, decode = by_type["KSampler"], by_type["SaveImage"], by_type["VAEDecode"]
    sampler["widgets_values"][1] = "randomize"  # the control after the seed
    sampler["color"], sampler["bgcolor"] = "#332922", "#593930"
    save["mode"] = 4  # bypassed
    ui["nodes"].append({"id": 30, "type": "Note", "pos": [40, 600], "size": [300, 120], "mode": 0,
                        "widgets_values": ["remember: 64 px only"]})
    # a Reroute node between VAE Decode and Save Image
    into_save = next(link for link in ui["links"] if link[3] == save["id"])
    ui["links"].append([99, decode["id"], 0, 31, 0, "IMAGE"])
    into_save[1], into_save[2] = 31, 0
    ui["nodes"].append({"id": 31, "type": "Reroute", "pos": [1400, 400], "size": [75, 26], "mode": 0,
                        "inputs": [{"name": "", "type": "*", "link": 99}],
                        "outputs": [{"name": "", "type": "IMAGE", "links": [into_save[0]]}]})
    path = root / "comfy-extras.json"
    path.write_text(json.dumps(ui))
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("document.title.startsWith('comfy-extras')")
    losses = page.page.locator(".toast.load-losses")
    losses.wait_for(timeout=10000)
    assert "1 reroute node (now direct links)" in losses.inner_text()
    nodes = {n["id"]: n for n in page.nodes()}
    ksampler = nodes[str(sampler["id"])]
    assert ksampler["widgets"]["seed control"] == "randomize" and ksampler["color"] == "#332922"
    assert nodes[str(save["id"])]["mode"] == 4
    [note] = [n for n in nodes.values() if n["type"] == "Note"]
    assert note["widgets"]["text"] == "remember: 64 px only"
    wf = page.js("chisel.workflow()")
    assert wf["layout"]["notes"][0]["text"] == "remember: 64 px only" and note["id"] not in wf["nodes"]
    assert wf["nodes"][str(save["id"])]["inputs"]["images"] == {"node": str(decode["id"]), "output": "IMAGE"}
    page.shot("28-comfyui-file-losses.png")


def test_history_reloads_a_past_workflow_and_export_gives_comfyui_api_format(page, server, root):
    ids = open_workflow(page, root, txt2img(), "history")
    page.page.click("#queue-btn")
    run = finished(page, 1)
    item = page.page.locator(f"#history-list .history-item[data-prompt='{run['prompt_id']}']")
    item.wait_for(timeout=10000)
    page.page.wait_for_function(
        "p => document.querySelector(`#history-list [data-prompt='${p}'] img`)?.naturalWidth > 0", arg=run["prompt_id"])
    page.shot("29-history.png")
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    item.click()  # the run's images, and "Load workflow"
    page.page.locator("#run-view").get_by_role("button", name="Load workflow").click()
    page.page.wait_for_function("chisel.nodes().length === 7")
    assert sorted(n["type"] for n in page.nodes()) == sorted(ids_type for ids_type in
                                                              (n["type"] for n in txt2img()["nodes"].values()))
    with page.page.expect_download() as dl:
        page.page.click("#export-btn")
    api = json.loads(open(dl.value.path()).read())
    wf = page.js("chisel.workflow()")
    assert {i: n["class_type"] for i, n in api.items()} == {i: n["type"] for i, n in wf["nodes"].items()}
    sampler = next(i for i, n in api.items() if n["class_type"] == "KSampler")
    loader = next(i for i, n in api.items() if n["class_type"] == "CheckpointLoaderSimple")
    assert api[sampler]["inputs"]["model"] == [loader, 0] and api[sampler]["inputs"]["steps"] == 2
    assert server.request("POST", "v1/validate", {"workflow": api})["valid"] is True
    del ids


# -- groups, notes, collapsed nodes, colours, keys -------------------------------------------------------------------
def test_groups_notes_collapsed_nodes_and_colours_are_saved_and_restored(page, root):
    ids = open_workflow(page, root, txt2img(), "layout")
    pos_prompt = next(n["id"] for n in page.nodes() if n["title"] == "Positive prompt")
    neg_prompt = next(n["id"] for n in page.nodes() if n["title"] == "Negative prompt")
    select(page, pos_prompt)
    page.page.keyboard.down("Shift")
    select(page, neg_prompt)
    page.page.keyboard.up("Shift")
    assert sorted(page.js("Object.keys(chisel.app.lgcanvas.selected_nodes)")) == sorted([pos_prompt, neg_prompt])
    page.page.keyboard.press("Control+g")
    page.page.wait_for_function("chisel.groups().length === 1")
    [group] = page.js("chisel.groups()")
    for nid in (pos_prompt, neg_prompt):
        x, y = page.node(nid)["pos"]
        assert group["bounding"][0] < x < group["bounding"][0] + group["bounding"][2]
        assert group["bounding"][1] < y < group["bounding"][1] + group["bounding"][3]
    title = page.js("b => { const r = chisel.app.lgcanvas.ds.convertOffsetToCanvas([b[0] + 40, b[1] + 12]);"
                    " const c = chisel.app.lgcanvas.canvas.getBoundingClientRect(); return [c.left + r[0], c.top + r[1]]; }",
                    group["bounding"])
    # double-clicking its title renames it
    page.page.mouse.dblclick(*title)
    box = page.page.locator(".graphdialog input")
    box.wait_for(timeout=5000)
    box.fill("Prompts")
    box.press("Enter")
    page.page.wait_for_function("chisel.groups()[0].title === 'Prompts'")
    # dragging the group's title moves its nodes
    before = page.node(pos_prompt)["pos"]
    page.drag(title, (title[0] + 60, title[1] + 40))
    page.page.wait_for_function("([i, x]) => chisel.nodes().find(n => n.id === i).pos[0] !== x", arg=[pos_prompt, before[0]])
    # collapse (Alt+C) and a colour from the node menu
    select(page, ids["EmptyLatentImage"])
    page.page.keyboard.press("Alt+c")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).collapsed", arg=ids["EmptyLatentImage"])
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", ids["KSampler"]), button="right")
    page.page.locator(".litecontextmenu .litemenu-entry", has_text="Colors").first.click()
    page.page.locator(".litecontextmenu .litemenu-entry", has_text="red").first.click()
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).color", arg=ids["KSampler"])
    # a note from the search ("/")
    page.page.mouse.click(300, 850)
    page.page.keyboard.press("/")
    page.page.locator(".chisel-palette input").wait_for()
    page.page.keyboard.type("note")
    page.page.keyboard.press("Enter")
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'Note')")
    note = next(n["id"] for n in page.nodes() if n["type"] == "Note")
    page.type_text(note, "text", "try cfg 7 next")
    page.page.keyboard.press("?")
    page.page.locator("#shortcuts").wait_for()
    assert "Ctrl+B" in page.page.locator("#shortcuts").inner_text()
    page.shot("30-groups-notes-shortcuts.png")
    page.page.keyboard.press("Escape")
    page.page.locator("#shortcuts").wait_for(state="detached")
    saved = page.js("chisel.workflow()")
    page.page.reload()
    page.ready()
    restored = page.js("chisel.workflow()")
    assert restored["layout"]["groups"] == saved["layout"]["groups"] and len(saved["layout"]["groups"]) == 1
    assert saved["layout"]["groups"][0]["title"] == "Prompts"
    assert restored["layout"]["notes"] == saved["layout"]["notes"] and saved["layout"]["notes"][0]["text"] == "try cfg 7 next"
    assert restored["layout"]["nodes"][ids["EmptyLatentImage"]]["collapsed"] is True
    assert restored["layout"]["nodes"][ids["KSampler"]]["color"] == saved["layout"]["nodes"][ids["KSampler"]]["color"]
    assert page.node(ids["EmptyLatentImage"])["collapsed"]


def test_the_layout_fits_small_windows_and_every_button_has_a_name(browser, server):
    from test_web_canvas import Page as BasePage

    for width, height in ((1024, 700), (414, 800)):
        p = BasePage.__new__(BasePage)
        p.context = browser.new_context(viewport={"width": width, "height": height})
        p.page = p.context.new_page()
        p.errors = []
        p.page.on("console", lambda m, p=p: p.errors.append(m.text) if m.type == "error" else None)
        p.page.goto(server.url)
        p.ready()
        for sel in ("#queue-btn", "#interrupt-btn", "#save-btn", "#open-btn", "#undo-btn"):
            box = p.page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, (width, sel, box)
        canvas = p.page.locator("#graph-canvas").bounding_box()
        assert canvas["width"] >= (600 if width > 800 else width - 2), (width, canvas)
        assert canvas["height"] >= height * 0.5, (width, canvas)
        if width < 800:
            assert not p.page.locator("#sidebar").is_visible()
            p.page.click("#panels-btn")
            assert p.page.locator("#queue-list").is_visible()
            assert p.page.locator("#panels-btn").get_attribute("aria-expanded") == "true"
        p.shot(f"31-layout-{width}x{height}.png")
        # every button says what it does (its text or an aria-label), and the focus is visible
        unnamed = p.js("[...document.querySelectorAll('button, select, input:not([type=hidden]):not([hidden])')]"
                       ".filter(b => !(b.getAttribute('aria-label') || b.textContent.trim() || b.labels?.length))"
                       ".map(b => b.outerHTML)")
        assert not unnamed, unnamed
        p.page.focus("#save-btn")
        p.page.keyboard.press("Tab")
        focused = p.js("(() => { const a = document.activeElement; const s = getComputedStyle(a);"
                       " return [a.id, a.matches(':focus-visible'), s.outlineStyle, s.outlineWidth]; })()")
        assert focused[1] and focused[2] != "none" and focused[3] != "0px", focused
        assert not p.errors, p.errors
        p.context.close()


def test_the_mask_editor_paints_the_mask_into_the_pictures_alpha(page, root):
    from PIL import Image

    picture = root / "mask source.png"
    Image.new("RGB", (40, 30), (30, 140, 220)).save(picture)
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    node = page.add_node(300, 300, "Load Image")
    button = next(k for k in page.js("i => chisel.app.nodeFor(i).widgets.map(w => w.name)", node) if k.startswith("upload"))
    with page.page.expect_file_chooser() as chooser:
        page.page.mouse.click(*page.js("([i, n]) => chisel.widgetPos(i, n)", [node, button]))
    chooser.value.set_files(str(picture))
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.image === 'mask source.png'", arg=node)
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", node), button="right")
    page.page.locator(".litecontextmenu .litemenu-entry", has_text="Open in mask editor").first.click()
    layer = page.page.locator(".mask-editor .mask-layer")
    layer.wait_for(timeout=5000)
    box = layer.bounding_box()
    page.page.fill("#mask-brush-size", "4")
    # a stroke across the middle, one stroke undone (Ctrl+Z), then the middle again
    cy = box["y"] + box["height"] / 2
    page.drag((box["x"] + box["width"] * 0.2, cy), (box["x"] + box["width"] * 0.8, cy))
    page.drag((box["x"] + 2, box["y"] + 2), (box["x"] + box["width"] * 0.3, box["y"] + 4))
    page.page.keyboard.press("Control+z")
    page.shot("32-mask-editor.png")
    page.page.click("#mask-save")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.image === 'mask source-mask.png'",
                                arg=node, timeout=10000)
    with Image.open(root / "input" / "mask source-mask.png") as im:
        assert im.mode == "RGBA" and im.size == (40, 30)
        alpha = im.getchannel("A")
        assert alpha.getpixel((20, 15)) == 0  # painted: transparent, so Load Image's MASK is 1 there
        assert alpha.getpixel((1, 1)) == 255 and alpha.getpixel((20, 2)) == 255  # the undone stroke left no mask
        assert alpha.getpixel((20, 28)) == 255
        assert im.convert("RGB").getpixel((20, 15)) == (30, 140, 220)
    assert page.js("chisel.workflow()")["nodes"][node]["inputs"] == {"image": "mask source-mask.png"}


def test_a_painted_mask_changes_the_inpaint_result_only_where_it_is_painted(page, server, root):
    """The bundled inpaint workflow (VAE Encode for Inpainting) on the demo model's own kind of picture, a red circle
    on white. Without a mask the noise mask is empty, so the sampler keeps the encoded picture and the result is the
    VAE's reconstruction of it. With a stroke painted in the mask editor, that area is grayed, made the noise mask
    (grown by grow_mask_by) and sampled afresh from the prompt, so it changes; the latent outside the grown mask is
    kept exactly, so the picture there changes only within the VAE decoder's reach of it."""
    import numpy as np
    from PIL import Image, ImageFilter

    wf = json.loads((REPO / "workflows" / "inpaint.json").read_text())
    types = {n["type"]: i for i, n in wf["nodes"].items()}
    wf["nodes"][types["KSampler"]]["inputs"]["steps"] = 4
    grow = wf["nodes"][types["VAEEncodeForInpaint"]]["inputs"]["grow_mask_by"]
    ids = open_workflow(page, root, wf, "inpaint-mask")
    load = ids["LoadImage"]
    picture = root / "circle.png"
    with Image.open(REPO / "workflows" / "assets" / "red_circle_inpaint.png") as im:
        im.convert("RGB").save(picture)  # opaque: no mask yet
    button = next(k for k in page.js("i => chisel.app.nodeFor(i).widgets.map(w => w.name)", load) if k.startswith("upload"))
    with page.page.expect_file_chooser() as chooser:
        page.page.mouse.click(*page.js("([i, n]) => chisel.widgetPos(i, n)", [load, button]))
    chooser.value.set_files(str(picture))
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.image === 'circle.png'", arg=load)

    def run(count: int):
        page.page.click("#queue-btn")
        done = finished(page, count)
        assert done["status"] == "success", done
        [image] = server.get(f"v1/history/{done['prompt_id']}")["outputs"][types["SaveImage"]]["images"]
        with Image.open(root / "output" / image["subfolder"] / image["filename"]) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float64)

    before = run(1)
    # a short stroke across the circle's middle
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", load), button="right")
    page.page.locator(".litecontextmenu .litemenu-entry", has_text="Open in mask editor").first.click()
    layer = page.page.locator(".mask-editor .mask-layer")
    layer.wait_for(timeout=5000)
    page.page.fill("#mask-brush-size", "8")
    box = layer.bounding_box()
    cy = box["y"] + box["height"] / 2
    page.drag((box["x"] + box["width"] * 0.4, cy), (box["x"] + box["width"] * 0.6, cy))
    page.page.click("#mask-save")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.image === 'circle-mask.png'",
                                arg=load, timeout=10000)
    with Image.open(root / "input" / "circle-mask.png") as im:
        alpha = im.getchannel("A")
    painted = np.asarray(alpha) == 0
    assert 40 < painted.sum() < 64 * 64 // 4, painted.sum()  # a stroke, not nothing or everything
    after = run(2)
    page.shot("33-inpaint-with-painted-mask.png")

    diff = np.abs(after - before).mean(axis=-1)  # per pixel, 0..255
    # outside the grown mask, two latent cells (16 px) away: what the decoder reaches from the repainted cells
    reach = grow // 2 + 1 + 16
    near = np.asarray(Image.fromarray(painted.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * reach + 1))) > 0
    assert (~near).sum() > 64 * 8, (~near).sum()
    assert diff[painted].mean() > 50, diff[painted].mean()  # the red circle is gone where the mask was painted
    # ... and the rest of the picture is as it was, but for what the VAE's attention (global, weak) carries: a few
    # levels of 255 where the repainted area changes by over a hundred
    assert diff[~near].mean() < 6, diff[~near].mean()
    red = before[painted].mean(axis=0)
    assert red[0] > 150 and red[1] < 100 and red[2] < 100, red  # without a mask: the circle, reconstructed


# -- export in ComfyUI's UI format -----------------------------------------------------------------------------------
def test_export_comfyui_workflow_downloads_the_ui_format_and_opens_back_to_the_same_graph(page, server, root):
    wf = txt2img(steps=3)
    open_workflow(page, root, wf, "to-comfyui")
    before = page.js("chisel.workflow()")
    with page.page.expect_download() as dl:
        page.page.click("#export-ui-btn")
    assert dl.value.suggested_filename == "to-comfyui.comfyui.json"
    ui = json.loads(open(dl.value.path()).read())
    # ComfyUI's UI format: numbered nodes with types, widget values and sockets; links as 6-element arrays
    assert isinstance(ui["nodes"], list) and isinstance(ui["links"], list) and ui["version"] == 0.4
    assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["type"] for n in wf["nodes"].values())
    assert all(isinstance(n["id"], int) and isinstance(n["widgets_values"], list) for n in ui["nodes"])
    wired = [(k, v) for n in wf["nodes"].values() for k, v in n["inputs"].items() if isinstance(v, dict)]
    assert len(ui["links"]) == len(wired) and all(len(link) == 6 for link in ui["links"])
    ui_nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        assert ui_nodes[src]["outputs"][src_slot]["type"] == link_type and link_id in ui_nodes[src]["outputs"][src_slot]["links"]
        assert ui_nodes[dst]["inputs"][dst_slot]["link"] == link_id
    [sampler] = [n for n in ui["nodes"] if n["type"] == "KSampler"]
    assert 3 in sampler["widgets_values"]  # the steps
    # the server reads it back as the same graph, and so does the canvas when the file is opened
    assert server.request("POST", "v1/validate", {"workflow": ui})["valid"] is True
    path = root / "reopened.json"
    path.write_text(json.dumps(ui))
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("document.title.startsWith('reopened')")
    after = page.js("chisel.workflow()")
    assert after["nodes"] == before["nodes"]
    assert {i: lay["pos"] for i, lay in after["layout"]["nodes"].items()} == \
        {i: lay["pos"] for i, lay in before["layout"]["nodes"].items()}
    page.shot("33-export-comfyui.png")


def test_a_refused_comfyui_export_says_why_in_a_toast_and_downloads_nothing(page, root):
    wf = txt2img()
    wf["nodes"]["99"] = {"type": "X" * 300, "inputs": {}}  # a type name longer than any the server reads
    open_workflow(page, root, wf, "unexportable")
    downloads = []
    page.page.on("download", lambda d: downloads.append(d))
    page.page.click("#export-ui-btn")
    box = page.page.locator(".toast.export-error")
    box.wait_for(timeout=10000)
    text = box.inner_text()
    assert "Export as a ComfyUI workflow failed" in text and "(invalid_workflow)" in text and "node 99" in text, text
    assert box.get_attribute("role") == "alert"
    page.shot("34-export-comfyui-refused.png")
    assert not downloads
    # the browser logs the refused request itself; nothing else may be logged
    page.errors[:] = [e for e in page.errors if "status of 400" not in e]

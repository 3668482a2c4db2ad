"""The canvas's settings panel in a real browser (Debian's Chromium, Playwright) against a real ``chisel serve``:
live previews, the seed control of new nodes, the link style and the theme, kept per user through the server's
ComfyUI-compatible ``/settings`` (in the Chisel root's user folder), so that a reload keeps them and they take effect.
Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import json
import time

import pytest

from test_web_canvas import REPO, Page, Server, provide_checkpoint
from test_web_canvas import browser, server  # noqa: F401 (fixtures: the module's own root)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
LIGHT_BG = "rgb(238, 240, 244)"  # --bg of the light theme
DARK_BG = "rgb(21, 24, 30)"  # --bg of the dark theme


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas-settings-root")
    provide_checkpoint(root)
    return root


@pytest.fixture
def page(browser, server, root):
    (root / "user" / "default" / "comfy.settings.json").unlink(missing_ok=True)  # each test starts from defaults
    p = Page(browser, server.url)
    yield p
    errors = list(p.errors)
    p.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


def state(page: Page) -> dict:
    return page.js("""() => ({
        theme: [...document.body.classList].filter(c => c.startsWith('theme-')),
        background: getComputedStyle(document.body).backgroundColor,
        canvasBackground: chisel.app.lgcanvas.clear_background_color,
        nodeBackground: chisel.app.graph._nodes[0].renderingBgColor ?? chisel.app.graph._nodes[0].bgcolor,
        links: chisel.app.lgcanvas.links_render_mode,
        socket: chisel.app.api.ws.url,
    })""")


def seed_control(page: Page, node_id: str) -> str:
    return page.js("i => chisel.app.nodeFor(i).widgets.find(w => w.name === 'seed control').value", node_id)


def open_settings(page: Page):
    page.page.get_by_role("button", name="Settings").click()
    panel = page.page.get_by_role("dialog", name="Settings")
    panel.wait_for(state="visible", timeout=5000)
    return panel


def wait_stored(server: Server, key: str, value) -> None:
    for _ in range(100):
        if server.get("settings").get(key) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} was not stored as {value!r}: {server.get('settings')}")


def test_defaults_when_the_server_has_no_settings(page):
    s = state(page)
    assert s["theme"] == ["theme-dark"] and s["background"] == DARK_BG
    assert s["links"] == 2  # spline
    assert s["nodeBackground"] == "#353535"  # LiteGraph's own
    assert "previews=" not in s["socket"]
    assert page.page.get_by_role("img", name="Minimap of the workflow").is_visible()
    ksampler = page.add_node(700, 420, "KSampler")
    assert seed_control(page, ksampler) == "randomize"
    panel = open_settings(page)
    assert panel.get_by_label("Theme").input_value() == "dark"
    assert panel.get_by_label("Live previews").input_value() == "auto"


def test_settings_are_stored_per_user_survive_a_reload_and_take_effect(page, server, root):
    panel = open_settings(page)
    panel.get_by_label("Live previews").select_option("none")
    panel.get_by_label("Seed control of new nodes").select_option("decrement")
    panel.get_by_label("Links").select_option("straight")
    panel.get_by_label("Theme").select_option("light")
    panel.get_by_label("Minimap").select_option("off")
    # stored on the server, under ComfyUI's keys where ComfyUI has them
    wait_stored(server, "Comfy.ColorPalette", "light")
    wait_stored(server, "Comfy.LinkRenderMode", 0)
    wait_stored(server, "Chisel.SeedControlDefault", "decrement")
    wait_stored(server, "Chisel.PreviewMethod", "none")
    wait_stored(server, "Comfy.Minimap.Visible", False)
    assert json.loads((root / "user" / "default" / "comfy.settings.json").read_text())["Comfy.ColorPalette"] == "light"
    # they take effect at once
    assert state(page)["background"] == LIGHT_BG
    page.shot("40-settings-panel.png")
    page.page.keyboard.press("Escape")  # Escape closes the panel
    page.page.get_by_role("dialog", name="Settings").wait_for(state="detached", timeout=5000)
    assert page.js("document.activeElement.id") == "settings-btn"

    page.page.reload()
    page.ready()
    s = state(page)
    assert s["theme"] == ["theme-light"] and s["background"] == LIGHT_BG
    assert s["canvasBackground"] == "#eef0f4"
    assert s["nodeBackground"] == "#f8f9fb"  # nodes are drawn light too
    assert s["links"] == 0  # straight
    assert "previews=none" in s["socket"]
    assert not page.page.locator("#minimap").is_visible()
    ksampler = page.add_node(700, 420, "KSampler")
    assert seed_control(page, ksampler) == "decrement"
    panel = open_settings(page)
    assert panel.get_by_label("Links").input_value() == "straight"
    assert panel.get_by_label("Seed control of new nodes").input_value() == "decrement"
    page.page.keyboard.press("Escape")
    page.shot("41-settings-light.png")

    # a run: no previews were asked for, none come; the decrement control moves the seed down after queueing
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    for node in wf["nodes"].values():
        if node["type"] == "KSampler":
            node["inputs"]["steps"] = 2
    path = root / "settings-run.json"
    path.write_text(json.dumps(wf))
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("n => chisel.nodes().length === n", arg=len(wf["nodes"]))
    sampler = next(n["id"] for n in page.nodes() if n["type"] == "KSampler")
    page.choose(sampler, "seed control", "decrement")
    seed = page.node(sampler)["widgets"]["seed"]
    page.page.click("#queue-btn")
    done = page.wait_finished(1, timeout=120000)
    assert done["status"] == "success"
    assert not page.js("chisel.previews || 0")
    assert page.node(sampler)["widgets"]["seed"] == seed - 1


# -- the minimap -----------------------------------------------------------------------------------------------------
def settle(page: Page) -> None:
    """Two animation frames: the canvas and the minimap have drawn what changed."""
    page.js("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def view_centre(page: Page) -> list[float]:
    return page.js("() => { const [x, y, w, h] = chisel.app.minimap.view(); return [x + w / 2, y + h / 2]; }")


def node_centre(page: Page, node_id: str) -> list[float]:
    return page.js("i => { const n = chisel.app.nodeFor(i); return [n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] / 2]; }",
                   node_id)


def test_the_minimap_moves_the_view_by_click_and_drag(page):
    ids = {n["type"]: n["id"] for n in page.nodes()}
    settle(page)
    page.page.wait_for_function("chisel.app.minimap.map !== null")
    # one minimap pixel, in graph units: how close a click can put the view
    tolerance = 2 / page.js("chisel.app.minimap.map.scale")
    before = view_centre(page)
    target = node_centre(page, ids["CheckpointLoaderSimple"])
    page.page.mouse.click(*page.js("([x, y]) => chisel.app.minimap.toClient(x, y)", target))
    settle(page)
    after = view_centre(page)
    assert after != before
    assert abs(after[0] - target[0]) <= tolerance and abs(after[1] - target[1]) <= tolerance, (after, target)
    page.shot("42-minimap-click.png")
    # a drag: the view follows the pointer to where it is let go
    settle(page)
    a = page.js("([x, y]) => chisel.app.minimap.toClient(x, y)", node_centre(page, ids["EmptyLatentImage"]))
    goal = node_centre(page, ids["SaveImage"])
    b = page.js("([x, y]) => chisel.app.minimap.toClient(x, y)", goal)
    page.drag(a, b)
    settle(page)
    after = view_centre(page)
    assert abs(after[0] - goal[0]) <= tolerance and abs(after[1] - goal[1]) <= tolerance, (after, goal)


def test_stored_values_the_canvas_does_not_know_fall_back_to_the_defaults(browser, server, root):
    # what ComfyUI's frontend may have written: another palette, hidden links, a method name from elsewhere
    path = root / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"Comfy.ColorPalette": "solarized", "Comfy.LinkRenderMode": -1,
                                "Chisel.PreviewMethod": 7, "Comfy.Minimap.Visible": "yes"}))
    page = Page(browser, server.url)
    try:
        s = state(page)
        assert s["theme"] == ["theme-dark"] and s["links"] == 2 and "previews=" not in s["socket"]
        assert page.page.locator("#minimap").is_visible()
        assert not page.errors
    finally:
        page.close()
        path.unlink(missing_ok=True)

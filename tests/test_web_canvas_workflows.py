"""The canvas's workflow browser and tabs in a real browser (Debian's Chromium, Playwright) against a real
``chisel serve``: saved workflows kept by the server in the Chisel root (open, save as, rename, delete, bad names),
bundled ones, several workflows open in tabs with their own graph, undo history and unsaved state, all of them kept
across a reload. Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import json

import pytest

from test_web_canvas import Page, Server, provide_checkpoint
from test_web_canvas import browser, server  # noqa: F401 (fixtures: the module's own root)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas-workflows-root")
    provide_checkpoint(root)
    return root


@pytest.fixture
def saved_dir(root):
    folder = root / "user" / "default" / "workflows"
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink()
    return folder


@pytest.fixture
def page(browser, server, saved_dir):
    p = Page(browser, server.url)
    yield p
    errors = list(p.errors)
    p.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


def tabs(page: Page) -> list[dict]:
    return page.js("""() => [...document.querySelectorAll('#tabbar [role=tab]')].map(t => ({
        name: t.dataset.name, saved: t.dataset.saved, active: t.getAttribute('aria-selected') === 'true',
        modified: t.classList.contains('modified')}))""")


def open_browser(page: Page):
    page.page.get_by_role("button", name="Workflows").click()
    panel = page.page.get_by_role("dialog", name="Workflows")
    panel.wait_for(state="visible", timeout=5000)
    return panel


def saved_names(panel) -> list[str]:
    return panel.locator("#saved-workflows li.browser-item").evaluate_all("els => els.map(e => e.dataset.name)")


def wait_saved_names(page: Page, names: list[str]) -> None:
    page.page.wait_for_function(
        "n => JSON.stringify([...document.querySelectorAll('#saved-workflows li.browser-item')].map(e => e.dataset.name)) === n",
        arg=json.dumps(names), timeout=5000)


def test_save_as_open_rename_delete_and_bad_names(page, saved_dir):
    assert tabs(page) == [{"name": "txt2img", "saved": "", "active": True, "modified": False}]
    seven = page.js("chisel.nodes().length")
    panel = open_browser(page)
    # bundled workflows are listed (the lists fill in once the server answers), saved ones are not there yet
    panel.get_by_role("button", name="Open bundled").first.wait_for(timeout=15000)
    assert panel.get_by_role("button", name="Open bundled").count() >= 10
    assert saved_names(panel) == []

    # save this tab under a name the user types
    box = panel.get_by_label("Name to save as")
    box.fill("My portrait, v2")
    panel.get_by_role("button", name="Save as").click()
    wait_saved_names(page, ["My portrait, v2"])
    stored = json.loads((saved_dir / "My portrait, v2.json").read_text())
    assert stored["format"] == "chisel-workflow" and len(stored["nodes"]) == seven
    assert tabs(page)[0] == {"name": "My portrait, v2", "saved": "My portrait, v2", "active": True, "modified": False}

    # bad names: a clear message in the panel, nothing written
    for bad, says in [("../outside", "cannot contain '/'"), ("x" * 101, "at most 100 characters"), (".hidden", "dot"),
                      ("a:b", "cannot contain ':'"),
                      ("   ", "Type a name")]:
        box.fill(bad)
        panel.get_by_role("button", name="Save as").click()
        alert = panel.get_by_role("alert")
        alert.wait_for(state="visible", timeout=5000)
        page.page.wait_for_function("s => document.querySelector('.browser-error').textContent.includes(s)", arg=says, timeout=5000)
    page.shot("50-browser-bad-name.png")
    assert sorted(p.name for p in saved_dir.iterdir()) == ["My portrait, v2.json"]
    assert not list(saved_dir.parent.parent.rglob("outside*"))

    # save as a taken name: asked first; "Cancel" keeps the file
    box.fill("My portrait, v2")
    panel.get_by_role("button", name="Save as").click()
    page.page.get_by_role("dialog", name="Replace it?").get_by_role("button", name="Cancel").click()
    page.page.get_by_role("dialog", name="Replace it?").wait_for(state="detached", timeout=5000)

    # rename from the list
    panel.get_by_role("button", name="Rename My portrait, v2").click()
    rename = panel.get_by_label("New name for My portrait, v2")
    rename.fill("Portrait final")
    rename.press("Enter")
    wait_saved_names(page, ["Portrait final"])
    assert (saved_dir / "Portrait final.json").is_file() and not (saved_dir / "My portrait, v2.json").exists()
    assert tabs(page)[0]["name"] == "Portrait final" and tabs(page)[0]["saved"] == "Portrait final"

    # an edit marks the tab; the panel's Save writes it back under its name
    ks = next(n for n in page.nodes() if n["type"] == "KSampler")
    page.set_number(ks["id"], "steps", 7)
    page.page.wait_for_function("document.querySelector('#tabbar .tab.active').classList.contains('modified')", timeout=5000)
    panel.locator("#browser-save-btn").click()
    page.page.wait_for_function("!document.querySelector('#tabbar .tab.active').classList.contains('modified')", timeout=5000)
    stored = json.loads((saved_dir / "Portrait final.json").read_text())
    assert stored["nodes"][ks["id"]]["inputs"]["steps"] == 7

    # open a bundled workflow: the saved tab is kept, the bundled one opens in a new tab
    panel.locator("#bundled-workflows li[data-name=img2img] button").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 2", timeout=5000)
    assert [t["name"] for t in tabs(page)] == ["Portrait final", "img2img"] and tabs(page)[1]["active"]
    assert any(n["type"] == "VAEEncode" for n in page.nodes())
    # opening a saved workflow that is open already goes to its tab
    panel.get_by_role("button", name="Open Portrait final").click()
    page.page.wait_for_function("document.querySelector('#tabbar .tab.active').dataset.name === 'Portrait final'", timeout=5000)
    assert len(tabs(page)) == 2 and page.node(ks["id"])["widgets"]["steps"] == 7
    page.shot("51-browser-and-tabs.png")

    # delete (asked first)
    panel.get_by_role("button", name="Delete Portrait final").click()
    page.page.get_by_role("dialog", name="Delete it?").get_by_role("button", name="Delete").click()
    wait_saved_names(page, [])
    assert not list(saved_dir.iterdir())
    assert all(t["saved"] == "" for t in tabs(page))
    page.page.keyboard.press("Escape")
    panel.wait_for(state="detached", timeout=5000)


def test_a_comfyui_workflow_saved_there_opens_from_the_list(page, saved_dir, root):
    saved_dir.mkdir(parents=True, exist_ok=True)
    api = page.js("""async () => (await (await fetch('v1/workflow/export', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({workflow: chisel.workflow(), format: 'comfy_ui'})})).json()).workflow""")
    (saved_dir / "from comfyui.json").write_text(json.dumps(api))
    panel = open_browser(page)
    wait_saved_names(page, ["from comfyui"])
    types = sorted(n["type"] for n in page.nodes())
    panel.get_by_role("button", name="Open from comfyui").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 1 && "
                                "document.querySelector('#tabbar .tab.active').dataset.name === 'from comfyui'", timeout=10000)
    assert sorted(n["type"] for n in page.nodes()) == types
    # ComfyUI's file stays ComfyUI's: this tab is not tied to it (saving asks for a name)
    assert tabs(page)[0]["saved"] == ""
    assert page.js("document.querySelector('#browser-save-btn').disabled")


def test_tabs_keep_their_own_graph_undo_and_unsaved_state_across_a_reload(page):
    first = {n["id"]: n for n in page.nodes()}
    ks = next(i for i, n in first.items() if n["type"] == "KSampler")
    page.set_number(ks, "steps", 9)  # an edit in the first tab: one undo step, unsaved
    page.page.wait_for_function("chisel.undoDepth() === 1")
    # a new tab: empty, its own (empty) history
    page.page.get_by_role("button", name="New tab").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 2 && chisel.nodes().length === 0")
    assert page.js("chisel.undoDepth()") == 0 and page.js("document.querySelector('#undo-btn').disabled")
    latent = page.add_node(500, 400, "Empty Latent Image")
    page.page.wait_for_function("chisel.undoDepth() === 1")
    assert [t["modified"] for t in tabs(page)] == [True, True]
    assert [t["name"] for t in tabs(page)] == ["txt2img", "workflow"]

    # back to the first: its graph and its undo step
    page.page.get_by_role("tab", name="txt2img").click()
    page.page.wait_for_function("chisel.nodes().length === 7")
    assert page.node(ks)["widgets"]["steps"] == 9 and page.js("chisel.undoDepth()") == 1
    page.page.keyboard.press("Control+z")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.steps !== 9", arg=ks)
    page.page.wait_for_function("!document.querySelector('#tabbar .tab.active').classList.contains('modified')")  # back as opened
    # the second tab still has its node and its own undo
    page.page.get_by_role("tab", name="workflow").click()
    page.page.wait_for_function("chisel.nodes().length === 1")
    assert page.nodes()[0]["id"] == latent and page.js("chisel.undoDepth()") == 1
    page.shot("52-tabs.png")

    # a third tab, then a reload: every tab comes back, the same one active, unsaved marks kept
    page.page.get_by_role("button", name="New tab").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 3")
    page.page.locator('#tabbar [role=tab][data-name="workflow"]').click()
    page.page.wait_for_function("chisel.nodes().length === 1")
    page.page.reload()
    page.ready()
    assert [(t["name"], t["active"], t["modified"]) for t in tabs(page)] == [
        ("txt2img", False, False), ("workflow", True, True), ("workflow 2", False, False)]
    assert [n["type"] for n in page.nodes()] == ["EmptyLatentImage"]
    # the tabs are reachable by keyboard: the active one takes the focus, arrows move between them
    page.page.locator("#tabbar [role=tab][aria-selected=true]").focus()
    page.page.keyboard.press("ArrowLeft")
    page.page.wait_for_function("chisel.nodes().length === 7")
    assert page.node(ks)["widgets"]["steps"] == first[ks]["widgets"]["steps"]

    # closing: an unsaved tab asks first; Cancel keeps it, confirming closes it
    page.page.get_by_role("button", name="Close workflow", exact=True).click()
    dialog = page.page.get_by_role("dialog", name="Unsaved changes")
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert len(tabs(page)) == 3 and tabs(page)[1]["active"]
    page.page.get_by_role("button", name="Close workflow", exact=True).click()
    dialog.get_by_role("button", name="Close without saving").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 2")
    assert [t["name"] for t in tabs(page)] == ["txt2img", "workflow 2"]
    # an unedited tab closes at once; the last one closed leaves a fresh empty tab
    page.page.get_by_role("button", name="Close workflow 2").click()
    page.page.get_by_role("button", name="Close txt2img").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 1 && chisel.nodes().length === 0")


def test_ctrl_s_saves_the_tab_on_the_server_and_ctrl_shift_s_downloads(page, saved_dir):
    downloads = []
    page.page.on("download", lambda d: downloads.append(d))
    # (the page's handler runs first; a listener on window sees whether it kept the browser's own save dialog away)
    page.js("() => window.addEventListener('keydown', e => { if (e.key.toLowerCase() === 's') window.savePrevented = e.defaultPrevented; })")
    page.page.mouse.click(300, 850)
    page.page.keyboard.press("Control+s")
    dialog = page.page.get_by_role("dialog", name="Save workflow")
    dialog.wait_for(timeout=5000)
    assert page.js("window.savePrevented") is True
    box = dialog.get_by_label("Workflow name")
    assert box.input_value() == "txt2img"  # the tab's name offered
    box.fill("a:b")
    box.press("Enter")
    dialog.get_by_role("alert").wait_for(state="visible", timeout=5000)
    assert "cannot contain ':'" in dialog.get_by_role("alert").inner_text()
    assert not saved_dir.exists() or not list(saved_dir.iterdir())
    box.fill("Quick one")
    box.press("Enter")
    dialog.wait_for(state="detached", timeout=5000)
    page.page.wait_for_function("document.querySelector('#tabbar .tab.active').dataset.saved === 'Quick one'", timeout=5000)
    stored = json.loads((saved_dir / "Quick one.json").read_text())
    assert stored["format"] == "chisel-workflow" and stored["nodes"] == page.js("chisel.workflow()")["nodes"]

    # saved once: Ctrl+S writes the edit back under that name without asking
    ks = next(n for n in page.nodes() if n["type"] == "KSampler")
    page.set_number(ks["id"], "steps", 5)
    page.page.wait_for_function("document.querySelector('#tabbar .tab.active').classList.contains('modified')", timeout=5000)
    page.page.mouse.click(300, 850)
    page.page.keyboard.press("Control+s")
    page.page.wait_for_function("!document.querySelector('#tabbar .tab.active').classList.contains('modified')", timeout=5000)
    assert page.page.locator(".modal-back").count() == 0
    assert json.loads((saved_dir / "Quick one.json").read_text())["nodes"][ks["id"]]["inputs"]["steps"] == 5

    # a new tab saved under a name that is taken: asked first, "Cancel" keeps the file
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    page.page.mouse.click(300, 850)
    page.page.keyboard.press("Control+s")
    dialog.wait_for(timeout=5000)
    dialog.get_by_label("Workflow name").fill("Quick one")
    dialog.get_by_label("Workflow name").press("Enter")
    page.page.get_by_role("dialog", name="Replace it?").get_by_role("button", name="Cancel").click()
    page.page.get_by_role("dialog", name="Replace it?").wait_for(state="detached", timeout=5000)
    assert len(json.loads((saved_dir / "Quick one.json").read_text())["nodes"]) == 7
    assert sorted(p.name for p in saved_dir.iterdir()) == ["Quick one.json"] and not downloads

    # Ctrl+Shift+S: the workflow as a file (the explicit download)
    with page.page.expect_download() as dl:
        page.page.keyboard.press("Control+Shift+s")
    assert json.loads(open(dl.value.path()).read())["format"] == "chisel-workflow"
    assert page.js("window.savePrevented") is True

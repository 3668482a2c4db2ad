"""Bypass/mute in ComfyUI's UI format and subgraphs on the canvas, in a real browser (Debian's Chromium, Playwright)
against a real ``chisel serve``. Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import json

import pytest

from test_web_canvas import Page
from test_web_canvas_edit import open_workflow, select, with_upscale_and_preview

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from test_web_canvas import provide_checkpoint

    root = tmp_path_factory.mktemp("canvas-subgraph-root")
    provide_checkpoint(root)
    return root


@pytest.fixture(scope="module")
def server(root):
    from test_web_canvas import Server

    srv = Server(root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from test_web_canvas import CHROMIUM, LAUNCH_ARGS

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server.url)
    yield p
    errors = list(p.errors)
    p.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


def export_ui(page: Page) -> dict:
    with page.page.expect_download() as dl:
        page.page.click("#export-ui-btn")
    return json.loads(open(dl.value.path()).read())


def reopen(page: Page, root, data: dict, name: str) -> dict:
    path = root / f"{name}.json"
    path.write_text(json.dumps(data))
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    page.page.set_input_files("#file-input", str(path))
    page.page.wait_for_function("n => document.title.startsWith(n)", arg=name)
    return page.js("chisel.workflow()")


# -- bypass and mute in ComfyUI's UI format --------------------------------------------------------------------------
def test_bypassed_and_muted_nodes_export_as_modes_4_and_2_with_the_links_drawn(page, server, root):
    ids = open_workflow(page, root, with_upscale_and_preview(), "modes-export")
    upscale, save, preview = ids["ImageScale"], ids["SaveImage"], ids["PreviewImage"]
    select(page, upscale)
    page.page.keyboard.press("Control+b")
    select(page, preview)
    page.page.keyboard.press("Control+m")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 2", arg=preview)
    before = page.js("chisel.workflow()")
    ui = export_ui(page)
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    assert by_id[upscale]["mode"] == 4 and by_id[preview]["mode"] == 2
    assert {n["mode"] for i, n in by_id.items() if i not in (upscale, preview)} == {0}
    # the link drawn into Save Image comes from the bypassed node, as ComfyUI's frontend draws it
    link_id = next(i["link"] for i in by_id[save]["inputs"] if i["name"] == "images")
    assert next(link for link in ui["links"] if link[0] == link_id)[1] == int(upscale)
    # ComfyUI's reading of the file (modes applied, nodes left out) runs the same graph as the canvas
    plain = dict(ui, extra={})
    converted = server.request("POST", "v1/workflow/convert", {"workflow": plain})["workflow"]
    assert upscale not in converted["nodes"] and preview not in converted["nodes"]
    assert converted["nodes"][save] == before["nodes"][save]
    # opened here it is the same graph again, modes and drawn links included
    after = reopen(page, root, ui, "modes-reopened")
    assert after["nodes"] == before["nodes"] and after.get("outputs") == before.get("outputs")
    for nid in (upscale, save, preview):
        for key in ("mode", "links"):
            assert after["layout"]["nodes"][nid].get(key) == before["layout"]["nodes"][nid].get(key), (nid, key)
    assert page.node(upscale)["mode"] == 4 and page.node(preview)["mode"] == 2
    page.shot("40-modes-export-reopened.png")

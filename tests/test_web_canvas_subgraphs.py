"""Bypass/mute in ComfyUI's UI format and subgraphs on the canvas, in a real browser (Debian's Chromium, Playwright)
against a real ``chisel serve``. Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import json

import pytest

from test_web_canvas import Page
from test_web_canvas import browser, page, server  # noqa: F401 (fixtures: the module's own root)
from test_web_canvas_edit import open_workflow, select, with_upscale_and_preview

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from test_web_canvas import provide_checkpoint

    root = tmp_path_factory.mktemp("canvas-subgraph-root")
    provide_checkpoint(root)
    return root


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


# -- subgraphs -------------------------------------------------------------------------------------------------------
def select_many(page: Page, node_ids) -> None:
    select(page, node_ids[0])
    page.page.keyboard.down("Shift")
    for nid in node_ids[1:]:
        page.page.mouse.click(*page.js("i => chisel.titlePos(i)", nid))
    page.page.keyboard.up("Shift")
    page.page.wait_for_function("n => Object.keys(chisel.app.lgcanvas.selected_nodes).length === n", arg=len(node_ids))


def node_menu(page: Page, node_id: str, entry: str) -> None:
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", node_id), button="right")
    page.page.locator(".litecontextmenu .litemenu-entry", has_text=entry).first.click()


def shown(page: Page) -> dict:
    """What the canvas shows now: the graph's name and its nodes {id: type}."""
    return page.js("""() => { const g = chisel.app.lgcanvas.graph;
        return {root: g === chisel.app.graph, name: g.name ?? null,
                nodes: Object.fromEntries(g._nodes.map(n => [String(n.id), n.type]))}; }""")


def test_a_selection_becomes_a_subgraph_that_runs_saves_undoes_and_opens(page, server, root):
    from test_web_canvas_edit import finished, txt2img

    ids = open_workflow(page, root, txt2img(steps=2), "subgraph")
    sampler, decode, save, loader = ids["KSampler"], ids["VAEDecode"], ids["SaveImage"], ids["CheckpointLoaderSimple"]
    before = page.js("chisel.workflow()")
    select_many(page, [sampler, decode])
    node_menu(page, sampler, "Convert to subgraph")
    page.page.wait_for_function("k => !chisel.app.graph._nodes.some(n => String(n.id) === k)", arg=sampler)
    wf = page.js("chisel.workflow()")
    [instance] = [i for i, lay in wf["layout"]["nodes"].items() if lay.get("subgraph")]
    [sg] = wf["layout"]["subgraphs"]
    # the workflow that runs is the flattened one, with ComfyUI's ids for inner nodes
    assert f"{instance}:{sampler}" in wf["nodes"] and f"{instance}:{decode}" in wf["nodes"] and sampler not in wf["nodes"]
    inner_sampler = wf["nodes"][f"{instance}:{sampler}"]
    assert inner_sampler["inputs"] == before["nodes"][sampler]["inputs"]  # links from outside come straight in
    assert wf["nodes"][f"{instance}:{decode}"]["inputs"]["samples"] == {"node": f"{instance}:{sampler}", "output": "LATENT"}
    assert wf["nodes"][save]["inputs"]["images"] == {"node": f"{instance}:{decode}", "output": "IMAGE"}
    # the drawn structure: links crossing the selection's edge are the subgraph's inputs and outputs
    assert sorted(i["type"] for i in sg["inputs"]) == sorted(["MODEL", "CONDITIONING", "CONDITIONING", "LATENT", "VAE"])
    assert [o["type"] for o in sg["outputs"]] == ["IMAGE"]
    assert wf["layout"]["nodes"][save]["links"]["images"]["node"] == instance
    assert server.request("POST", "v1/validate", {"workflow": wf})["valid"] is True
    page.shot("41-subgraph-created.png")

    # it runs (the demo model, 2 steps), as the flattened workflow
    page.page.click("#queue-btn")
    run = finished(page, 1)
    assert run["status"] == "success", run
    assert f"{instance}:{sampler}" in run["executed"] and save in run["executed"]

    # open it (double-click), edit inside, come back
    x, y = page.js("i => { const n = chisel.app.nodeFor(i); const r = chisel.app.lgcanvas.ds; "
                   "return [(n.pos[0] + n.size[0] / 2 + r.offset[0]) * r.scale, (n.pos[1] + n.size[1] / 2 + r.offset[1]) * r.scale]; }",
                   instance)
    box = page.page.locator("#graph-canvas").bounding_box()
    page.page.mouse.dblclick(box["x"] + x, box["y"] + y)
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    inside = shown(page)
    assert inside["nodes"] == {sampler: "KSampler", decode: "VAEDecode"} and inside["name"] == sg["name"]
    assert page.page.locator("#subgraph-bar").is_visible()
    page.shot("42-subgraph-opened.png")
    page.set_number(sampler, "steps", 3)
    page.page.wait_for_function("k => chisel.workflow().nodes[k].inputs.steps === 3", arg=f"{instance}:{sampler}")
    page.page.locator("#subgraph-bar .subgraph-back").click()
    page.page.wait_for_function("chisel.app.lgcanvas.graph === chisel.app.graph")
    assert not page.page.locator("#subgraph-bar").is_visible()
    edited = page.js("chisel.workflow()")
    assert edited["nodes"][f"{instance}:{sampler}"]["inputs"]["steps"] == 3

    # undo takes the edit back, then the subgraph; redo brings both again
    page.page.click("#undo-btn")
    page.page.wait_for_function("k => chisel.workflow().nodes[k].inputs.steps === 2", arg=f"{instance}:{sampler}")
    page.page.click("#undo-btn")
    page.page.wait_for_function("k => chisel.app.graph._nodes.some(n => String(n.id) === k)", arg=sampler)
    assert page.js("chisel.workflow()")["nodes"] == before["nodes"]
    page.page.click("#redo-btn")
    page.page.click("#redo-btn")
    page.page.wait_for_function("k => chisel.workflow().nodes[k]?.inputs.steps === 3", arg=f"{instance}:{sampler}")
    assert page.js("chisel.workflow()")["nodes"] == edited["nodes"]

    # save + reload keeps it (the page reopens the autosaved workflow)
    page.page.wait_for_timeout(600)
    page.page.reload()
    page.ready()
    again = page.js("chisel.workflow()")
    assert again["nodes"] == edited["nodes"] and again["layout"]["subgraphs"][0]["id"] == sg["id"]
    assert shown(page)["nodes"][instance] == sg["id"]

    # ComfyUI's UI format: definitions.subgraphs, the instance's type is the subgraph's id; it reads back the same
    ui = export_ui(page)
    [definition] = ui["definitions"]["subgraphs"]
    assert definition["id"] == sg["id"] and {n["type"] for n in definition["nodes"]} == {"KSampler", "VAEDecode"}
    assert [n["type"] for n in ui["nodes"] if str(n["id"]) == instance] == [sg["id"]]
    assert all(link[1] == -10 or link[3] == -20 or isinstance(link[1], int) for link in
               [(lk["id"], lk["origin_id"], lk["origin_slot"], lk["target_id"]) for lk in definition["links"]])
    plain = dict(ui, extra={})
    converted = server.request("POST", "v1/workflow/convert", {"workflow": plain})["workflow"]
    assert converted["nodes"] == edited["nodes"]
    reopened = reopen(page, root, ui, "subgraph-reopened")
    assert reopened["nodes"] == edited["nodes"]
    assert shown(page)["nodes"][instance] == sg["id"]
    page.shot("43-subgraph-reopened.png")


def convert(page: Page, node_ids) -> str:
    """Convert the nodes (of the graph shown) into a subgraph; returns the new subgraph node's id."""
    before = set(shown(page)["nodes"])
    select_many(page, node_ids) if len(node_ids) > 1 else select(page, node_ids[0])
    node_menu(page, node_ids[0], "Convert to subgraph")
    page.page.wait_for_function("k => !(k in Object.fromEntries(chisel.app.lgcanvas.graph._nodes.map(n => [String(n.id), 1])))",
                                arg=node_ids[0])
    [new] = set(shown(page)["nodes"]) - before
    return new


def test_nested_subgraphs_and_a_pasted_copy_run_flattened_and_export(page, server, root):
    from test_web_canvas_edit import txt2img

    ids = open_workflow(page, root, txt2img(steps=2), "nested")
    sampler, decode, save = ids["KSampler"], ids["VAEDecode"], ids["SaveImage"]
    outer = convert(page, [sampler, decode])
    node_menu(page, outer, "Open subgraph")
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    inner = convert(page, [decode])  # a selection inside a subgraph: a subgraph of its own
    wf = page.js("chisel.workflow()")
    assert f"{outer}:{inner}:{decode}" in wf["nodes"] and f"{outer}:{sampler}" in wf["nodes"]
    assert wf["nodes"][f"{outer}:{inner}:{decode}"]["inputs"]["samples"] == {"node": f"{outer}:{sampler}", "output": "LATENT"}
    assert wf["nodes"][save]["inputs"]["images"] == {"node": f"{outer}:{inner}:{decode}", "output": "IMAGE"}
    assert len(wf["layout"]["subgraphs"]) == 2
    assert [b.inner_text() for b in page.page.locator("#subgraph-bar .crumb").all()] == ["Workflow", "Subgraph"]
    page.shot("44-subgraph-nested.png")
    # the bar names the subgraph being edited; clicking its name renames it
    page.page.locator("#subgraph-bar .crumb[aria-current]").click()
    box = page.page.locator(".graphdialog input")
    box.wait_for(state="visible", timeout=5000)
    box.fill("Sample")
    box.press("Enter")
    page.page.wait_for_function("() => chisel.app.lgcanvas.graph.name === 'Sample'")
    assert [b.inner_text() for b in page.page.locator("#subgraph-bar .crumb").all()] == ["Workflow", "Sample"]
    page.page.wait_for_function("o => chisel.workflow().layout.subgraphs.some(d => d.name === 'Sample')", arg=outer)
    page.page.keyboard.press("Escape")
    page.page.wait_for_function("chisel.app.lgcanvas.graph === chisel.app.graph")
    # copy and paste the subgraph node with its input links (Ctrl+Shift+V): a second instance, flattened on its own
    count = len(shown(page)["nodes"])
    select(page, outer)
    page.page.keyboard.press("Control+c")
    page.page.mouse.move(900, 800)
    page.page.keyboard.press("Control+Shift+v")
    page.page.wait_for_function("n => chisel.app.graph._nodes.length === n", arg=count + 1)
    wf = page.js("chisel.workflow()")
    instances = [i for i, lay in wf["layout"]["nodes"].items() if lay.get("subgraph")]
    assert len(instances) == 2
    copy = next(i for i in instances if i != outer)
    assert f"{copy}:{sampler}" in wf["nodes"] and f"{copy}:{inner}:{decode}" in wf["nodes"]
    assert wf["nodes"][f"{copy}:{sampler}"]["inputs"] == wf["nodes"][f"{outer}:{sampler}"]["inputs"]
    assert server.request("POST", "v1/validate", {"workflow": wf})["valid"] is True
    # the UI format holds every definition, nested; Chisel's importer reads the same graph back
    ui = export_ui(page)
    assert len(ui["definitions"]["subgraphs"]) >= 2
    converted = server.request("POST", "v1/workflow/convert", {"workflow": dict(ui, extra={})})["workflow"]
    assert converted["nodes"] == wf["nodes"]
    back = reopen(page, root, ui, "nested-reopened")
    assert back["nodes"] == wf["nodes"]
    assert len([lay for lay in back["layout"]["nodes"].values() if lay.get("subgraph")]) == 2

    # an error inside a subgraph: clicking it opens the subgraph at the node
    broken = json.loads(json.dumps(back))
    broken["nodes"][f"{outer}:{sampler}"]["inputs"]["steps"] = 0
    [definition] = [d for d in broken["layout"]["subgraphs"] if sampler in d["nodes"] and d["id"] == broken["layout"]["nodes"][outer]["subgraph"]]
    definition["nodes"][sampler]["inputs"]["steps"] = 0
    reopen(page, root, broken, "broken-inside")
    page.page.click("#check-btn")
    item = page.page.locator("#error-list .error-item").first
    item.wait_for(timeout=20000)
    assert "steps" in item.inner_text()
    item.click()
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    assert sampler in shown(page)["nodes"]
    page.shot("45-subgraph-error-revealed.png")


def test_a_promoted_widget_sets_its_inner_input_per_instance(page, server, root):
    from test_web_canvas_edit import txt2img

    ids = open_workflow(page, root, txt2img(steps=2), "promoted")
    sampler = ids["KSampler"]
    instance = convert(page, [sampler])
    wf = page.js("chisel.workflow()")
    # the subgraph's KSampler takes its seed from a new subgraph input that nothing outside links: a widget
    [sg] = wf["layout"]["subgraphs"]
    sg["inputs"].append({"name": "seed", "type": "INT"})
    sg["nodes"][sampler]["inputs"]["seed"] = {"node": "-10", "output": len(sg["inputs"]) - 1}
    wf["layout"]["nodes"][instance]["inputs"]["seed"] = 7
    wf["nodes"][f"{instance}:{sampler}"]["inputs"]["seed"] = 7
    reopen(page, root, wf, "promoted-seed")
    assert page.node(instance)["widgets"]["seed"] == 7
    page.set_number(instance, "seed", 9)
    page.page.wait_for_function("k => chisel.workflow().nodes[k].inputs.seed === 9", arg=f"{instance}:{sampler}")
    edited = page.js("chisel.workflow()")
    assert edited["layout"]["nodes"][instance]["inputs"]["seed"] == 9
    assert server.request("POST", "v1/validate", {"workflow": edited})["valid"] is True
    page.shot("46-subgraph-promoted-widget.png")
    ui = export_ui(page)
    [node] = [n for n in ui["nodes"] if str(n["id"]) == instance]
    assert node["widgets_values"] == [9]
    converted = server.request("POST", "v1/workflow/convert", {"workflow": dict(ui, extra={})})["workflow"]
    assert converted["nodes"] == edited["nodes"]
    # undo takes the edit back
    page.page.click("#undo-btn")
    page.page.wait_for_function("k => chisel.workflow().nodes[k].inputs.seed === 7", arg=f"{instance}:{sampler}")
    # unpacked, its nodes are back in the graph, fed as the subgraph node was (the promoted value included)
    node_menu(page, instance, "Unpack subgraph")
    page.page.wait_for_function("k => chisel.app.graph._nodes.some(n => String(n.id) === k)", arg=sampler)
    unpacked = page.js("chisel.workflow()")
    assert "subgraphs" not in unpacked["layout"] and instance not in unpacked["layout"]["nodes"]
    want = txt2img(steps=2)["nodes"]
    want[sampler]["inputs"]["seed"] = 7
    assert unpacked["nodes"] == want
    page.page.click("#undo-btn")
    page.page.wait_for_function("k => !chisel.app.graph._nodes.some(n => String(n.id) === k)", arg=sampler)


def client_at(page: Page, x: float, y: float) -> list[float]:
    """Where a point of the graph shown is in the page's pixels."""
    return page.js("""([x, y]) => { const p = chisel.app.lgcanvas.ds.convertOffsetToCanvas([x, y]);
        const b = chisel.app.lgcanvas.canvas.getBoundingClientRect(); return [b.left + p[0], b.top + p[1]]; }""", [x, y])


def inside_extras(page: Page) -> dict:
    """The groups, notes and reroute dots of the graph shown."""
    return page.js("""() => { const g = chisel.app.lgcanvas.graph;
        return {groups: chisel.groups().map(x => x.title), reroutes: chisel.reroutes().map(r => r.links),
                notes: g._nodes.filter(n => n.chisel?.note).map(n => [n.type, n.text])}; }""")


def test_groups_notes_and_reroutes_inside_a_subgraph_are_saved_exported_and_restored(page, server, root):
    from test_web_canvas_edit import txt2img

    ids = open_workflow(page, root, txt2img(steps=2), "subgraph-extras")
    sampler, decode = ids["KSampler"], ids["VAEDecode"]
    instance = convert(page, [sampler, decode])
    node_menu(page, instance, "Open subgraph")
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    # inside: a group around the sampler (Ctrl+G), a note and a Markdown note, a reroute dot on a link
    select(page, sampler)
    page.page.keyboard.press("Control+g")
    page.page.wait_for_function("chisel.groups().length === 1")
    x, y = page.js("i => { const n = chisel.app.lgcanvas.graph.getNodeById(Number(i)); return [n.pos[0], n.pos[1] + n.size[1] + 120]; }",
                   sampler)
    page.page.wait_for_function("!chisel.app.subgraphs.justOpened()")  # a double-click right after opening is ignored
    note = page.add_node(*client_at(page, x, y), "Note")
    page.type_text(note, "text", "inside note")
    md = page.add_node(*client_at(page, x + 400, y), "Markdown Note")
    page.type_text(md, "text", "# inside")
    page.page.wait_for_function("i => chisel.linkCenter(i, 'samples')", arg=decode)
    page.page.keyboard.down("Alt")
    page.page.mouse.click(*page.js("i => chisel.linkCenter(i, 'samples')", decode))
    page.page.keyboard.up("Alt")
    page.page.wait_for_function("chisel.reroutes().length === 1")
    want = {"groups": ["Group"], "reroutes": [1], "notes": [["Note", "inside note"], ["MarkdownNote", "# inside"]]}
    assert inside_extras(page) == want
    page.shot("47-subgraph-extras.png")
    wf = page.js("chisel.workflow()")
    [sg] = wf["layout"]["subgraphs"]
    assert [g["title"] for g in sg["groups"]] == ["Group"] and [n["text"] for n in sg["notes"]] == ["inside note", "# inside"]
    [dot] = sg["reroutes"]
    assert sg["layout"][decode]["reroutes"] == {"samples": dot["id"]}
    # the root graph keeps none of them; what runs is unchanged (notes never run)
    assert wf["layout"]["groups"] == [] and wf["layout"]["notes"] == [] and "reroutes" not in wf["layout"]
    assert sorted(wf["nodes"]) == sorted(txt2img(steps=2)["nodes"].keys() - {sampler, decode}
                                         | {f"{instance}:{sampler}", f"{instance}:{decode}"})
    assert server.request("POST", "v1/validate", {"workflow": wf})["valid"] is True

    # saved (the autosave) and reloaded: opened again, they are all there
    page.page.wait_for_timeout(600)
    page.page.reload()
    page.ready()
    assert page.js("chisel.workflow()")["layout"]["subgraphs"] == wf["layout"]["subgraphs"]
    node_menu(page, instance, "Open subgraph")
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    assert inside_extras(page) == want

    # ComfyUI's UI format: the definition carries its groups, its notes as Note/MarkdownNote nodes and its
    # reroute dots (on the link that passes through); Chisel reads them back, and what runs is the same
    page.page.keyboard.press("Escape")
    ui = export_ui(page)
    [definition] = ui["definitions"]["subgraphs"]
    assert [g["title"] for g in definition["groups"]] == ["Group"]
    notes = [(n["type"], n["widgets_values"]) for n in definition["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes == [("Note", ["inside note"]), ("MarkdownNote", ["# inside"])]
    [ui_dot] = definition["reroutes"]
    [through] = [lk for lk in definition["links"] if lk.get("parentId") == ui_dot["id"]]
    assert ui_dot["linkIds"] == [through["id"]] and str(through["target_id"]) == decode
    converted = server.request("POST", "v1/workflow/convert", {"workflow": dict(ui, extra={})})["workflow"]
    assert converted["nodes"] == wf["nodes"]
    [back] = converted["layout"]["subgraphs"]
    assert [n["text"] for n in back["notes"]] == ["inside note", "# inside"] and back["notes"][1]["markdown"] is True
    reopen(page, root, ui, "subgraph-extras-reopened")
    node_menu(page, instance, "Open subgraph")
    page.page.wait_for_function("!chisel.app.lgcanvas.graph.isRootGraph")
    assert inside_extras(page) == want
    page.shot("48-subgraph-extras-reopened.png")
    # unpacked, its notes and group come out with its nodes (the dot stays behind: its link is a plain one again)
    page.page.keyboard.press("Escape")
    page.page.wait_for_function("chisel.app.lgcanvas.graph === chisel.app.graph")
    node_menu(page, instance, "Unpack subgraph")
    page.page.wait_for_function("k => chisel.app.graph._nodes.some(n => String(n.id) === k)", arg=sampler)
    assert inside_extras(page) == {**want, "reroutes": []}
    assert not [e for e in page.errors if "reroute" in e]


def test_a_bypassed_subgraph_node_passes_its_input_through_and_a_muted_one_stops_what_it_feeds(page, server, root):
    from test_web_canvas_edit import finished, saved_image_size

    wf = with_upscale_and_preview()
    for spec in wf["nodes"].values():  # a seed of its own: no other test's run of this module's server is cached
        if spec["type"] == "KSampler":
            spec["inputs"]["seed"] = 4711
    ids = open_workflow(page, root, wf, "subgraph-modes")
    upscale, save, decode, preview = ids["ImageScale"], ids["SaveImage"], ids["VAEDecode"], ids["PreviewImage"]
    instance = convert(page, [upscale])  # a subgraph node IMAGE -> IMAGE
    select(page, instance)
    page.page.keyboard.press("Control+b")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 4", arg=instance)
    wf = page.js("chisel.workflow()")
    # nothing inside runs; what it feeds takes its input of the same type; what was drawn stays in the layout
    assert f"{instance}:{upscale}" not in wf["nodes"] and wf["layout"]["nodes"][instance]["mode"] == "bypass"
    assert wf["nodes"][save]["inputs"]["images"] == {"node": decode, "output": "IMAGE"}
    assert wf["layout"]["nodes"][save]["links"]["images"]["node"] == instance
    page.shot("49-subgraph-bypassed.png")
    page.page.click("#queue-btn")
    run = finished(page, 1)
    assert run["status"] == "success" and not [i for i in run["executed"] if i.startswith(f"{instance}:")]
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).images.length", arg=save)
    assert saved_image_size(root, page, save) == (64, 64)  # not upscaled: the decode's image passed through
    ui = export_ui(page)
    assert [n["mode"] for n in ui["nodes"] if str(n["id"]) == instance] == [4]
    converted = server.request("POST", "v1/workflow/convert", {"workflow": dict(ui, extra={})})["workflow"]
    assert converted["nodes"] == wf["nodes"] and converted["layout"]["nodes"][instance]["mode"] == "bypass"

    # Ctrl+M: muted, it and Save Image (fed only by it) do not run; Preview Image does
    page.page.keyboard.press("Control+m")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).mode === 2", arg=instance)
    wf = page.js("chisel.workflow()")
    assert wf["layout"]["nodes"][instance]["mode"] == "mute" and wf["outputs"] == [preview]
    page.page.click("#queue-btn")
    run = finished(page, 2)
    assert run["status"] == "success" and save not in run["executed"] + run["cached"]
    assert not [i for i in run["executed"] if i.startswith(f"{instance}:")]
    ui = export_ui(page)
    assert [n["mode"] for n in ui["nodes"] if str(n["id"]) == instance] == [2]
    # the export opened again (and the page reloaded) keeps the subgraph node muted, and what runs
    again = reopen(page, root, ui, "subgraph-modes-reopened")
    assert again["nodes"] == wf["nodes"] and again["outputs"] == [preview] and page.node(instance)["mode"] == 2
    page.page.wait_for_timeout(600)
    page.page.reload()
    page.ready()
    assert page.node(instance)["mode"] == 2 and page.js("chisel.workflow()")["outputs"] == [preview]

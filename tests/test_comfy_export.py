"""Export to ComfyUI's formats: native -> UI -> native gives the workflow back (a property over generated
workflows), and the same export from ``chisel export`` and ``POST /v1/workflow/export``."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toy_nodes
from graph.comfy_format import to_comfy_api, to_comfy_ui
from graph.comfy_ui_widgets import is_widget_input, widget_slots
from graph.registry import NodeRegistry
from graph.types import types_compatible
from graph.workflow import Workflow, parse_workflow
from test_server_support import client, make_root, run
from toy_nodes import wf

HERE = Path(__file__).resolve().parent
REGISTRY = NodeRegistry(toy_nodes.NODES)

ids = st.one_of(st.integers(1, 500).map(str), st.text(min_size=1, max_size=6), st.sampled_from(["7:1", "07", "a.b"]))
coords = st.tuples(st.integers(-5000, 5000), st.integers(-5000, 5000))
looks = st.fixed_dictionaries({"pos": coords, "size": st.tuples(st.integers(50, 900), st.integers(30, 900))},
                              optional={"collapsed": st.just(True), "color": st.sampled_from(["#322", "#353"]),
                                        "controls": st.lists(st.text(max_size=4), max_size=2)})
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=6))


def literal(inp):
    if inp.files is not None:
        return st.sampled_from(["a.txt", "sub/b.txt"])
    if inp.choices is not None:
        return st.sampled_from(list(inp.choices))
    if inp.type == "INT":
        return st.integers(int(max(inp.min if inp.min is not None else -10**6, -10**6)),
                           int(min(inp.max if inp.max is not None else 10**6, 10**6)))
    if inp.type == "FLOAT":
        return st.floats(inp.min, inp.max, allow_nan=False, allow_infinity=False)
    if inp.type == "BOOLEAN":
        return st.booleans()
    return st.text(max_size=10)


@st.composite
def workflows(draw):
    node_ids = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    kinds = {nid: draw(st.sampled_from(toy_nodes.NODES)) for nid in node_ids}
    nodes, layout = {}, {}
    for k, nid in enumerate(node_ids):
        cls = kinds[nid]
        inputs = {}
        for inp in cls.inputs:
            fits = [{"node": p, "output": o.name} for p in node_ids[:k] for o in kinds[p].outputs
                    if types_compatible(o.type, inp.type)]
            if fits and draw(st.booleans()):
                inputs[inp.name] = draw(st.sampled_from(fits))
            elif is_widget_input(inp) and draw(st.booleans()):
                inputs[inp.name] = draw(literal(inp))
        nodes[nid] = {"type": cls.type, "inputs": inputs}
        if draw(st.booleans()):
            nodes[nid]["title"] = draw(st.text(min_size=1, max_size=8))
        layout[nid] = draw(looks)
    doc = {"nodes": nodes, "layout": {
        "nodes": layout,
        "groups": draw(st.lists(st.fixed_dictionaries({"title": st.text(max_size=5), "bounding": st.lists(
            st.integers(0, 999), min_size=4, max_size=4)}), max_size=2)),
        "notes": draw(st.lists(st.fixed_dictionaries({
            "type": st.sampled_from(["Note", "MarkdownNote"]), "text": st.text(max_size=20), "pos": coords,
            "size": coords}, optional={"title": st.text(min_size=1, max_size=5)}), max_size=2))}}
    if draw(st.booleans()):
        doc["layout"]["view"] = {"zoom": draw(st.integers(1, 4))}
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.sampled_from(node_ids), max_size=2))
    if draw(st.booleans()):
        doc["meta"] = draw(st.dictionaries(st.text(max_size=5), json_leaf, max_size=3))
    return parse_workflow(doc)


def with_defaults(workflow: Workflow) -> dict:
    """The workflow as the UI format states it: every widget input with a default has a value."""
    data = workflow.to_dict()
    for spec in data["nodes"].values():
        cls = REGISTRY.get(spec["type"])
        for inp in cls.inputs:
            if is_widget_input(inp) and inp.has_default and inp.name not in spec["inputs"]:
                spec["inputs"][inp.name] = inp.default
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows())
def test_native_to_ui_to_native_is_lossless(workflow):
    ui = json.loads(json.dumps(to_comfy_ui(workflow, REGISTRY)))
    back = parse_workflow(ui, REGISTRY)
    assert back.to_dict() == parse_workflow(with_defaults(workflow)).to_dict()
    api = json.loads(json.dumps(to_comfy_api(workflow, REGISTRY)))
    assert parse_workflow(api, REGISTRY).nodes.keys() == workflow.nodes.keys()


def test_ui_export_shape_follows_comfyui(toy_registry):
    workflow = parse_workflow(wf({"1": ("RandomPick", {"seed": 5}), "2": ("Scale", {"x": ("1", "INT")}),
                                  "3": ("TextFile", {"name": "a.txt"}), "4": ("Show", {"value": ("2", "FLOAT")})}))
    ui = to_comfy_ui(workflow, toy_registry)
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert by_id[1]["widgets_values"] == [5, "fixed"]  # control_after_generate after the seed
    assert by_id[2]["widgets_values"] == [0, 1.0, "round"] and by_id[2]["inputs"] == [
        {"name": "x", "type": "INT", "widget": {"name": "x"}, "link": 1}]  # a linked widget keeps its slot
    assert by_id[3]["widgets_values"] == ["a.txt", "image"]  # the upload button's slot
    assert ui["links"] == [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 4, 0, "FLOAT"]]
    assert by_id[1]["outputs"][0]["links"] == [1] and ui["version"] == 0.4
    assert [s.kind for s in widget_slots(REGISTRY.get("TextFile"))] == ["widget", "upload"]


def test_cli_export(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    shutil.copy(HERE / "toy_nodes.py", tmp_path / "custom_nodes" / "toy_nodes.py")
    source = wf({"1": ("Number", {"value": 3}), "2": ("Show", {"value": ("1", "INT")})},
                layout={"nodes": {"1": {"pos": [10, 20]}}})
    (tmp_path / "w.json").write_text(json.dumps(source))

    def chisel(*args):
        return subprocess.run([sys.executable, "-m", "server.cli", "export", *args, "--root", str(tmp_path)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    proc = chisel(str(tmp_path / "w.json"), "--comfy-ui", "-o", str(tmp_path / "ui.json"))
    assert proc.returncode == 0, proc.stderr
    ui = json.loads((tmp_path / "ui.json").read_text())
    assert {n["id"]: n["pos"] for n in ui["nodes"]}[1] == [10, 20]
    proc = chisel(str(tmp_path / "ui.json"), "--comfy-api")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"1": {"class_type": "Number", "inputs": {"value": 3}, "_meta": {"title": "Number"}},
                                       "2": {"class_type": "Show", "inputs": {"value": ["1", 0]},
                                             "_meta": {"title": "Show"}}}
    (tmp_path / "bad.json").write_text('{"nodes": [null], "links": []}')
    proc = chisel(str(tmp_path / "bad.json"), "--comfy-ui")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "invalid_workflow" in proc.stderr


def test_http_export(tmp_path):
    async def main():
        async with client(make_root(tmp_path)) as c:
            native = wf({"1": ("Number", {"value": 3}), "2": ("Show", {"value": ("1", "INT")})})
            r = await c.post("/v1/workflow/export", json={"workflow": native, "format": "comfy_ui"})
            body = await r.json()
            assert r.status == 200 and body["format"] == "comfy_ui"
            r = await c.post("/v1/workflow/convert", json={"workflow": body["workflow"]})
            assert (await r.json())["workflow"]["nodes"] == native["nodes"]
            r = await c.post("/v1/workflow/export", json={"workflow": native, "format": "comfy_api"})
            assert (await r.json())["workflow"]["2"]["inputs"] == {"value": ["1", 0]}
            for bad in ({"workflow": native, "format": "png"}, {"workflow": native},
                        {"workflow": {"nodes": [None], "links": []}, "format": "comfy_ui"},
                        {"workflow": native, "format": ["comfy_ui"]}):
                r = await c.post("/v1/workflow/export", json=bad)
                assert r.status == 400, bad
    run(main())


@st.composite
def workflows_with_modes(draw):
    """A workflow as the user drew it (links into bypassed nodes in the nodes) with some nodes bypassed or muted."""
    workflow = draw(workflows())
    data = workflow.to_dict()
    for nid in data["nodes"]:
        mode = draw(st.sampled_from([None, None, "bypass", "mute"]))
        if mode:
            data["layout"]["nodes"][nid]["mode"] = mode
    data.pop("outputs", None)
    return parse_workflow(data)


def running(workflow: Workflow) -> dict:
    """The nodes that run (what the requested outputs need), as plain dicts."""
    data = workflow.to_dict()
    wanted = data.get("outputs")
    if wanted is None:
        wanted = [nid for nid, s in data["nodes"].items() if REGISTRY.get(s["type"]).output_node]
    keep, stack = set(), list(wanted)
    while stack:
        nid = stack.pop()
        if nid in keep or nid not in data["nodes"]:
            continue
        keep.add(nid)
        stack += [v["node"] for v in data["nodes"][nid]["inputs"].values() if isinstance(v, dict) and "node" in v]
    return {nid: data["nodes"][nid] for nid in keep}


def drawn_links(ui: dict) -> dict:
    by_link = {link[0]: link for link in ui["links"]}
    return {(n["id"], i["name"]): tuple(by_link[i["link"]][1:3]) for n in ui["nodes"] for i in n.get("inputs", [])
            if i.get("link") is not None}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows_with_modes())
def test_bypass_and_mute_export_as_modes_4_and_2(drawn):
    ui = json.loads(json.dumps(to_comfy_ui(drawn, REGISTRY)))
    modes = {nid: lay.model_extra.get("mode") for nid, lay in drawn.layout.nodes.items()}
    by_native = {n["properties"].get("chisel_id", str(n["id"])): n for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote")}
    for nid, node in by_native.items():
        assert node["mode"] == {"bypass": 4, "mute": 2}.get(modes.get(nid), 0)
        assert "mode" not in node["properties"].get("chisel_layout", {})
    # back as the canvas saves it: runs past bypassed nodes, the drawn links in the layout
    back = parse_workflow(ui, REGISTRY)
    again = json.loads(json.dumps(to_comfy_ui(back, REGISTRY)))
    assert drawn_links(again) == drawn_links(ui)
    assert [n["mode"] for n in again["nodes"]] == [n["mode"] for n in ui["nodes"]]
    assert parse_workflow(again, REGISTRY).to_dict() == back.to_dict()  # lossless from here on
    # what runs is what ComfyUI's frontend would run from the same file (bypassed and muted nodes left out)
    plain = dict(ui, extra={})
    comfy = parse_workflow(plain, REGISTRY)
    ours = running(back)
    assert all(modes.get(nid) is None for nid in ours)
    theirs = running(comfy)
    assert {nid: theirs[nid] for nid in ours} == ours
    muted = [nid for nid, m in modes.items() if m == "mute"]
    for nid in set(theirs) - set(ours):  # ComfyUI would refuse these: they need a muted node's result
        assert muted and nid not in ours


def canvas_subgraph_workflow() -> dict:
    """A workflow as the canvas saves one with a subgraph (Add then Scale, fed by a Number, read by a Show): the
    flattened graph runs; the subgraph as drawn is in the layout."""
    return {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "Number", "inputs": {"value": 3}},
        "5:2": {"type": "Add", "inputs": {"a": {"node": "1", "output": "INT"}, "b": 4}},
        "5:3": {"type": "Scale", "inputs": {"x": {"node": "5:2", "output": "sum"}, "factor": 2.0, "mode": "round"}},
        "4": {"type": "Show", "inputs": {"value": {"node": "5:3", "output": "FLOAT"}}}},
        "layout": {"nodes": {
            "1": {"pos": [0, 0], "size": [200, 80]},
            "5": {"pos": [300, 0], "size": [220, 80], "subgraph": "sg-add-scale",
                  "inputs": {"a": {"node": "1", "output": "INT"}}},
            "4": {"pos": [600, 0], "size": [200, 80], "links": {"value": {"node": "5", "output": "FLOAT"}}}},
            "subgraphs": [{"id": "sg-add-scale", "name": "Add and scale",
                           "inputs": [{"name": "a", "type": "INT"}],
                           "outputs": [{"name": "FLOAT", "type": "FLOAT", "link": {"node": "3", "output": "FLOAT"}}],
                           "input_node": [-200, 0, 120, 80], "output_node": [700, 0, 120, 80],
                           "nodes": {"2": {"type": "Add", "inputs": {"a": {"node": "-10", "output": 0}, "b": 4}},
                                     "3": {"type": "Scale", "inputs": {"x": {"node": "2", "output": "sum"},
                                                                      "factor": 2.0, "mode": "round"}}},
                           "layout": {"2": {"pos": [0, 0], "size": [200, 80], "mode": "bypass"},
                                      "3": {"pos": [300, 0], "size": [200, 80]}}}]}}


def test_subgraphs_export_as_definitions_and_come_back(toy_registry, toy_paths):
    from graph.engine import Engine

    native = canvas_subgraph_workflow()
    native["layout"]["subgraphs"][0]["layout"]["2"].pop("mode")
    workflow = parse_workflow(native)
    ui = json.loads(json.dumps(to_comfy_ui(workflow, toy_registry)))
    [definition] = ui["definitions"]["subgraphs"]
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert sorted(by_id) == [1, 4, 5] and by_id[5]["type"] == "sg-add-scale"
    assert [i["type"] for i in by_id[5]["inputs"]] == ["INT"] and [o["type"] for o in by_id[5]["outputs"]] == ["FLOAT"]
    assert sorted(tuple(link[1:]) for link in ui["links"]) == [(1, 0, 5, 0, "INT"), (5, 0, 4, 0, "FLOAT")]  # drawn
    assert {(lk["origin_id"], lk["target_id"]) for lk in definition["links"]} == {(-10, 2), (2, 3), (3, -20)}
    assert definition["inputs"][0]["linkIds"] and definition["outputs"][0]["linkIds"]
    assert {n["type"]: n["widgets_values"] for n in definition["nodes"]} == {"Add": [0, 4], "Scale": [0, 2.0, "round"]}
    back = parse_workflow(ui, toy_registry)
    assert back.to_dict()["nodes"] == workflow.to_dict()["nodes"]  # ComfyUI's ids for the inner nodes
    assert back.to_dict()["layout"] == workflow.to_dict()["layout"]  # the subgraph as drawn, back
    shown = Engine(toy_registry, paths=toy_paths).run(back)
    assert shown.status == "success" and shown.outputs["4"]["text"] == ["14.0"]
    # a node bypassed inside: ComfyUI's mode 4 there; what runs passes through it
    bypassed = parse_workflow(canvas_subgraph_workflow())
    ui = json.loads(json.dumps(to_comfy_ui(bypassed, toy_registry)))
    assert {n["type"]: n["mode"] for n in ui["definitions"]["subgraphs"][0]["nodes"]} == {"Add": 4, "Scale": 0}
    back = parse_workflow(ui, toy_registry)
    assert "5:2" not in back.nodes and back.nodes["5:3"].inputs["x"].node == "1"
    assert Engine(toy_registry, paths=toy_paths).run(back).outputs["4"]["text"] == ["6.0"]
    assert back.to_dict()["layout"]["subgraphs"] == bypassed.to_dict()["layout"]["subgraphs"]


def test_a_muted_subgraph_node_read_back_mutes_its_inside_and_what_needs_it(toy_registry, toy_paths):
    """As the canvas runs it: the nodes inside a muted subgraph node and what only they feed do not run; the rest
    does. Read back from Chisel's UI export (kept modes), the inner nodes stay, the outputs are narrowed."""
    from graph.engine import Engine

    native = canvas_subgraph_workflow()
    native["layout"]["subgraphs"][0]["layout"]["2"].pop("mode")
    native["layout"]["nodes"]["5"]["mode"] = "mute"
    native["nodes"]["6"] = {"type": "Show", "inputs": {"value": {"node": "1", "output": "INT"}}}
    native["layout"]["nodes"]["6"] = {"pos": [600, 200], "size": [200, 80]}
    native["outputs"] = ["6"]
    ui = json.loads(json.dumps(to_comfy_ui(parse_workflow(native), toy_registry)))
    assert {n["id"]: n["mode"] for n in ui["nodes"]}[5] == 2
    back = parse_workflow(ui, toy_registry).to_dict()
    assert back["outputs"] == ["6"] and {"5:2", "5:3", "4"} <= set(back["nodes"])
    assert back["layout"]["nodes"]["5"]["mode"] == "mute" and "mode" not in back["layout"]["nodes"].get("5:2", {})
    shown = Engine(toy_registry, paths=toy_paths).run(parse_workflow(back))
    assert shown.status == "success" and set(shown.outputs) == {"6"} and shown.outputs["6"]["text"] == ["3"]
    # the same file without Chisel's kept modes reads as ComfyUI's frontend runs it: the muted node left out
    plain = parse_workflow(dict(ui, extra={}), toy_registry).to_dict()
    assert not {"5:2", "5:3"} & set(plain["nodes"])


def test_groups_notes_and_reroutes_inside_a_subgraph_travel_in_its_definition(toy_registry):
    native = canvas_subgraph_workflow()
    sg = native["layout"]["subgraphs"][0]
    sg["layout"]["2"].pop("mode")
    sg["groups"] = [{"title": "Inside", "bounding": [-10, -40, 540, 160], "color": "#3f789e"}]
    sg["notes"] = [{"title": "Read me", "text": "# hi", "pos": [0, 200], "size": [300, 120], "markdown": True},
                   {"title": "Note", "text": "plain", "pos": [400, 200], "size": [300, 120]}]
    sg["reroutes"] = [{"id": 1, "pos": [250, 40]}]
    sg["layout"]["3"]["reroutes"] = {"x": 1}
    workflow = parse_workflow(native)
    ui = json.loads(json.dumps(to_comfy_ui(workflow, toy_registry)))
    [definition] = ui["definitions"]["subgraphs"]
    assert definition["groups"] == sg["groups"]
    notes = [(n["type"], n["title"], n["widgets_values"]) for n in definition["nodes"] if "Note" in n["type"]]
    assert notes == [("MarkdownNote", "Read me", ["# hi"]), ("Note", "Note", ["plain"])]
    [through] = [lk for lk in definition["links"] if lk["origin_id"] == 2 and lk["target_id"] == 3]
    assert through["parentId"] == 1 and definition["reroutes"] == [{"id": 1, "pos": [250, 40], "linkIds": [through["id"]]}]
    back = parse_workflow(ui, toy_registry)
    assert back.to_dict()["nodes"] == workflow.to_dict()["nodes"]  # notes never run
    assert back.to_dict()["layout"]["subgraphs"] == workflow.to_dict()["layout"]["subgraphs"]
    # a file from ComfyUI's frontend: the dot is known from the link's parentId alone
    del definition["nodes"][[n["type"] for n in definition["nodes"]].index("Scale")]["properties"]["chisel_layout"]
    again = parse_workflow(ui, toy_registry).to_dict()["layout"]["subgraphs"][0]
    assert again["layout"]["3"]["reroutes"] == {"x": 1} and again["reroutes"] == [{"id": 1, "pos": [250, 40]}]


def test_a_malformed_subgraph_in_the_layout_is_a_clear_export_error(tmp_path):
    async def main():
        async with client(make_root(tmp_path)) as c:
            for bad in ([{"id": "x", "nodes": 5}], [{"id": "", "nodes": {}}], ["x"],
                        [{"id": "x", "nodes": {}, "inputs": [{"name": ["no"]}]}]):
                native = canvas_subgraph_workflow()
                native["nodes"] = {"1": {"type": "Number", "inputs": {"value": 3}}}
                native["layout"]["subgraphs"] = bad
                r = await c.post("/v1/workflow/export", json={"workflow": native, "format": "comfy_ui"})
                body = await r.json()
                assert r.status == 400 and "layout.subgraphs" in json.dumps(body), (bad, body)
    run(main())


def test_a_promoted_widget_value_travels_as_the_instances_widget(toy_registry, toy_paths):
    from graph.engine import Engine

    native = canvas_subgraph_workflow()
    sg = native["layout"]["subgraphs"][0]
    sg["layout"]["2"].pop("mode")
    sg["inputs"].append({"name": "b", "type": "INT"})
    sg["nodes"]["2"]["inputs"]["b"] = {"node": "-10", "output": 1}
    native["layout"]["nodes"]["5"]["inputs"]["b"] = 5  # the instance's value for it (nothing links it)
    native["nodes"]["5:2"]["inputs"]["b"] = 5
    workflow = parse_workflow(native)
    ui = json.loads(json.dumps(to_comfy_ui(workflow, toy_registry)))
    [instance] = [n for n in ui["nodes"] if n["id"] == 5]
    assert [(i["name"], i.get("widget")) for i in instance["inputs"]] == [("a", None), ("b", {"name": "b"})]
    assert instance["widgets_values"] == [5]
    back = parse_workflow(ui, toy_registry)
    assert back.to_dict()["nodes"] == workflow.to_dict()["nodes"]
    assert back.to_dict()["layout"] == workflow.to_dict()["layout"]
    assert Engine(toy_registry, paths=toy_paths).run(back).outputs["4"]["text"] == ["16.0"]  # (3 + 5) * 2

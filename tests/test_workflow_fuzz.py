"""Workflow fuzzing (hypothesis): generated and mutated workflows in the native format, ComfyUI's API and UI
formats, ``--set``/``--sweep`` overrides and PNG text chunks go through parse -> validate -> plan, and a sample runs
on the toy nodes. Nothing may raise but a WorkflowError carrying structured errors of declared kinds.

About 2,100 cases per run in all (see each test's max_examples).
"""
from __future__ import annotations

import copy
import io
import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import toy_nodes
from graph.comfy_format import to_comfy_api, to_comfy_ui
from graph.engine import Engine
from graph.errors import KINDS, WorkflowError
from graph.overrides import apply_overrides
from graph.paths import ModelPaths
from graph.png_metadata import workflow_from_texts
from graph.comfy_ui_widgets import is_widget_input
from graph.registry import NodeRegistry
from graph.types import types_compatible
from graph.validate import all_errors, validate
from graph.workflow import parse_workflow
from server.cli import _parse_assignment, _parse_value

REGISTRY = NodeRegistry([n for n in toy_nodes.NODES if n is not toy_nodes.Slow])  # Slow may sleep for minutes
TYPES = sorted(REGISTRY) + ["Mystery", "Reroute", "PrimitiveNode"]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "input").mkdir()
    (root / "input" / "a.txt").write_text("hello")
    paths = ModelPaths(root=root, allow_paths=False)
    return Engine(REGISTRY, paths=paths)


# -- strategies ----------------------------------------------------------------------------------------------------------
ODD_STRINGS = ["", "²", "9" * 5000, "a\x00b", "fixed", "randomize", "floor", "a.txt", "-1", "x" * 300, "../a.txt",
               "~nobody/a.txt", "INT", "0", "sum"]
ODD_INTS = [10**400, -(10**400), 2**64, -1]
odd_strings = st.integers(0, len(ODD_STRINGS) - 1).map(ODD_STRINGS.__getitem__)  # (indices: short statistics)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(0, 3).map(ODD_INTS.__getitem__),
                    st.floats(), st.text(max_size=12), odd_strings)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
node_ids = st.one_of(st.integers(1, 9).map(str), st.text(min_size=1, max_size=4), st.sampled_from(["²", "a.b", "07"]))
output_refs = st.one_of(st.integers(-1, 3), st.sampled_from(["INT", "sum", "FLOAT", "STRING", "²"]), json_values)


def valid_literal(inp):
    if inp.files is not None:
        return st.sampled_from(["a.txt", "missing.txt"])
    if inp.choices is not None:
        return st.sampled_from(list(inp.choices))
    if inp.type == "INT":
        low = int(inp.min) if inp.min is not None else -(2**63)
        return st.integers(max(low, -1000), min(int(inp.max) if inp.max is not None else 2**63, 1000))
    if inp.type == "FLOAT":
        return st.floats(inp.min, inp.max, allow_nan=False)
    if inp.type == "BOOLEAN":
        return st.booleans()
    return st.text(max_size=12)


@st.composite
def sound_workflows(draw, max_nodes: int = 6):
    """Mostly valid: links go to earlier nodes' outputs of a fitting type, literals are in range."""
    ids = draw(st.lists(node_ids, min_size=1, max_size=max_nodes, unique=True))
    kinds = {nid: REGISTRY.get(draw(st.sampled_from(sorted(REGISTRY)))) for nid in ids}
    nodes = {}
    for k, nid in enumerate(ids):
        cls = kinds[nid]
        inputs = {}
        for inp in cls.inputs:
            fits = [{"node": pid, "output": out.name} for pid in ids[:k] for out in kinds[pid].outputs
                    if types_compatible(out.type, inp.type)]
            if fits and (not inp.is_widget or draw(st.integers(0, 2)) == 0):
                inputs[inp.name] = draw(st.sampled_from(fits))
            elif is_widget_input(inp) and (not inp.has_default or draw(st.booleans())):
                inputs[inp.name] = draw(valid_literal(inp))
        nodes[nid] = {"type": cls.type, "inputs": inputs}
    last = ids[-1]
    if kinds[last].outputs and "show" not in nodes:
        nodes["show"] = {"type": "Show", "inputs": {"value": {"node": last, "output": kinds[last].outputs[0].name}}}
    return {"format": "chisel-workflow", "version": 1, "nodes": nodes}


@st.composite
def wild_workflows(draw, max_nodes: int = 7):
    ids = draw(st.lists(node_ids, min_size=1, max_size=max_nodes, unique=True))
    nodes = {}
    for nid in ids:
        type_name = draw(st.sampled_from(TYPES))
        cls = REGISTRY.get(type_name)
        inputs = {}
        for inp in cls.inputs if cls is not None else ():
            how = draw(st.sampled_from(["skip", "valid", "valid", "link", "link", "junk"]))
            if how == "valid":
                inputs[inp.name] = draw(valid_literal(inp))
            elif how == "link":
                inputs[inp.name] = {"node": draw(st.sampled_from(ids)), "output": draw(output_refs)}
            elif how == "junk":
                inputs[inp.name] = draw(json_values)
        if draw(st.integers(0, 9)) == 0:
            inputs[draw(st.text(max_size=5))] = draw(json_values)
        node = {"type": type_name, "inputs": inputs}
        if draw(st.booleans()):
            node["title"] = draw(st.text(min_size=1, max_size=8))
        nodes[nid] = node
    doc = {"format": "chisel-workflow", "version": 1, "nodes": nodes}
    if draw(st.integers(0, 5)) == 0:
        doc["outputs"] = draw(st.lists(st.one_of(st.sampled_from(ids), node_ids), max_size=3))
    return doc


def native_workflows(max_nodes: int = 6):
    return st.one_of(sound_workflows(max_nodes), wild_workflows(max_nodes))


def _slots(doc):
    """(container, key) of every place in a JSON document (iteratively)."""
    out, stack = [], [doc]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else ()
        for key in keys:
            out.append((item, key))
            stack.append(item[key])
    return out


@st.composite
def mutated(draw, doc):
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(doc)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "wrap":
            container[key] = [container[key]]
        elif isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    return doc


# -- the pipeline ----------------------------------------------------------------------------------------------------------
def check(errors):
    for err in errors:
        assert err.kind in KINDS, err
        json.dumps(err.to_dict())


def pipeline(doc, engine, execute=False):
    """parse -> validate (all errors, then the plan) -> optionally run; only structured errors may come out."""
    try:
        workflow = parse_workflow(doc, REGISTRY)
    except WorkflowError as exc:
        assert exc.errors
        check(exc.errors)
        event("refused when parsed")
        return None
    check(all_errors(workflow, REGISTRY, engine.paths))
    exported = json.loads(json.dumps(to_comfy_ui(workflow, REGISTRY)))  # any readable workflow exports
    json.dumps(to_comfy_api(workflow, REGISTRY))
    try:
        parse_workflow(exported, REGISTRY)
    except WorkflowError as exc:  # e.g. an unknown node type, which the UI format cannot carry
        check(exc.errors)
    plan, errors = validate(workflow, REGISTRY, engine.paths)
    check(errors)
    assert (plan is None) == bool(errors)
    event("planned" if plan is not None else "refused when validated")
    if plan is not None:
        assert set(plan.order) >= set(plan.outputs)
        if execute:
            result = engine.run(workflow)
            event(f"ran: {result.status}")
            assert result.status in ("success", "error"), result.status
            check(result.errors)
    return workflow


def as_api(doc):
    """A native document in ComfyUI's API shape, whatever it holds (links as [id, output])."""
    out = {}
    for nid, node in (doc.get("nodes") or {}).items() if isinstance(doc.get("nodes"), dict) else ():
        node = node if isinstance(node, dict) else {}
        inputs = {k: [v["node"], v["output"]] if isinstance(v, dict) and "node" in v else v
                  for k, v in (node.get("inputs") or {}).items()} if isinstance(node.get("inputs"), dict) else {}
        out[nid] = {"class_type": node.get("type"), "inputs": inputs, "_meta": {"title": node.get("title")}}
    return out


# -- the tests ----------------------------------------------------------------------------------------------------------------
@settings(max_examples=600, **SETTINGS)
@given(data=st.data())
def test_native(engine, data):
    doc = data.draw(native_workflows())
    if data.draw(st.booleans()):
        doc = data.draw(mutated(doc))
    pipeline(doc, engine, execute=data.draw(st.integers(0, 3)) == 0)


@settings(max_examples=400, **SETTINGS)
@given(data=st.data())
def test_comfy_api(engine, data):
    doc = data.draw(native_workflows())
    try:
        api = to_comfy_api(parse_workflow(doc, REGISTRY), REGISTRY)
    except WorkflowError:
        api = as_api(doc)
    pipeline(data.draw(mutated(api)), engine, execute=data.draw(st.integers(0, 3)) == 0)


@settings(max_examples=500, **SETTINGS)
@given(data=st.data())
def test_comfy_ui(engine, data):
    doc = data.draw(native_workflows())
    try:
        ui = to_comfy_ui(parse_workflow(doc, REGISTRY), REGISTRY)
    except WorkflowError:
        return
    for node in ui["nodes"]:
        node["mode"] = data.draw(st.sampled_from([0, 0, 0, 2, 4]))
        if data.draw(st.integers(0, 5)) == 0:
            node["type"] = data.draw(st.sampled_from(["Reroute", "PrimitiveNode", "Note", "workflow>g", "sg-1"]))
    if data.draw(st.booleans()):
        ui["definitions"] = {"subgraphs": [{"id": "sg-1", "name": "s", "nodes": copy.deepcopy(ui["nodes"][:2]),
                                            "links": copy.deepcopy(ui["links"][:2]),
                                            "inputs": [{"name": "a", "type": "INT"}],
                                            "outputs": [{"name": "b", "type": "INT"}]}]}
        ui["extra"]["groupNodes"] = {"g": {"nodes": copy.deepcopy(ui["nodes"][:2]), "links": [[0, 0, 1, 0, None, "INT"]],
                                           "external": []}}
    if data.draw(st.booleans()):
        ui = data.draw(mutated(ui))
    pipeline(ui, engine, execute=data.draw(st.integers(0, 3)) == 0)


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_overrides_and_cli_assignments(engine, data):
    doc = data.draw(native_workflows())
    try:
        workflow = parse_workflow(doc, REGISTRY)
    except WorkflowError:
        return
    names = [f"{nid}.{inp.name}" for nid, spec in workflow.nodes.items() if REGISTRY.get(spec.type)
             for inp in REGISTRY.get(spec.type).inputs]
    target = st.one_of(st.sampled_from(names), st.text(max_size=8)) if names else st.text(max_size=8)
    texts = data.draw(st.lists(st.tuples(target, st.one_of(st.text(max_size=10), json_values.map(json.dumps))),
                               max_size=3))
    values = {}
    for t, v in texts:
        try:
            node, name, value = _parse_assignment(f"{t}={v}", "--set")
        except SystemExit as exc:  # the CLI's usage error, with a message
            assert "NODE.INPUT=VALUE" in str(exc)
            continue
        values[f"{node}.{name}"] = [_parse_value(x) for x in value.split(",")][0] if data.draw(st.booleans()) \
            else _parse_value(value)
    try:
        changed = apply_overrides(workflow, values)
    except WorkflowError as exc:
        check(exc.errors)
        return
    pipeline(changed.to_dict(), engine, execute=data.draw(st.integers(0, 3)) == 0)


def png_with(texts: dict[str, str]) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value, zip=len(value) > 200)
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_png_text_chunks(engine, data):
    from PIL import Image

    doc = data.draw(native_workflows(max_nodes=4))
    shape = data.draw(st.sampled_from(["native", "api", "text", "deep"]))
    text = {"native": lambda: json.dumps(data.draw(mutated(doc))),
            "api": lambda: json.dumps(as_api(doc)),
            "text": lambda: data.draw(st.text(max_size=30)),
            "deep": lambda: "[" * 5000 + "]" * 5000}[shape]()
    key = data.draw(st.sampled_from(["workflow", "prompt", "chisel_workflow", "parameters"]))
    with Image.open(io.BytesIO(png_with({key: text}))) as img:
        texts = dict(img.text)
    try:
        found = workflow_from_texts(texts, REGISTRY)
    except WorkflowError as exc:
        check(exc.errors)
        return
    if found is not None:
        pipeline(found[0], engine, execute=data.draw(st.integers(0, 3)) == 0)

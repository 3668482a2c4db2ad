"""Subgraphs between the native format and ComfyUI's UI format.

Native (as the canvas saves it): ``nodes`` is the flattened graph that runs (an inner node is
``<instance id>:<inner id>``, as ComfyUI names it in a prompt); what was drawn lives in the layout:

- ``layout.subgraphs``: ``[{id, name, inputs: [{name, type}], outputs: [{name, type, link}], input_node,
  output_node, nodes: {id: spec as drawn}, layout: {id: node layout}}]``; inside, a link from the subgraph's input
  ``k`` is ``{"node": "-10", "output": k}``, and an output's ``link`` is the inner output that feeds it;
- ``layout.nodes[instance]``: ``{pos, size, subgraph: id, inputs: {name: link as drawn}, title?}``;
- ``layout.nodes[node].links[input]``: a link drawn into an instance's output.

UI format: ``definitions.subgraphs`` (nodes, links from node -10 and into node -20, ``inputs``/``outputs`` with
their ``linkIds``), and each instance a node whose type is its subgraph's id. This module splits a native
workflow into the drawn root graph and the definitions (for the exporter) and builds the drawn structure back from
an imported UI file's definitions (for the importer).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .native import MAX_ID_LENGTH, Link, NodeLayout, NodeSpec, Workflow
from .schema_errors import validate_model

SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = "-10", "-20"
INSTANCE_KEYS = ("subgraph", "inputs", "title")  # an instance's layout keys that the UI format states itself


@dataclass(frozen=True)
class _Socket:
    """An instance's input: always a socket, never a widget."""

    name: str
    type: str
    optional: bool = False
    is_widget: bool = False
    choices: Any = None
    files: Any = None
    seed: bool = False
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class _Out:
    name: str
    type: str


class InstanceType:
    """What an instance of a subgraph looks like to the exporter: a node type whose sockets are the subgraph's."""

    output_node = False

    def __init__(self, definition: dict[str, Any]):
        self.type = definition["id"]
        self.name = str(definition.get("name") or "Subgraph")
        self.inputs = tuple(_Socket(str(i.get("name", "")), str(i.get("type", "*"))) for i in definition["inputs"])
        self.outputs = tuple(_Out(str(o.get("name", "")), str(o.get("type", "*"))) for o in definition["outputs"])

    def input(self, name: str) -> _Socket | None:
        return next((i for i in self.inputs if i.name == name), None)


class WithSubgraphs:
    """A registry that also knows the subgraphs' instance types."""

    def __init__(self, registry: Any, definitions: list[dict[str, Any]]):
        self.registry = registry
        self.instances = {d["id"]: InstanceType(d) for d in definitions}

    def get(self, type_name: str) -> Any:
        return self.instances.get(type_name) or (self.registry.get(type_name) if self.registry is not None else None)


class _Slot(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(default="", max_length=MAX_ID_LENGTH)
    type: str = Field(default="*", max_length=MAX_ID_LENGTH)


class _OutSlot(_Slot):
    link: Link | None = None


class SubgraphDef(BaseModel):
    """One entry of the native ``layout.subgraphs`` (checked before export)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = ""
    inputs: list[_Slot] = Field(default_factory=list)
    outputs: list[_OutSlot] = Field(default_factory=list)
    nodes: dict[str, NodeSpec]
    layout: dict[str, NodeLayout] = Field(default_factory=dict)
    input_node: list[float] | None = None
    output_node: list[float] | None = None


class _Defs(BaseModel):
    subgraphs: list[SubgraphDef]


def _definitions(workflow: Workflow) -> list[dict[str, Any]]:
    """``layout.subgraphs``, checked (a malformed entry is a clear error, never a crash)."""
    layout = workflow.layout
    found = (layout.model_extra or {}).get("subgraphs") if layout is not None else None
    if found is None:
        return []
    defs = validate_model(_Defs, {"subgraphs": found}, prefix="layout.")
    return [d.model_dump(mode="json", exclude_none=True) for d in defs.subgraphs]


def split(workflow: Workflow) -> tuple[Workflow, list[dict[str, Any]]]:
    """The root graph as drawn (instances as nodes of their subgraph's type, no inner nodes) and the definitions;
    the workflow unchanged where it has no subgraphs."""
    defs = _definitions(workflow)
    if not defs:
        return workflow, []
    ids = {d["id"] for d in defs}
    layout = workflow.layout
    instances = {nid: lay for nid, lay in layout.nodes.items() if (lay.model_extra or {}).get("subgraph") in ids}
    if not instances:
        return workflow, []

    def inner(nid: str) -> bool:
        return any(nid.startswith(p + ":") for p in instances)

    nodes = {nid: spec for nid, spec in workflow.nodes.items() if not inner(nid)}
    lay_nodes = {nid: lay for nid, lay in layout.nodes.items() if not inner(nid)}
    for nid, lay in instances.items():
        if inner(nid):
            continue
        extra = lay.model_extra or {}
        # links as drawn, and the values of promoted widgets (inputs that nothing links)
        inputs = dict(extra["inputs"]) if isinstance(extra.get("inputs"), dict) else {}
        title = extra.get("title") if isinstance(extra.get("title"), str) else None
        nodes[nid] = NodeSpec.model_validate({"type": extra["subgraph"], "inputs": inputs, "title": title})
        lay_nodes[nid] = lay.model_copy(update={}, deep=True)
        for key in INSTANCE_KEYS:
            (lay_nodes[nid].model_extra or {}).pop(key, None)
    new_layout = layout.model_copy(update={"nodes": lay_nodes})
    return workflow.model_copy(update={"nodes": nodes, "layout": new_layout}), defs


def promote(node: dict[str, Any], spec: NodeSpec) -> None:
    """An instance's inputs that hold a value (no link) as ComfyUI's promoted widgets: the socket names its widget,
    and ``widgets_values`` holds the values in socket order."""
    values = []
    for socket in node["inputs"]:
        value = spec.inputs.get(socket["name"])
        if socket["name"] in spec.inputs and not isinstance(value, Link):
            socket["widget"] = {"name": socket["name"]}
            values.append(value)
    node["widgets_values"] = values


def slot_uuid(definition_id: str, kind: str, index: int) -> str:
    """A stable id for a subgraph's input or output slot (ComfyUI's frontend gives each one a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chisel-subgraph:{definition_id}:{kind}:{index}"))


def bounding(value: Any, x: float) -> list[float]:
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return list(value)
    return [x, 0, 120, 80]


# -- import: the drawn structure of a UI file's subgraphs ---------------------------------------------------------
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
SKIPPED_TYPES = NOTE_TYPES | {"PrimitiveNode"}
MODE_NAMES = {2: "mute", 4: "bypass"}


def drawn_subgraphs(flat: Any, registry: Any, ids: dict[str, str], node_layout: Any) -> tuple[list, dict, dict]:
    """From a flattened UI file (:class:`graph.comfy_ui_flatten.FlatGraph`): the subgraph definitions its top-level
    instances use, as drawn; each instance's layout entry (``subgraph``, ``inputs``); and the links drawn into
    instances' outputs, per native node id. ``node_layout(ui node)`` gives a node's layout."""
    top = {fid: node for fid, node in flat.nodes.items() if node.top_level}
    instances = {fid: node for fid, node in top.items() if node.ui.type in flat.subgraphs}
    if not instances:
        return [], {}, {}
    used: dict[str, Any] = {}
    stack = [node.ui.type for node in instances.values()]
    while stack:
        sid = stack.pop()
        if sid in used:
            continue
        used[sid] = flat.subgraphs[sid]
        stack.extend(n.type for n in used[sid].nodes if n.type in flat.subgraphs)
    defs = [_drawn_definition(sg, flat, registry, node_layout) for sg in used.values()]
    by_id = {d["id"]: d for d in defs}
    instance_layouts: dict[str, dict[str, Any]] = {}
    for fid, node in instances.items():
        lay = dict(node_layout(node.ui))
        lay["subgraph"] = node.ui.type
        lay["inputs"] = {}
        if node.ui.mode in MODE_NAMES:  # the subgraph node itself bypassed or muted
            lay["mode"] = MODE_NAMES[node.ui.mode]
        slots = by_id[node.ui.type]["inputs"]
        promoted = iter(node.ui.widgets_values if isinstance(node.ui.widgets_values, list) else [])
        for k, inp in enumerate(node.inputs[:len(slots)]):
            value = next(promoted, None) if inp.widget is not None else None
            link = _top_hop(flat, inp.source, ids, by_id)
            if link is not None:
                lay["inputs"][slots[k]["name"]] = link
            elif value is not None and "proxyWidgets" not in node.ui.properties:
                lay["inputs"][slots[k]["name"]] = value
        instance_layouts[ids.get(fid, fid)] = lay
    drawn: dict[str, dict[str, Any]] = {}
    for fid, node in top.items():
        if fid in instances:
            continue
        for inp in node.inputs:
            src = inp.source
            while src is not None and src.node in flat.nodes and flat.nodes[src.node].ui.type == "Reroute":
                ins = flat.nodes[src.node].inputs
                src = ins[0].source if ins else None
            if src is not None and src.node in instances:
                link = _top_hop(flat, src, ids, by_id)
                if link is not None:
                    drawn.setdefault(ids.get(fid, fid), {})[inp.widget or inp.name] = link
    return defs, instance_layouts, drawn


def _top_hop(flat: Any, src: Any, ids: dict[str, str], defs: dict[str, Any]) -> dict[str, Any] | None:
    """A top-level link as drawn: past reroutes, to a node's or an instance's output."""
    seen = 0
    while src is not None and src.node in flat.nodes and seen <= len(flat.nodes):
        seen += 1
        node = flat.nodes[src.node]
        if node.ui.type == "Reroute":
            src = node.inputs[0].source if node.inputs else None
            continue
        if node.ui.type in SKIPPED_TYPES:
            return None
        return {"node": ids.get(src.node, src.node), "output": _out_name(flat.registry, defs, node.ui.type, src.slot)}
    return None


def _out_name(registry: Any, defs: dict[str, Any], type_name: str, slot: int) -> str | int:
    if type_name in defs:
        outs = defs[type_name]["outputs"]
        return outs[slot]["name"] if 0 <= slot < len(outs) else slot
    cls = registry.get(type_name)
    if cls is not None and 0 <= slot < len(cls.outputs):
        return cls.outputs[slot].name
    return slot


def _drawn_definition(sg: Any, flat: Any, registry: Any, node_layout: Any) -> dict[str, Any]:
    from .comfy_ui_widgets import read_widgets

    nodes_by_id = {str(n.id): n for n in sg.nodes}
    links = {link.id: link for link in sg.links}
    sub_defs = {s: _slots(flat.subgraphs[s]) for s in {n.type for n in sg.nodes if n.type in flat.subgraphs}}

    def origin(link: Any) -> dict[str, Any] | None:
        seen = 0
        while link is not None and seen <= len(links):
            seen += 1
            if str(link.origin_id) == SUBGRAPH_INPUT:
                return {"node": SUBGRAPH_INPUT, "output": link.origin_slot}
            node = nodes_by_id.get(str(link.origin_id))
            if node is None or node.type in SKIPPED_TYPES:
                return None
            if node.type == "Reroute":
                link = links.get(node.inputs[0].link) if node.inputs else None
                continue
            return {"node": str(node.id), "output": _out_name(registry, sub_defs, node.type, link.origin_slot)}
        return None

    nodes: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for node in sg.nodes:
        if node.type in SKIPPED_TYPES or node.type == "Reroute":
            continue
        cls = None if node.type in flat.subgraphs else registry.get(node.type)
        inputs: dict[str, Any] = read_widgets(cls, node.widgets_values) if cls is not None else {}
        for inp in node.inputs:
            link = origin(links.get(inp.link)) if inp.link is not None else None
            if link is not None:
                inputs[inp.widget_name or inp.name] = link
        spec: dict[str, Any] = {"type": node.type, "inputs": inputs}
        if node.title:
            spec["title"] = node.title
        nid = str(node.id)
        nodes[nid] = spec
        lay = dict(node_layout(node))
        if node.mode in MODE_NAMES:
            lay["mode"] = MODE_NAMES[node.mode]
        dots = {inp.widget_name or inp.name: parent for inp in node.inputs
                if (parent := _parent_dot(links.get(inp.link) if inp.link is not None else None)) is not None}
        if dots:
            lay["reroutes"] = {**(lay["reroutes"] if isinstance(lay.get("reroutes"), dict) else {}), **dots}
        if lay:
            layout[nid] = lay
    outputs = []
    for k, slot in enumerate(sg.outputs):
        feeding = next((link for link in sg.links if str(link.target_id) == SUBGRAPH_OUTPUT and link.target_slot == k),
                       None)
        outputs.append({"name": slot.name, "type": slot.type, "link": origin(feeding)})
    extra = sg.model_extra or {}
    out: dict[str, Any] = {"id": sg.id, "name": sg.name or "Subgraph",
                           "inputs": [{"name": s.name, "type": s.type} for s in sg.inputs], "outputs": outputs,
                           "nodes": nodes, "layout": layout}
    for key, ui_key in (("input_node", "inputNode"), ("output_node", "outputNode")):
        box = extra.get(ui_key, {}).get("bounding") if isinstance(extra.get(ui_key), dict) else None
        if isinstance(box, list) and len(box) == 4:
            out[key] = box
    # what is drawn inside and never runs: groups, notes, reroute dots
    groups = [_group(g) for g in extra.get("groups") or [] if isinstance(g, dict)] \
        if isinstance(extra.get("groups"), list) else []
    notes = [_note(n) for n in sg.nodes if n.type in NOTE_TYPES]
    dots = [_dot(r) for r in extra.get("reroutes") or [] if isinstance(r, dict)] \
        if isinstance(extra.get("reroutes"), list) else []
    for key, found in (("groups", [g for g in groups if g]), ("notes", notes), ("reroutes", [d for d in dots if d])):
        if found:
            out[key] = found
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parent_dot(link: Any) -> int | None:
    """The reroute dot a link of a subgraph's inside passes through last (ComfyUI's ``parentId``)."""
    parent = (link.model_extra or {}).get("parentId") if link is not None else None
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def _group(g: dict[str, Any]) -> dict[str, Any] | None:
    box = g.get("bounding")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        return None
    out: dict[str, Any] = {"title": g["title"] if isinstance(g.get("title"), str) else "Group", "bounding": box}
    if isinstance(g.get("color"), str):
        out["color"] = g["color"]
    return out


def _dot(r: dict[str, Any]) -> dict[str, Any] | None:
    rid, pos = r.get("id"), r.get("pos")
    if not (isinstance(rid, int) and not isinstance(rid, bool) and rid > 0 and isinstance(pos, list)
            and len(pos) == 2 and all(_number(v) for v in pos)):
        return None
    out: dict[str, Any] = {"id": rid, "pos": pos}
    parent = r.get("parentId")
    if isinstance(parent, int) and not isinstance(parent, bool):
        out["parent"] = parent
    return out


def _note(ui: Any) -> dict[str, Any]:
    """A Note or MarkdownNote inside a subgraph as the canvas keeps it (its definition's ``notes``)."""
    values = ui.widgets_values
    text = values[0] if isinstance(values, list) and values and isinstance(values[0], str) else ""
    note: dict[str, Any] = {"title": ui.title or ("Markdown Note" if ui.type == "MarkdownNote" else "Note"),
                            "text": text}
    if ui.type == "MarkdownNote":
        note["markdown"] = True
    for key in ("pos", "size", "color", "bgcolor"):
        if getattr(ui, key) is not None:
            note[key] = getattr(ui, key)
    if ui.flags.get("collapsed") is True:
        note["collapsed"] = True
    return note


def _slots(sg: Any) -> dict[str, Any]:
    return {"outputs": [{"name": s.name, "type": s.type} for s in sg.outputs]}

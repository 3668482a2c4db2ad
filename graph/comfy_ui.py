"""Import ComfyUI's UI ("workflow") format into the native format, as ComfyUI's frontend turns a graph into a prompt.

The file is read once into typed structures (:mod:`graph.comfy_ui_model`), flattened (:mod:`graph.comfy_ui_flatten`:
subgraphs, group nodes, reroutes, bypass, mute), and each real node's widget values are read in ComfyUI's slot order
(:mod:`graph.comfy_ui_widgets`). Unknown node types are all reported, each with its id, title and type. Editor data
is kept in ``layout``: positions, sizes, collapsed state and colours of top-level nodes, groups, and notes.

A file written by Chisel's exporter (``extra.chisel.keep_modes``) keeps its bypassed (mode 4) and muted (mode 2)
top-level nodes as the canvas saves them: each stays a node with its mode in ``layout.nodes[id].mode``; what it feeds
runs past a bypassed node (the link drawn into it is kept in the consumer's ``layout.nodes[id].links``), and where an
output node cannot run (bypassed, muted, or needing a muted node) ``outputs`` lists those that can. Other files
follow ComfyUI's frontend: such nodes are left out.
"""
from __future__ import annotations

from typing import Any

from .comfy_ui_flatten import BYPASS, MUTED, NODE, NOTE_TYPES, NO_VALUE, FlatGraph, FlatNode
from .comfy_ui_model import UiNode, UiWorkflow
from .comfy_ui_subgraphs import drawn_subgraphs
from .comfy_ui_widgets import read_widgets
from .errors import INVALID_WORKFLOW, UNKNOWN_NODE_TYPE, ChiselError, WorkflowError, brief
from .native import FORMAT, VERSION
from .schema_errors import validate_model

CHISEL_ID = "chisel_id"  # node property holding a native id that is not a number (written by the exporter)
MODE_NAMES = {MUTED: "mute", BYPASS: "bypass"}  # kept node kind -> the canvas's layout mode


def _locate(data: Any):
    def locate(loc: tuple) -> tuple[str | None, str | None]:
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            try:
                node = data["nodes"][loc[1]]
                node_id = node.get("id") if isinstance(node, dict) else None
            except (IndexError, KeyError, TypeError):
                node_id = None
            return (brief(str(node_id), 60) if node_id is not None else f"#{loc[1]}"), None
        return None, None
    return locate


def from_comfy_ui(data: Any, registry: Any, source: str | None = None) -> dict[str, Any]:
    if registry is None:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, "a ComfyUI UI-format workflow needs the node registry")])
    doc = validate_model(UiWorkflow, data, source, _locate(data))
    flat = FlatGraph(doc, registry, keep_modes=_exported_by_chisel(doc))
    nodes, layout_nodes = _nodes(flat, registry)
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "nodes": nodes,
                           "layout": _layout(doc, layout_nodes)}
    _subgraph_layout(flat, registry, out["layout"])
    ids = _native_ids(flat)
    muted_inside = [ids[n.id] for n in flat.nodes.values() if n.kind == MUTED and not n.top_level]
    outputs = _running_outputs(nodes, layout_nodes, registry, muted_inside)
    if outputs is not None:
        out["outputs"] = outputs
    _restore_exported_extras(doc, out)
    return out


def _subgraph_layout(flat: FlatGraph, registry: Any, layout: dict[str, Any]) -> None:
    """The subgraphs as drawn (the canvas shows them; what runs is the flattened graph)."""
    defs, instances, drawn = drawn_subgraphs(flat, registry, _native_ids(flat), _node_layout)
    if not defs:
        return
    layout["subgraphs"] = defs
    nodes = layout["nodes"]
    nodes.update(instances)
    for nid, links in drawn.items():
        lay = nodes.setdefault(nid, {})
        lay["links"] = {**(lay.get("links") if isinstance(lay.get("links"), dict) else {}), **links}


def _exported_by_chisel(doc: UiWorkflow) -> bool:
    chisel = (doc.extra.model_extra or {}).get("chisel")
    return isinstance(chisel, dict) and chisel.get("keep_modes") is True


def _running_outputs(nodes: dict[str, Any], layout_nodes: dict[str, Any], registry: Any,
                     muted_inside: list[str] = ()) -> list[str] | None:
    """With kept modes: the output nodes that can run, where some cannot (None: all can). ``muted_inside``: the
    nodes of muted subgraph instances (their mode is the instance's, in the layout)."""
    modes = {nid: lay.get("mode") for nid, lay in layout_nodes.items() if nid in nodes}
    modes.update({nid: "mute" for nid in muted_inside})
    dead = {nid for nid, mode in modes.items() if mode in MODE_NAMES.values()}
    if not dead:
        return None
    consumers: dict[str, list[str]] = {}
    for nid, spec in nodes.items():
        for v in spec["inputs"].values():
            if isinstance(v, dict) and "node" in v:
                consumers.setdefault(str(v["node"]), []).append(nid)
    stack = [nid for nid, mode in modes.items() if mode == "mute"]
    while stack:
        nid = stack.pop()
        for c in consumers.get(nid, []):
            if c not in dead:
                dead.add(c)
                stack.append(c)
    outputs = [nid for nid, spec in nodes.items() if getattr(registry.get(spec["type"]), "output_node", False)]
    return [nid for nid in outputs if nid not in dead] if any(nid in dead for nid in outputs) else None


def _nodes(flat: FlatGraph, registry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Native nodes and their layout from the flattened graph's real nodes; every unknown type is an error."""
    ids = _native_ids(flat)
    nodes: dict[str, Any] = {}
    layout_nodes: dict[str, Any] = {}
    errors: list[ChiselError] = []
    for node in flat.nodes.values():
        if node.kind != NODE and not flat.kept(node):
            continue
        cls = registry.get(node.ui.type)
        nid = ids[node.id]
        if cls is None:
            errors.append(_unknown_type(node.ui, nid))
            continue
        drawn: dict[str, Any] = {}
        entry: dict[str, Any] = {"type": node.ui.type, "inputs": _inputs(flat, node, cls, ids, drawn)}
        if node.ui.title:
            entry["title"] = node.ui.title
        nodes[nid] = entry
        lay = _node_layout(node.ui) if node.top_level else None
        if flat.kept(node) and node.top_level:  # inside a muted subgraph node: the instance's layout has the mode
            lay = {**(lay or {}), "mode": MODE_NAMES[node.kind]}
        if drawn:
            kept_links = (lay or {}).get("links")
            lay = {**(lay or {}), "links": {**(kept_links if isinstance(kept_links, dict) else {}), **drawn}}
        if lay:
            layout_nodes[nid] = lay
    if errors:
        raise WorkflowError(errors)
    return nodes, layout_nodes


def _unknown_type(ui: UiNode, nid: str) -> ChiselError:
    title = ui.title or ui.type
    return ChiselError(UNKNOWN_NODE_TYPE, f"unknown node type {ui.type!r} (node {nid}, titled {title!r})",
                       node_id=nid, node_type=ui.type, value=ui.type, details={"title": title})


def _layout(doc: UiWorkflow, layout_nodes: dict[str, Any]) -> dict[str, Any]:
    layout: dict[str, Any] = {"nodes": layout_nodes}
    if doc.groups:
        layout["groups"] = doc.groups
    notes = [_note(n) for n in doc.nodes if n.type in NOTE_TYPES]
    if notes:
        layout["notes"] = notes
    return layout


def _restore_exported_extras(doc: UiWorkflow, out: dict[str, Any]) -> None:
    """What Chisel's exporter put in ``extra.chisel`` (the UI format has no place for it) back where it belongs."""
    chisel = (doc.extra.model_extra or {}).get("chisel")
    if not isinstance(chisel, dict):
        return
    for key in ("outputs", "meta"):
        if chisel.get(key) is not None:
            out[key] = chisel[key]
    if isinstance(chisel.get("layout"), dict):
        out["layout"].update({k: v for k, v in chisel["layout"].items() if k not in ("nodes", "groups", "notes", "subgraphs")})


def _native_ids(flat: FlatGraph) -> dict[str, str]:
    """Flattened id -> native id: the exporter's original id where it left one (and it is unique)."""
    ids = {fid: fid for fid in flat.nodes}
    taken = set(ids)
    for fid, node in flat.nodes.items():
        wanted = node.ui.properties.get(CHISEL_ID)
        if node.top_level and isinstance(wanted, str) and wanted and wanted not in taken:
            ids[fid] = wanted
            taken.add(wanted)
    return ids


def _inputs(flat: FlatGraph, node: FlatNode, cls: Any, ids: dict[str, str], drawn: dict[str, Any]) -> dict[str, Any]:
    """The node's native inputs; ``drawn`` gets its links into kept bypassed nodes (those run past them), as the
    canvas saves them. A kept bypassed node's own inputs are the links drawn."""
    inputs = read_widgets(cls, node.ui.widgets_values)
    inputs.update(read_widgets(cls, flat.widget_values.get(node.id, {})))
    bypassed = node.kind == BYPASS
    for inp in node.inputs:
        name = inp.widget or inp.name
        first = flat.resolve(inp.source, inp.type, through_kept=False) if flat.keep_modes else None
        if first is not None and first.node is not None and not bypassed and flat.kept(flat.nodes[first.node]) \
                and flat.nodes[first.node].kind == BYPASS:
            drawn[name] = _native_link(flat, first, ids)
        src = first if bypassed else flat.resolve(inp.source, inp.type)
        if src is None:
            continue
        if src.value is not NO_VALUE:
            inputs[name] = src.value
        else:
            inputs[name] = _native_link(flat, src, ids)
    return inputs


def _native_link(flat: FlatGraph, src: Any, ids: dict[str, str]) -> dict[str, Any]:
    return {"node": ids.get(src.node, src.node), "output": _output_name(flat, src)}


def _output_name(flat: FlatGraph, src: Any) -> str | int:
    """Links come back by output name, as native files write them (by index where the name is unknown)."""
    cls = flat.registry.get(flat.nodes[src.node].ui.type)
    if cls is not None and 0 <= src.slot < len(cls.outputs):
        return cls.outputs[src.slot].name
    return src.slot


def _node_layout(ui: UiNode) -> dict[str, Any]:
    lay: dict[str, Any] = {}
    if ui.pos is not None:
        lay["pos"] = ui.pos
    if ui.size is not None:
        lay["size"] = ui.size
    if ui.flags.get("collapsed") is True:
        lay["collapsed"] = True
    if ui.color is not None:
        lay["color"] = ui.color
    extra = ui.properties.get("chisel_layout")
    if isinstance(extra, dict):
        lay.update({k: v for k, v in extra.items() if k not in lay})
    return lay


def _note(ui: UiNode) -> dict[str, Any]:
    values = ui.widgets_values
    text = values[0] if isinstance(values, list) and values and isinstance(values[0], str) else ""
    note: dict[str, Any] = {"type": ui.type, "text": text}
    if ui.pos is not None:
        note["pos"] = ui.pos
    if ui.size is not None:
        note["size"] = ui.size
    if ui.title:
        note["title"] = ui.title
    if ui.color is not None:
        note["color"] = ui.color
    return note

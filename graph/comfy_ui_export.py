"""Export a native workflow to ComfyUI's UI ("workflow") format, version 0.4, so ComfyUI's frontend opens it.

Each node keeps its position, size, collapsed state, colour and title; ``widgets_values`` are written in ComfyUI's
slot order (:mod:`graph.comfy_ui_widgets`: an input left out gets its default; control slots get "fixed"); a linked
widget input appears among the node's inputs with its widget name, as a converted widget. Groups stay groups, notes
become Note nodes. A bypassed or muted node (the canvas's ``layout.nodes[id].mode``) is written with ComfyUI's mode 4
or 2 and with the links the user drew (``layout.nodes[id].links``: the canvas's links into bypassed nodes), so ComfyUI's
frontend shows the same graph. What the UI format has no place for travels in ``extra.chisel`` (the requested
outputs, meta, other layout keys, and ``keep_modes``: bypassed and muted nodes come back as nodes with their mode in
the layout) and in node properties (a node id that is not a number, extra layout keys), so importing the export
gives the workflow back.
"""
from __future__ import annotations

from typing import Any

from .comfy_api import output_slot
from .comfy_ui import CHISEL_ID
from .comfy_ui_widgets import is_widget_input, write_widgets
from .comfy_ui_subgraphs import (SUBGRAPH_INPUT, SUBGRAPH_OUTPUT, InstanceType, WithSubgraphs, bounding, promote,
                                 slot_uuid, split)
from .native import Link, NodeLayout, Workflow, natural_key

UI_VERSION = 0.4
UI_MODES = {"mute": 2, "bypass": 4}  # the canvas's layout mode -> ComfyUI's node mode
NODE_WIDTH, ROW_HEIGHT, COLUMN_GAP = 320, 26, 80


def to_comfy_ui(workflow: Workflow, registry: Any) -> dict[str, Any]:
    workflow, subgraphs = split(workflow)
    if subgraphs:
        registry = WithSubgraphs(registry, subgraphs)
    layout = workflow.layout
    ui_ids = _ui_ids(workflow)
    nodes, links = _scope(_drawn(workflow), layout, registry, ui_ids)
    out_nodes = list(nodes.values())
    next_id = max(ui_ids.values(), default=0) + 1
    for note in (layout.notes if layout is not None else []):
        out_nodes.append(_note_node(note, next_id, len(out_nodes)))
        next_id += 1
    extra: dict[str, Any] = {}
    chisel: dict[str, Any] = {"keep_modes": True}
    if workflow.outputs is not None:
        chisel["outputs"] = workflow.outputs
    if workflow.meta is not None:
        chisel["meta"] = workflow.meta
    rest = {k: v for k, v in (layout.model_extra or {}).items() if k != "subgraphs"} if layout is not None else {}
    if rest:
        chisel["layout"] = rest
    if chisel:
        extra["chisel"] = chisel
    out = {"last_node_id": next_id - 1, "last_link_id": len(links), "nodes": out_nodes, "links": links,
           "groups": list(layout.groups) if layout is not None else [], "config": {}, "extra": extra,
           "version": UI_VERSION}
    if subgraphs:
        out["definitions"] = {"subgraphs": [_definition(d, registry) for d in subgraphs]}
    return out


def _scope(workflow: Workflow, layout: Any, registry: Any,
           ui_ids: dict[str, int]) -> tuple[dict[str, dict[str, Any]], list[list[Any]]]:
    """One graph's UI nodes and links (the root graph, or a subgraph's inside)."""
    positions = _auto_positions(workflow)
    nodes: dict[str, dict[str, Any]] = {}
    for order, (nid, spec) in enumerate(workflow.nodes.items()):
        cls = registry.get(spec.type) if registry is not None else None
        lay = layout.nodes.get(nid) if layout is not None else None
        nodes[nid] = _node(nid, spec, cls, ui_ids[nid], order, lay, positions[nid])
        if isinstance(cls, InstanceType):
            promote(nodes[nid], spec)
    return nodes, _links(workflow, registry, nodes, ui_ids)


def _definition(definition: dict[str, Any], registry: Any) -> dict[str, Any]:
    """A subgraph as ComfyUI's frontend saves it in ``definitions.subgraphs``: its nodes and links, the links from
    its input node (-10) and into its output node (-20)."""
    sid = definition["id"]
    inner = Workflow.model_validate({"nodes": definition["nodes"], "layout": {
        "nodes": definition.get("layout") if isinstance(definition.get("layout"), dict) else {}}})
    ui_ids = _ui_ids(inner)
    nodes, links = _scope(_drawn(inner), inner.layout, registry, ui_ids)
    inputs = [{"id": slot_uuid(sid, "input", k), "name": i["name"], "type": i["type"], "linkIds": []}
              for k, i in enumerate(definition.get("inputs") or [])]
    outputs = [{"id": slot_uuid(sid, "output", k), "name": o["name"], "type": o["type"], "linkIds": []}
               for k, o in enumerate(definition.get("outputs") or [])]
    for nid, spec in inner.nodes.items():
        for slot, entry in enumerate(nodes[nid]["inputs"]):
            value = spec.inputs.get(entry["name"])
            if isinstance(value, Link) and value.node == SUBGRAPH_INPUT and isinstance(value.output, int) \
                    and 0 <= value.output < len(inputs):
                link_id = len(links) + 1
                links.append([link_id, int(SUBGRAPH_INPUT), value.output, ui_ids[nid], slot, inputs[value.output]["type"]])
                entry["link"] = link_id
                inputs[value.output]["linkIds"].append(link_id)
    for k, o in enumerate(definition.get("outputs") or []):
        link = _as_link(o.get("link"))
        if link is None:
            continue
        if link.node == SUBGRAPH_INPUT and isinstance(link.output, int):
            origin, origin_slot = int(SUBGRAPH_INPUT), link.output
        elif link.node in nodes:
            origin, origin_slot = ui_ids[link.node], output_slot(inner, link, registry)
            outs = nodes[link.node]["outputs"]
            if 0 <= origin_slot < len(outs):
                outs[origin_slot]["links"].append(len(links) + 1)
        else:
            continue
        links.append([len(links) + 1, origin, origin_slot, int(SUBGRAPH_OUTPUT), k, outputs[k]["type"]])
        outputs[k]["linkIds"].append(len(links))
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    link_objects = [dict(zip(keys, link)) for link in links]
    reroutes = _reroutes(definition.get("reroutes"), inner, nodes, link_objects)
    out_nodes = list(nodes.values())
    next_id = max(ui_ids.values(), default=0) + 1
    for note in definition.get("notes") if isinstance(definition.get("notes"), list) else []:
        if isinstance(note, dict):
            out_nodes.append(_note_node(note, next_id, len(out_nodes)))
            next_id += 1
    groups = [g for g in definition.get("groups") or [] if isinstance(g, dict)]
    return {"id": sid, "version": 1, "revision": 0, "name": str(definition.get("name") or "Subgraph"),
            "state": {"lastNodeId": next_id - 1, "lastLinkId": len(links), "lastGroupId": len(groups),
                      "lastRerouteId": max((r["id"] for r in reroutes), default=0)},
            "config": {}, "inputNode": {"id": int(SUBGRAPH_INPUT), "bounding": bounding(definition.get("input_node"), -200)},
            "outputNode": {"id": int(SUBGRAPH_OUTPUT), "bounding": bounding(definition.get("output_node"), 600)},
            "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": out_nodes,
            "links": link_objects, "groups": groups, "reroutes": reroutes, "extra": {}}


def _reroutes(saved: Any, inner: Workflow, nodes: dict[str, dict[str, Any]],
              links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A subgraph's reroute dots as ComfyUI's frontend saves them (``{id, pos, parentId, linkIds}``), each link
    through one naming its last dot in ``parentId``; from the native ``reroutes`` list and each node's
    ``layout.reroutes`` ({input name: dot id})."""
    if not isinstance(saved, list):
        return []
    dots = {r["id"]: r for r in saved if isinstance(r, dict) and isinstance(r.get("id"), int)
            and not isinstance(r.get("id"), bool) and isinstance(r.get("pos"), list) and len(r["pos"]) == 2}
    out = {rid: {"id": rid, "pos": list(r["pos"]), "linkIds": [],
                 **({"parentId": r["parent"]} if r.get("parent") in dots else {})} for rid, r in dots.items()}
    by_id = {link["id"]: link for link in links}
    for nid, lay in (inner.layout.nodes.items() if inner.layout is not None else ()):
        chosen = (lay.model_extra or {}).get("reroutes")
        if nid not in nodes or not isinstance(chosen, dict):
            continue
        for entry in nodes[nid]["inputs"]:
            rid, link = chosen.get(entry["name"]), by_id.get(entry.get("link"))
            if rid not in out or link is None:
                continue
            link["parentId"] = rid
            seen: set[int] = set()
            while rid in out and rid not in seen:
                seen.add(rid)
                out[rid]["linkIds"].append(link["id"])
                rid = out[rid].get("parentId")
    return [r for r in out.values() if r["linkIds"]]


def _drawn(workflow: Workflow) -> Workflow:
    """The workflow with the links the user drew: each node's links into bypassed nodes (kept in its layout) in
    place of the links that run past them."""
    layout = workflow.layout
    if layout is None:
        return workflow
    nodes = {}
    for nid, spec in workflow.nodes.items():
        lay = layout.nodes.get(nid)
        drawn = (lay.model_extra or {}).get("links") if lay is not None else None
        if not isinstance(drawn, dict):
            nodes[nid] = spec
            continue
        inputs = dict(spec.inputs)
        for name, value in drawn.items():
            link = _as_link(value)
            if link is not None and link.node in workflow.nodes:
                inputs[name] = link
        nodes[nid] = spec.model_copy(update={"inputs": inputs})
    return workflow.model_copy(update={"nodes": nodes})


def _as_link(value: Any) -> Link | None:
    try:
        return Link.model_validate(value)
    except ValueError:
        return None


def _ui_ids(workflow: Workflow) -> dict[str, int]:
    """Native id -> UI id (an integer): the same number where the id is one, else the next free number."""
    ids: dict[str, int] = {}
    for nid in workflow.nodes:
        if nid.isascii() and nid.isdigit() and len(nid) < 10 and str(int(nid)) == nid:
            ids[nid] = int(nid)
    next_id = max(ids.values(), default=0) + 1
    for nid in workflow.nodes:
        if nid not in ids:
            ids[nid] = next_id
            next_id += 1
    return ids


def _auto_positions(workflow: Workflow) -> dict[str, list[float]]:
    """Where a node without a saved position goes: a column per dependency depth, a row per node in it."""
    depth: dict[str, int] = {}
    for nid in sorted(workflow.nodes, key=natural_key):
        _depth(workflow, nid, depth)
    rows: dict[int, int] = {}
    out = {}
    for nid in workflow.nodes:
        col = depth[nid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        out[nid] = [40 + col * (NODE_WIDTH + COLUMN_GAP), 40 + row * 10 * ROW_HEIGHT]
    return out


def _depth(workflow: Workflow, start: str, depth: dict[str, int]) -> None:
    """Longest chain of links above each node (iterative; a node on a cycle counts its cycle once)."""
    stack = [(start, False)]
    visiting: set[str] = set()
    while stack:
        nid, done = stack.pop()
        if nid in depth:
            continue
        parents = [v.node for v in workflow.nodes[nid].inputs.values()
                   if isinstance(v, Link) and v.node in workflow.nodes]
        if done:
            visiting.discard(nid)
            depth[nid] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
            continue
        visiting.add(nid)
        stack.append((nid, True))
        stack.extend((p, False) for p in parents if p not in depth and p not in visiting)


def _node(nid: str, spec: Any, cls: Any, ui_id: int, order: int, lay: NodeLayout | None,
          auto_pos: list[float]) -> dict[str, Any]:
    literals = {k: v for k, v in spec.inputs.items() if not isinstance(v, Link)}
    properties: dict[str, Any] = {"Node name for S&R": spec.type}
    if str(ui_id) != nid:
        properties[CHISEL_ID] = nid
    node: dict[str, Any] = {
        "id": ui_id, "type": spec.type, "pos": auto_pos, "size": _size(cls), "flags": {}, "order": order, "mode": 0,
        "inputs": _sockets(spec, cls),
        "outputs": [{"name": o.name, "type": o.type, "links": [], "slot_index": i}
                    for i, o in enumerate(cls.outputs if cls else ())],
        "properties": properties,
        "widgets_values": write_widgets(cls, literals, set(spec.inputs) - set(literals)) if cls else literals}
    if spec.title is not None:
        node["title"] = spec.title
    if lay is not None:
        _apply_layout(node, lay)
    return node


def _sockets(spec: Any, cls: Any) -> list[dict[str, Any]]:
    """The node's input sockets in ComfyUI's order (required, then optional): every input that is not a widget, and
    each linked widget as a converted widget. A node of unknown type gets a socket per link."""
    if cls is None:
        return [{"name": k, "type": "*", "link": None} for k, v in spec.inputs.items() if isinstance(v, Link)]
    sockets = []
    for inp in [i for i in cls.inputs if not i.optional] + [i for i in cls.inputs if i.optional]:
        if not is_widget_input(inp):
            sockets.append({"name": inp.name, "type": inp.type, "link": None})
        elif isinstance(spec.inputs.get(inp.name), Link):
            sockets.append({"name": inp.name, "type": inp.type, "widget": {"name": inp.name}, "link": None})
    return sockets


def _apply_layout(node: dict[str, Any], lay: NodeLayout) -> None:
    if lay.pos is not None:
        node["pos"] = list(lay.pos)
    if lay.size is not None:
        node["size"] = list(lay.size)
    if lay.collapsed:
        node["flags"] = {"collapsed": True}
    if lay.color is not None:
        node["color"] = lay.color
    extra = dict(lay.model_extra or {})
    mode = extra.get("mode")
    if isinstance(mode, str) and mode in UI_MODES:
        node["mode"] = UI_MODES[mode]
        del extra["mode"]
    links = extra.get("links")
    if isinstance(links, dict):  # written as links; what is not a link stays here
        rest = {k: v for k, v in links.items() if _as_link(v) is None}
        if rest:
            extra["links"] = rest
        else:
            del extra["links"]
    if extra:
        node["properties"]["chisel_layout"] = extra


def _size(cls: Any) -> list[float]:
    rows = 1 + (len(cls.inputs) + len(cls.outputs) if cls is not None else 0)
    return [NODE_WIDTH - 5, 30 + rows * ROW_HEIGHT]


def _links(workflow: Workflow, registry: Any, nodes: dict[str, dict[str, Any]],
           ui_ids: dict[str, int]) -> list[list[Any]]:
    links: list[list[Any]] = []
    for nid, spec in workflow.nodes.items():
        target = nodes[nid]
        for slot, entry in enumerate(target["inputs"]):
            value = spec.inputs.get(entry["name"])
            if not isinstance(value, Link) or value.node not in nodes:
                continue
            origin = nodes[value.node]
            origin_slot = output_slot(workflow, value, registry)
            outs = origin["outputs"]
            link_type = outs[origin_slot]["type"] if 0 <= origin_slot < len(outs) else entry["type"]
            link_id = len(links) + 1
            links.append([link_id, ui_ids[value.node], origin_slot, ui_ids[nid], slot, link_type])
            entry["link"] = link_id
            if 0 <= origin_slot < len(outs):
                outs[origin_slot]["links"].append(link_id)
    return links


def _note_node(note: dict[str, Any], ui_id: int, order: int) -> dict[str, Any]:
    kind = note.get("type") if note.get("type") in ("Note", "MarkdownNote") else \
        "MarkdownNote" if note.get("markdown") is True else "Note"  # the canvas marks a Markdown note so
    node: dict[str, Any] = {"id": ui_id, "type": kind, "pos": note.get("pos", [40, 40]), "size": note.get("size", [300, 120]),
                            "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                            "widgets_values": [note.get("text", "")]}
    if note.get("title"):
        node["title"] = note["title"]
    for key in ("color", "bgcolor"):
        if isinstance(note.get(key), str):
            node[key] = note[key]
    if note.get("collapsed") is True:
        node["flags"] = {"collapsed": True}
    return node

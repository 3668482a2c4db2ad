"""ComfyUI interoperability: import its API format and its UI ("workflow") format, export the API format.

API format: ``{id: {"class_type": T, "inputs": {name: literal | [src_id, output_index]}, "_meta": {"title"}}}``
(a literal list travels as ``{"__value__": [...]}``). UI format (versions 0.4 and 1): ``nodes`` as a list with
``widgets_values`` in the order of the node's widget inputs (an extra ``control_after_generate`` value follows
each seed), and ``links`` as arrays (0.4) or objects (1).
"""
from __future__ import annotations

from typing import Any

from .errors import INVALID_WORKFLOW, ChiselError, WorkflowError
from .workflow import FORMAT, VERSION, Link, Workflow

UI_SKIP_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
UI_MODE_MUTED, UI_MODE_BYPASSED = 2, 4


def detect_format(data: Any) -> str:
    if not isinstance(data, dict):
        return "unknown"
    nodes = data.get("nodes")
    if isinstance(nodes, dict):
        return "native"
    if isinstance(nodes, list) and "links" in data:
        return "comfy_ui"
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "comfy_api"
    return "unknown"


def from_comfy_api(data: dict[str, Any], registry: Any = None) -> dict[str, Any]:
    """Convert; with a registry, inputs a known node does not have are dropped (as ComfyUI ignores them, so files
    from newer ComfyUI versions still run) and listed in ``meta.dropped_inputs``."""
    nodes: dict[str, Any] = {}
    dropped: list[str] = []
    for node_id, spec in data.items():
        inputs: dict[str, Any] = {}
        cls = registry.get(spec.get("class_type")) if registry is not None else None
        for name, value in (spec.get("inputs") or {}).items():
            if cls is not None and cls.input(name) is None:
                dropped.append(f"{node_id}.{name}")
                continue
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
                    and isinstance(value[1], int) and not isinstance(value[1], bool)):
                inputs[name] = {"node": str(value[0]), "output": value[1]}
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                inputs[name] = value["__value__"]
            else:
                inputs[name] = value
        node: dict[str, Any] = {"type": spec.get("class_type"), "inputs": inputs}
        title = (spec.get("_meta") or {}).get("title")
        if title and title != spec.get("class_type"):
            node["title"] = title
        nodes[str(node_id)] = node
    meta: dict[str, Any] = {"imported_from": "comfyui-api"}
    if dropped:
        meta["dropped_inputs"] = dropped
    return {"format": FORMAT, "version": VERSION, "nodes": nodes, "meta": meta}


def _ui_links(data: dict[str, Any]) -> dict[int, tuple[int, int, int, int]]:
    """link id -> (origin node, origin slot, target node, target slot)."""
    out: dict[int, tuple[int, int, int, int]] = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            out[link[0]] = (link[1], link[2], link[3], link[4])
        elif isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
    return out


def from_comfy_ui(data: dict[str, Any], registry: Any) -> dict[str, Any]:
    if registry is None:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, "a ComfyUI UI-format workflow needs the node registry")])
    links = _ui_links(data)
    by_id = {n.get("id"): n for n in data.get("nodes") or [] if isinstance(n, dict)}

    def source(link_id: int) -> tuple[int, int] | None:
        """Follow a link back through Reroute nodes to a real output."""
        seen = set()
        while link_id in links and link_id not in seen:
            seen.add(link_id)
            origin, slot, _, _ = links[link_id]
            node = by_id.get(origin)
            if node is None or node.get("type") != "Reroute":
                return origin, slot
            ins = node.get("inputs") or []
            if not ins or ins[0].get("link") is None:
                return None
            link_id = ins[0]["link"]
        return None

    errors: list[ChiselError] = []
    nodes: dict[str, Any] = {}
    layout_nodes: dict[str, Any] = {}
    for node in data.get("nodes") or []:
        type_name = node.get("type")
        if type_name in UI_SKIP_TYPES or node.get("mode") in (UI_MODE_MUTED, UI_MODE_BYPASSED):
            continue
        nid = str(node.get("id"))
        cls = registry.get(type_name)
        inputs: dict[str, Any] = {}
        linked: set[str] = set()
        for inp in node.get("inputs") or []:
            link_id = inp.get("link")
            if link_id is None:
                continue
            src = source(link_id)
            if src is None or by_id.get(src[0], {}).get("type") in UI_SKIP_TYPES:
                continue  # e.g. a PrimitiveNode: its value is in this node's widgets_values
            inputs[inp["name"]] = {"node": str(src[0]), "output": src[1]}
            linked.add(inp["name"])
        values = node.get("widgets_values")
        if cls is None:
            errors.append(ChiselError("unknown_node_type", f"unknown node type {type_name!r}", node_id=nid,
                                      value=type_name))
        elif isinstance(values, dict):
            for name, value in values.items():
                if name not in linked and cls.input(name) is not None:
                    inputs[name] = value
        elif isinstance(values, list):
            i = 0
            for spec in cls.inputs:
                if not spec.is_widget or i >= len(values):
                    continue
                if spec.name not in linked:
                    inputs[spec.name] = values[i]
                i += 1
                if spec.seed and i < len(values) and values[i] in ("fixed", "randomize", "increment", "decrement"):
                    i += 1
        entry: dict[str, Any] = {"type": type_name, "inputs": inputs}
        if node.get("title"):
            entry["title"] = node["title"]
        nodes[nid] = entry
        lay: dict[str, Any] = {}
        pos = node.get("pos")
        if isinstance(pos, dict):
            pos = [pos.get("0", 0), pos.get("1", 0)]
        if isinstance(pos, (list, tuple)) and len(pos) >= 2:
            lay["pos"] = [pos[0], pos[1]]
        size = node.get("size")
        if isinstance(size, (list, tuple)) and len(size) >= 2:
            lay["size"] = [size[0], size[1]]
        if lay:
            layout_nodes[nid] = lay
    if errors:
        raise WorkflowError(errors)
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "nodes": nodes}
    layout: dict[str, Any] = {"nodes": layout_nodes}
    if data.get("groups"):
        layout["groups"] = data["groups"]
    out["layout"] = layout
    return out


def to_comfy_api(workflow: Workflow, registry: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for nid, spec in workflow.nodes.items():
        inputs: dict[str, Any] = {}
        for name, value in spec.inputs.items():
            if isinstance(value, Link):
                idx = value.output
                src = workflow.nodes.get(value.node)
                if isinstance(idx, str):
                    cls = registry.get(src.type) if (registry is not None and src is not None) else None
                    found = cls.output_index(idx) if cls is not None else None
                    idx = found if found is not None else (int(idx) if idx.isdigit() else 0)
                inputs[name] = [value.node, idx]
            elif isinstance(value, list):
                inputs[name] = {"__value__": value}
            else:
                inputs[name] = value
        out[nid] = {"class_type": spec.type, "inputs": inputs, "_meta": {"title": spec.title or spec.type}}
    return out

"""ComfyUI's API ("prompt") format: import into the native format, and export.

``{id: {"class_type": T, "inputs": {name: literal | [source id, output index]}, "_meta": {"title": ...}}}``;
a literal list travels as ``{"__value__": [...]}`` so it is not read as a link.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictStr

from .native import FORMAT, MAX_ID_LENGTH, VERSION, Link, NodeId, Workflow
from .schema_errors import validate_model

MAX_LINK_ID = 2**63  # a link's source id is a node id: an integer beyond this is a literal, not a link


class ApiMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    title: StrictStr | None = None


class ApiNode(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_type: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH)
    inputs: dict[str, Any] = Field(default_factory=dict)
    meta: ApiMeta | None = Field(default=None, alias="_meta")


class ApiPrompt(RootModel[dict[NodeId, ApiNode]]):
    pass


def _locate(loc: tuple) -> tuple[str | None, str | None]:
    node_id = str(loc[0]) if loc else None
    input_name = str(loc[2]) if len(loc) >= 3 and loc[1] == "inputs" else None
    return node_id, input_name


def looks_like_api(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, dict) and "class_type" in v
                                                          for v in data.values())


def _is_link(value: Any) -> bool:
    if not (isinstance(value, list) and len(value) == 2):
        return False
    src, idx = value
    src_ok = isinstance(src, str) or (isinstance(src, int) and not isinstance(src, bool) and 0 <= src < MAX_LINK_ID)
    return src_ok and isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < MAX_LINK_ID


def _value(value: Any) -> Any:
    if _is_link(value):
        return {"node": str(value[0]), "output": value[1]}
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def from_comfy_api(data: Any, registry: Any = None, source: str | None = None) -> dict[str, Any]:
    """Native workflow data. With a registry, inputs a known node does not have are dropped (as ComfyUI ignores
    them, so files from newer ComfyUI versions still run) and listed in ``meta.dropped_inputs``."""
    prompt = validate_model(ApiPrompt, data, source, _locate).root
    nodes: dict[str, Any] = {}
    dropped: list[str] = []
    for node_id, spec in prompt.items():
        cls = registry.get(spec.class_type) if registry is not None else None
        inputs: dict[str, Any] = {}
        for name, value in spec.inputs.items():
            if cls is not None and cls.input(name) is None:
                dropped.append(f"{node_id}.{name}")
                continue
            inputs[name] = _value(value)
        node: dict[str, Any] = {"type": spec.class_type, "inputs": inputs}
        title = spec.meta.title if spec.meta is not None else None
        if title and title != spec.class_type:
            node["title"] = title
        nodes[node_id] = node
    meta: dict[str, Any] = {"imported_from": "comfyui-api"}
    if dropped:
        meta["dropped_inputs"] = dropped
    return {"format": FORMAT, "version": VERSION, "nodes": nodes, "meta": meta}


def output_slot(workflow: Workflow, link: Link, registry: Any = None) -> int:
    """The index of a link's output (ComfyUI links by index); 0 where it cannot be known."""
    if isinstance(link.output, int):
        return link.output
    src = workflow.nodes.get(link.node)
    cls = registry.get(src.type) if (registry is not None and src is not None) else None
    if cls is not None:
        for i, out in enumerate(cls.outputs):
            if out.name == link.output:
                return i
    text = link.output
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0


def to_comfy_api(workflow: Workflow, registry: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for nid, spec in workflow.nodes.items():
        inputs: dict[str, Any] = {}
        for name, value in spec.inputs.items():
            if isinstance(value, Link):
                inputs[name] = [value.node, output_slot(workflow, value, registry)]
            elif isinstance(value, list):
                inputs[name] = {"__value__": value}
            else:
                inputs[name] = value
        out[nid] = {"class_type": spec.type, "inputs": inputs, "_meta": {"title": spec.title or spec.type}}
    return out

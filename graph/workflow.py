"""The native workflow format (a versioned JSON DAG) and loading it from files.

    {
      "format": "chisel-workflow", "version": 1,
      "nodes": {
        "4": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo.safetensors"}},
        "3": {"type": "KSampler", "inputs": {"model": {"node": "4", "output": "MODEL"}, "seed": 42}}
      },
      "layout": {"nodes": {"4": {"pos": [10, 20]}}}
    }

An input is a literal or a link ``{"node": id, "output": name-or-index}``. Editor layout lives apart in the
optional ``layout`` section so a headless file stays short. Unknown top-level keys are errors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from .errors import INVALID_JSON, INVALID_WORKFLOW, ChiselError, WorkflowError

FORMAT = "chisel-workflow"
VERSION = 1


class Link(BaseModel):
    """A link to another node's output, by output name (or index)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    node: str
    output: Union[StrictStr, StrictInt] = 0


Literal_ = Union[StrictBool, StrictInt, StrictFloat, StrictStr, None, list, dict]
InputValue = Annotated[Union[Link, Literal_], Field(union_mode="left_to_right")]


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1)
    inputs: dict[str, InputValue] = Field(default_factory=dict)
    title: str | None = None


class NodeLayout(BaseModel):
    model_config = ConfigDict(extra="allow")
    pos: tuple[float, float] | None = None
    size: tuple[float, float] | None = None
    collapsed: bool | None = None
    color: str | None = None


class Layout(BaseModel):
    """Editor-only data: node positions and sizes, groups, notes, the view."""

    model_config = ConfigDict(extra="allow")
    nodes: dict[str, NodeLayout] = Field(default_factory=dict)
    groups: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[dict[str, Any]] = Field(default_factory=list)


class Workflow(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Chisel workflow")
    format: Literal["chisel-workflow"] = FORMAT
    version: Literal[1] = VERSION
    nodes: dict[str, NodeSpec]
    outputs: list[str] | None = Field(
        default=None, description="Node ids whose results are wanted; default: every output node")
    meta: dict[str, Any] | None = None
    layout: Layout | None = None

    def to_dict(self, layout: bool = True) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        if not layout:
            data.pop("layout", None)
        return data


def json_schema() -> dict[str, Any]:
    schema = Workflow.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://chisel.invalid/schema/workflow-v1.json"
    return schema


def is_link(value: Any) -> bool:
    return isinstance(value, Link)


def parse_workflow(data: Any, registry: Any = None, source: str | None = None) -> Workflow:
    """A workflow from parsed JSON: native, or ComfyUI's API or UI format (converted; needs the registry for UI)."""
    if isinstance(data, Workflow):
        return data
    from .comfy_format import detect_format, from_comfy_api, from_comfy_ui

    kind = detect_format(data)
    if kind == "comfy_api":
        data = from_comfy_api(data, registry)
    elif kind == "comfy_ui":
        data = from_comfy_ui(data, registry)
    elif kind != "native":
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, _where(source) + "not a workflow: expected an object with "
                                         "'nodes' (Chisel), or ComfyUI's API or UI format", value=type(data).__name__)])
    try:
        return Workflow.model_validate(data)
    except PydanticValidationError as exc:
        raise WorkflowError([_pydantic_error(e, source) for e in exc.errors()]) from None


def _pydantic_error(err: dict, source: str | None) -> ChiselError:
    loc = [str(p) for p in err.get("loc", ())]
    node_id = loc[1] if len(loc) >= 2 and loc[0] == "nodes" else None
    input_name = loc[3] if len(loc) >= 4 and loc[2] == "inputs" else None
    path = ".".join(loc)
    message = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}" + (" at the top level" if len(loc) == 1 else f" at {path}")
    else:
        message = f"{path}: {message}"
    return ChiselError(INVALID_WORKFLOW, _where(source) + message, node_id=node_id, input=input_name,
                       value=err.get("input") if not isinstance(err.get("input"), dict) else None)


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def loads(text: str, registry: Any = None, source: str | None = None) -> Workflow:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = source or "<string>"
        raise WorkflowError([ChiselError(
            INVALID_JSON, f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
            details={"file": where, "line": exc.lineno, "column": exc.colno})]) from None
    return parse_workflow(data, registry, source)


def load_file(path: str | Path, registry: Any = None) -> Workflow:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, f"{path}: no such file", value=str(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, f"{path}: cannot read: {exc}", value=str(path))]) from None
    return loads(text, registry, str(path))

"""The native workflow format (a versioned JSON DAG) as typed structures.

    {
      "format": "chisel-workflow", "version": 1,
      "nodes": {
        "4": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo.safetensors"}},
        "3": {"type": "KSampler", "inputs": {"model": {"node": "4", "output": "MODEL"}, "seed": 42}}
      },
      "layout": {"nodes": {"4": {"pos": [10, 20]}}}
    }

An input is a literal or a link ``{"node": id, "output": name-or-index}``. Editor layout lives apart in the
optional ``layout`` section so a headless file stays short. Unknown top-level keys are errors. Reading files and
other formats: :mod:`graph.workflow`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, StringConstraints

FORMAT = "chisel-workflow"
VERSION = 1
MAX_ID_LENGTH = 256

NodeId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
InputName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class Link(BaseModel):
    """A link to another node's output, by output name (or index)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    node: NodeId
    output: Union[StrictStr, StrictInt] = 0


Literal_ = Union[StrictBool, StrictInt, StrictFloat, StrictStr, None, list, dict]
InputValue = Annotated[Union[Link, Literal_], Field(union_mode="left_to_right")]


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH)
    inputs: dict[InputName, InputValue] = Field(default_factory=dict)
    title: StrictStr | None = None


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
    nodes: dict[NodeId, NodeSpec]
    outputs: list[NodeId] | None = Field(
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


def natural_key(node_id: str) -> tuple:
    """Order node ids as people number them: "2" < "10" < "a". Never converts to int (no size limit applies)."""
    if node_id.isascii() and node_id.isdigit():
        digits = node_id.lstrip("0")
        return (0, len(digits), digits, node_id)
    return (1, 0, node_id, node_id)

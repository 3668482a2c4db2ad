"""ComfyUI's UI ("workflow") format as typed structures: what a file may hold, checked once on the way in.

Versions 0.4 and 1: ``nodes`` is a list; ``links`` holds arrays ``[id, origin, origin slot, target, target slot,
type]`` (0.4) or objects with those keys (1); ``definitions.subgraphs`` holds subgraph definitions (whose inner links
start at node -10, the subgraph's inputs, and end at node -20, its outputs); ``extra.groupNodes`` holds legacy group
node definitions. Unknown keys are kept out of the way, not refused: files come from many frontend versions.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from .native import MAX_ID_LENGTH

SUBGRAPH_INPUT_NODE = -10
SUBGRAPH_OUTPUT_NODE = -20
MODE_MUTED, MODE_BYPASSED = 2, 4

UiId = Union[StrictInt, Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]]
Name = Annotated[str, Field(max_length=MAX_ID_LENGTH)]


def _type_name(value: Any) -> str:
    """A socket type as text (files hold a string; a few frontends wrote lists or numbers)."""
    if isinstance(value, str):
        return value[:MAX_ID_LENGTH]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)[:MAX_ID_LENGTH]
    return "*"


TypeName = Annotated[str, BeforeValidator(_type_name)]


def _link_list(value: Any) -> Any:
    return [] if value is None else value


def _point(value: Any) -> Any:
    """pos/size as [x, y] of finite numbers, from a list or a {"0": x, "1": y} object; otherwise None."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        x, y = value[0], value[1]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e15 and math.isfinite(v)
               for v in (x, y)):
            return [x, y]
    return None


Point = Annotated[Any, BeforeValidator(_point)]


class UiInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Name = ""
    type: TypeName = "*"
    link: StrictInt | None = None
    widget: dict[str, Any] | None = None

    @property
    def widget_name(self) -> str | None:
        name = (self.widget or {}).get("name")
        return name if isinstance(name, str) else None


class UiOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Name = ""
    type: TypeName = "*"
    links: Annotated[list[StrictInt], BeforeValidator(_link_list)] = Field(default_factory=list)


class UiNode(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: UiId = 0
    type: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    mode: StrictInt = 0
    title: StrictStr | None = None
    pos: Point = None
    size: Point = None
    inputs: Annotated[list[UiInput], BeforeValidator(_link_list)] = Field(default_factory=list)
    outputs: Annotated[list[UiOutput], BeforeValidator(_link_list)] = Field(default_factory=list)
    widgets_values: list[Any] | dict[str, Any] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    flags: dict[str, Any] = Field(default_factory=dict)
    color: StrictStr | None = None
    bgcolor: StrictStr | None = None
    index: StrictInt | None = None  # inner nodes of a legacy group node are numbered by index


def _link_object(value: Any) -> Any:
    if isinstance(value, list):
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
        if len(value) < 5:
            raise ValueError("a link array has 6 entries: [id, origin, origin slot, target, target slot, type]")
        return dict(zip(keys, value))
    return value


class UiLink(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: StrictInt
    origin_id: UiId
    origin_slot: StrictInt
    target_id: UiId
    target_slot: StrictInt
    type: TypeName = "*"


Link = Annotated[UiLink, BeforeValidator(_link_object)]


class SubgraphSlot(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Name = ""
    type: TypeName = "*"
    linkIds: Annotated[list[StrictInt], BeforeValidator(_link_list)] = Field(default_factory=list)


class Subgraph(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    name: StrictStr = ""
    nodes: list[UiNode] = Field(default_factory=list)
    links: Annotated[list[Link], BeforeValidator(_link_list)] = Field(default_factory=list)
    inputs: list[SubgraphSlot] = Field(default_factory=list)
    outputs: list[SubgraphSlot] = Field(default_factory=list)
    definitions: "Definitions | None" = None


class Definitions(BaseModel):
    model_config = ConfigDict(extra="allow")
    subgraphs: list[Subgraph] = Field(default_factory=list)


def _group_link(value: Any) -> Any:
    if isinstance(value, list) and len(value) >= 4:
        return {"origin": value[0], "origin_slot": value[1], "target": value[2], "target_slot": value[3],
                "type": value[5] if len(value) > 5 else "*"}
    return value


class GroupLink(BaseModel):
    origin: StrictInt
    origin_slot: StrictInt
    target: StrictInt
    target_slot: StrictInt
    type: TypeName = "*"


class GroupNodeDef(BaseModel):
    """A legacy group node (``extra.groupNodes[name]``): inner nodes by index, their links, outputs used outside."""

    model_config = ConfigDict(extra="allow")
    nodes: list[UiNode] = Field(default_factory=list)
    links: list[Annotated[GroupLink, BeforeValidator(_group_link)]] = Field(default_factory=list)
    external: list[list[Any]] = Field(default_factory=list)


class UiExtra(BaseModel):
    model_config = ConfigDict(extra="allow")
    groupNodes: dict[str, GroupNodeDef] = Field(default_factory=dict)


class UiWorkflow(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: Any = None
    nodes: list[UiNode]
    links: Annotated[list[Link], BeforeValidator(_link_list)] = Field(default_factory=list)
    groups: Annotated[list[dict[str, Any]], BeforeValidator(_link_list)] = Field(default_factory=list)
    extra: Annotated[UiExtra, BeforeValidator(lambda v: {} if v is None else v)] = Field(default_factory=UiExtra)
    definitions: Definitions | None = None


Subgraph.model_rebuild()


def looks_like_ui(data: Any) -> bool:
    """A list of nodes beside any of the keys the frontend writes (as the canvas tells the formats apart)."""
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list)
            and any(key in data for key in ("links", "last_node_id", "version")))

"""Flatten a ComfyUI UI-format graph: expand subgraphs and legacy group nodes, then follow each input back through
reroutes, bypassed nodes and subgraph boundaries to the node that really produces its value.

Expanded nodes are named as ComfyUI names them in a prompt: ``<instance id>:<inner id>`` (nested: ``5:3:2``).
What the frontend does and this module follows:
- mode 2 (muted), Note, MarkdownNote and PrimitiveNode produce nothing (a PrimitiveNode's value already sits in
  the widgets of the nodes it feeds); an input fed by one gets no link;
- mode 4 (bypassed) passes through: a link from its output slot ``k`` continues from its input slot ``k`` if that
  input has the type of the input being fed (for an input of type "*": the link's type), else from its first input
  of that type, else from nothing;
- a Reroute passes its only input on;
- a subgraph instance's output ``k`` is whatever feeds the subgraph's output node (-20) at slot ``k``; an inner
  link from the input node (-10) slot ``k`` continues from the instance's input ``k``, or, where that input is an
  unlinked promoted widget, takes the instance's widget value; where the instance lists ``proxyWidgets`` (inner node
  id, widget name), its widget values set those inner widgets;
- with ``keep_modes`` (files written by Chisel's exporter), a top-level node in mode 2 or 4 is kept as a node of the
  native graph (its mode goes to the layout, see :mod:`graph.comfy_ui`): a muted one is followed like any node, a
  bypassed one is still passed through; a muted subgraph instance is expanded with every node inside kept muted
  (as the canvas mutes a subgraph node);
- a legacy group node exposes, in its inner nodes' order, their inputs that no inner link feeds, their widgets
  (its ``widgets_values`` replace theirs in that order) and their outputs that no inner link uses or that
  ``external`` lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .comfy_ui_model import (MODE_BYPASSED, MODE_MUTED, SUBGRAPH_OUTPUT_NODE, GroupNodeDef, Subgraph, UiLink,
                             UiNode, UiWorkflow)
from .comfy_ui_widgets import WIDGET, widget_slots
from .errors import INVALID_WORKFLOW, ChiselError, WorkflowError

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
GROUP_PREFIXES = ("workflow>", "workflow/")
MAX_NODES = 100_000  # after expansion: nested subgraphs multiply

NODE, REROUTE, PASS, ALIAS, BYPASS, DROPPED = "node", "reroute", "pass", "alias", "bypass", "dropped"
MUTED = "muted"  # a muted node kept in the native graph (keep_modes): links still lead to it

NO_VALUE: Any = object()


@dataclass(frozen=True)
class Source:
    """An output slot of a node (by its flattened id), or a literal value; ``type``: the link's type."""

    node: str | None = None
    slot: int = 0
    value: Any = NO_VALUE
    type: str = "*"


@dataclass
class FlatInput:
    name: str
    type: str
    widget: str | None
    source: Source | None


@dataclass
class FlatNode:
    id: str
    ui: UiNode
    kind: str
    inputs: list[FlatInput]
    top_level: bool
    outputs: dict[int, Source] = field(default_factory=dict)  # an expanded instance's output slots


class FlatGraph:
    def __init__(self, doc: UiWorkflow, registry: Any, keep_modes: bool = False):
        self.registry = registry
        self.keep_modes = keep_modes
        self.subgraphs: dict[str, Subgraph] = {}
        self._collect(doc.definitions)
        self.group_defs: dict[str, GroupNodeDef] = doc.extra.groupNodes
        self.nodes: dict[str, FlatNode] = {}
        self.widget_values: dict[str, dict[str, Any]] = {}  # per inner node: values an instance's proxy widgets set
        self.errors: list[ChiselError] = []
        self._scope(doc.nodes, doc.links, "", ())
        if self.errors:
            raise WorkflowError(self.errors)

    def _collect(self, definitions: Any) -> None:
        stack = [definitions]
        while stack:
            defs = stack.pop()
            for sg in defs.subgraphs if defs is not None else ():
                self.subgraphs.setdefault(sg.id, sg)
                stack.append(sg.definitions)

    # -- expansion ----------------------------------------------------------------------------------------------------
    def _scope(self, nodes: list[UiNode], links: list[UiLink], prefix: str, stack: tuple[str, ...],
               muted: bool = False) -> None:
        """Flatten one graph level; ``muted``: inside a kept muted subgraph instance (its nodes are kept muted)."""
        table = {link.id: link for link in links}
        seen: set[str] = set()
        for node in nodes:
            full = prefix + str(node.id)
            if full in seen:
                self._error(f"two nodes have the id {node.id!r}", full)
                continue
            seen.add(full)
            inputs = [FlatInput(i.name, i.type, i.widget_name, self._source(table.get(i.link), prefix))
                      for i in node.inputs]
            kind = self._kind(node, top_level=not prefix, muted=muted)
            flat = FlatNode(full, node, kind, inputs, top_level=not prefix)
            if not self._add(flat):
                return
            if kind == ALIAS and node.type in self.subgraphs:
                self._expand_subgraph(flat, self.subgraphs[node.type], stack,
                                      muted or (self.keep_modes and not prefix and node.mode == MODE_MUTED))
            elif kind == ALIAS:
                self._expand_group(flat, self.group_defs[_group_name(node.type)])

    def _add(self, flat: FlatNode) -> bool:
        if len(self.nodes) >= MAX_NODES:
            if not self.errors:
                self._error(f"the workflow expands to more than {MAX_NODES} nodes")
            return False
        self.nodes[flat.id] = flat
        return True

    def kept(self, node: FlatNode) -> bool:
        """A bypassed or muted node that stays in the native graph (keep_modes)."""
        return node.kind == MUTED or (node.kind == BYPASS and self.keep_modes and node.top_level
                                      and self.registry.get(node.ui.type) is not None)

    def _kind(self, node: UiNode, top_level: bool = False, muted: bool = False) -> str:
        if node.type in NOTE_TYPES or node.type == "PrimitiveNode":
            return DROPPED
        kept_mute = muted or (self.keep_modes and top_level and node.mode == MODE_MUTED)
        if kept_mute and self.registry.get(node.type) is not None:
            return MUTED
        if kept_mute and node.type in self.subgraphs:
            return ALIAS  # expanded, its inside kept muted
        if node.type == "Reroute" and (muted or node.mode != MODE_MUTED):
            return REROUTE
        if node.mode == MODE_MUTED:
            return DROPPED
        if node.mode == MODE_BYPASSED and not muted:
            return BYPASS
        if node.type in self.subgraphs or _group_name(node.type) in self.group_defs:
            return ALIAS
        return NODE

    @staticmethod
    def _source(link: UiLink | None, prefix: str) -> Source | None:
        return None if link is None else Source(prefix + str(link.origin_id), link.origin_slot, type=link.type)

    def _expand_subgraph(self, instance: FlatNode, sg: Subgraph, stack: tuple[str, ...], muted: bool = False) -> None:
        if sg.id in stack:
            names = " -> ".join(self.subgraphs[s].name or s for s in (*stack, sg.id))
            self._error(f"subgraph {sg.name or sg.id!r} contains itself ({names})", instance.id)
            return
        inner = instance.id + ":"
        promoted = instance.ui.widgets_values if isinstance(instance.ui.widgets_values, list) else []
        if self._proxy_widgets(instance, inner, promoted):
            promoted = []
        passed: list[FlatInput] = []
        w = 0
        for k, slot in enumerate(sg.inputs):
            given = instance.inputs[k] if k < len(instance.inputs) else None
            src = given.source if given is not None else None
            if given is not None and given.widget is not None:
                if src is None and w < len(promoted):
                    src = Source(value=promoted[w])
                w += 1
            passed.append(FlatInput(slot.name, slot.type, None, src))
        boundary = FlatNode(inner + "-10", instance.ui, PASS, passed, top_level=False)
        if not self._add(boundary):
            return
        for link in sg.links:
            if link.target_id == SUBGRAPH_OUTPUT_NODE:
                instance.outputs[link.target_slot] = Source(inner + str(link.origin_id), link.origin_slot)
        self._scope(sg.nodes, sg.links, inner, (*stack, sg.id), muted)

    def _proxy_widgets(self, instance: FlatNode, inner: str, values: list[Any]) -> bool:
        """Newer frontends promote inner widgets by reference (``properties.proxyWidgets``: [inner node id, widget
        name] pairs); the instance's ``widgets_values`` then hold their values in that order."""
        proxies = instance.ui.properties.get("proxyWidgets")
        if not isinstance(proxies, list) or not proxies:
            return False
        for pair, value in zip(proxies, values):
            if (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))
                    and not isinstance(pair[0], bool) and isinstance(pair[1], str) and value is not None):
                self.widget_values.setdefault(inner + str(pair[0]), {})[pair[1]] = value
        return True

    def _expand_group(self, instance: FlatNode, gdef: GroupNodeDef) -> None:
        group = _GroupExpansion(instance, gdef, self.registry)
        for position, node in enumerate(gdef.nodes):
            if not self._add(group.inner_node(position, node, self._kind)):
                return

    def _error(self, message: str, node_id: str | None = None) -> None:
        self.errors.append(ChiselError(INVALID_WORKFLOW, message, node_id=node_id))

    # -- following links ---------------------------------------------------------------------------------------------
    def resolve(self, source: Source | None, want_type: str, through_kept: bool = True) -> Source | None:
        """The real node output (or literal) that feeds an input of ``want_type`` linked to ``source`` (an input of
        type "*" wants the link's type). ``through_kept=False`` stops at a kept bypassed node (the link drawn)."""
        if want_type == "*" and source is not None:
            want_type = source.type
        steps = 0
        while source is not None and source.node is not None:
            steps += 1
            node = self.nodes.get(source.node)
            if node is None or steps > len(self.nodes) + 1:
                return None
            if node.kind in (NODE, MUTED) or (not through_kept and self.kept(node)):
                return source
            if node.kind == REROUTE:
                source = node.inputs[0].source if node.inputs else None
            elif node.kind == PASS:
                source = node.inputs[source.slot].source if 0 <= source.slot < len(node.inputs) else None
            elif node.kind == ALIAS:
                source = node.outputs.get(source.slot)
            elif node.kind == BYPASS:
                source = _bypassed(node, source.slot, want_type)
            else:
                return None
        return source


def _bypassed(node: FlatNode, slot: int, want_type: str) -> Source | None:
    order = ([slot] if 0 <= slot < len(node.inputs) else []) + list(range(len(node.inputs)))
    for i in order:
        if node.inputs[i].type == want_type:
            return node.inputs[i].source
    return None


def _group_name(type_name: str) -> str | None:
    for prefix in GROUP_PREFIXES:
        if type_name.startswith(prefix):
            return type_name[len(prefix):]
    return None


class _GroupExpansion:
    """A legacy group node's inner nodes, fed from the group's inputs and widgets in the frontend's order."""

    def __init__(self, instance: FlatNode, gdef: GroupNodeDef, registry: Any):
        self.instance, self.registry = instance, registry
        self.prefix = instance.id + ":"
        self.internal = {(link.target, link.target_slot): link for link in gdef.links}
        self.used = {(link.origin, link.origin_slot) for link in gdef.links}
        self.external = {(e[0], e[1]) for e in gdef.external
                         if len(e) >= 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in e[:2])}
        self.sockets = iter([i for i in instance.inputs if i.widget is None])
        self.by_widget = {i.widget: i for i in instance.inputs if i.widget is not None}
        values = instance.ui.widgets_values
        self.values = values if isinstance(values, list) else None
        self.value_pos = 0
        self.out_slot = 0
        self.names: set[str] = set()

    def inner_node(self, position: int, node: UiNode, kind_of: Any) -> FlatNode:
        idx = node.index if node.index is not None else position
        full = self.prefix + str(idx)
        inputs, linked_widgets = self._inputs(idx, node)
        cls = self.registry.get(node.type)
        widgets = node.widgets_values
        if cls is not None:
            widgets = self._widgets(node, cls, inputs, linked_widgets)
        self._outputs(full, idx, len(cls.outputs) if cls is not None else len(node.outputs))
        ui = node.model_copy(update={"id": idx, "widgets_values": widgets})
        return FlatNode(full, ui, kind_of(ui), inputs, top_level=False)

    def _inputs(self, idx: int, node: UiNode) -> tuple[list[FlatInput], set[str]]:
        """Inner links feed what they target; other sockets take the group's inputs in order."""
        inputs, linked_widgets = [], set()
        for s, inp in enumerate(node.inputs):
            link = self.internal.get((idx, s))
            src = None
            if link is not None:
                src = Source(self.prefix + str(link.origin), link.origin_slot, type=link.type)
                if inp.widget_name:
                    linked_widgets.add(inp.widget_name)
            elif inp.widget_name is None:
                outside = next(self.sockets, None)
                src = outside.source if outside is not None else None
            inputs.append(FlatInput(inp.name, inp.type, inp.widget_name, src))
        return inputs, linked_widgets

    def _widgets(self, node: UiNode, cls: Any, inputs: list[FlatInput], linked_widgets: set[str]) -> list[Any]:
        """The inner node's widget values, replaced in order by the group's; a group widget converted to an input
        and linked outside feeds the inner input (names: the input's, or "<title> <input>" once taken)."""
        slots = widget_slots(cls)
        own = list(node.widgets_values) if isinstance(node.widgets_values, list) else []
        own += [None] * (len(slots) - len(own))
        for i, slot in enumerate(slots):
            if slot.name in linked_widgets:
                continue
            if slot.kind == WIDGET:
                exposed = slot.name if slot.name not in self.names else f"{node.title or node.type} {slot.name}"
                self.names.add(exposed)
                outside = self.by_widget.get(exposed)
                if outside is not None and outside.source is not None:
                    inputs.append(FlatInput(slot.name, outside.type, slot.name, outside.source))
            if self.values is not None and self.value_pos < len(self.values):
                own[i] = self.values[self.value_pos]
            self.value_pos += 1
        return own

    def _outputs(self, full: str, idx: int, count: int) -> None:
        """The group's outputs: inner outputs no inner link uses, or that ``external`` lists, in order."""
        for s in range(count):
            if (idx, s) not in self.used or (idx, s) in self.external:
                self.instance.outputs[self.out_slot] = Source(full, s)
                self.out_slot += 1

"""Validation and planning: check a workflow against the node registry, report every problem at once, and
order the nodes the requested outputs need.

The result, a :class:`Plan`, holds each planned node with its literal inputs coerced and defaults filled in,
its links resolved to (source node, output index), and its files resolved to paths. Validation takes time linear
in the workflow's size and reports a bounded amount per problem (one error per cycle, values cut short).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from . import errors as E
from .errors import ChiselError, brief
from .native import Link, NodeSpec, Workflow, natural_key
from .node import Input, Node
from .paths import FileNotFoundInFolders
from .types import BOOLEAN, COMBO, FLOAT, INT, MAX_SEED, STRING, types_compatible

RANDOM_SEED_MAX = 2**53 - 1  # seeds picked by the engine stay exact in JSON and JavaScript
MAX_INT = 2**64  # integer literals beyond ±this are refused whatever the input's range (no node needs them)
CYCLE_MEMBERS_SHOWN = 20


@dataclass
class PlannedNode:
    id: str
    cls: type[Node]
    literals: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Plan:
    order: list[str]  # planned node ids in dependency order
    nodes: dict[str, PlannedNode]
    outputs: list[str]  # requested node ids
    resolved: dict[str, dict[str, Any]]  # values the engine chose (random seeds), per node


# -- literals ------------------------------------------------------------------------------------------------------------
Coerced = tuple[Any, "str | None", "str | None"]  # (value, error kind, message)


def _as_int(value: Any) -> Coerced:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value, E.INVALID_TYPE, f"expects an integer, got {type(value).__name__}"
    if isinstance(value, float):
        if not value.is_integer():
            return value, E.INVALID_TYPE, f"expects an integer, got {value}"
        value = int(value)
    if abs(value) > MAX_INT:
        return value, E.VALUE_OUT_OF_RANGE, f"{brief(value)} is out of range"
    return value, None, None


def _as_float(value: Any) -> Coerced:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value, E.INVALID_TYPE, f"expects a number, got {type(value).__name__}"
    try:
        value = float(value)
    except OverflowError:
        return value, E.VALUE_OUT_OF_RANGE, f"{brief(value)} is too large for a number"
    if not math.isfinite(value):
        return value, E.INVALID_TYPE, "expects a finite number"
    return value, None, None


def _expecting(python_type: type, wanted: str):
    def check(value: Any) -> Coerced:
        if isinstance(value, python_type):
            return value, None, None
        return value, E.INVALID_TYPE, f"expects {wanted}, got {type(value).__name__}"
    return check


COERCE = {INT: _as_int, FLOAT: _as_float, STRING: _expecting(str, "a string"),
          BOOLEAN: _expecting(bool, "true or false"), COMBO: _expecting(str, "one of the choices (a string)")}


def _coerce(t: str, value: Any) -> Coerced:
    """(value, error kind, message) for a literal given to an input of widget type ``t``."""
    coerce = COERCE.get(t)
    return coerce(value) if coerce is not None else (value, None, None)


def _check_literal(spec: Input, value: Any, paths: Any) -> tuple[Any, ChiselError | None]:
    """Coerce a literal to the input's type; return (value, error)."""
    def err(kind: str, message: str) -> tuple[Any, ChiselError]:
        return value, ChiselError(kind, message, input=spec.name, value=value)

    t = spec.type
    if t not in COERCE and not spec.choices:
        return err(E.INVALID_TYPE, f"expects a link from a {t} output, not a literal value")
    value, kind, message = _coerce(t, value)
    if kind is not None:
        return err(kind, message)
    if t in (INT, FLOAT):
        if spec.min is not None and value < spec.min:
            return err(E.VALUE_OUT_OF_RANGE, f"{brief(value)} is below the minimum {spec.min}")
        if spec.max is not None and value > spec.max:
            return err(E.VALUE_OUT_OF_RANGE, f"{brief(value)} is above the maximum {spec.max}")
    if spec.files is None and spec.choices is not None:
        choices = spec.resolve_choices(paths)
        if choices is not None and value not in choices:
            shown = ", ".join(map(str, choices[:12])) + (" ..." if len(choices) > 12 else "")
            return err(E.INVALID_CHOICE, f"{brief(value)!r} is not one of: {shown}")
    return value, None


def output_index(cls: type[Node], ref: Any) -> int | None:
    """Index of an output given by name or index (a string of digits counts as an index); None if there is none."""
    n = len(cls.outputs)
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref if 0 <= ref < n else None
    if not isinstance(ref, str):
        return None
    for i, out in enumerate(cls.outputs):
        if out.name == ref:
            return i
    if ref.isascii() and ref.isdigit() and len(ref) < 10 and int(ref) < n:
        return int(ref)
    return None


# -- one node --------------------------------------------------------------------------------------------------------------
class _Checker:
    """Checks each node's inputs, collecting errors per node and the dependency graph."""

    def __init__(self, workflow: Workflow, registry: Any, paths: Any, rng: random.Random):
        self.workflow, self.registry, self.paths, self.rng = workflow, registry, paths, rng
        self.graph = nx.DiGraph()
        self.node_errors: dict[str, list[ChiselError]] = {}
        self.planned: dict[str, PlannedNode] = {}
        self.resolved: dict[str, dict[str, Any]] = {}

    def add(self, node_id: str, e: ChiselError, type_name: str | None = None) -> None:
        e.node_id, e.node_type = node_id, type_name
        self.node_errors.setdefault(node_id, []).append(e)

    def check_node(self, node_id: str, spec: NodeSpec) -> None:
        self.graph.add_node(node_id)
        cls = self.registry.get(spec.type)
        if cls is None:
            self.add(node_id, ChiselError(E.UNKNOWN_NODE_TYPE, f"unknown node type {spec.type!r}", value=spec.type))
            return
        pn = self.planned[node_id] = PlannedNode(node_id, cls)
        declared = {i.name for i in cls.inputs}
        for name in spec.inputs:
            if name not in declared:
                self.add(node_id, ChiselError(E.UNKNOWN_INPUT, f"{cls.type} has no input {name!r}; it has: "
                                              + ", ".join(i.name for i in cls.inputs), input=name), cls.type)
        for inp in cls.inputs:
            if inp.name in spec.inputs:
                self.check_input(pn, inp, spec.inputs[inp.name])
            elif inp.has_default:
                self.check_input(pn, inp, inp.default)
            elif not inp.optional:
                self.add(node_id, ChiselError(E.REQUIRED_INPUT_MISSING, f"required input {inp.name!r} ({inp.type}) "
                                              "is missing", input=inp.name), cls.type)

    def check_input(self, pn: PlannedNode, inp: Input, value: Any) -> None:
        if isinstance(value, Link):
            self.check_link(pn, inp, value)
        else:
            self.check_value(pn, inp, value)

    def check_link(self, pn: PlannedNode, inp: Input, link: Link) -> None:
        def fail(kind: str, message: str) -> None:
            self.add(pn.id, ChiselError(kind, message, input=inp.name, value=link.model_dump()), pn.cls.type)

        src = self.workflow.nodes.get(link.node)
        if src is None:
            return fail(E.LINK_TO_MISSING_NODE, f"links to node {link.node!r}, which does not exist")
        self.graph.add_edge(link.node, pn.id)
        src_cls = self.registry.get(src.type)
        if src_cls is None:
            return None  # reported on the source node
        idx = output_index(src_cls, link.output)
        if idx is None:
            return fail(E.LINK_TO_MISSING_OUTPUT, f"links to output {brief(link.output, 60)!r} of node {link.node} "
                        f"({src.type}), which has: " + ", ".join(o.name for o in src_cls.outputs))
        out = src_cls.outputs[idx]
        if not types_compatible(out.type, inp.type):
            return fail(E.TYPE_MISMATCH, f"expects {inp.type} but is linked to {src.type}.{out.name} ({out.type})")
        pn.links[inp.name] = (link.node, idx)
        return None

    def check_value(self, pn: PlannedNode, inp: Input, value: Any) -> None:
        if inp.seed and value == -1 and not isinstance(value, bool):
            value = self.rng.randint(0, RANDOM_SEED_MAX)
            self.resolved.setdefault(pn.id, {})[inp.name] = value
        value, e = _check_literal(inp, value, self.paths)
        if e is not None:
            return self.add(pn.id, e, pn.cls.type)
        if inp.files is not None:
            try:
                if self.paths is None:
                    raise FileNotFoundInFolders(inp.files, value, [], [])
                pn.files[inp.name] = self.paths.resolve(inp.files, value)
            except FileNotFoundInFolders as exc:
                return self.add(pn.id, ChiselError(E.FILE_NOT_FOUND, str(exc), input=inp.name, value=value, details={
                    "folder": exc.kind, "looked_in": [str(p) for p in exc.looked_in],
                    "available": exc.available[:E.MAX_ECHO_ITEMS]}), pn.cls.type)
        pn.literals[inp.name] = value
        return None


# -- the whole graph ---------------------------------------------------------------------------------------------------------
def _cycles(graph: nx.DiGraph, workflow: Workflow) -> tuple[list[ChiselError], set[str]]:
    """One error per cycle (a strongly connected part), naming at most a few of its members; and every member."""
    errors: list[ChiselError] = []
    cyclic: set[str] = set()
    for component in nx.strongly_connected_components(graph):
        first = next(iter(component))
        if len(component) == 1 and not graph.has_edge(first, first):
            continue
        cyclic |= component
        path = _cycle_path(graph, component, min(component, key=natural_key))
        shown = path[:CYCLE_MEMBERS_SHOWN]
        text = " -> ".join(shown + path[:1]) if len(path) <= CYCLE_MEMBERS_SHOWN else " -> ".join(shown) + " -> ..."
        size = f" ({len(component)} nodes in all)" if len(component) > len(shown) else ""
        errors.append(ChiselError(E.CYCLE, f"part of a cycle: {text}{size}", node_id=shown[0],
                                  node_type=workflow.nodes[shown[0]].type, value=shown,
                                  details={"size": len(component)}))
    return errors, cyclic


def _cycle_path(graph: nx.DiGraph, component: set[str], start: str) -> list[str]:
    """A cycle through a strongly connected part: follow successors inside it until one repeats (linear time)."""
    at: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in at:
        at[node] = len(path)
        path.append(node)
        node = next(s for s in graph.successors(node) if s in component)
    return path[at[node]:]


def _requested(workflow: Workflow, planned: dict[str, PlannedNode],
               outputs: list[str] | None) -> tuple[list[str], list[ChiselError]]:
    errors: list[ChiselError] = []
    wanted = outputs if outputs is not None else workflow.outputs
    if wanted is None:
        wanted = [nid for nid, pn in planned.items() if pn.cls.output_node]
    else:
        for nid in wanted:
            if nid not in workflow.nodes:
                errors.append(ChiselError(E.UNKNOWN_OUTPUT_NODE, f"requested output node {brief(nid, 60)!r} does "
                                          "not exist", node_id=brief(nid, 60), value=nid))
        wanted = [nid for nid in wanted if nid in workflow.nodes]
    if not wanted:
        errors.append(ChiselError(E.NO_OUTPUTS, "nothing to output: the workflow has no output node (e.g. "
                                  "SaveImage) and none was requested"))
    return wanted, errors


def _needed(graph: nx.DiGraph, wanted: list[str], cyclic: set[str]) -> set[str]:
    """The wanted nodes and everything upstream of them (stopping at cycles)."""
    needed = set(wanted)
    stack = [nid for nid in wanted if nid not in cyclic]
    while stack:
        for parent in graph.predecessors(stack.pop()):
            if parent not in needed:
                needed.add(parent)
                stack.append(parent)
    return needed


def validate(workflow: Workflow, registry: Any, paths: Any = None, outputs: list[str] | None = None,
             rng: random.Random | None = None) -> tuple[Plan | None, list[ChiselError]]:
    """Check everything; return (plan, errors). The plan is None when the requested outputs cannot run."""
    checker = _Checker(workflow, registry, paths, rng or random.SystemRandom())
    for node_id, spec in workflow.nodes.items():
        checker.check_node(node_id, spec)
    cycle_errors, cyclic = _cycles(checker.graph, workflow)
    wanted, errors = _requested(workflow, checker.planned, outputs)
    needed = _needed(checker.graph, wanted, cyclic)
    # Every problem in the needed part of the graph stops the run; report them in workflow order, cycles first.
    errors = cycle_errors + errors
    for nid in workflow.nodes:
        if nid in needed or nid in cyclic:
            errors.extend(checker.node_errors.get(nid, []))
    if errors:
        return None, errors
    order = [nid for nid in nx.lexicographical_topological_sort(checker.graph, key=natural_key) if nid in needed]
    return Plan(order=order, nodes={nid: checker.planned[nid] for nid in order}, outputs=wanted,
                resolved=checker.resolved), []


def all_errors(workflow: Workflow, registry: Any, paths: Any = None) -> list[ChiselError]:
    """Every problem in the workflow, including nodes that no output needs (for editors and `chisel validate`)."""
    _, out_errs = validate(workflow, registry, paths)
    ids = list(workflow.nodes)
    if not ids:
        return out_errs
    _, errs = validate(workflow, registry, paths, outputs=ids)
    return errs + [e for e in out_errs if e.kind in (E.NO_OUTPUTS, E.UNKNOWN_OUTPUT_NODE)]


__all__ = ["Plan", "PlannedNode", "validate", "all_errors", "output_index", "MAX_SEED"]

"""Validation and planning: check a workflow against the node registry, report every problem at once, and
order the nodes the requested outputs need.

The result, a :class:`Plan`, holds each planned node with its literal inputs coerced and defaults filled in,
its links resolved to (source node, output index), and its files resolved to paths.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from . import errors as E
from .errors import ChiselError
from .node import Input, Node
from .paths import FileNotFoundInFolders
from .types import BOOLEAN, COMBO, FLOAT, INT, MAX_SEED, STRING, types_compatible
from .workflow import Link, Workflow

RANDOM_SEED_MAX = 2**53 - 1  # seeds picked by the engine stay exact in JSON and JavaScript


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


def _check_literal(spec: Input, value: Any, paths: Any) -> tuple[Any, ChiselError | None]:
    """Coerce a literal to the input's type; return (value, error)."""
    def err(kind: str, message: str) -> tuple[Any, ChiselError]:
        return value, ChiselError(kind, message, input=spec.name, value=value)

    t = spec.type
    if t == INT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return err(E.INVALID_TYPE, f"expects an integer, got {type(value).__name__}")
        if isinstance(value, float):
            if not value.is_integer():
                return err(E.INVALID_TYPE, f"expects an integer, got {value}")
            value = int(value)
    elif t == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return err(E.INVALID_TYPE, f"expects a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            return err(E.INVALID_TYPE, "expects a finite number")
    elif t == STRING:
        if not isinstance(value, str):
            return err(E.INVALID_TYPE, f"expects a string, got {type(value).__name__}")
    elif t == BOOLEAN:
        if not isinstance(value, bool):
            return err(E.INVALID_TYPE, f"expects true or false, got {type(value).__name__}")
    elif t == COMBO:
        if not isinstance(value, str):
            return err(E.INVALID_TYPE, f"expects one of the choices (a string), got {type(value).__name__}")
    elif t not in (INT, FLOAT, STRING, BOOLEAN, COMBO) and not spec.choices:
        return err(E.INVALID_TYPE, f"expects a link from a {t} output, not a literal value")

    if t in (INT, FLOAT):
        if spec.min is not None and value < spec.min:
            return err(E.VALUE_OUT_OF_RANGE, f"{value} is below the minimum {spec.min}")
        if spec.max is not None and value > spec.max:
            return err(E.VALUE_OUT_OF_RANGE, f"{value} is above the maximum {spec.max}")
    if spec.files is None and (spec.choices is not None):
        choices = spec.resolve_choices(paths)
        if choices is not None and value not in choices:
            shown = ", ".join(map(str, choices[:12])) + (" ..." if len(choices) > 12 else "")
            return err(E.INVALID_CHOICE, f"{value!r} is not one of: {shown}")
    return value, None


def validate(workflow: Workflow, registry: Any, paths: Any = None, outputs: list[str] | None = None,
             rng: random.Random | None = None) -> tuple[Plan | None, list[ChiselError]]:
    """Check everything; return (plan, errors). The plan is None when the requested outputs cannot run."""
    errors: list[ChiselError] = []
    node_errors: dict[str, list[ChiselError]] = {}
    planned: dict[str, PlannedNode] = {}
    resolved: dict[str, dict[str, Any]] = {}
    graph = nx.DiGraph()
    rng = rng or random.SystemRandom()

    def add(node_id: str, e: ChiselError, type_name: str | None = None) -> None:
        e.node_id, e.node_type = node_id, type_name
        node_errors.setdefault(node_id, []).append(e)

    for node_id, spec in workflow.nodes.items():
        graph.add_node(node_id)
        cls = registry.get(spec.type)
        if cls is None:
            add(node_id, ChiselError(E.UNKNOWN_NODE_TYPE, f"unknown node type {spec.type!r}", value=spec.type))
            continue
        pn = PlannedNode(node_id, cls)
        planned[node_id] = pn
        declared = {i.name for i in cls.inputs}
        for name in spec.inputs:
            if name not in declared:
                add(node_id, ChiselError(E.UNKNOWN_INPUT, f"{cls.type} has no input {name!r}; it has: "
                                         + ", ".join(i.name for i in cls.inputs), input=name), cls.type)
        for inp in cls.inputs:
            if inp.name not in spec.inputs:
                if inp.has_default:
                    value = inp.default
                elif inp.optional:
                    continue
                else:
                    add(node_id, ChiselError(E.REQUIRED_INPUT_MISSING,
                                             f"required input {inp.name!r} ({inp.type}) is missing", input=inp.name), cls.type)
                    continue
            else:
                value = spec.inputs[inp.name]
            if isinstance(value, Link):
                src = workflow.nodes.get(value.node)
                if src is None:
                    add(node_id, ChiselError(E.LINK_TO_MISSING_NODE, f"links to node {value.node!r}, which does "
                                             "not exist", input=inp.name, value=value.model_dump()), cls.type)
                    continue
                graph.add_edge(value.node, node_id)
                src_cls = registry.get(src.type)
                if src_cls is None:
                    continue  # reported on the source node
                idx = src_cls.output_index(value.output)
                if idx is None:
                    add(node_id, ChiselError(E.LINK_TO_MISSING_OUTPUT, f"links to output {value.output!r} of node "
                                             f"{value.node} ({src.type}), which has: "
                                             + ", ".join(o.name for o in src_cls.outputs),
                                             input=inp.name, value=value.model_dump()), cls.type)
                    continue
                out_type = src_cls.outputs[idx].type
                if not types_compatible(out_type, inp.type):
                    add(node_id, ChiselError(E.TYPE_MISMATCH, f"expects {inp.type} but is linked to "
                                             f"{src.type}.{src_cls.outputs[idx].name} ({out_type})",
                                             input=inp.name, value=value.model_dump()), cls.type)
                    continue
                pn.links[inp.name] = (value.node, idx)
                continue
            if inp.seed and value == -1 and not isinstance(value, bool):
                value = rng.randint(0, RANDOM_SEED_MAX)
                resolved.setdefault(node_id, {})[inp.name] = value
            value, e = _check_literal(inp, value, paths)
            if e is not None:
                add(node_id, e, cls.type)
                continue
            if inp.files is not None:
                try:
                    if paths is None:
                        raise FileNotFoundInFolders(inp.files, value, [], [])
                    pn.files[inp.name] = paths.resolve(inp.files, value)
                except FileNotFoundInFolders as exc:
                    add(node_id, ChiselError(E.FILE_NOT_FOUND, str(exc), input=inp.name, value=value, details={
                        "folder": exc.kind, "looked_in": [str(p) for p in exc.looked_in],
                        "available": exc.available}), cls.type)
                    continue
            pn.literals[inp.name] = value

    # Cycles: Kahn's algorithm orders the graph; what it cannot order lies on or behind a cycle.
    order_all = _topological_order(graph)
    cyclic: set[str] = set()
    if len(order_all) < graph.number_of_nodes():
        for component in nx.strongly_connected_components(graph):
            if len(component) > 1 or any(graph.has_edge(n, n) for n in component):
                cyclic |= component
                members = sorted(component, key=_natural_key)
                for nid in members:
                    add(nid, ChiselError(E.CYCLE, "part of a cycle: " + " -> ".join(members + members[:1]),
                                         value=members), workflow.nodes[nid].type)

    # Requested outputs.
    wanted = outputs if outputs is not None else workflow.outputs
    if wanted is None:
        wanted = [nid for nid, pn in planned.items() if pn.cls.output_node]
    else:
        for nid in wanted:
            if nid not in workflow.nodes:
                errors.append(ChiselError(E.UNKNOWN_OUTPUT_NODE, f"requested output node {nid!r} does not exist",
                                          node_id=nid, value=nid))
        wanted = [nid for nid in wanted if nid in workflow.nodes]
    if not wanted:
        errors.append(ChiselError(E.NO_OUTPUTS, "nothing to output: the workflow has no output node (e.g. "
                                  "SaveImage) and none was requested"))

    needed: set[str] = set()
    stack = [nid for nid in wanted if nid not in cyclic]
    needed.update(wanted)
    while stack:
        for parent in graph.predecessors(stack.pop()):
            if parent not in needed:
                needed.add(parent)
                stack.append(parent)
    # Every problem in the needed part of the graph stops the run; report them in workflow order.
    for nid in workflow.nodes:
        if nid in needed or nid in cyclic:
            errors.extend(node_errors.get(nid, []))
    if errors:
        return None, errors
    order = [nid for nid in order_all if nid in needed]
    plan = Plan(order=order, nodes={nid: planned[nid] for nid in order}, outputs=wanted, resolved=resolved)
    return plan, []


def _topological_order(graph: nx.DiGraph) -> list[str]:
    """Dependency order, ties broken by natural node-id order (so runs are reproducible)."""
    indegree = {n: d for n, d in graph.in_degree()}
    ready = [(_natural_key(n), n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for child in graph.successors(node):
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, (_natural_key(child), child))
    return order


def _natural_key(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def all_errors(workflow: Workflow, registry: Any, paths: Any = None) -> list[ChiselError]:
    """Every problem in the workflow, including nodes that no output needs (for editors and `chisel validate`)."""
    _, out_errs = validate(workflow, registry, paths)
    ids = list(workflow.nodes)
    if not ids:
        return out_errs
    _, errs = validate(workflow, registry, paths, outputs=ids)
    return errs + [e for e in out_errs if e.kind in (E.NO_OUTPUTS, E.UNKNOWN_OUTPUT_NODE)]


__all__ = ["Plan", "PlannedNode", "validate", "all_errors", "MAX_SEED"]

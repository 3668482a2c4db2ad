"""Overrides: literal inputs set from outside the workflow (``chisel run --set/--sweep``, the HTTP ``set`` object).

A target is ``NODE.INPUT``, split at the *last* dot (input names have no dots; node ids may).
"""
from __future__ import annotations

from typing import Any

from .errors import INVALID_OVERRIDE, UNKNOWN_NODE, ChiselError, WorkflowError, brief
from .native import Workflow
from .schema_errors import validate_model


def split_target(target: str) -> tuple[str, str] | None:
    """("NODE", "INPUT") from "NODE.INPUT" (split at the last dot); None when either part is empty."""
    node, dot, name = target.rpartition(".")
    return (node, name) if dot and node and name else None


def apply_overrides(workflow: Workflow, overrides: dict[str, Any]) -> Workflow:
    """A copy of the workflow with ``{"NODE.INPUT": value}`` written into its literal inputs; every bad target is
    reported at once."""
    data = workflow.to_dict()
    errors = []
    for target, value in overrides.items():
        parts = split_target(target) if isinstance(target, str) else None
        if parts is None:
            errors.append(ChiselError(INVALID_OVERRIDE, f"override {brief(target, 80)!r} must be named NODE.INPUT",
                                      value=target))
            continue
        node, name = parts
        if node not in data["nodes"]:
            shown = ", ".join(list(data["nodes"])[:20]) + (" ..." if len(data["nodes"]) > 20 else "")
            errors.append(ChiselError(UNKNOWN_NODE, f"override {brief(target, 80)!r} names node {brief(node, 60)!r}, "
                                      f"which is not in the workflow (nodes: {shown})", node_id=node, input=name))
            continue
        data["nodes"][node].setdefault("inputs", {})[name] = value
    if errors:
        raise WorkflowError(errors)
    return validate_model(Workflow, data, prefix="after overrides: ")

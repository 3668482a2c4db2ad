"""Pydantic validation errors as Chisel's structured errors (kind ``invalid_workflow``, with node and input)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from .errors import INVALID_WORKFLOW, ChiselError, WorkflowError, brief

MAX_REPORTED = 200  # pydantic lists one error per failing field; beyond this they add nothing a person reads

Locate = Callable[[tuple], tuple[str | None, str | None]]


def native_locate(loc: tuple) -> tuple[str | None, str | None]:
    """(node id, input name) of a location in the native format: ("nodes", id, "inputs", name, ...)."""
    node_id = str(loc[1]) if len(loc) >= 2 and loc[0] == "nodes" else None
    input_name = str(loc[3]) if len(loc) >= 4 and loc[2] == "inputs" else None
    return node_id, input_name


def to_workflow_error(exc: ValidationError, source: str | None = None, locate: Locate = native_locate,
                      prefix: str = "") -> WorkflowError:
    errors = []
    items = exc.errors(include_url=False)
    for err in items[:MAX_REPORTED]:
        loc = tuple(err.get("loc", ()))
        node_id, input_name = locate(loc)
        path = ".".join(brief(str(p), 60) for p in loc)
        if err.get("type") == "extra_forbidden":
            message = f"unknown key {brief(str(loc[-1]), 60)!r}" + (" at the top level" if len(loc) == 1 else f" at {path}")
        else:
            message = f"{path}: {err.get('msg', 'invalid')}"
        value = err.get("input")
        errors.append(ChiselError(INVALID_WORKFLOW, (f"{source}: " if source else "") + prefix + message,
                                  node_id=node_id, input=input_name,
                                  value=None if isinstance(value, (dict, list)) else value))
    if len(items) > MAX_REPORTED:
        errors.append(ChiselError(INVALID_WORKFLOW, f"... and {len(items) - MAX_REPORTED} more problems"))
    return WorkflowError(errors)


def validate_model(model: Any, data: Any, source: str | None = None, locate: Locate = native_locate,
                   prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise to_workflow_error(exc, source, locate, prefix) from None

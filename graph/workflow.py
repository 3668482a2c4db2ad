"""Reading workflows: JSON text or decoded data in any format Chisel imports (native, ComfyUI's API and UI
formats) into a typed :class:`~graph.native.Workflow`, with every problem reported as a structured error.

The native format's structures live in :mod:`graph.native` and are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import json_input
from .comfy_format import COMFY_API, COMFY_UI, NATIVE, detect_format, from_comfy_api, from_comfy_ui
from .errors import INVALID_WORKFLOW, ChiselError, WorkflowError
from .native import (FORMAT, VERSION, Layout, Link, NodeLayout, NodeSpec, Workflow, is_link, json_schema,
                     natural_key)
from .schema_errors import validate_model


def parse_workflow(data: Any, registry: Any = None, source: str | None = None) -> Workflow:
    """A workflow from decoded JSON: native, or ComfyUI's API or UI format (converted; UI needs the registry)."""
    if isinstance(data, Workflow):
        return data
    json_input.check_depth(data, source)
    kind = detect_format(data)
    if kind == COMFY_API:
        data = from_comfy_api(data, registry, source)
    elif kind == COMFY_UI:
        data = from_comfy_ui(data, registry, source)
    elif kind != NATIVE:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, _where(source) + "not a workflow: expected an object with "
                                         "'nodes' (Chisel), or ComfyUI's API or UI format", value=type(data).__name__)])
    return validate_model(Workflow, data, source)


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def loads(text: str | bytes, registry: Any = None, source: str | None = None) -> Workflow:
    return parse_workflow(json_input.decode(text, source), registry, source)


def load_file(path: str | Path, registry: Any = None) -> Workflow:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, f"{path}: no such file", value=str(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, f"{path}: cannot read: {exc}", value=str(path))]) from None
    return loads(text, registry, str(path))


__all__ = ["FORMAT", "VERSION", "Layout", "Link", "NodeLayout", "NodeSpec", "Workflow", "is_link", "json_schema",
           "natural_key", "parse_workflow", "loads", "load_file"]

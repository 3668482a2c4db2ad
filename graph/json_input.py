"""JSON text and decoded JSON values as they arrive from outside: read without tracebacks, and bounded in depth.

``json.loads`` raises RecursionError on deeply nested text and ValueError on integers of more than 4,300 digits;
both become an ``invalid_json`` error here. A decoded value nested deeper than :data:`MAX_DEPTH` is refused before
anything walks it recursively.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import INVALID_JSON, INVALID_WORKFLOW, ChiselError, WorkflowError

MAX_DEPTH = 64  # a ComfyUI UI file with nested subgraphs is about 8 levels deep


def decode(text: str | bytes, source: str | None = None) -> Any:
    where = source or "<string>"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError([ChiselError(
            INVALID_JSON, f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
            details={"file": where, "line": exc.lineno, "column": exc.colno})]) from None
    except RecursionError:
        raise WorkflowError([ChiselError(INVALID_JSON, f"{where}: invalid JSON: nested too deeply")]) from None
    except (ValueError, UnicodeDecodeError) as exc:  # e.g. an integer of more than 4,300 digits
        raise WorkflowError([ChiselError(INVALID_JSON, f"{where}: invalid JSON: {_short(str(exc))}")]) from None


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (iteratively), counting at most to ``limit + 1``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > limit:
            return level
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_depth(value: Any, source: str | None = None) -> None:
    if depth(value) > MAX_DEPTH:
        where = f"{source}: " if source else ""
        raise WorkflowError([ChiselError(INVALID_WORKFLOW, f"{where}the workflow is nested more than {MAX_DEPTH} "
                                         "levels deep")])


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

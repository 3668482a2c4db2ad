"""Workflows carried in PNG text chunks (ComfyUI's ``workflow`` and ``prompt``, Chisel's ``chisel_workflow``).

Takes the chunks as text (reading the image is the caller's job) and returns the first workflow that loads.
"""
from __future__ import annotations

from typing import Any

from . import json_input
from .errors import ChiselError, WorkflowError
from .native import Workflow
from .workflow import parse_workflow

CHUNK_KEYS = ("workflow", "chisel_workflow", "prompt")  # in order of preference


def workflow_from_texts(texts: dict[str, Any], registry: Any) -> tuple[Workflow, str] | None:
    """(workflow, chunk key) from the first chunk that holds a loadable workflow; None when no chunk is there.
    Raises WorkflowError with every chunk's problems when chunks are there but none loads."""
    errors: list[ChiselError] = []
    for key in CHUNK_KEYS:
        text = texts.get(key)
        if not isinstance(text, str):
            continue
        try:
            return parse_workflow(json_input.decode(text, f"PNG chunk {key!r}"), registry, f"PNG chunk {key!r}"), key
        except WorkflowError as exc:
            errors.extend(exc.errors)
    if errors:
        raise WorkflowError(errors)
    return None

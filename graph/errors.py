"""Structured errors: every problem names its node, its input, its kind, a message and the offending value."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Kinds of error (stable strings: clients match on them).
UNKNOWN_NODE_TYPE = "unknown_node_type"
REQUIRED_INPUT_MISSING = "required_input_missing"
UNKNOWN_INPUT = "unknown_input"
LINK_TO_MISSING_NODE = "link_to_missing_node"
LINK_TO_MISSING_OUTPUT = "link_to_missing_output"
TYPE_MISMATCH = "type_mismatch"
VALUE_OUT_OF_RANGE = "value_out_of_range"
INVALID_CHOICE = "invalid_choice"
INVALID_TYPE = "invalid_type"
FILE_NOT_FOUND = "file_not_found"
CYCLE = "cycle"
NO_OUTPUTS = "no_outputs"
UNKNOWN_OUTPUT_NODE = "unknown_output_node"
INVALID_WORKFLOW = "invalid_workflow"
INVALID_JSON = "invalid_json"
EXECUTION_FAILED = "execution_failed"
UPSTREAM_FAILED = "upstream_failed"
INTERRUPTED = "interrupted"
UNKNOWN_NODE = "unknown_node"  # an override (--set, HTTP "set") names a node the workflow lacks
INVALID_OVERRIDE = "invalid_override"  # an override that is not NODE.INPUT

KINDS = frozenset({
    UNKNOWN_NODE_TYPE, REQUIRED_INPUT_MISSING, UNKNOWN_INPUT, LINK_TO_MISSING_NODE, LINK_TO_MISSING_OUTPUT,
    TYPE_MISMATCH, VALUE_OUT_OF_RANGE, INVALID_CHOICE, INVALID_TYPE, FILE_NOT_FOUND, CYCLE, NO_OUTPUTS,
    UNKNOWN_OUTPUT_NODE, INVALID_WORKFLOW, INVALID_JSON, EXECUTION_FAILED, UPSTREAM_FAILED, INTERRUPTED, UNKNOWN_NODE,
    INVALID_OVERRIDE})

# Echoed values are cut to these sizes, so an error about a huge input stays small.
MAX_ECHO_CHARS = 200
MAX_ECHO_ITEMS = 20
MAX_ECHO_DEPTH = 4


@dataclass
class ChiselError:
    kind: str
    message: str
    node_id: str | None = None
    input: str | None = None
    value: Any = None
    node_type: str | None = None
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None or k == "value"}
        for key in ("node_id", "input", "node_type"):
            if isinstance(out.get(key), str):
                out[key] = brief(out[key])
        out["value"] = _jsonable(self.value)
        if self.details is not None:
            out["details"] = _jsonable(self.details)
        return out

    def __str__(self) -> str:
        where = ""
        if self.node_id is not None:
            where = f"node {self.node_id}" + (f" ({self.node_type})" if self.node_type else "")
            if self.input:
                where += f" input {self.input!r}"
            where += ": "
        return f"{where}{self.message} [{self.kind}]"


def _jsonable(value: Any, level: int = 0) -> Any:
    """A JSON-able copy of an echoed value, cut to a bounded size."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**64 else brief(value)
    if isinstance(value, str):
        return brief(value)
    if level >= MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, level + 1) for v in list(value)[:MAX_ECHO_ITEMS]]
    if isinstance(value, dict):
        return {brief(str(k)): _jsonable(v, level + 1) for k, v in list(value.items())[:MAX_ECHO_ITEMS]}
    return brief(repr(value))


def brief(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """``value`` as text for a message, cut to ``limit`` characters (a huge integer is never printed in full)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = value if isinstance(value, str) else repr(value)
    except (ValueError, RecursionError):  # e.g. a list holding an integer of more than 4,300 digits
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class WorkflowError(Exception):
    """A workflow that cannot be loaded or run; carries every structured error found."""

    def __init__(self, errors: list[ChiselError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

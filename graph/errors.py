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
        out["value"] = _jsonable(self.value)
        return out

    def __str__(self) -> str:
        where = ""
        if self.node_id is not None:
            where = f"node {self.node_id}" + (f" ({self.node_type})" if self.node_type else "")
            if self.input:
                where += f" input {self.input!r}"
            where += ": "
        return f"{where}{self.message} [{self.kind}]"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class WorkflowError(Exception):
    """A workflow that cannot be loaded or run; carries every structured error found."""

    def __init__(self, errors: list[ChiselError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

"""The HTTP API's bodies as pydantic models: requests are validated with them (unknown keys refused where a model
forbids them) and ``/openapi.json`` is generated from them (see :mod:`server.openapi`).

- :class:`Request` bodies are strict: no type coercion ("yes" is not a boolean), NaN and ±Infinity refused, unknown
  keys refused. ComfyUI's bodies (:class:`ComfyRequest`) keep unknown keys, as ComfyUI does.
- :class:`Query` models read query strings (numbers arrive as text, so they are not strict).
- Response models describe what the server sends; they allow keys they do not name.

:func:`parse_body` / :func:`parse_query` / :func:`parse_form` turn a validation failure into a 400
``invalid_request`` naming each field.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import ApiError
from .security import read_json_object

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# A queue position given by a ComfyUI client ("number"): finite, and small enough that a float keeps integers exact.
MAX_NUMBER = 2.0 ** 53

Id = Annotated[str, Field(pattern=ID_PATTERN, description="1-128 letters, digits or ._:- (starting with a letter "
                                                            "or digit)")]
OptionalId = Annotated[str, Field(pattern=r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,127})?$", description="an id, or empty")]
Folder = Literal["output", "input", "temp"]
WORKFLOW_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer: accept it as 3 (a strict int refuses every float)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
NodeId = Annotated[str | JsonInt, Field(description="a node id")]



class Request(BaseModel):
    """A JSON request body: strict types, no NaN/Infinity, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ComfyRequest(BaseModel):
    """A ComfyUI-compatible request body: strict types for the keys Chisel reads, other keys kept (ComfyUI's
    clients send more)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class Query(BaseModel):
    """Query-string parameters (text converted to numbers where a field says so); unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Response(BaseModel):
    """A response body; keys not named here may appear."""

    model_config = ConfigDict(extra="allow")


# -- requests: native ------------------------------------------------------------------------------------------------
class WorkflowBody(Request):
    workflow: dict[str, Any] = Field(description="a native workflow, or ComfyUI's API format ({id: {class_type, "
                                                 "inputs}}) or UI format (nodes, links): converted on arrival")


class ValidateRequest(WorkflowBody):
    set: dict[str, Any] | None = Field(None, description="overrides {\"NODE.INPUT\": value}")
    outputs: list[NodeId] | None = Field(None, description="check only what these output nodes need")


class PromptRequest(ValidateRequest):
    client_id: Id | None = Field(None, description="the WebSocket client that receives this prompt's events")
    prompt_id: Id | None = Field(None, description="choose the id (default: a UUID)")
    front: bool = Field(False, description="queue at the front")


class ConvertRequest(WorkflowBody):
    pass


ExportFormat = Literal["native", "comfy_ui", "comfy_api"]


class ExportRequest(WorkflowBody):
    format: ExportFormat


class ExportResponse(Response):
    workflow: dict[str, Any]
    format: ExportFormat


class QueueMoveRequest(Request):
    prompt_id: str
    position: JsonInt = Field(ge=0, le=10**9, description="0 runs next; past the end means last")


class SaveWorkflowRequest(Request):
    workflow: dict[str, Any] = Field(description="the workflow, stored as given (the canvas saves the native format)")


class SaveWorkflowQuery(Query):
    overwrite: Literal["true", "false"] = Field("true", description="'false' refuses (409) a name that is taken")


class RenameWorkflowRequest(Request):
    to: str = Field(description="the new name")
    overwrite: bool = Field(False, description="replace a saved workflow of that name")


class InterruptRequest(Request):
    prompt_id: str | None = Field(None, description="interrupt only this prompt, if it is the one running")


class FreeRequest(Request):
    unload_models: bool = False
    free_memory: bool = False


class UploadForm(Request):
    """``multipart/form-data`` fields of an upload (every field is text, the file apart)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    image: bytes = Field(description="the image file")
    type: Folder = "input"
    subfolder: str = ""
    overwrite: Literal["true", "false", "True", "False", "1", "0", ""] = ""
    kind: Literal["image", "mask"] = "image"
    original_ref: str | None = Field(None, description="mask only: JSON {filename, subfolder, type} of the image "
                                                       "whose alpha the mask replaces")


# -- requests: ComfyUI ---------------------------------------------------------------------------------------------
class ComfyPromptRequest(ComfyRequest):
    prompt: dict[str, Any] = Field(min_length=1, description="the workflow in ComfyUI's API format")
    client_id: OptionalId | None = None
    prompt_id: Id | None = None
    extra_data: dict[str, Any] | None = None
    number: float | None = Field(None, ge=-MAX_NUMBER, le=MAX_NUMBER, description="queue position (lower runs first)")
    front: bool | None = None
    partial_execution_targets: list[NodeId] | None = None


class ComfyClearDelete(ComfyRequest):
    clear: bool | None = None
    delete: list[str] | None = None


class ComfyInterrupt(ComfyRequest):
    prompt_id: str | None = None


class ComfyFree(ComfyRequest):
    unload_models: bool | None = None
    free_memory: bool | None = None


# -- queries -----------------------------------------------------------------------------------------------------------
class HistoryQuery(Query):
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10**9)
    status: str | None = Field(None, pattern=r"^(queued|running|success|error|interrupted|cancelled)"
                                             r"(,(queued|running|success|error|interrupted|cancelled))*$",
                               description="comma-separated statuses to keep")


class ComfyHistoryQuery(Query):
    max_items: int = Field(10_000, ge=1, le=10_000)
    offset: int = Field(-1, ge=-1, le=10**9, description="-1: the newest max_items")


class ViewQuery(Query):
    filename: str
    subfolder: str = ""
    type: Folder = "output"
    thumb: int | None = Field(None, ge=16, le=2048, description="longest side of a downscaled copy")
    format: Literal["webp", "jpeg", "jpg", "png"] | None = Field(None, description="thumbnail format")
    preview: str | None = Field(None, description="ComfyUI's preview=FORMAT;QUALITY")
    channel: Literal["rgba", "rgb", "a", ""] | None = None
    token: str | None = Field(None, description="the token, for <img> URLs")


class UserDataListQuery(Query):
    dir: str = Field(min_length=1, description="a folder in the user's data")
    recurse: str | None = Field(None, description="'true' to list sub-folders too")
    full_info: str | None = Field(None, description="'true' for {path, size, modified, created} items")
    split: str | None = Field(None, description="'true' for path parts")


class UserDataV2Query(Query):
    path: str = Field("", description="a folder in the user's data ('' the top)")


class UserDataWriteQuery(Query):
    overwrite: str | None = Field(None, description="'false' refuses to replace an existing file (409)")
    full_info: str | None = Field(None, description="'true' answers {path, size, modified, created}")


JOB_STATUS = r"\s*(pending|in_progress|completed|failed|cancelled)?\s*"


class JobsQuery(Query):
    status: str | None = Field(None, pattern=rf"^{JOB_STATUS}(,{JOB_STATUS})*$",
                               description="comma-separated job statuses")
    sort_by: Literal["created_at", "execution_duration"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    limit: int = Field(-1, ge=-1, le=10_000, description="-1: all")
    offset: int = Field(0, ge=0, le=10**9)
    workflow_id: str | None = None


class WebSocketQuery(Query):
    client_id: str | None = None
    clientId: str | None = None
    token: str | None = None


class NativeWebSocketQuery(WebSocketQuery):
    previews: str | None = Field(None, description="none: no binary preview frames for this connection "
                                                    "(any other value, or none given: latent-to-RGB previews)")


# -- responses ---------------------------------------------------------------------------------------------------------
class ErrorInfo(Response):
    kind: str = Field(description="stable error kind, e.g. invalid_request")
    message: str


class ChiselError(Response):
    kind: str = Field(description="stable error kind, e.g. value_out_of_range")
    message: str
    node_id: str | None = None
    input: str | None = None
    value: Any = None
    node_type: str | None = None
    details: dict[str, Any] | None = None


class ErrorResponse(Response):
    error: ErrorInfo
    errors: list[ChiselError] | None = None


class ComfyErrorInfo(Response):
    type: str
    message: str
    details: Any = None
    extra_info: Any = None


class ComfyErrorResponse(Response):
    error: ComfyErrorInfo | ErrorInfo
    node_errors: dict[str, Any] | None = None


class AuthInfo(Response):
    required: bool
    signed_in: bool = False  # the browser's sign-in cookie stands for the token: no need to ask for it


class NodeInput(Response):
    name: str
    type: str


class NodeOutput(Response):
    name: str
    type: str


class NodeSchema(Response):
    type: str
    category: str
    output_node: bool
    inputs: list[NodeInput]
    outputs: list[NodeOutput]


class ValidateResponse(Response):
    valid: bool
    errors: list[ChiselError]


class PromptQueued(Response):
    prompt_id: str
    number: int


class QueueItem(Response):
    prompt_id: str
    number: int
    client_id: str | None = None
    created: float | None = Field(None, description="epoch seconds")
    started: float | None = None


class Queue(Response):
    running: list[QueueItem]
    pending: list[QueueItem] = Field(description="in the order they will run")


class CancelResponse(Response):
    prompt_id: str
    status: Literal["cancelled", "interrupting"]


class InterruptResponse(Response):
    interrupted: str | None


Status = Literal["queued", "running", "success", "error", "interrupted", "cancelled"]


class HistoryEntry(Response):
    prompt_id: str
    number: int
    status: Status
    client_id: str | None = None
    workflow: dict[str, Any] | None = Field(None, description="the native workflow, overrides applied")
    outputs: dict[str, Any] = Field(description="node id -> ui, e.g. {images: [{filename, subfolder, type}]}")
    timings: dict[str, float]
    errors: list[ChiselError]
    resolved: dict[str, Any] = Field(description="values the engine chose, e.g. random seeds")
    executed: list[str]
    cached: list[str]
    skipped: list[str]
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = Field(description="times a worker started it (2 after a crash re-run)")
    batch: list[str] | None = Field(None, description="when it was sampled in one batch with other prompts: the "
                                                      "batch's prompt ids, in order (itself included)")


class HistoryPage(Response):
    items: list[HistoryEntry]


class Deleted(Response):
    deleted: str


class FileRef(Response):
    name: str
    subfolder: str
    type: Folder


class BundledWorkflow(Response):
    name: str
    title: str


class SavedWorkflow(Response):
    name: str
    size: int
    modified: float = Field(description="seconds since the epoch")


class WorkflowFromPng(Response):
    workflow: dict[str, Any]
    source: str


class ConvertResponse(Response):
    workflow: dict[str, Any]


class FreeResponse(Response):
    unload_models: bool
    free_memory: bool
    done: bool


class SystemInfo(Response):
    versions: dict[str, str | None]
    threads: dict[str, int] | None = Field(None, description="torch's CPU threads: intra_op (within one operation, "
                                                              "--threads) and inter_op; null without torch")
    devices: list[dict[str, Any]]
    queue: dict[str, int]


class ComfyPromptQueued(Response):
    prompt_id: str
    number: int
    node_errors: dict[str, Any]


class ComfyPromptInfo(Response):
    exec_info: dict[str, int]


class ComfyQueue(Response):
    queue_running: list[list[Any]] = Field(description="[number, prompt_id, prompt, extra_data, outputs]")
    queue_pending: list[list[Any]]


class ComfyHistoryStatus(Response):
    status_str: str
    completed: bool
    messages: list[list[Any]]


class ComfyHistoryItem(Response):
    prompt: list[Any]
    outputs: dict[str, Any]
    status: ComfyHistoryStatus
    meta: dict[str, Any] | None = None


class ComfyObjectInfo(Response):
    input: dict[str, Any]
    input_order: dict[str, list[str]] | None = None
    output: list[str]
    output_is_list: list[bool]
    output_name: list[str]
    name: str
    display_name: str
    description: str
    python_module: str
    category: str
    output_node: bool


class ComfySystemStats(Response):
    system: dict[str, Any]
    devices: list[dict[str, Any]]


# -- validation ----------------------------------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(body)"


def invalid_request(exc: ValidationError, where: str = "request body", kind: str = "invalid_request") -> ApiError:
    """A pydantic failure as a 400: every field named, with pydantic's message."""
    fields = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors(include_url=False)[:20]]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:3])
    more = f" (and {len(fields) - 3} more)" if len(fields) > 3 else ""
    errors = [{"kind": kind, "message": f["message"], "input": f["field"]} for f in fields]
    return ApiError(400, kind, f"invalid {where}: {summary}{more}", extra={"fields": fields}, errors=errors)


def validate(model: type[M], data: Any, where: str = "request body", kind: str = "invalid_request") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc, where, kind) from None


async def parse_body(request: web.Request, model: type[M], limit: int, *, allow_empty: bool = False) -> M:
    """The JSON body as ``model`` (400 ``invalid_json`` / ``invalid_request`` otherwise, 413 over ``limit``)."""
    return validate(model, await read_json_object(request, limit, allow_empty=allow_empty))


def parse_query(request: web.Request, model: type[M]) -> M:
    return validate(model, dict(request.query), "query parameters", "invalid_parameter")


def parse_form(fields: dict[str, Any], model: type[M]) -> M:
    return validate(model, fields, "form fields")

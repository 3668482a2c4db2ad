"""``/openapi.json``, generated: one line per route in :data:`OPERATIONS` names its request and response models
(from :mod:`server.schemas`), and :func:`openapi_document` turns the table into OpenAPI 3.1 with pydantic's JSON
Schemas. A route the app serves and this table does not describe fails the test suite.

Adding a route's description is one line::

    op("POST", "/v1/thing", "Do the thing", body=ThingRequest, ok=ThingResponse, errors=(404,))

(``comfy(...)`` describes a ComfyUI-compatible route at its path and under ``/api``.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from . import schemas as m

REF = "#/components/schemas/{model}"
JSON = "application/json"
BINARY = {"type": "string", "format": "binary"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    body: Any = None  # a model (JSON body, or form fields with body_type multipart/form-data); None: no body
    body_type: str = JSON  # or "multipart/form-data", "image/png" (raw bytes)
    body_required: bool = True
    query: type[BaseModel] | None = None
    path_params: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, JSON Schema) where not any string
    ok: Any = None  # a model or type (JSON), a media type string (a file), or None (an empty 200)
    ok_status: int = 200
    errors: tuple[int, ...] = ()
    bare_errors: tuple[int, ...] = ()  # statuses answered with an empty body
    error_model: type[BaseModel] = m.ErrorResponse
    tag: str = "native"
    public: bool = False  # answered without a token


OPERATIONS: list[Operation] = []


def op(method: str, path: str, summary: str, **kw: Any) -> None:
    OPERATIONS.append(Operation(method, path, summary, **kw))


def comfy(method: str, path: str, summary: str, **kw: Any) -> None:
    """A ComfyUI-compatible route: served at ``path`` and at ``/api`` + ``path``."""
    for prefix in ("", "/api"):
        op(method, prefix + path, summary, tag="comfyui", **kw)


# -- the native API ----------------------------------------------------------------------------------------------------
op("GET", "/", "The canvas (web/index.html)", ok="text/html", public=True)
op("GET", "/web/{path}", "The canvas' static files (aiohttp's static route: a missing file is an empty 404)",
   ok="*/*", errors=(404,), bare_errors=(404,), public=True)
op("GET", "/openapi.json", "This document", ok=dict[str, Any])
op("GET", "/v1/auth", "Whether a token is required, and whether the browser's sign-in cookie stands for it "
   "(answered without one)", ok=m.AuthInfo, public=True)
op("GET", "/v1/nodes", "Every node type's schema", ok=dict[str, m.NodeSchema])
op("GET", "/v1/schema/workflow", "The workflow JSON Schema", ok=dict[str, Any])
op("POST", "/v1/validate", "Check a workflow; every problem at once", body=m.ValidateRequest, ok=m.ValidateResponse)
op("POST", "/v1/prompts", "Validate and queue a workflow (durable before the reply); 400 validation_failed lists "
   "every problem, nothing queued", body=m.PromptRequest, ok=m.PromptQueued, errors=(409, 429))
op("DELETE", "/v1/prompts/{prompt_id}", "Cancel a queued prompt, or interrupt it when running", ok=m.CancelResponse,
   errors=(404, 409))
op("GET", "/v1/queue", "Running and pending prompts", ok=m.Queue)
op("POST", "/v1/queue/move", "Move a pending prompt (position 0 runs next)", body=m.QueueMoveRequest, ok=m.Queue,
   errors=(404, 409))
op("POST", "/v1/interrupt", "Interrupt the running prompt (only that one when prompt_id is given)",
   body=m.InterruptRequest, body_required=False, ok=m.InterruptResponse)
op("GET", "/v1/history", "Every prompt, newest first", query=m.HistoryQuery, ok=m.HistoryPage, errors=(400,))
op("GET", "/v1/history/{prompt_id}", "One prompt's entry", ok=m.HistoryEntry, errors=(404,))
op("DELETE", "/v1/history/{prompt_id}", "Delete a finished prompt's entry", ok=m.Deleted, errors=(404, 409))
op("GET", "/v1/view", "An image (or a thumbnail) from output, input or temp", query=m.ViewQuery, ok="*/*",
   errors=(400, 403, 404, 415))
op("POST", "/v1/upload", "Upload an image or a mask", body=m.UploadForm, body_type="multipart/form-data",
   ok=m.FileRef, errors=(403, 404, 415))
op("GET", "/v1/workflows", "Bundled workflows", ok=list[m.BundledWorkflow])
op("GET", "/v1/workflows/{name}", "A bundled workflow", ok=dict[str, Any], errors=(400, 404),
   path_params=(("name", {"type": "string", "pattern": m.WORKFLOW_NAME_PATTERN}),))
op("GET", "/v1/user/workflows", "The user's saved workflows (user/default/workflows/*.json in the Chisel root, "
   "shared with ComfyUI's frontend)", ok=list[m.SavedWorkflow])
op("GET", "/v1/user/workflows/{name}", "A saved workflow, as it was saved", ok=dict[str, Any], errors=(400, 403, 404, 422))
op("PUT", "/v1/user/workflows/{name}", "Save a workflow under a name (400 invalid_name says what is wrong with a "
   "name)", body=m.SaveWorkflowRequest, query=m.SaveWorkflowQuery, ok=m.SavedWorkflow, errors=(403, 409))
op("DELETE", "/v1/user/workflows/{name}", "Delete a saved workflow", ok=m.Deleted, errors=(400, 403, 404))
op("POST", "/v1/user/workflows/{name}/rename", "Rename a saved workflow", body=m.RenameWorkflowRequest,
   ok=m.SavedWorkflow, errors=(403, 404, 409))
op("POST", "/v1/workflow/from-png", "The workflow stored in a PNG's text chunks", body=bytes, body_type="image/png",
   ok=m.WorkflowFromPng, errors=(404, 415, 422))
op("POST", "/v1/workflow/convert", "A workflow in any format Chisel imports, in the native format",
   body=m.ConvertRequest, ok=m.ConvertResponse)
op("POST", "/v1/workflow/export", "A workflow in any format Chisel imports, in ComfyUI's UI or API format (or the "
   "native one)", body=m.ExportRequest, ok=m.ExportResponse)
op("GET", "/v1/models/{kind}", "File names in a models folder (checkpoints, loras, vae, embeddings, input, ...)",
   ok=list[str], errors=(404,))
op("GET", "/v1/system", "Devices, memory, cache statistics, versions", ok=m.SystemInfo)
op("POST", "/v1/free", "Unload models and/or free memory (between prompts)", body=m.FreeRequest, body_required=False,
   ok=m.FreeResponse)
op("GET", "/v1/ws", "WebSocket. JSON frames {type, data}: hello {client_id}; queue {running, pending} (to everyone); "
   "for this client's prompts started, cached, executing, progress {value, max, activity?, stage?} (activity "
   "\"loading\" with stage \"building the UNet\" ... while a loader reads a model), executed {ui}, error {error}, "
   "interrupted {ui?: files written before the stop}, finished {status, outputs, errors, ...}; each data has "
   "prompt_id and node_id. Binary frames: 4-byte big-endian type (1 = preview), 4-byte format (1 JPEG, 2 PNG), the "
   "image. A plain GET is refused (400).",
   query=m.NativeWebSocketQuery, ok=None, ok_status=101, errors=(400,))

# -- ComfyUI-compatible routes -------------------------------------------------------------------------------------------
comfy("POST", "/prompt", "Queue a workflow in ComfyUI's API format", body=m.ComfyPromptRequest,
      ok=m.ComfyPromptQueued, errors=(409, 429), error_model=m.ComfyErrorResponse)
comfy("GET", "/prompt", "How many prompts are left", ok=m.ComfyPromptInfo)
comfy("GET", "/queue", "Running and pending prompts, ComfyUI's shape", ok=m.ComfyQueue)
comfy("POST", "/queue", "Cancel pending prompts ({clear: true} or {delete: [ids]})", body=m.ComfyClearDelete)
comfy("GET", "/history", "Finished prompts, ComfyUI's shape", query=m.ComfyHistoryQuery,
      ok=dict[str, m.ComfyHistoryItem], errors=(400,))
comfy("POST", "/history", "Delete history entries ({clear: true} or {delete: [ids]})", body=m.ComfyClearDelete)
comfy("GET", "/history/{prompt_id}", "One finished prompt ({} when unknown)", ok=dict[str, m.ComfyHistoryItem])
comfy("GET", "/object_info", "Every node type, ComfyUI's shape", ok=dict[str, m.ComfyObjectInfo])
comfy("GET", "/object_info/{node_class}", "One node type ({} when unknown)", ok=dict[str, m.ComfyObjectInfo])
comfy("GET", "/view", "An image from output, input or temp", query=m.ViewQuery, ok="*/*", errors=(400, 403, 404, 415))
comfy("POST", "/upload/image", "Upload an image", body=m.UploadForm, body_type="multipart/form-data", ok=m.FileRef,
      errors=(403, 404, 415))
comfy("POST", "/upload/mask", "Upload a mask (its alpha replaces original_ref's)", body=m.UploadForm,
      body_type="multipart/form-data", ok=m.FileRef, errors=(403, 404, 415))
comfy("POST", "/interrupt", "Interrupt the running prompt", body=m.ComfyInterrupt, body_required=False)
comfy("POST", "/free", "Unload models and/or free memory", body=m.ComfyFree, body_required=False)
comfy("GET", "/system_stats", "System and device statistics", ok=m.ComfySystemStats)
comfy("GET", "/embeddings", "Embedding names", ok=list[str])
comfy("GET", "/models", "Model folder names", ok=list[str])
comfy("GET", "/models/{folder}", "File names in a model folder", ok=list[str], errors=(404,))
comfy("GET", "/ws", "WebSocket with ComfyUI's messages (status, executing, progress, executed, ...); a plain GET is "
      "refused (400)", query=m.WebSocketQuery, ok=None, ok_status=101, errors=(400,))

comfy("GET", "/features", "What this server supports (ComfyUI's feature flags)", ok=dict[str, Any])
comfy("GET", "/jobs", "Queued, running and finished prompts as ComfyUI's jobs", query=m.JobsQuery, ok=dict[str, Any])
comfy("GET", "/jobs/{job_id}", "One job", ok=dict[str, Any], errors=(404,))
comfy("GET", "/users", "The user mode (one user, 'default')", ok=dict[str, Any])
comfy("POST", "/users", "Create a user: refused, Chisel has one user", errors=(400,))
comfy("GET", "/settings", "The user's frontend settings", ok=dict[str, Any])
comfy("POST", "/settings", "Merge frontend settings", body=dict[str, Any])
comfy("GET", "/settings/{id}", "One frontend setting (null when unset)", ok=Any)
comfy("POST", "/settings/{id}", "Set one frontend setting (the body is its JSON value)", body=Any, errors=(400,))
comfy("GET", "/userdata", "Files in a folder of the user's data", query=m.UserDataListQuery, ok=list[Any],
      errors=(403, 404))
comfy("GET", "/v2/userdata", "A folder of the user's data, with sizes and dates", query=m.UserDataV2Query,
      ok=list[dict[str, Any]], errors=(403, 404))
comfy("GET", "/userdata/{file}", "A file of the user's data", ok="*/*", errors=(400, 403, 404))
comfy("POST", "/userdata/{file}", "Write a file of the user's data (the body is its content)", body=bytes,
      body_type="application/octet-stream", query=m.UserDataWriteQuery, ok=Any, errors=(403, 409))
comfy("DELETE", "/userdata/{file}", "Delete a file of the user's data", ok=None, ok_status=204, errors=(400, 403, 404))
comfy("POST", "/userdata/{file}/move/{dest}", "Move a file of the user's data", query=m.UserDataWriteQuery, ok=Any,
      errors=(403, 404, 409))
comfy("GET", "/extensions", "Frontend extensions (none)", ok=list[Any])
comfy("GET", "/i18n", "Translations of custom nodes (none)", ok=dict[str, Any])
comfy("GET", "/global_subgraphs", "Shared subgraphs (none)", ok=dict[str, Any])
comfy("GET", "/workflow_templates", "Example workflows of node packs (none)", ok=dict[str, Any])
comfy("GET", "/experiment/models", "Model folders", ok=list[dict[str, Any]])
comfy("GET", "/experiment/models/{folder}", "Files in a model folder", ok=list[dict[str, Any]], errors=(404,))
op("GET", "/internal/folder_paths", "Every folder kind and its directories", ok=dict[str, list[str]], tag="comfyui")


# -- generation ------------------------------------------------------------------------------------------------------------
class _Schemas:
    """Component schemas collected from pydantic, referenced as ``#/components/schemas/NAME``."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, tp: Any) -> dict[str, Any]:
        schema = TypeAdapter(tp).json_schema(ref_template=REF)
        self.components.update(schema.pop("$defs", {}))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            self.components[tp.__name__] = schema
            return {"$ref": REF.format(model=tp.__name__)}
        return schema


def _query_params(schemas: _Schemas, model: type[BaseModel]) -> list[dict[str, Any]]:
    props = model.model_json_schema(ref_template=REF)
    schemas.components.update(props.pop("$defs", {}))
    required = set(props.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": spec,
             **({"description": spec["description"]} if "description" in spec else {})}
            for name, spec in props.get("properties", {}).items()]


def _content(media: str) -> dict[str, Any]:
    return {media: {"schema": BINARY if not media.startswith("text/") else {"type": "string"}}}


def _operation(o: Operation, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": o.summary, "tags": [o.tag], "operationId": _op_id(o)}
    special = dict(o.path_params)
    params = [{"name": n, "in": "path", "required": True, "schema": special.get(n, {"type": "string"})}
              for n in re.findall(r"{(\w+)}", o.path)]
    if o.query is not None:
        params += _query_params(schemas, o.query)
    if params:
        out["parameters"] = params
    if o.body is not None:
        schema = BINARY if o.body is bytes else schemas.of(o.body)
        out["requestBody"] = {"required": o.body_required, "content": {o.body_type: {"schema": schema}}}
    ok: dict[str, Any] = {"description": "OK"}
    if isinstance(o.ok, str):
        ok["content"] = _content(o.ok)
    elif o.ok is not None:
        ok["content"] = {JSON: {"schema": schemas.of(o.ok)}}
    responses: dict[str, Any] = {str(o.ok_status): ok}
    statuses = set(o.errors)
    if o.body is not None:
        statuses |= {400, 413}
    if o.query is not None or o.path_params:
        statuses |= {400}
    if not o.public:
        statuses |= {401}
    statuses |= {403}  # a cross-origin request, or a Host that is not this server's
    schema = schemas.of(o.error_model)
    for status in sorted(statuses):
        responses[str(status)] = {"description": "Error", "content": {JSON: {"schema": schema}}}
        if status in o.bare_errors:
            responses[str(status)] = {"description": "Error (JSON, or an empty body)"}
    out["responses"] = responses
    if o.public:
        out["security"] = [{}]
    return out


def _op_id(o: Operation) -> str:
    return o.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", o.path).rstrip("_")


def openapi_document(version: str) -> dict[str, Any]:
    schemas = _Schemas()
    schemas.of(m.ErrorResponse)
    paths: dict[str, Any] = {}
    for o in OPERATIONS:
        paths.setdefault(o.path, {})[o.method.lower()] = _operation(o, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Chisel", "version": version, "description":
                 "Chisel's HTTP and WebSocket API: the native routes under /v1, and ComfyUI-compatible routes "
                 "(also under /api) with ComfyUI's shapes. Errors are JSON {error: {kind, message}} with a 4xx/5xx "
                 "status (ComfyUI's /prompt answers {error: {type, message, details, extra_info}, node_errors}). "
                 "When the server has a token, send 'Authorization: Bearer TOKEN' (GET requests may pass ?token=). "
                 "The native workflow format is published at /v1/schema/workflow."},
        "paths": paths,
        "components": {"schemas": schemas.components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }


__all__ = ["OPERATIONS", "Operation", "comfy", "op", "openapi_document"]

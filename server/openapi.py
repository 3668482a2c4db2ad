"""The OpenAPI 3.1 description of the native API, served at ``/openapi.json``."""
from __future__ import annotations

import json
from typing import Any

from graph.workflow import json_schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


ERR = {"$ref": "#/components/responses/Error"}
PID = {"name": "prompt_id", "in": "path", "required": True, "schema": {"type": "string"}}
FOLDER = {"type": "string", "enum": ["output", "input", "temp"]}


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, tags: tuple[str, ...] = ("native",)) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": list(tags), "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def openapi_document(version: str) -> dict[str, Any]:
    workflow = json_schema()
    defs = workflow.pop("$defs", {})
    workflow.pop("$schema", None)
    workflow.pop("$id", None)
    # pydantic's $defs references become components
    workflow = json.loads(json.dumps(workflow).replace("#/$defs/", "#/components/schemas/"))
    defs = json.loads(json.dumps(defs).replace("#/$defs/", "#/components/schemas/"))

    schemas: dict[str, Any] = {
        **defs,
        "Workflow": workflow,
        "AnyWorkflow": {"description": "A native workflow, or ComfyUI's API format ({id: {class_type, inputs}}) or "
                                       "UI format (nodes, links); the latter two are converted on arrival.",
                        "type": "object"},
        "ChiselError": {"type": "object", "required": ["kind", "message"], "properties": {
            "kind": {"type": "string", "description": "stable error kind, e.g. value_out_of_range"},
            "message": {"type": "string"}, "node_id": {"type": ["string", "null"]},
            "input": {"type": ["string", "null"]}, "value": {}, "node_type": {"type": ["string", "null"]},
            "details": {"type": ["object", "null"]}}},
        "ErrorResponse": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "object", "required": ["kind", "message"],
                      "properties": {"kind": {"type": "string"}, "message": {"type": "string"}}},
            "errors": {"type": "array", "items": _ref("ChiselError")}}},
        "QueueItem": {"type": "object", "required": ["prompt_id", "number", "created"], "properties": {
            "prompt_id": {"type": "string"}, "number": {"type": "integer"},
            "client_id": {"type": ["string", "null"]}, "created": {"type": "number", "description": "epoch seconds"},
            "started": {"type": "number"}}},
        "Queue": {"type": "object", "required": ["running", "pending"], "properties": {
            "running": {"type": "array", "items": _ref("QueueItem")},
            "pending": {"type": "array", "items": _ref("QueueItem"), "description": "in the order they will run"}}},
        "HistoryEntry": {"type": "object", "properties": {
            "prompt_id": {"type": "string"}, "number": {"type": "integer"},
            "status": {"type": "string", "enum": ["queued", "running", "success", "error", "interrupted", "cancelled"]},
            "client_id": {"type": ["string", "null"]}, "workflow": _ref("Workflow"),
            "outputs": {"type": "object", "description": "node id -> ui, e.g. {images: [{filename, subfolder, type}]}",
                        "additionalProperties": {"type": "object"}},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            "errors": {"type": "array", "items": _ref("ChiselError")},
            "resolved": {"type": "object", "description": "values the engine chose, e.g. random seeds"},
            "executed": {"type": "array", "items": {"type": "string"}},
            "cached": {"type": "array", "items": {"type": "string"}},
            "skipped": {"type": "array", "items": {"type": "string"}},
            "created": {"type": "number"}, "started": {"type": ["number", "null"]},
            "finished": {"type": ["number", "null"]},
            "attempts": {"type": "integer", "description": "times a worker started it (2 after a crash re-run)"}}},
        "NodeSchema": {"type": "object", "properties": {
            "type": {"type": "string"}, "display_name": {"type": "string"}, "category": {"type": "string"},
            "description": {"type": "string"}, "version": {"type": "integer"}, "output_node": {"type": "boolean"},
            "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "type"], "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}, "default": {}, "min": {"type": "number"},
                "max": {"type": "number"}, "step": {"type": "number"}, "round": {"type": "number"},
                "choices": {"type": "array", "items": {"type": "string"}}, "multiline": {"type": "boolean"},
                "tooltip": {"type": "string"}, "optional": {"type": "boolean"}, "files": {"type": "string"},
                "seed": {"type": "boolean"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}}}}}},
        "FileRef": {"type": "object", "required": ["name", "subfolder", "type"], "properties": {
            "name": {"type": "string"}, "subfolder": {"type": "string"}, "type": FOLDER}},
    }
    paths: dict[str, Any] = {
        "/v1/auth": {"get": _op("Whether a token is required (answered without one)", {"200": _json(
            {"type": "object", "properties": {"required": {"type": "boolean"}}})})},
        "/v1/nodes": {"get": _op("Every node type's schema", {"200": _json(
            {"type": "object", "additionalProperties": _ref("NodeSchema")})})},
        "/v1/schema/workflow": {"get": _op("The workflow JSON Schema", {"200": _json({"type": "object"})})},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/v1/validate": {"post": _op("Check a workflow; every problem at once", {
            "200": _json({"type": "object", "required": ["valid", "errors"], "properties": {
                "valid": {"type": "boolean"}, "errors": {"type": "array", "items": _ref("ChiselError")}}}),
            "400": ERR}, body=_body({"type": "object", "required": ["workflow"], "properties": {
                "workflow": _ref("AnyWorkflow"), "set": {"type": "object"},
                "outputs": {"type": "array", "items": {"type": "string"}}}}))},
        "/v1/prompts": {"post": _op("Validate and queue a workflow (durable before the reply)", {
            "200": _json({"type": "object", "required": ["prompt_id", "number"], "properties": {
                "prompt_id": {"type": "string"}, "number": {"type": "integer"}}}),
            "400": _json(_ref("ErrorResponse"), "Invalid: error.kind is validation_failed and errors lists every "
                                                "problem; nothing was queued"),
            "409": ERR, "413": ERR, "429": ERR},
            body=_body({"type": "object", "required": ["workflow"], "properties": {
                "workflow": _ref("AnyWorkflow"),
                "set": {"type": "object", "description": "overrides {\"NODE.INPUT\": value}"},
                "client_id": {"type": "string", "description": "WebSocket client that receives this prompt's events"},
                "outputs": {"type": "array", "items": {"type": "string"}, "description": "node ids to compute"},
                "prompt_id": {"type": "string", "description": "choose the id (default: a UUID)"},
                "front": {"type": "boolean", "description": "queue at the front"}}}))},
        "/v1/prompts/{prompt_id}": {"delete": _op(
            "Cancel a queued prompt, or interrupt it when running", {
                "200": _json({"type": "object", "properties": {"prompt_id": {"type": "string"},
                                                               "status": {"enum": ["cancelled", "interrupting"]}}}),
                "404": ERR, "409": ERR}, params=[PID])},
        "/v1/queue": {"get": _op("Running and pending prompts", {"200": _json(_ref("Queue"))})},
        "/v1/queue/move": {"post": _op("Move a pending prompt (position 0 runs next)", {
            "200": _json(_ref("Queue")), "404": ERR, "409": ERR},
            body=_body({"type": "object", "required": ["prompt_id", "position"], "properties": {
                "prompt_id": {"type": "string"}, "position": {"type": "integer", "minimum": 0}}}))},
        "/v1/interrupt": {"post": _op("Interrupt the running prompt (only that one when prompt_id is given)", {
            "200": _json({"type": "object", "properties": {"interrupted": {"type": ["string", "null"]}}})},
            body=_body({"type": "object", "properties": {"prompt_id": {"type": "string"}}}, required=False))},
        "/v1/history": {"get": _op("Every prompt, newest first", {"200": _json({"type": "object", "properties": {
            "items": {"type": "array", "items": _ref("HistoryEntry")}}}), "400": ERR}, params=[
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
            _q("offset", {"type": "integer", "minimum": 0, "default": 0}),
            _q("status", {"type": "string"}, "comma-separated statuses to keep")])},
        "/v1/history/{prompt_id}": {
            "get": _op("One prompt's entry", {"200": _json(_ref("HistoryEntry")), "404": ERR}, params=[PID]),
            "delete": _op("Delete a finished prompt's entry", {"200": _json({"type": "object"}), "404": ERR,
                                                               "409": ERR}, params=[PID])},
        "/v1/view": {"get": _op("An image (or a thumbnail) from output, input or temp", {
            "200": {"description": "the file", "content": {"image/*": {}}}, "400": ERR, "403": ERR, "404": ERR},
            params=[_q("filename", {"type": "string"}, required=True), _q("subfolder", {"type": "string"}),
                    _q("type", FOLDER), _q("thumb", {"type": "integer", "minimum": 16, "maximum": 2048},
                                           "longest side of a downscaled copy"),
                    _q("format", {"type": "string", "enum": ["webp", "jpeg", "png"]}, "thumbnail format"),
                    _q("token", {"type": "string"}, "the token, for <img> URLs")])},
        "/v1/upload": {"post": _op("Upload an image or a mask", {"200": _json(_ref("FileRef")), "400": ERR,
                                                                 "403": ERR, "413": ERR, "415": ERR},
                                   body={"required": True, "content": {"multipart/form-data": {"schema": {
                                       "type": "object", "required": ["image"], "properties": {
                                           "image": {"type": "string", "format": "binary"}, "type": FOLDER,
                                           "subfolder": {"type": "string"}, "overwrite": {"type": "string"},
                                           "kind": {"enum": ["image", "mask"]},
                                           "original_ref": {"type": "string", "description":
                                                            "mask only: JSON {filename, subfolder, type} of the "
                                                            "image whose alpha the mask replaces"}}}}}})},
        "/v1/workflows": {"get": _op("Bundled workflows", {"200": _json({"type": "array", "items": {
            "type": "object", "properties": {"name": {"type": "string"}, "title": {"type": "string"}}}})})},
        "/v1/workflows/{name}": {"get": _op("A bundled workflow", {"200": _json(_ref("Workflow")), "404": ERR},
                                            params=[{"name": "name", "in": "path", "required": True,
                                                     "schema": {"type": "string"}}])},
        "/v1/workflow/from-png": {"post": _op("The workflow stored in a PNG's text chunks", {
            "200": _json({"type": "object", "properties": {"workflow": _ref("Workflow"),
                                                           "source": {"type": "string"}}}),
            "404": ERR, "415": ERR, "422": ERR},
            body={"required": True, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}})},
        "/v1/workflow/convert": {"post": _op("A workflow in any format Chisel imports, in the native format", {
            "200": _json({"type": "object", "properties": {"workflow": _ref("Workflow")}}), "400": ERR},
            body=_body({"type": "object", "required": ["workflow"], "properties": {
                "workflow": _ref("AnyWorkflow")}}))},
        "/v1/workflow/export": {"post": _op("A workflow in any format Chisel imports, in ComfyUI's UI or API format "
                                            "(or the native one)", {
            "200": _json({"type": "object", "required": ["workflow", "format"], "properties": {
                "workflow": {"type": "object"}, "format": {"enum": ["native", "comfy_ui", "comfy_api"]}}}),
            "400": ERR},
            body=_body({"type": "object", "required": ["workflow", "format"], "additionalProperties": False,
                        "properties": {"workflow": _ref("AnyWorkflow"),
                                       "format": {"enum": ["native", "comfy_ui", "comfy_api"]}}}))},
        "/v1/models/{kind}": {"get": _op("File names in a models folder", {"200": _json(
            {"type": "array", "items": {"type": "string"}}), "404": ERR}, params=[
            {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "checkpoints, loras, vae, embeddings, input, ..."}])},
        "/v1/system": {"get": _op("Devices, memory, cache statistics, versions", {"200": _json({"type": "object"})})},
        "/v1/free": {"post": _op("Unload models and/or free memory (between prompts)", {"200": _json(
            {"type": "object", "properties": {"unload_models": {"type": "boolean"}, "free_memory": {"type": "boolean"},
                                              "done": {"type": "boolean"}}})},
            body=_body({"type": "object", "properties": {"unload_models": {"type": "boolean"},
                                                         "free_memory": {"type": "boolean"}}}, required=False))},
        "/v1/ws": {"get": _op(
            "WebSocket. JSON frames {type, data}: hello {client_id}; queue {running, pending} (to everyone); for "
            "this client's prompts started, cached, executing, progress {value, max}, executed {ui}, error {error}, "
            "interrupted, finished {status, outputs, errors, ...}; each data has prompt_id and node_id. Binary "
            "frames: 4-byte big-endian type (1 = preview), 4-byte format (1 JPEG, 2 PNG), the image.",
            {"101": {"description": "switching protocols"}},
            params=[_q("client_id", {"type": "string"}), _q("token", {"type": "string"})])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Chisel", "version": version, "description":
                 "Chisel's native HTTP and WebSocket API. Errors are JSON {error: {kind, message}} with a 4xx/5xx "
                 "status. When the server has a token, send 'Authorization: Bearer TOKEN' (GET requests may pass "
                 "?token=). ComfyUI-compatible routes (/prompt, /queue, /history, /object_info, /view, "
                 "/upload/image, /upload/mask, /interrupt, /free, /system_stats, /ws, also under /api) are served "
                 "beside these with ComfyUI's shapes."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": _json(_ref("ErrorResponse"), "Error")},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }

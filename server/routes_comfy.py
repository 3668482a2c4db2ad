"""ComfyUI-compatible routes (also under ``/api``), with ComfyUI's payload shapes, on Chisel's own queue.

Shapes follow ComfyUI's server (its node schemas are kept in ``tests/data/comfyui``): ``/prompt``, ``/queue``,
``/history``, ``/object_info``, ``/view``, ``/upload/image``, ``/upload/mask``, ``/interrupt``, ``/free``,
``/system_stats``, ``/embeddings``, ``/models``; with the routes of the ``comfy_*`` modules: ``/ws`` and
``/features`` (comfy_ws), ``/jobs`` (comfy_jobs), ``/users``, ``/settings``, ``/userdata`` (comfy_userdata),
``/extensions`` and ``/i18n`` (comfy_frontend).
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from graph.errors import WorkflowError

from . import comfy_frontend, comfy_jobs, comfy_userdata, comfy_ws, files
from .comfy_history import DONE, comfy_queue, history_item, queue_entry
from .errors import ApiError, json_response
from .routes_native import clear_or_delete, do_free, get_view, post_upload, srv
from .schemas import ComfyFree, ComfyHistoryQuery, ComfyInterrupt, ComfyPromptRequest, parse_body, parse_query
from .service import ChiselServer
from .system import comfy_system_stats

# Chisel's error kinds as ComfyUI's node error types.
ERROR_TYPES = {"required_input_missing": "required_input_missing", "link_to_missing_node": "bad_linked_input",
               "link_to_missing_output": "bad_linked_input", "type_mismatch": "return_type_mismatch",
               "invalid_type": "invalid_input_type", "invalid_choice": "value_not_in_list",
               "file_not_found": "value_not_in_list", "cycle": "dependency_cycle", "unknown_input": "unknown_input"}


def _prompt_error(type_: str, message: str, details: str = "", status: int = 400, **extra: Any) -> ApiError:
    return ApiError(status, type_, message, body={"error": {"type": type_, "message": message, "details": details,
                                                            "extra_info": extra}, "node_errors": {}})


def comfy_validation_error(exc: WorkflowError, prompt: Any, registry: Any) -> ApiError:
    """Chisel's structured errors in ComfyUI's ``{error, node_errors}`` shape."""
    node_errors: dict[str, Any] = {}
    top: dict[str, Any] | None = None
    classes = {str(k): v.get("class_type") for k, v in prompt.items() if isinstance(v, dict)} \
        if isinstance(prompt, dict) else {}
    for e in exc.errors:
        if e.kind == "no_outputs":
            top = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": e.message,
                   "extra_info": {}}
            continue
        if e.kind == "unknown_node_type":
            top = {"type": "invalid_prompt", "message": f"Cannot execute because node {e.value} does not exist.",
                   "details": f"Node ID '#{e.node_id}'", "extra_info": {}}
            continue
        if e.node_id is None:
            top = {"type": "invalid_prompt", "message": e.message, "details": "", "extra_info": {}}
            continue
        kind = ERROR_TYPES.get(e.kind, e.kind)
        if e.kind == "value_out_of_range":
            kind = "value_smaller_than_min" if "below" in e.message else "value_bigger_than_max"
        entry = node_errors.setdefault(str(e.node_id), {"errors": [], "dependent_outputs": [],
                                                        "class_type": classes.get(str(e.node_id), e.node_type)})
        entry["errors"].append({"type": kind, "message": e.message,
                                "details": f"{e.input}: {e.message}" if e.input else e.message,
                                "extra_info": {"input_name": e.input, "received_value": e.to_dict()["value"]}})
    if isinstance(prompt, dict):
        outs = _output_nodes(prompt, registry)
        for nid, entry in node_errors.items():
            entry["dependent_outputs"] = [o for o in outs if nid in _ancestors(prompt, o)]
    if top is None:
        top = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
               "details": "", "extra_info": {}}
    return ApiError(400, top["type"], top["message"], body={"error": top, "node_errors": node_errors})


def _output_nodes(prompt: dict[str, Any], registry: Any) -> list[str]:
    out = []
    for nid, spec in prompt.items():
        type_name = spec.get("class_type") if isinstance(spec, dict) else None
        cls = registry.get(type_name) if isinstance(type_name, str) else None
        if cls is not None and cls.output_node:
            out.append(str(nid))
    return out


def _ancestors(prompt: dict[str, Any], nid: str) -> set[str]:
    seen, stack = {nid}, [nid]
    while stack:
        spec = prompt.get(stack.pop())
        for value in ((spec or {}).get("inputs") or {}).values() if isinstance(spec, dict) else ():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and str(value[0]) not in seen:
                seen.add(str(value[0]))
                stack.append(str(value[0]))
    return seen


# -- /prompt and the queue ------------------------------------------------------------------------------------------
async def post_prompt(request: web.Request) -> web.Response:
    server = srv(request)
    try:
        body = await parse_body(request, ComfyPromptRequest, server.config.max_json_bytes)
    except ApiError as exc:
        if exc.status == 413:
            raise
        raise _prompt_error("invalid_prompt", exc.message, **exc.extra) from None
    prompt, extra, number, front = body.prompt, body.extra_data or {}, body.number, bool(body.front)
    client_id = body.client_id or extra.get("client_id")
    targets = body.partial_execution_targets
    outputs = [str(t) for t in targets] if targets else None
    from .routes_native import _client_id

    try:
        prompt_id, seq, _ = await server.submit(prompt, outputs=outputs, client_id=_client_id(client_id) if client_id
                                                else None, prompt_id=body.prompt_id, front=front,
                                                priority=number if number is not None and not front else None,
                                                prompt_api=prompt, extra_data=extra)
    except WorkflowError as exc:
        raise comfy_validation_error(exc, prompt, server.registry) from None
    except ApiError as exc:
        if exc.body is None:
            raise _prompt_error(exc.kind, exc.message, status=exc.status) from None
        raise
    return json_response({"prompt_id": prompt_id, "number": seq, "node_errors": {}})


async def get_prompt(request: web.Request) -> web.Response:
    snap = await srv(request).queue_snapshot(False)
    return json_response({"exec_info": {"queue_remaining": snap["remaining"]}})


async def get_queue(request: web.Request) -> web.Response:
    server = srv(request)
    running, pending = await comfy_queue(server)
    return json_response({"queue_running": [queue_entry(server, r) for r in running],
                          "queue_pending": [queue_entry(server, r) for r in pending]})


async def post_queue(request: web.Request) -> web.Response:
    server = srv(request)
    await clear_or_delete(request, server, server.store.cancel)
    server.hub.queue_changed()
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, ComfyInterrupt, server.config.max_json_bytes, allow_empty=True)
    if server.worker is not None:
        server.worker.interrupt(body.prompt_id)
    return web.Response(status=200)


# -- history ------------------------------------------------------------------------------------------------------------
async def get_history(request: web.Request) -> web.Response:
    server = srv(request)
    q = parse_query(request, ComfyHistoryQuery)
    max_items, offset = q.max_items, q.offset
    if offset < 0:  # the newest max_items, oldest first (as ComfyUI lists them)
        rows = list(reversed(await server.db(server.store.history, max_items, 0, DONE, True)))
    else:
        rows = await server.db(server.store.history, max_items, offset, DONE, False)
    return json_response({r["prompt_id"]: history_item(server, r) for r in rows})


async def get_history_entry(request: web.Request) -> web.Response:
    server = srv(request)
    pid = request.match_info["prompt_id"]
    row = await server.db(server.store.get, pid)
    if row is None or row["status"] not in DONE:
        return json_response({})
    return json_response({pid: history_item(server, row)})


async def post_history(request: web.Request) -> web.Response:
    server = srv(request)
    await clear_or_delete(request, server, server.store.delete)
    return web.Response(status=200)


# -- node schemas ---------------------------------------------------------------------------------------------------------
def object_info_entry(schema: dict[str, Any], module: str = "nodes") -> dict[str, Any]:
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for inp in schema["inputs"]:
        opts = {k: inp[k] for k in ("default", "min", "max", "step", "round", "multiline", "tooltip") if k in inp}
        if inp.get("seed"):
            opts["control_after_generate"] = True
        if inp.get("files") == "input":
            opts["image_upload"] = True
        spec = [inp.get("choices", []), opts] if inp["type"] == "COMBO" or "choices" in inp else [inp["type"], opts]
        (optional if inp.get("optional") else required)[inp["name"]] = spec
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, Any] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    outs = schema["outputs"]
    return {"input": inputs, "input_order": order, "output": [o["type"] for o in outs],
            "output_is_list": [False] * len(outs), "output_name": [o["name"] for o in outs],
            "output_tooltips": [o.get("tooltip", "") for o in outs], "name": schema["type"],
            "display_name": schema.get("display_name") or schema["type"], "description": schema.get("description", ""),
            "python_module": module, "category": schema.get("category", ""), "output_node": schema["output_node"],
            "deprecated": False, "experimental": False}


def _module(server: ChiselServer, type_name: str) -> str:
    cls = server.registry.get(type_name)
    mod = getattr(cls, "__module__", "nodes")
    return "custom_nodes." + mod.split(".", 1)[1] if mod.startswith("chisel_custom_nodes.") else mod.split(".")[0]


async def get_object_info(request: web.Request) -> web.Response:
    server = srv(request)
    schemas = await asyncio.to_thread(server.registry.schemas, server.paths)
    return json_response({name: object_info_entry(s, _module(server, name)) for name, s in schemas.items()})


async def get_object_info_class(request: web.Request) -> web.Response:
    server = srv(request)
    name = request.match_info["node_class"]
    cls = server.registry.get(name)
    if cls is None:
        return json_response({})
    schema = await asyncio.to_thread(cls.schema, server.paths)
    return json_response({name: object_info_entry(schema, _module(server, name))})


# -- files, system, WebSocket ----------------------------------------------------------------------------------------------
async def post_upload_mask(request: web.Request) -> web.Response:
    server = srv(request)
    return json_response(await files.upload(request, server.paths, server.config.max_upload_bytes, mask=True,
                                            max_pixels=server.config.max_upload_pixels))


async def post_free(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, ComfyFree, server.config.max_json_bytes, allow_empty=True)
    await do_free(server, bool(body.unload_models), bool(body.free_memory))
    return web.Response(status=200)


async def get_system_stats(request: web.Request) -> web.Response:
    server = srv(request)
    return json_response(await asyncio.to_thread(lambda: comfy_system_stats(server.services, server.cluster_workers())))


async def get_embeddings(request: web.Request) -> web.Response:
    server = srv(request)
    names = await asyncio.to_thread(server.paths.list, "embeddings")
    return json_response([n.rsplit(".", 1)[0] for n in names])


async def get_model_folders(request: web.Request) -> web.Response:
    return json_response(sorted(k for k in srv(request).paths.folders
                                if k not in ("custom_nodes", "input", "output", "temp")))


async def get_model_folder(request: web.Request) -> web.Response:
    server = srv(request)
    kind = request.match_info["folder"]
    if kind not in server.paths.folders or kind in ("custom_nodes", "input", "output", "temp"):
        raise ApiError(404, "not_found", f"no models folder {kind!r}")
    return json_response(await asyncio.to_thread(server.paths.list, kind))


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/api"):
        r = app.router
        r.add_post(prefix + "/prompt", post_prompt)
        r.add_get(prefix + "/prompt", get_prompt)
        r.add_get(prefix + "/queue", get_queue)
        r.add_post(prefix + "/queue", post_queue)
        r.add_get(prefix + "/history", get_history)
        r.add_post(prefix + "/history", post_history)
        r.add_get(prefix + "/history/{prompt_id}", get_history_entry)
        r.add_get(prefix + "/object_info", get_object_info)
        r.add_get(prefix + "/object_info/{node_class}", get_object_info_class)
        r.add_get(prefix + "/view", get_view)
        r.add_post(prefix + "/upload/image", post_upload)
        r.add_post(prefix + "/upload/mask", post_upload_mask)
        r.add_post(prefix + "/interrupt", post_interrupt)
        r.add_post(prefix + "/free", post_free)
        r.add_get(prefix + "/system_stats", get_system_stats)
        r.add_get(prefix + "/embeddings", get_embeddings)
        r.add_get(prefix + "/models", get_model_folders)
        r.add_get(prefix + "/models/{folder}", get_model_folder)
        for module in (comfy_ws, comfy_jobs, comfy_userdata, comfy_frontend):
            module.add_routes(app, prefix)


__all__ = ["add_routes", "object_info_entry", "comfy_validation_error"]

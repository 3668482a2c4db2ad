"""The native API under ``/v1`` (described by ``/openapi.json``), the WebSocket ``/v1/ws`` and the canvas' files."""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

from aiohttp import web

from graph.comfy_format import export
from graph.errors import WorkflowError
from graph.validate import all_errors
from graph.workflow import json_schema, parse_workflow

from . import files
from . import schemas as m
from . import store as S
from .errors import ApiError, json_response
from .hub import NATIVE, Connection
from .schemas import parse_body, parse_query
from .security import SIGNED_IN, safe_join
from .service import ID_RE, ChiselServer, apply_overrides
from .system import CHISEL_VERSION, system_info

SERVER: web.AppKey[ChiselServer] = web.AppKey("chisel_server", ChiselServer)
NAME_RE = re.compile(m.WORKFLOW_NAME_PATTERN)


def srv(request: web.Request) -> ChiselServer:
    return request.app[SERVER]


async def prompt_row(server: ChiselServer, pid: str) -> dict:
    """The stored prompt, or a 404."""
    row = await server.db(server.store.get, pid)
    if row is None:
        raise ApiError(404, "not_found", f"no prompt {pid}")
    return row


async def clear_or_delete(request: web.Request, server: ChiselServer, remove) -> None:
    """ComfyUI's ``{clear: true}`` / ``{delete: [prompt ids]}`` bodies: ``remove(None)`` clears, ``remove(ids)``
    deletes those."""
    body = await parse_body(request, m.ComfyClearDelete, server.config.max_json_bytes, allow_empty=True)
    if body.clear:
        await server.db(remove, None)
    if body.delete is not None:
        await server.db(remove, body.delete)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi] (400 ``invalid_parameter`` otherwise); ``default`` when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer, not {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}")
    return value


def _client_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ApiError(400, "invalid_request", "client_id must be 1-128 letters, digits or ._:-")
    return value


def _outputs(value: list[str | int] | None) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def invalid(exc: WorkflowError, server: ChiselServer) -> ApiError:
    errors = [server.clean_error(e.to_dict()) for e in exc.errors]
    n = len(errors)
    return ApiError(400, "validation_failed", f"the workflow has {n} problem{'s' if n != 1 else ''}; nothing was queued",
                    errors=errors)


# -- meta ----------------------------------------------------------------------------------------------------------------
async def get_auth(request: web.Request) -> web.Response:
    required = bool(srv(request).config.token)
    # signed_in: this browser's sign-in cookie (set by opening the page with ?token=) stands for the token
    return json_response({"required": required, "signed_in": required and bool(request.get(SIGNED_IN, False))})


async def get_nodes(request: web.Request) -> web.Response:
    server = srv(request)
    return json_response(await asyncio.to_thread(server.registry.schemas, server.paths))


async def get_workflow_schema(request: web.Request) -> web.Response:
    return json_response(json_schema())


async def get_openapi(request: web.Request) -> web.Response:
    from .openapi import openapi_document

    return json_response(openapi_document(CHISEL_VERSION))


async def post_validate(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, m.ValidateRequest, server.config.max_json_bytes)
    overrides = body.set or {}
    outputs = _outputs(body.outputs)

    def check() -> list[dict[str, Any]]:
        try:
            wf = parse_workflow(body.workflow, server.registry)
        except WorkflowError as exc:  # not a workflow that can be read: a bad request, as on the other routes
            raise ApiError(400, "invalid_workflow", "the workflow cannot be read",
                           errors=[server.clean_error(e.to_dict()) for e in exc.errors]) from None
        try:
            if overrides:
                wf = apply_overrides(wf, overrides)
        except WorkflowError as exc:
            return [e.to_dict() for e in exc.errors]
        if outputs is not None:
            _, errs = server.engine.validate(wf, outputs)
            return [e.to_dict() for e in errs]
        return [e.to_dict() for e in all_errors(wf, server.registry, server.paths)]

    errors = await asyncio.to_thread(check)
    return json_response({"valid": not errors, "errors": [server.clean_error(e) for e in errors]})


# -- the queue -------------------------------------------------------------------------------------------------------------
async def post_prompts(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, m.PromptRequest, server.config.max_json_bytes)
    try:
        prompt_id, number, _ = await server.submit(
            body.workflow, overrides=body.set, outputs=_outputs(body.outputs), client_id=body.client_id,
            prompt_id=body.prompt_id, front=body.front)
    except WorkflowError as exc:
        raise invalid(exc, server) from None
    return json_response({"prompt_id": prompt_id, "number": number})


async def get_queue(request: web.Request) -> web.Response:
    snap = await srv(request).queue_snapshot(True)
    return json_response({"running": snap["running"], "pending": snap["pending"]})


async def post_queue_move(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, m.QueueMoveRequest, server.config.max_json_bytes)
    pid, position = body.prompt_id, body.position
    try:
        await server.db(server.store.move, pid, position)
    except S.NotFound:
        raise ApiError(404, "not_found", f"no prompt {pid}") from None
    except S.Conflict as exc:
        raise ApiError(409, "conflict", str(exc), extra={"status": exc.status}) from None
    server.hub.queue_changed()
    snap = await server.queue_snapshot(True)
    return json_response({"running": snap["running"], "pending": snap["pending"]})


async def delete_prompt(request: web.Request) -> web.Response:
    server = srv(request)
    pid = request.match_info["prompt_id"]
    row = await prompt_row(server, pid)
    if row["status"] == S.QUEUED:
        cancelled = await server.db(server.store.cancel, [pid])
        if cancelled:
            server.hub.queue_changed()
            return json_response({"prompt_id": pid, "status": S.CANCELLED})
        row = await server.db(server.store.get, pid) or row  # it started meanwhile
    if row["status"] == S.RUNNING:
        if server.worker is not None and server.worker.interrupt(pid):
            return json_response({"prompt_id": pid, "status": "interrupting"})
        raise ApiError(409, "conflict", f"prompt {pid} has finished running and is saving its files",
                       extra={"status": row["status"]})
    raise ApiError(409, "conflict", f"prompt {pid} is already {row['status']}; DELETE /v1/history/{pid} removes it",
                   extra={"status": row["status"]})


async def post_interrupt(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, m.InterruptRequest, server.config.max_json_bytes, allow_empty=True)
    done = server.worker.interrupt(body.prompt_id) if server.worker is not None else None
    return json_response({"interrupted": done})


# -- history -------------------------------------------------------------------------------------------------------------
async def get_history(request: web.Request) -> web.Response:
    server = srv(request)
    q = parse_query(request, m.HistoryQuery)
    statuses = q.status.split(",") if q.status else None
    rows = await server.db(server.store.history, q.limit, q.offset, statuses)
    return json_response({"items": [server.history_entry(r) for r in rows]})


async def get_history_entry(request: web.Request) -> web.Response:
    server = srv(request)
    pid = request.match_info["prompt_id"]
    row = await prompt_row(server, pid)
    return json_response(server.history_entry(row))


async def delete_history_entry(request: web.Request) -> web.Response:
    server = srv(request)
    pid = request.match_info["prompt_id"]
    row = await prompt_row(server, pid)
    if row["status"] not in S.FINISHED_STATES:
        raise ApiError(409, "conflict", f"prompt {pid} is {row['status']}: cancel it first (DELETE /v1/prompts/{pid})",
                       extra={"status": row["status"]})
    await server.db(server.store.delete, [pid])
    return json_response({"deleted": pid})


# -- files -------------------------------------------------------------------------------------------------------------------
async def get_view(request: web.Request) -> web.StreamResponse:
    server = srv(request)
    parse_query(request, m.ViewQuery)
    return await files.view(request, server.paths, server.writer, server.thumbs)


async def post_upload(request: web.Request) -> web.Response:
    server = srv(request)
    return json_response(await files.upload(request, server.paths, server.config.max_upload_bytes,
                                            max_pixels=server.config.max_upload_pixels))


async def post_workflow_from_png(request: web.Request) -> web.Response:
    server = srv(request)
    return json_response(await files.workflow_from_png(request, server.registry, server.config.max_upload_bytes))


async def post_workflow_convert(request: web.Request) -> web.Response:
    """Any workflow format Chisel imports (native, ComfyUI API, ComfyUI UI) -> the native format."""
    server = srv(request)
    body = await parse_body(request, m.ConvertRequest, server.config.max_json_bytes)
    try:
        wf = await asyncio.to_thread(parse_workflow, body.workflow, server.registry)
    except WorkflowError as exc:
        raise ApiError(400, "invalid_workflow", "the workflow cannot be converted",
                       errors=[server.clean_error(e.to_dict()) for e in exc.errors]) from None
    return json_response({"workflow": wf.to_dict()})


async def post_workflow_export(request: web.Request) -> web.Response:
    """A workflow in any format Chisel imports -> "comfy_ui", "comfy_api" or "native"."""
    server = srv(request)
    body = await parse_body(request, m.ExportRequest, server.config.max_json_bytes)
    try:
        wf = await asyncio.to_thread(parse_workflow, body.workflow, server.registry)
        out = await asyncio.to_thread(export, wf, body.format, server.registry)
    except WorkflowError as exc:
        raise ApiError(400, "invalid_workflow", "the workflow cannot be read",
                       errors=[server.clean_error(e.to_dict()) for e in exc.errors]) from None
    return json_response({"workflow": out, "format": body.format})


def _workflow_files(server: ChiselServer) -> list[dict[str, Any]]:
    folder = server.config.workflows_dir
    out = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue
            title = path.stem
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                meta = data.get("meta") if isinstance(data, dict) else None
                if isinstance(meta, dict):
                    title = meta.get("title") or meta.get("name") or title
            except (OSError, ValueError):
                continue
            out.append({"name": path.stem, "title": title})
    return out


async def get_workflows(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_workflow_files, srv(request)))


async def get_workflow(request: web.Request) -> web.Response:
    server = srv(request)
    name = request.match_info["name"]
    if name.endswith(".json"):
        name = name[:-5]
    if not NAME_RE.match(name):
        raise ApiError(400, "invalid_name", "workflow names are letters, digits and _.-")
    folder = server.config.workflows_dir
    path = safe_join(folder, "", name + ".json") if folder.is_dir() else None
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", f"no bundled workflow {name!r}")
    try:
        data = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    except ValueError:
        raise ApiError(500, "invalid_workflow_file", f"workflows/{name}.json is not valid JSON") from None
    return json_response(data)


async def get_models(request: web.Request) -> web.Response:
    server = srv(request)
    kind = request.match_info["kind"]
    kinds = sorted(k for k in server.paths.folders if k != "custom_nodes")
    if kind not in kinds:
        raise ApiError(404, "not_found", f"no models folder {kind!r}; folders: {', '.join(kinds)}")
    return json_response(await asyncio.to_thread(server.paths.list, kind))


# -- system --------------------------------------------------------------------------------------------------------------------
async def get_system(request: web.Request) -> web.Response:
    server = srv(request)
    counts = await server.db(server.store.counts)
    queue = {"running": counts.get(S.RUNNING, 0), "pending": counts.get(S.QUEUED, 0)}
    info = await asyncio.to_thread(lambda: system_info(server.engine, server.services, queue, server.cluster_workers()))
    return json_response(info)


async def do_free(server: ChiselServer, unload_models: bool, free_memory: bool) -> bool:
    """Ask the worker to free between prompts; wait for it when nothing is running. True when done."""
    if server.worker is None:
        return False
    future = server.worker.request_free(unload_models, free_memory)
    if server.worker.running() is not None:
        return False
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout=30)
        return True
    except asyncio.TimeoutError:
        return False


async def post_free(request: web.Request) -> web.Response:
    server = srv(request)
    body = await parse_body(request, m.FreeRequest, server.config.max_json_bytes, allow_empty=True)
    unload, free = body.unload_models, body.free_memory
    done = await do_free(server, unload, free)
    return json_response({"unload_models": unload, "free_memory": free, "done": done})


# -- WebSocket ---------------------------------------------------------------------------------------------------------------------
async def ws_native(request: web.Request) -> web.WebSocketResponse:
    """Chisel's WebSocket ``/v1/ws`` (ComfyUI's ``/ws`` is :mod:`server.comfy_ws`). ``previews=none`` (the canvas's
    "no previews" setting): no binary preview frames, and none are made for it."""
    server = srv(request)
    previews = request.query.get("previews", "latent2rgb").lower() not in ("none", "0", "false")
    client_id = _client_id(request.query.get("client_id")) or uuid.uuid4().hex
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=65536)
    await ws.prepare(request)
    conn = Connection(ws, client_id, NATIVE, previews=previews)
    # The first frame, before any broadcast can reach the connection: `hello`, then the queue.
    conn.put(json.dumps({"type": "hello", "data": {"client_id": client_id, "version": CHISEL_VERSION}}))
    server.hub.add(conn)
    try:
        snap = await server.queue_snapshot(True)
        conn.put(json.dumps({"type": "queue", "data": {"running": snap["running"], "pending": snap["pending"]}}))
        async for _ in ws:  # clients have nothing to say; reading keeps the connection and its pings alive
            pass
    finally:
        server.hub.remove(conn)
    return ws


# -- the canvas -----------------------------------------------------------------------------------------------------------------------
PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>Chisel</title>
<p>Chisel is running. The canvas (web/index.html) is not installed; the API is described at
<a href="/openapi.json">/openapi.json</a>.</p>"""


async def get_index(request: web.Request) -> web.StreamResponse:
    index = srv(request).config.web_dir / "index.html"
    if index.is_file():
        return web.FileResponse(index, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"})
    return web.Response(text=PLACEHOLDER, content_type="text/html")


async def no_canvas(request: web.Request) -> web.StreamResponse:
    raise ApiError(404, "not_found", "the canvas is not installed")


async def static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The canvas' files are re-checked on every load and never sniffed into another type."""
    if request.path.startswith("/web/") and response.status < 400:
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.endswith((".js", ".mjs")):  # the HTML standard's name for JavaScript
            response.headers["Content-Type"] = "text/javascript; charset=utf-8"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", get_index)
    web_dir = app[SERVER].config.web_dir
    if web_dir.is_dir():  # aiohttp's static route: no directory listing, symlinks out of the folder refused
        r.add_static("/web/", web_dir, name="web")
        app.on_response_prepare.append(static_headers)
    else:
        r.add_get("/web/{path:.+}", no_canvas)
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/v1/auth", get_auth)
    r.add_get("/v1/nodes", get_nodes)
    r.add_get("/v1/schema/workflow", get_workflow_schema)
    r.add_post("/v1/validate", post_validate)
    r.add_post("/v1/prompts", post_prompts)
    r.add_delete("/v1/prompts/{prompt_id}", delete_prompt)
    r.add_get("/v1/queue", get_queue)
    r.add_post("/v1/queue/move", post_queue_move)
    r.add_post("/v1/interrupt", post_interrupt)
    r.add_get("/v1/history", get_history)
    r.add_get("/v1/history/{prompt_id}", get_history_entry)
    r.add_delete("/v1/history/{prompt_id}", delete_history_entry)
    r.add_get("/v1/view", get_view)
    r.add_post("/v1/upload", post_upload)
    r.add_get("/v1/workflows", get_workflows)
    r.add_get("/v1/workflows/{name}", get_workflow)
    r.add_post("/v1/workflow/from-png", post_workflow_from_png)
    r.add_post("/v1/workflow/convert", post_workflow_convert)
    r.add_post("/v1/workflow/export", post_workflow_export)
    r.add_get("/v1/models/{kind}", get_models)
    r.add_get("/v1/system", get_system)
    r.add_post("/v1/free", post_free)
    r.add_get("/v1/ws", ws_native)

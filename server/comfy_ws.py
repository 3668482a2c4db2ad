"""ComfyUI's WebSocket ``/ws?clientId=`` and its feature negotiation.

The first frame is ``status`` with the ``sid``. A client that opens with ``{"type": "feature_flags", "data": {...}}``
is answered with the server's flags (the same object as ``GET /features``). Binary preview frames (type 1, JPEG)
go to ComfyUI clients only when the server runs with a preview method other than ``none`` (``chisel serve
--preview-method``), as ComfyUI: some clients take every binary frame for an output image."""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from .errors import json_response
from .hub import COMFY, Connection, comfy_status
from .routes_native import _client_id, srv

log = logging.getLogger("chisel.server")

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


def server_features(request: web.Request) -> dict[str, Any]:
    """What this server supports, in ComfyUI's feature-flag names. Previews carry no metadata (binary type 1)."""
    config = srv(request).config
    return {"supports_preview_metadata": False, "max_upload_size": config.max_upload_bytes}


def comfy_previews(request: web.Request) -> bool:
    return getattr(srv(request).config, "preview_method", "none") != "none"


async def get_features(request: web.Request) -> web.Response:
    return json_response(server_features(request))


async def ws_comfy(request: web.Request) -> web.WebSocketResponse:
    server = srv(request)
    client_id = _client_id(request.query.get("clientId") or request.query.get("client_id")) or uuid.uuid4().hex
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=65536)
    await ws.prepare(request)
    conn = Connection(ws, client_id, COMFY, previews=comfy_previews(request))
    conn.put(json.dumps(comfy_status((await server.queue_snapshot(False))["remaining"], sid=client_id)))
    server.hub.add(conn)
    first = True
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if first:
                first = False
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") == "feature_flags":
                    conn.put(json.dumps({"type": "feature_flags", "data": server_features(request)}))
    finally:
        server.hub.remove(conn)
    return ws


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/ws", ws_comfy)
    app.router.add_get(prefix + "/features", get_features)


__all__ = ["add_routes", "PREVIEW_METHODS", "server_features"]

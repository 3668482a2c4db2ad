"""WebSocket connections: each prompt's events go to the client that submitted it, queue status to everyone.

Two dialects share the stream. Native clients (``/v1/ws``) get ``{type, data}`` frames named after the engine's
events (``started``, ``cached``, ``executing``, ``progress``, ``executed``, ``error``, ``interrupted``,
``finished``) plus ``queue`` broadcasts. ComfyUI clients (``/ws``) get ComfyUI's message types (``status``,
``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``executed``, ``execution_success``,
``execution_error``, ``execution_interrupted``). Binary preview frames go to the connections that asked for them
(native ones always; ComfyUI's only when the server runs with a preview method, as ComfyUI). Every connection has its own
outgoing queue and sender task, so frames keep their order and one slow client never holds up the others.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import WSCloseCode, web

log = logging.getLogger("chisel.server")

NATIVE, COMFY = "native", "comfy"
MAX_BACKLOG = 5000  # frames waiting for one client before it is dropped as too slow


class Connection:
    def __init__(self, ws: web.WebSocketResponse, client_id: str, dialect: str, previews: bool = True):
        self.ws, self.client_id, self.dialect = ws, client_id, dialect
        self.previews = previews  # binary preview frames: asked for per connection (ComfyUI's /ws: --preview-method)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.closed = False

    def put(self, frame: str | bytes, droppable: bool = False) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_BACKLOG:
            if droppable:
                return
            self.closed = True
            log.warning("dropping WebSocket client %s: %d frames behind", self.client_id, self.queue.qsize())
            asyncio.ensure_future(self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow"))
            return
        self.queue.put_nowait(frame)

    async def run_sender(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                if frame is None or self.ws.closed:
                    return
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return


class _PromptState:
    """What the ComfyUI translation remembers about a running prompt."""

    def __init__(self) -> None:
        self.cached_sent = False
        self.executed: list[str] = []


class Hub:
    def __init__(self, queue_snapshot: Callable[[bool], Awaitable[dict[str, Any]]], debug: bool = False,
                 throttle: float = 0.05):
        self.queue_snapshot = queue_snapshot  # (with_lists) -> {"running": [...], "pending": [...], "remaining": n}
        self.debug = debug
        self.throttle = throttle
        self.by_client: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self._states: dict[str, _PromptState] = {}
        self._queue_dirty = False
        self._queue_task: asyncio.Task | None = None
        self.preview_clients: set[str] = set()  # read from the worker thread: who would receive a preview

    # -- connections ------------------------------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.by_client.setdefault(conn.client_id, set()).add(conn)
        self._update_preview_clients()
        conn.task = asyncio.ensure_future(conn.run_sender())

    def remove(self, conn: Connection) -> None:
        conn.closed = True
        self.connections.discard(conn)
        conns = self.by_client.get(conn.client_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_client[conn.client_id]
        self._update_preview_clients()
        conn.queue.put_nowait(None)

    def _update_preview_clients(self) -> None:
        self.preview_clients = {c.client_id for c in self.connections if c.previews}

    def wants_preview(self, client_id: str | None) -> bool:
        return client_id is not None and client_id in self.preview_clients

    async def close_all(self) -> None:
        for conn in list(self.connections):
            conn.closed = True
            try:
                await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            except Exception:
                pass

    # -- queue status -----------------------------------------------------------------------------------------
    def queue_changed(self) -> None:
        """Coalesce queue broadcasts: at most one per ``throttle`` seconds, the latest state always sent."""
        self._queue_dirty = True
        if self._queue_task is None or self._queue_task.done():
            self._queue_task = asyncio.ensure_future(self._broadcast_queue())

    async def _broadcast_queue(self) -> None:
        while self._queue_dirty:
            self._queue_dirty = False
            if self.connections:
                try:
                    snap = await self.queue_snapshot(any(c.dialect == NATIVE for c in self.connections))
                except Exception:
                    log.exception("queue snapshot failed")
                    return
                native = json.dumps({"type": "queue", "data": {"running": snap["running"], "pending": snap["pending"]}})
                comfy = json.dumps(comfy_status(snap["remaining"]))
                for conn in list(self.connections):
                    conn.put(native if conn.dialect == NATIVE else comfy)
            await asyncio.sleep(self.throttle)

    # -- prompt events ------------------------------------------------------------------------------------------
    def _targets(self, client_id: str | None) -> list[Connection]:
        return list(self.by_client.get(client_id, ())) if client_id is not None else []

    def event(self, msg: dict[str, Any]) -> None:
        """An engine event of one prompt (from the worker)."""
        pid, etype = msg["prompt_id"], msg["type"]
        state = self._states.setdefault(pid, _PromptState())
        if etype == "executed" and msg["node_id"] is not None:
            state.executed.append(msg["node_id"])
        targets = self._targets(msg["client_id"])
        if not targets:
            return
        data = self._clean(msg["data"])
        native = json.dumps({"type": etype, "data": {"prompt_id": pid, "node_id": msg["node_id"], "time": msg["time"],
                                                     **data}}, default=repr)
        comfy = [json.dumps(m, default=repr) for m in self._comfy_messages(state, msg, data)]
        for conn in targets:
            if conn.dialect == NATIVE:
                conn.put(native)
            else:
                for frame in comfy:
                    conn.put(frame)
            if msg.get("preview") is not None and conn.previews:
                conn.put(msg["preview"], droppable=True)

    def finished(self, msg: dict[str, Any]) -> None:
        """A prompt's record is final (from the finisher)."""
        pid = msg["prompt_id"]
        state = self._states.pop(pid, None) or _PromptState()
        targets = self._targets(msg["client_id"])
        if not targets:
            return
        result = msg["result"]
        data = {"prompt_id": pid, "node_id": None, "time": msg["time"], "status": msg["status"],
                "executed": result["executed"], "cached": result["cached"], "outputs": result["outputs"],
                "timings": result["timings"], "errors": [self.clean_error(e) for e in result["errors"]],
                "resolved": result["resolved"]}
        native = json.dumps({"type": "finished", "data": data}, default=repr)
        comfy = []
        ts = int(msg["time"] * 1000)
        if not state.cached_sent:
            comfy.append({"type": "execution_cached", "data": {"nodes": result["cached"], "prompt_id": pid,
                                                                "timestamp": ts}})
        if msg["status"] == "success":
            comfy.append({"type": "execution_success", "data": {"prompt_id": pid, "timestamp": ts}})
        elif msg["status"] == "error" and not any(e.get("node_id") for e in result["errors"]):
            # failed before or outside any node (e.g. a file went missing since it was queued)
            first = result["errors"][0] if result["errors"] else {"message": "error", "kind": "error"}
            comfy.append({"type": "execution_error", "data": {
                "prompt_id": pid, "node_id": None, "node_type": None, "executed": state.executed,
                "exception_message": first.get("message"), "exception_type": first.get("kind"), "traceback": [],
                "current_inputs": {}, "current_outputs": {}, "timestamp": ts}})
        comfy.append({"type": "executing", "data": {"node": None, "display_node": None, "prompt_id": pid}})
        comfy_frames = [json.dumps(m, default=repr) for m in comfy]
        for conn in targets:
            if conn.dialect == NATIVE:
                conn.put(native)
            else:
                for frame in comfy_frames:
                    conn.put(frame)

    # -- translation ----------------------------------------------------------------------------------------------
    def clean_error(self, err: dict[str, Any]) -> dict[str, Any]:
        if self.debug or not isinstance(err, dict) or not isinstance(err.get("details"), dict):
            return err
        if "traceback" not in err["details"]:
            return err
        details = {k: v for k, v in err["details"].items() if k != "traceback"}
        return {**err, "details": details}

    def _clean(self, data: dict[str, Any]) -> dict[str, Any]:
        if "error" in data:
            return {**data, "error": self.clean_error(data["error"])}
        return data

    def _comfy_messages(self, state: _PromptState, msg: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
        pid, etype, nid = msg["prompt_id"], msg["type"], msg["node_id"]
        ts = int(msg["time"] * 1000)
        out: list[dict[str, Any]] = []
        if etype == "started":
            return [{"type": "execution_start", "data": {"prompt_id": pid, "timestamp": ts}}]
        if etype == "cached":
            state.cached_sent = True
            return [{"type": "execution_cached", "data": {"nodes": data.get("nodes", []), "prompt_id": pid,
                                                           "timestamp": ts}}]
        if not state.cached_sent:
            state.cached_sent = True
            out.append({"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid, "timestamp": ts}})
        if etype == "executing":
            out.append({"type": "executing", "data": {"node": nid, "display_node": nid, "prompt_id": pid}})
        elif etype == "progress":
            out.append({"type": "progress", "data": {"value": data.get("value"), "max": data.get("max"),
                                                     "prompt_id": pid, "node": nid}})
        elif etype == "executed":
            if data.get("ui"):
                out.append({"type": "executed", "data": {"node": nid, "display_node": nid, "output": data["ui"],
                                                         "prompt_id": pid}})
        elif etype == "error":
            err = data.get("error") or {}
            details = err.get("details") or {}
            tb = details.get("traceback") if self.debug else None
            out.append({"type": "execution_error", "data": {
                "prompt_id": pid, "node_id": nid, "node_type": err.get("node_type") or data.get("node_type"),
                "executed": list(state.executed), "exception_message": err.get("message"),
                "exception_type": details.get("exception_type") or err.get("kind"),
                "traceback": tb.splitlines() if isinstance(tb, str) else [], "current_inputs": {},
                "current_outputs": {}, "timestamp": ts}})
        elif etype == "interrupted":
            out.append({"type": "execution_interrupted", "data": {
                "prompt_id": pid, "node_id": nid, "node_type": data.get("node_type"), "executed": list(state.executed),
                "timestamp": ts}})
        return out


def comfy_status(remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


def now_ms() -> int:
    return int(time.time() * 1000)

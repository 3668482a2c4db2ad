"""ComfyUI's shapes of Chisel's stored prompts: queue entries ``[number, prompt_id, prompt, extra_data, outputs]``,
history items ``{prompt, outputs, status: {status_str, completed, messages}, meta}``, and which running prompt
ComfyUI's ``queue_running`` shows (never more than one, as ComfyUI)."""
from __future__ import annotations

from typing import Any

from . import store as S
from .service import ChiselServer

DONE = (S.SUCCESS, S.ERROR, S.INTERRUPTED)  # ComfyUI's history: cancelled queue items are not in it


def queue_entry(server: ChiselServer, row: dict[str, Any]) -> list[Any]:
    extra = dict(row.get("extra_data") or {})
    if row.get("client_id"):
        extra.setdefault("client_id", row["client_id"])
    extra.setdefault("create_time", int(row["created"] * 1000))
    return [row["number"], row["prompt_id"], server.prompt_api(row), extra, row.get("outputs") or []]


def split_running(server: ChiselServer, running: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """ComfyUI's ``queue_running`` holds one prompt: the one the worker executes (when the worker is idle, the oldest
    prompt still writing its files). Other prompts still writing their files are listed first in ``queue_pending``, so
    a prompt is always in the queue or in the history, as in ComfyUI."""
    current = server.worker.running() if server.worker is not None else None
    shown = [r for r in running if r["prompt_id"] == current][:1] or running[:1]
    return shown, [r for r in running if r not in shown]


async def comfy_queue(server: ChiselServer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    running, pending = await server.db(server.store.queue_full)
    shown, writing = split_running(server, running)
    return shown, writing + pending


def _messages(row: dict[str, Any], result: dict[str, Any]) -> list[list[Any]]:
    pid = row["prompt_id"]
    start = int((row.get("started") or row["created"]) * 1000)
    end = int((row.get("finished") or row.get("started") or row["created"]) * 1000)
    msgs: list[list[Any]] = [["execution_start", {"prompt_id": pid, "timestamp": start}],
                             ["execution_cached", {"nodes": result.get("cached", []), "prompt_id": pid,
                                                   "timestamp": start}]]
    errors = result.get("errors") or []
    if row["status"] == S.SUCCESS:
        msgs.append(["execution_success", {"prompt_id": pid, "timestamp": end}])
    elif row["status"] == S.INTERRUPTED:
        err = next((e for e in errors if e.get("kind") == "interrupted"), errors[0] if errors else {})
        msgs.append(["execution_interrupted", {"prompt_id": pid, "node_id": err.get("node_id"),
                                               "node_type": err.get("node_type"),
                                               "executed": result.get("executed", []), "timestamp": end}])
    else:
        err = errors[0] if errors else {}
        msgs.append(["execution_error", {"prompt_id": pid, "node_id": err.get("node_id"),
                                         "node_type": err.get("node_type"), "executed": result.get("executed", []),
                                         "exception_message": err.get("message", ""),
                                         "exception_type": (err.get("details") or {}).get("exception_type")
                                         or err.get("kind", ""), "traceback": [], "current_inputs": {},
                                         "current_outputs": {}, "timestamp": end}])
    return msgs


def history_item(server: ChiselServer, row: dict[str, Any]) -> dict[str, Any]:
    result = row.get("result") or {}
    outputs = result.get("outputs", {})
    return {"prompt": queue_entry(server, row), "outputs": outputs,
            "status": {"status_str": "success" if row["status"] == S.SUCCESS else "error",
                       "completed": row["status"] == S.SUCCESS, "messages": _messages(row, result)},
            "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                     for nid in outputs}}


__all__ = ["DONE", "queue_entry", "split_running", "comfy_queue", "history_item"]

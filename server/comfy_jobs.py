"""ComfyUI's ``/jobs`` listing (queue and history in one, which ComfyUI's newer frontend polls for its queue
panel): ``GET /jobs?status=&workflow_id=&sort_by=&sort_order=&limit=&offset=`` ->
``{jobs: [...], pagination: {offset, limit, total, has_more}}`` and ``GET /jobs/{id}`` -> one job with its outputs,
status messages and prompt."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from . import store as S
from .comfy_history import DONE, history_item, queue_entry
from .errors import ApiError, json_response
from .routes_native import int_param, srv
from .service import ChiselServer

PENDING, IN_PROGRESS, COMPLETED, FAILED = "pending", "in_progress", "completed", "failed"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED)
PREVIEWABLE = ("images", "video", "audio")


def _meta(extra: dict[str, Any]) -> tuple[Any, Any]:
    pnginfo = extra.get("extra_pnginfo") if isinstance(extra.get("extra_pnginfo"), dict) else {}
    workflow = pnginfo.get("workflow") if isinstance(pnginfo.get("workflow"), dict) else {}
    return extra.get("create_time"), workflow.get("id")


def _pruned(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def queued_job(entry: list[Any], status: str) -> dict[str, Any]:
    number, pid, _, extra, _ = entry
    create_time, workflow_id = _meta(extra)
    return _pruned({"id": pid, "status": status, "priority": number, "create_time": create_time, "outputs_count": 0,
                    "workflow_id": workflow_id})


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """How many output items, and the one to show (an output-folder image first)."""
    count, best, fallback = 0, None, None
    for nid, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for media, items in ui.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if best is None and media in PREVIEWABLE:
                    shown = {**item, "nodeId": nid, "mediaType": media}
                    if item.get("type") == "output":
                        best = shown
                    elif fallback is None:
                        fallback = shown
    return count, best or fallback


def finished_job(pid: str, item: dict[str, Any], full: bool = False) -> dict[str, Any]:
    number, _, prompt, extra, _ = item["prompt"]
    create_time, workflow_id = _meta(extra)
    status = item["status"]
    start = end = error = None
    for name, data in status["messages"]:
        if name == "execution_start":
            start = data.get("timestamp")
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if name == "execution_error":  # the frontend's schema wants strings here
                error = {**data, "node_id": str(data.get("node_id") or ""),
                         "node_type": str(data.get("node_type") or ""),
                         "exception_message": str(data.get("exception_message") or ""),
                         "exception_type": str(data.get("exception_type") or "")}
    count, preview = outputs_summary(item["outputs"])
    job = _pruned({"id": pid, "status": COMPLETED if status["status_str"] == "success" else FAILED,
                   "priority": number, "create_time": create_time, "execution_start_time": start,
                   "execution_end_time": end, "execution_error": error, "outputs_count": count,
                   "preview_output": preview, "workflow_id": workflow_id})
    if full:
        job.update(outputs=item["outputs"], execution_status=status,
                   workflow={"prompt": prompt, "extra_data": extra})
    return job


def _statuses(request: web.Request) -> list[str]:
    raw = request.query.get("status")
    if not raw:
        return list(STATUSES)
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STATUSES and s != "cancelled"]
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown status {', '.join(unknown)} (known: {', '.join(STATUSES)})")
    return wanted


async def list_jobs(server: ChiselServer, statuses: list[str], workflow_id: str | None, by_duration: bool,
                    descending: bool, limit: int | None, offset: int) -> tuple[list[dict[str, Any]], int]:
    jobs: list[dict[str, Any]] = []
    running, pending = await server.db(server.store.queue_full)  # running: executing, or still writing files
    if IN_PROGRESS in statuses:
        jobs += [queued_job(queue_entry(server, r), IN_PROGRESS) for r in running]
    if PENDING in statuses:
        jobs += [queued_job(queue_entry(server, r), PENDING) for r in pending]
    done = [s for s, job in ((S.SUCCESS, COMPLETED), (S.ERROR, FAILED), (S.INTERRUPTED, FAILED)) if job in statuses]
    if done:
        rows = await server.db(server.store.history, server.config.max_history, 0, done, True)
        jobs += [finished_job(r["prompt_id"], history_item(server, r)) for r in rows]
    if workflow_id:
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
    if by_duration:
        def key(j: dict[str, Any]) -> float:
            s, e = j.get("execution_start_time"), j.get("execution_end_time")
            return e - s if s and e else 0
    else:
        def key(j: dict[str, Any]) -> float:
            return j.get("create_time") or 0
    jobs.sort(key=key, reverse=descending)
    total = len(jobs)
    jobs = jobs[offset:]
    return (jobs[:limit] if limit is not None else jobs), total


async def get_jobs(request: web.Request) -> web.Response:
    server = srv(request)
    statuses = _statuses(request)
    sort_by = request.query.get("sort_by", "created_at")
    order = request.query.get("sort_order", "desc")
    if sort_by not in ("created_at", "execution_duration"):
        raise ApiError(400, "invalid_parameter", "sort_by must be created_at or execution_duration")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_parameter", "sort_order must be asc or desc")
    limit = int_param(request, "limit", -1, -1, 10_000)
    offset = int_param(request, "offset", 0, 0, 10**9)
    jobs, total = await list_jobs(server, statuses, request.query.get("workflow_id") or None,
                                  sort_by == "execution_duration", order == "desc", limit if limit >= 0 else None,
                                  offset)
    return json_response({"jobs": jobs, "pagination": {"offset": offset, "limit": limit if limit >= 0 else None,
                                                        "total": total, "has_more": offset + len(jobs) < total}})


async def get_job(request: web.Request) -> web.Response:
    server = srv(request)
    pid = request.match_info["job_id"]
    row = await server.db(server.store.get, pid)
    if row is not None and row["status"] in DONE:
        return json_response(finished_job(pid, history_item(server, row), full=True))
    if row is not None and row["status"] in (S.QUEUED, S.RUNNING):
        return json_response(queued_job(queue_entry(server, row), IN_PROGRESS if row["status"] == S.RUNNING
                                        else PENDING))
    raise ApiError(404, "not_found", f"no job {pid}")


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/jobs", get_jobs)
    app.router.add_get(prefix + "/jobs/{job_id}", get_job)


__all__ = ["add_routes", "list_jobs", "finished_job", "queued_job", "outputs_summary"]

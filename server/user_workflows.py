"""The user's saved workflows under ``/v1/user/workflows``: the canvas's workflow browser lists, opens, saves,
renames and deletes them. They are kept where ComfyUI's frontend keeps its own, ``<root>/user/default/workflows/
NAME.json``, so each frontend sees the other's saves (ComfyUI's are in its UI format; the canvas opens those too).

A name is what the user typed (spaces and most punctuation are fine); one that could leave the folder, hide the file,
or that is empty or too long is refused with a 400 ``invalid_name`` saying why. Files are written whole (a temporary
file, then a rename)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from . import schemas as m
from .comfy_userdata import USER, _write
from .errors import ApiError, json_response
from .routes_native import srv
from .schemas import parse_body, parse_query

FOLDER = "workflows"
MAX_NAME = 100  # characters
MAX_NAME_BYTES = 200  # with ".json", under every common file system's limit on a name's bytes (255)
BAD_CHARS = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
_LOCK = threading.Lock()  # a rename's check-then-move, one at a time


def folder(request: web.Request) -> Path:
    return srv(request).paths.root / "user" / USER / FOLDER


def check_name(raw: str) -> str:
    """The workflow's name as given (a trailing ``.json`` dropped), or a 400 saying what is wrong with it."""
    name = raw[:-5] if raw.lower().endswith(".json") else raw
    if not name.strip():
        raise ApiError(400, "invalid_name", "a workflow name is required")
    if len(name) > MAX_NAME:
        raise ApiError(400, "invalid_name", f"a workflow name is at most {MAX_NAME} characters (this one has "
                                            f"{len(name)})")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_name", "a workflow name must be valid text (it holds a lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise ApiError(400, "invalid_name", f"a workflow name is at most {MAX_NAME_BYTES} bytes as UTF-8 (this one "
                                            f"has {size})")
    bad = BAD_CHARS.search(name)
    if bad:
        shown = repr(bad.group()) if bad.group().isprintable() else "control characters"
        raise ApiError(400, "invalid_name", f"a workflow name cannot contain {shown}; "
                                            'not allowed: / \\ : * ? " < > | and control characters')
    if name.startswith(".") or name != name.strip() or name.endswith("."):
        raise ApiError(400, "invalid_name", "a workflow name cannot start with a dot, end with a dot, or start or "
                                            "end with a space")
    return name


def _path(request: web.Request, raw: str) -> tuple[str, Path]:
    name = check_name(raw)
    base = folder(request)
    path = base / f"{name}.json"
    # the name cannot hold a separator or start with a dot; a symlinked file that leaves the folder is still refused
    if path.exists() and not path.resolve().is_relative_to(base.resolve()):
        raise ApiError(403, "path_outside_folder", "that workflow's file leaves the workflows folder")
    return name, path


def _info(name: str, path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": name, "size": st.st_size, "modified": st.st_mtime}


def _listing(base: Path) -> list[dict[str, Any]]:
    if not base.is_dir():
        return []
    out = []
    for p in base.glob("*.json"):
        if p.name.startswith(".") or not p.is_file() or not p.resolve().is_relative_to(base.resolve()):
            continue
        out.append(_info(p.stem, p))
    out.sort(key=lambda e: e["name"].lower())
    return out


async def list_workflows(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_listing, folder(request)))


async def get_workflow(request: web.Request) -> web.Response:
    name, path = _path(request, request.match_info["name"])
    if not path.is_file():
        raise ApiError(404, "not_found", f"no saved workflow {name!r}")
    try:
        data = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_workflow_file", f"the saved workflow {name!r} is not valid JSON") from None
    return json_response(data)


async def put_workflow(request: web.Request) -> web.Response:
    server = srv(request)
    name, path = _path(request, request.match_info["name"])
    q = parse_query(request, m.SaveWorkflowQuery)
    body = await parse_body(request, m.SaveWorkflowRequest, server.config.max_json_bytes)
    data = (json.dumps(body.workflow, indent=1, ensure_ascii=False) + "\n").encode()

    def save() -> None:
        with _LOCK:
            if q.overwrite == "false" and path.exists():
                raise ApiError(409, "exists", f"a saved workflow is already called {name!r}")
            _write(path, data)

    await asyncio.to_thread(save)
    return json_response(_info(name, path))


async def delete_workflow(request: web.Request) -> web.Response:
    name, path = _path(request, request.match_info["name"])
    if not path.is_file():
        raise ApiError(404, "not_found", f"no saved workflow {name!r}")
    await asyncio.to_thread(path.unlink)
    return json_response({"deleted": name})


async def rename_workflow(request: web.Request) -> web.Response:
    server = srv(request)
    name, source = _path(request, request.match_info["name"])
    body = await parse_body(request, m.RenameWorkflowRequest, server.config.max_json_bytes)
    new, dest = _path(request, body.to)

    def move() -> None:
        with _LOCK:
            if not source.is_file():
                raise ApiError(404, "not_found", f"no saved workflow {name!r}")
            same = dest.exists() and os.path.samefile(source, dest)  # "a" -> "A" on a case-insensitive disk
            if dest.exists() and not same and not body.overwrite:
                raise ApiError(409, "exists", f"a saved workflow is already called {new!r}")
            os.replace(source, dest)

    await asyncio.to_thread(move)
    return json_response(_info(new, dest))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/user/workflows", list_workflows)
    r.add_get("/v1/user/workflows/{name}", get_workflow)
    r.add_put("/v1/user/workflows/{name}", put_workflow)
    r.add_delete("/v1/user/workflows/{name}", delete_workflow)
    r.add_post("/v1/user/workflows/{name}/rename", rename_workflow)


__all__ = ["add_routes", "check_name"]

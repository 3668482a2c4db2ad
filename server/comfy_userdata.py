"""ComfyUI's per-user storage, kept in the Chisel root under ``user/<user>/``: ``/users``, ``/settings`` (the file
``comfy.settings.json``) and ``/userdata`` (saved workflows under ``workflows/``, templates, anything the frontend
keeps there). One user, ``default``, as ComfyUI without ``--multi-user``. Every path is resolved inside the user's
folder; anything that leaves it is refused. Files are written whole through a temporary file and a rename."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .errors import ApiError, json_response
from .routes_native import srv
from .security import read_body, read_json_object, safe_join

USER = "default"
SETTINGS = "comfy.settings.json"
# A user without a settings file: ComfyUI's frontend would open a blank graph and its template browser on the first
# visit; Chisel has no templates to offer there, so its first visit opens the frontend's default graph (SD1.5
# text-to-image) as for a returning user.
FIRST_RUN = {"Comfy.TutorialCompleted": True}
_SETTINGS_LOCK = threading.Lock()  # read-merge-write of the settings file, one request at a time


def user_root(request: web.Request) -> Path:
    return srv(request).paths.root / "user" / USER


def _user_path(request: web.Request, rel: str) -> Path:
    rel = unquote(rel) if "%" in rel else rel
    if not rel.strip():
        raise ApiError(400, "invalid_path", "a path in the user's folder is required")
    root = user_root(request)
    root.mkdir(parents=True, exist_ok=True)
    return safe_join(root, "", rel)


def _info(path: Path, base: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": path.relative_to(base).as_posix(), "size": st.st_size, "modified": int(st.st_mtime * 1000),
            "created": int(st.st_ctime * 1000)}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- users and settings ------------------------------------------------------------------------------------------
async def get_users(request: web.Request) -> web.Response:
    return json_response({"storage": "server", "migrated": user_root(request).is_dir()})


async def post_users(request: web.Request) -> web.Response:
    raise ApiError(400, "single_user", "Chisel keeps one user ('default'); it has no multi-user mode")


def _read_settings(request: web.Request) -> dict[str, Any]:
    path = user_root(request) / SETTINGS
    if not path.is_file():
        return dict(FIRST_RUN)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _save_settings(request: web.Request, settings: dict[str, Any]) -> None:
    _write(user_root(request) / SETTINGS, json.dumps(settings, indent=4).encode())


async def get_settings(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_read_settings, request))


async def get_setting(request: web.Request) -> web.Response:
    settings = await asyncio.to_thread(_read_settings, request)
    return json_response(settings.get(request.match_info["id"]))


async def post_settings(request: web.Request) -> web.Response:
    body = await read_json_object(request, srv(request).config.max_json_bytes)

    def merge() -> None:
        with _SETTINGS_LOCK:
            _save_settings(request, {**_read_settings(request), **body})

    await asyncio.to_thread(merge)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    raw = await read_body(request, srv(request).config.max_json_bytes)
    try:
        value = json.loads(raw or b"null")
    except ValueError:
        raise ApiError(400, "invalid_json", "the body must be a JSON value") from None
    key = request.match_info["id"]

    def merge() -> None:
        with _SETTINGS_LOCK:
            _save_settings(request, {**_read_settings(request), key: value})

    await asyncio.to_thread(merge)
    return web.Response(status=200)


# -- user data files ----------------------------------------------------------------------------------------------
def _flag(request: web.Request, name: str, default: str = "false") -> bool:
    return request.query.get(name, default).lower() == "true"


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise ApiError(400, "missing_parameter", "the 'dir' parameter is required")
    path = _user_path(request, directory)
    if not path.is_dir():
        raise ApiError(404, "not_found", f"no folder {directory!r} in the user's data")
    recurse, full, split = _flag(request, "recurse"), _flag(request, "full_info"), _flag(request, "split")

    def listing() -> list[Any]:
        files = sorted(p for p in (path.rglob("*") if recurse else path.glob("*"))
                       if p.is_file() and not p.name.startswith(".") and p.resolve().is_relative_to(path))
        out: list[Any] = []
        for p in files:
            rel = p.relative_to(path).as_posix()
            out.append(_info(p, path) if full else [rel, *rel.split("/")] if split else rel)
        return out

    return json_response(await asyncio.to_thread(listing))


async def list_userdata_v2(request: web.Request) -> web.Response:
    root = user_root(request)
    rel = request.query.get("path", "")
    target = _user_path(request, rel) if rel else root
    if not target.exists():
        if target == root:
            return json_response([])
        raise ApiError(404, "not_found", f"no {rel!r} in the user's data")
    if not target.is_dir():
        raise ApiError(400, "not_a_folder", f"{rel!r} is not a folder")

    def listing() -> list[dict[str, Any]]:
        out = []
        for p in target.rglob("*"):
            if p.name.startswith(".") or not p.resolve().is_relative_to(root.resolve()):
                continue
            entry: dict[str, Any] = {"name": p.name, "path": p.relative_to(root).as_posix(),
                                     "type": "directory" if p.is_dir() else "file"}
            if p.is_file():
                st = p.stat()
                entry.update(size=st.st_size, modified=st.st_mtime)
            out.append(entry)
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return out

    return json_response(await asyncio.to_thread(listing))


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = _user_path(request, request.match_info["file"])
    if not path.is_file():
        raise ApiError(404, "not_found", "no such file in the user's data")
    inline = path == user_root(request).resolve() / "user.css"
    ctype = "text/css" if inline else ("application/json" if path.suffix == ".json" else "application/octet-stream")
    return web.FileResponse(path, headers={"Content-Type": ctype, "X-Content-Type-Options": "nosniff",
                                           "Content-Disposition": "inline" if inline else "attachment"})


async def post_userdata(request: web.Request) -> web.Response:
    server = srv(request)
    path = _user_path(request, request.match_info["file"])
    overwrite = request.query.get("overwrite", "true") != "false"
    if path.is_dir():
        raise ApiError(400, "is_a_folder", "that path is a folder")
    if not overwrite and path.exists():
        raise ApiError(409, "exists", "the file already exists")
    data = await read_body(request, server.config.max_upload_bytes)
    await asyncio.to_thread(_write, path, data)
    base = user_root(request).resolve()
    return json_response(_info(path, base) if _flag(request, "full_info") else path.relative_to(base).as_posix())


async def delete_userdata(request: web.Request) -> web.Response:
    path = _user_path(request, request.match_info["file"])
    if not path.is_file():
        raise ApiError(404, "not_found", "no such file in the user's data")
    await asyncio.to_thread(path.unlink)
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    source = _user_path(request, request.match_info["file"])
    dest = _user_path(request, request.match_info["dest"])
    if not source.is_file():
        raise ApiError(404, "not_found", "no such file in the user's data")
    if request.query.get("overwrite", "true") == "false" and dest.exists():
        raise ApiError(409, "exists", "the destination already exists")

    def move() -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, dest)

    await asyncio.to_thread(move)
    base = user_root(request).resolve()
    return json_response(_info(dest, base) if _flag(request, "full_info") else dest.relative_to(base).as_posix())


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/users", get_users)
    r.add_post(prefix + "/users", post_users)
    r.add_get(prefix + "/settings", get_settings)
    r.add_post(prefix + "/settings", post_settings)
    r.add_get(prefix + "/settings/{id}", get_setting)
    r.add_post(prefix + "/settings/{id}", post_setting)
    r.add_get(prefix + "/userdata", list_userdata)
    r.add_get(prefix + "/v2/userdata", list_userdata_v2)
    r.add_get(prefix + "/userdata/{file}", get_userdata)
    r.add_post(prefix + "/userdata/{file}", post_userdata)
    r.add_delete(prefix + "/userdata/{file}", delete_userdata)
    r.add_post(prefix + "/userdata/{file}/move/{dest}", move_userdata)


__all__ = ["add_routes", "user_root"]

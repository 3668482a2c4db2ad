"""ComfyUI's own frontend on Chisel (``chisel serve --frontend comfyui``), served from the PyPI package
``comfyui-frontend-package`` (the optional extra ``comfyui-frontend``; never copied into this repository) on the
same origin as the API, plus the small routes that frontend reads at start: ``/extensions`` (Chisel has no
JavaScript extensions: an empty list), ``/i18n`` (no node translations: an empty object), ``/global_subgraphs`` (no
subgraph blueprints: an empty object), ``/workflow_templates`` and ``/templates/index.json`` (no templates),
``/experiment/models`` (the model library), ``/internal/folder_paths`` and
``/user.css`` (the user's own ``user/default/user.css``, or an empty style sheet)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from .comfy_userdata import USER, user_root
from .errors import ApiError, json_response
from .routes_native import SERVER, srv

PACKAGE = "comfyui_frontend_package"
FRONTENDS = ("chisel", "comfyui")


def frontend_dir() -> Path:
    """The static folder of the installed ``comfyui-frontend-package``; a clear error when it is missing."""
    try:
        import comfyui_frontend_package  # type: ignore[import-not-found]
    except ImportError:
        raise FrontendMissing("--frontend comfyui needs the package comfyui-frontend-package: "
                              "pip install 'chisel[comfyui-frontend]'") from None
    static = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    if not (static / "index.html").is_file():
        raise FrontendMissing(f"the installed comfyui-frontend-package has no static/index.html ({static})")
    return static


class FrontendMissing(RuntimeError):
    pass


NOT_MODELS = ("custom_nodes", "input", "output", "temp")


async def get_global_subgraphs(request: web.Request) -> web.Response:
    return json_response({})


async def get_experiment_models(request: web.Request) -> web.Response:
    paths = srv(request).paths
    return json_response([{"name": kind, "folders": [str(d) for d in paths.dirs(kind)]}
                          for kind in sorted(paths.folders) if kind not in NOT_MODELS])


async def get_experiment_model_folder(request: web.Request) -> web.Response:
    paths = srv(request).paths
    kind = request.match_info["folder"]
    if kind not in paths.folders or kind in NOT_MODELS:
        raise ApiError(404, "not_found", f"no models folder {kind!r}")
    names = await asyncio.to_thread(paths.list, kind)
    return json_response([{"name": name, "pathIndex": 0} for name in names])


async def get_folder_paths(request: web.Request) -> web.Response:
    paths = srv(request).paths
    return json_response({kind: [str(d) for d in paths.dirs(kind)] for kind in sorted(paths.folders)})


async def get_user_css(request: web.Request) -> web.StreamResponse:
    path = user_root(request) / "user.css"
    if path.is_file():
        return web.FileResponse(path, headers={"Content-Type": "text/css", "Cache-Control": "no-cache"})
    return web.Response(text="", content_type="text/css")


async def get_workflow_templates(request: web.Request) -> web.Response:
    return json_response({})  # example workflows of custom node packs: none


async def get_templates_index(request: web.Request) -> web.Response:
    return json_response([])  # ComfyUI's template library (another package): not offered


async def get_extensions(request: web.Request) -> web.Response:
    return json_response([])


async def get_i18n(request: web.Request) -> web.Response:
    return json_response({})


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/extensions", get_extensions)
    app.router.add_get(prefix + "/i18n", get_i18n)
    app.router.add_get(prefix + "/global_subgraphs", get_global_subgraphs)
    app.router.add_get(prefix + "/workflow_templates", get_workflow_templates)
    app.router.add_get(prefix + "/experiment/models", get_experiment_models)
    app.router.add_get(prefix + "/experiment/models/{folder}", get_experiment_model_folder)
    if not prefix:
        app.router.add_get("/internal/folder_paths", get_folder_paths)


def add_index(app: web.Application, static: Path) -> None:
    """``/`` is ComfyUI's page (registered before Chisel's canvas, which moves to ``/chisel``: a page at the root
    level, so the canvas' relative URLs still reach ``/web/...`` and ``/v1/...``)."""
    index = static / "index.html"
    html = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"}

    async def get_index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(index, headers=html)

    async def get_canvas(request: web.Request) -> web.StreamResponse:
        canvas = srv(request).config.web_dir / "index.html"
        if not canvas.is_file():
            raise ApiError(404, "not_found", "the canvas is not installed")
        return web.FileResponse(canvas, headers=html)

    app.router.add_get("/chisel", get_canvas)

    app.router.add_get("/", get_index)
    app.router.add_get("/index.html", get_index)
    app.router.add_get("/user.css", get_user_css)
    app.router.add_get("/templates/index.json", get_templates_index)

    async def make_user_folders(app: web.Application) -> None:  # where the frontend lists saved workflows
        for sub in ("workflows", "subgraphs"):
            (app[SERVER].paths.root / "user" / USER / sub).mkdir(parents=True, exist_ok=True)

    app.on_startup.append(make_user_folders)


def add_static(app: web.Application, static: Path) -> None:
    """The frontend's files at the root of the site (registered last: every API route comes first)."""
    root = static.resolve()

    async def get_file(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError(404, "not_found", f"no file /{rel}")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    app.router.add_get("/{path:.+}", get_file)


__all__ = ["FRONTENDS", "FrontendMissing", "add_index", "add_routes", "add_static", "frontend_dir"]

"""ComfyUI's own frontend on Chisel (``chisel serve --frontend comfyui``), served from the PyPI package
``comfyui-frontend-package`` (the optional extra ``comfyui-frontend``; never copied into this repository) on the
same origin as the API, plus the small routes that frontend reads at start: ``/extensions`` (Chisel has no
JavaScript extensions: an empty list) and ``/i18n`` (no node translations: an empty object)."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .errors import ApiError, json_response

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


async def get_extensions(request: web.Request) -> web.Response:
    return json_response([])


async def get_i18n(request: web.Request) -> web.Response:
    return json_response({})


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/extensions", get_extensions)
    app.router.add_get(prefix + "/i18n", get_i18n)


def add_index(app: web.Application, static: Path) -> None:
    """``/`` is ComfyUI's page (registered before Chisel's canvas, which stays at ``/web/index.html``)."""
    index = static / "index.html"

    async def get_index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(index, headers={"Content-Type": "text/html; charset=utf-8",
                                                "Cache-Control": "no-cache"})

    app.router.add_get("/", get_index)
    app.router.add_get("/index.html", get_index)


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

"""ComfyUI interoperability in one place: which format a document is in, import of ComfyUI's API and UI formats,
export to both. The work is done in :mod:`graph.comfy_api`, :mod:`graph.comfy_ui` (import) and
:mod:`graph.comfy_ui_export`.
"""
from __future__ import annotations

from typing import Any

from .comfy_api import from_comfy_api, looks_like_api, to_comfy_api
from .comfy_ui import from_comfy_ui
from .comfy_ui_export import to_comfy_ui
from .comfy_ui_model import looks_like_ui

NATIVE, COMFY_API, COMFY_UI, UNKNOWN = "native", "comfy_api", "comfy_ui", "unknown"
EXPORT_FORMATS = ("native", "comfy_ui", "comfy_api")


def detect_format(data: Any) -> str:
    if not isinstance(data, dict):
        return UNKNOWN
    if isinstance(data.get("nodes"), dict):
        return NATIVE
    if looks_like_ui(data):
        return COMFY_UI
    if looks_like_api(data):
        return COMFY_API
    return UNKNOWN


def export(workflow: Any, fmt: str, registry: Any = None) -> dict[str, Any]:
    """A workflow in one of :data:`EXPORT_FORMATS`."""
    if fmt == "comfy_ui":
        return to_comfy_ui(workflow, registry)
    if fmt == "comfy_api":
        return to_comfy_api(workflow, registry)
    if fmt == "native":
        return workflow.to_dict()
    raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")


__all__ = ["detect_format", "from_comfy_api", "from_comfy_ui", "to_comfy_api", "to_comfy_ui", "export",
           "EXPORT_FORMATS"]

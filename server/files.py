"""Images in and out: ``/view`` (full size, thumbnails, ComfyUI's ``preview=`` and ``channel=``), uploads of images
and masks into the input folder, and reading a workflow back out of a PNG's text chunks."""
from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from .errors import ApiError
from .schemas import UploadForm, parse_form
from .security import clean_name, read_body, safe_join, upload_name

FOLDER_TYPES = ("output", "input", "temp")
MAX_UPLOAD_PIXELS = 64 << 20
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}
UPLOAD_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}
VIEW_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "no-cache"}


def folder(paths: Any, kind: str) -> Path:
    if kind not in FOLDER_TYPES:
        raise ApiError(400, "invalid_type", f"type must be one of {', '.join(FOLDER_TYPES)}, not {kind!r}")
    return paths.dir(kind)


class ThumbCache:
    """Recently made thumbnails, by (file, size, mtime, width, format)."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes, self.used = max_bytes, 0
        self._items: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, value: tuple[bytes, str]) -> None:
        with self._lock:
            self._items[key] = value
            self.used += len(value[0])
            while self.used > self.max_bytes and self._items:
                _, (data, _) = self._items.popitem(last=False)
                self.used -= len(data)


def _render(path: Path, thumb: int | None, fmt: str | None, quality: int, channel: str | None) -> tuple[bytes, str]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if channel == "a":  # as ComfyUI: the alpha on black, as an RGBA image (its mask editor reads the alpha)
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
            img = Image.new("RGBA", img.size, (0, 0, 0, 0))
            img.putalpha(alpha)
        elif channel == "rgb":
            img = img.convert("RGB")
        if thumb:
            img = img.copy()
            img.thumbnail((thumb, thumb))
        has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
        fmt = (fmt or "webp").lower()
        if fmt in ("jpeg", "jpg") and has_alpha:
            fmt = "png"
        buf = io.BytesIO()
        if fmt == "webp":
            img.save(buf, format="WEBP", quality=quality)
            return buf.getvalue(), "image/webp"
        if fmt in ("jpeg", "jpg"):
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            img.save(buf, format="JPEG", quality=quality)
            return buf.getvalue(), "image/jpeg"
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"


async def view(request: web.Request, paths: Any, writer: Any, thumbs: ThumbCache) -> web.StreamResponse:
    q = request.query
    if "filename" not in q:
        raise ApiError(400, "missing_parameter", "the 'filename' parameter is required")
    kind = q.get("type") or "output"
    target = safe_join(folder(paths, kind), q.get("subfolder", ""), q["filename"])
    pending = writer.pending(target) if writer is not None else None
    if pending is not None:  # the file is still being written by the worker's writer: wait for it
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending)), timeout=60)
        except Exception:
            pass
    if not target.is_file():
        raise ApiError(404, "file_not_found", f"no file {q['filename']!r} in {kind}"
                       + (f"/{q['subfolder']}" if q.get("subfolder") else ""))
    thumb = q.get("thumb")
    preview = q.get("preview")
    channel = q.get("channel")
    suffix = target.suffix.lower()
    if thumb is not None or preview or channel in ("a", "rgb"):
        if suffix not in IMAGE_TYPES:
            raise ApiError(415, "not_an_image", "thumbnails and previews are made of images only")
        size = None
        if thumb is not None:
            try:
                size = int(thumb)
            except ValueError:
                raise ApiError(400, "invalid_parameter", "thumb must be an integer") from None
            if not 16 <= size <= 2048:
                raise ApiError(400, "invalid_parameter", "thumb must be between 16 and 2048")
        fmt, quality = (q.get("format") or ("webp" if thumb is not None else "png")), 85
        if preview:  # ComfyUI's rule: webp or jpeg (jpeg drops the alpha), webp for anything else or for channel=a
            fmt, _, qtext = preview.partition(";")
            fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") and channel != "a" else "webp"
            if fmt == "jpeg" and channel != "a":
                channel = "rgb"
            try:
                quality = max(1, min(100, int(qtext))) if qtext else 90
            except ValueError:
                quality = 90
        if fmt.lower() not in ("webp", "jpeg", "jpg", "png"):
            raise ApiError(400, "invalid_parameter", "format must be webp, jpeg or png")
        if channel not in (None, "", "rgba", "rgb", "a"):
            raise ApiError(400, "invalid_parameter", "channel must be rgba, rgb or a")
        st = target.stat()
        key = (str(target), st.st_size, st.st_mtime_ns, size, fmt.lower(), quality, channel)
        found = thumbs.get(key)
        if found is None:
            try:
                found = await asyncio.to_thread(_render, target, size, fmt, quality,
                                                channel if channel in ("a", "rgb") else None)
            except Exception as exc:
                raise ApiError(415, "not_an_image", f"cannot read the image: {type(exc).__name__}") from None
            thumbs.put(key, found)
        data, ctype = found
        return web.Response(body=data, content_type=ctype, headers=VIEW_HEADERS)
    headers = dict(VIEW_HEADERS)
    if suffix in IMAGE_TYPES:
        headers["Content-Type"] = IMAGE_TYPES[suffix]
        headers["Content-Disposition"] = f'inline; filename="{_header_name(target.name)}"'
    else:  # never let a stored file render as a page of this origin
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{_header_name(target.name)}"'
    return web.FileResponse(target, headers=headers)


def _header_name(name: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)


# -- uploads ------------------------------------------------------------------------------------------------------------
async def upload(request: web.Request, paths: Any, max_bytes: int, mask: bool = False,
                 max_pixels: int = MAX_UPLOAD_PIXELS) -> dict[str, Any]:
    if not (request.content_type or "").startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data with an 'image' field")
    if request.content_length is not None and request.content_length > max_bytes + 65536:
        raise ApiError(413, "too_large", f"uploads are limited to {max_bytes} bytes")
    try:
        reader = await request.multipart()
    except Exception:
        raise ApiError(400, "invalid_multipart", "the multipart body cannot be read") from None
    fields: dict[str, str] = {}
    data: bytes | None = None
    given_name = ""
    parts = 0
    while True:
        try:
            part = await reader.next()
        except Exception:
            raise ApiError(400, "invalid_multipart", "the multipart body cannot be read") from None
        if part is None:
            break
        parts += 1
        if parts > 16:
            raise ApiError(400, "invalid_multipart", "too many parts in the upload")
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "image":
            given_name = part.filename or ""
            data = await _read_part(part, max_bytes)
        elif part.name:
            fields[part.name] = (await _read_part(part, 65536)).decode("utf-8", "replace")
    if data is None:
        raise ApiError(400, "missing_file", "no 'image' file in the upload")
    form = parse_form({**fields, "image": data}, UploadForm)
    kind = form.type
    subfolder = clean_name(form.subfolder, "subfolder")
    overwrite = form.overwrite.lower() in ("true", "1")
    name = upload_name(given_name or "upload.png")
    mask = mask or form.kind == "mask"
    original_ref = None
    if mask and form.original_ref:
        try:
            original_ref = json.loads(form.original_ref)
            if not isinstance(original_ref, dict) or "filename" not in original_ref:
                raise ValueError
        except ValueError:
            raise ApiError(400, "invalid_parameter", "original_ref must be JSON {filename, subfolder, type}") from None
        original = safe_join(folder(paths, original_ref.get("type") or "input"), original_ref.get("subfolder") or "",
                             original_ref["filename"])
        if not original.is_file():
            raise ApiError(404, "file_not_found", "the original image of the mask does not exist")
    else:
        original = None
    base = folder(paths, kind)
    return await asyncio.to_thread(_store_upload, base, subfolder, name, data, overwrite, original, kind, max_pixels)


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = await part.read_chunk(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"the uploaded file is over the limit of {limit} bytes")
        chunks.append(chunk)


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> ApiError:
    return ApiError(413, "too_many_pixels", f"the image is {size[0]}x{size[1]} pixels; uploads are limited to "
                    f"{max_pixels} pixels (--max-upload-pixels)")


def _store_upload(base: Path, subfolder: str, name: str, data: bytes, overwrite: bool, original: Path | None,
                  kind: str, max_pixels: int = MAX_UPLOAD_PIXELS) -> dict[str, Any]:
    """Check the upload is an image within the pixel limit — from its header, before any pixel is decoded, so a
    small file that would decode to gigabytes (a decompression bomb) is refused — then store it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, size = probe.format, probe.size
            if size[0] * size[1] > max_pixels:
                raise _too_many_pixels(size, max_pixels)
            probe.verify()
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", "the image has too many pixels") from None
    except Exception:
        raise ApiError(415, "not_an_image", "the upload is not an image Chisel can read") from None
    if fmt not in UPLOAD_EXTENSIONS:
        raise ApiError(415, "not_an_image", f"{fmt} images are not accepted")
    stem, suffix = os.path.splitext(name)
    if suffix.lower() not in IMAGE_TYPES and suffix.lower() not in (".tif", ".tiff"):
        suffix = UPLOAD_EXTENSIONS[fmt]
    if original is not None:  # ComfyUI's mask upload: the mask's alpha becomes the original image's alpha
        with Image.open(io.BytesIO(data)) as mask_img, Image.open(original) as orig:
            if orig.size[0] * orig.size[1] > max_pixels:
                raise _too_many_pixels(orig.size, max_pixels)
            alpha = mask_img.getchannel("A") if "A" in mask_img.getbands() else mask_img.convert("L")
            result = orig.convert("RGBA")
            result.putalpha(alpha.resize(result.size))
            buf = io.BytesIO()
            result.save(buf, format="PNG")
            data, suffix = buf.getvalue(), ".png"
    target = safe_join(base, subfolder, stem + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(base.resolve()):
        raise ApiError(403, "path_outside_folder", "the path leaves its folder")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_bytes(data)
    try:
        if overwrite:
            os.replace(tmp, target)
        else:
            i = 0
            while True:
                candidate = target if i == 0 else target.with_name(f"{stem} ({i}){suffix}")
                if candidate.exists() and candidate.read_bytes() == data:
                    target = candidate  # the same file again: reuse it
                    break
                try:
                    os.link(tmp, candidate)
                    target = candidate
                    break
                except FileExistsError:
                    i += 1
    finally:
        tmp.unlink(missing_ok=True)
    rel = target.parent.relative_to(base.resolve()).as_posix()
    return {"name": target.name, "subfolder": "" if rel == "." else rel, "type": kind}


# -- workflows inside PNGs -----------------------------------------------------------------------------------------------
async def workflow_from_png(request: web.Request, registry: Any, max_bytes: int) -> dict[str, Any]:
    from graph.errors import WorkflowError
    from graph.png_metadata import workflow_from_texts

    if (request.content_type or "").startswith("multipart/"):
        reader = await request.multipart()
        data = b""
        while True:
            part = await reader.next()
            if part is None:
                break
            if isinstance(part, BodyPartReader) and part.filename is not None:
                data = await _read_part(part, max_bytes)
                break
    else:
        data = await read_body(request, max_bytes)
    if not data:
        raise ApiError(400, "missing_file", "send the PNG as the request body")

    def texts() -> dict[str, str]:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return {k: v for k, v in (getattr(img, "text", None) or img.info).items() if isinstance(v, str)}

    try:
        chunks = await asyncio.to_thread(texts)
    except Exception:
        raise ApiError(415, "not_an_image", "the body is not an image Chisel can read") from None
    try:
        found = workflow_from_texts(chunks, registry)
    except WorkflowError as exc:
        raise ApiError(422, "invalid_workflow", "the PNG holds a workflow Chisel cannot load",
                       errors=[e.to_dict() for e in exc.errors]) from None
    if found is not None:
        return {"workflow": found[0].to_dict(), "source": found[1]}
    raise ApiError(404, "no_workflow", "the PNG has no 'workflow' or 'prompt' text chunk")

"""Image files: decoding pictures into IMAGE/MASK tensors and writing IMAGE batches as PNGs with workflow metadata."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from graph.atomic_files import write_atomically
from graph.comfy_format import to_comfy_api
from graph.node import Interrupted
from graph.workflow import Workflow

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _frame_to_arrays(frame: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if frame.mode == "I":
        frame = frame.point(lambda v: v * (1 / 255))
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    alpha = None
    if "A" in frame.getbands() or (frame.mode == "P" and "transparency" in frame.info):
        alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return rgb, alpha


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, 3] and MASK [B, H, W] (1 - alpha: transparent pixels are 1, the area to repaint; zeros when
    the image has no alpha). Every frame of an animated image of the first frame's size becomes a batch entry."""
    try:
        img = Image.open(path)
        frames = []
        masks = []
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if size is None:
                size = frame.size
            elif frame.size != size:
                continue
            rgb, alpha = _frame_to_arrays(frame)
            frames.append(torch.from_numpy(rgb.copy()))
            masks.append(torch.from_numpy((1.0 - alpha).copy()) if alpha is not None
                         else torch.zeros(rgb.shape[:2], dtype=torch.float32))
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path.name} is not a readable image: {exc}") from None
    return torch.stack(frames), torch.stack(masks)


def run_metadata(ctx) -> dict[str, str]:
    """ComfyUI's two metadata texts of an output file: ``prompt`` (the run in ComfyUI's API format) and
    ``workflow``; empty without a workflow."""
    workflow = ctx.workflow if ctx is not None else None
    if workflow is None:
        return {}
    return {"prompt": json.dumps(to_comfy_api(Workflow.model_validate(workflow), ctx.registry)),
            "workflow": json.dumps(workflow)}


def png_metadata(ctx) -> PngInfo:
    """:func:`run_metadata` as PNG text chunks."""
    info = PngInfo()
    for key, text in run_metadata(ctx).items():
        info.add_text(key, text)
    return info


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """0..1 floats to 8-bit levels as ComfyUI's SaveImage quantises: x * 255 clipped to [0, 255], then truncated
    (not rounded) by the uint8 cast, so the same image gives the same PNG bytes."""
    return np.clip(image.detach().float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)


def _to_pil(image: torch.Tensor) -> Image.Image:
    arr = to_uint8(image)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.shape[-1] > 4:
        arr = arr[..., :3]
    return Image.fromarray(arr)


def save_images(images: torch.Tensor, folder: Path, prefix: str, kind: str, ctx, compress_level: int) -> list[dict]:
    prefix = prefix or "ComfyUI"
    base = folder.resolve()
    sub, _, name = prefix.replace("\\", "/").rpartition("/")
    target = (base / sub).resolve() if sub else base
    if target != base and base not in target.parents:
        raise ValueError(f"filename_prefix {prefix!r} points outside the {kind} folder")
    if not name:
        name = "ComfyUI"
    target.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d+)_?\.png$")
    counter = 1 + max((int(m.group(1)) for f in os.listdir(target) if (m := pattern.match(f))), default=0)
    info = png_metadata(ctx)
    # The server offers a background writer (PNG encoding and fsync off the sampling thread); it reserves a name at
    # once and raises FileExistsError when it is taken. Without it, write here, the same way: to a temporary name,
    # then linked to the final one (FileExistsError when taken), so no partial PNG is ever under a final name.
    # An interrupt stops the batch between images; the images already handed over are written and listed (the
    # run's history names every file that reaches the disk).
    writer = ctx.services.file_writer if ctx is not None and ctx.services is not None else None
    results = []
    subfolder = str(target.relative_to(base).as_posix()) if target != base else ""
    for image in images:
        if results and ctx is not None:
            try:
                ctx.check_interrupted()
            except Interrupted:
                raise Interrupted({"images": results}) from None
        pil = _to_pil(image)

        def write_png(tmp: Path, pil: Image.Image = pil) -> None:
            pil.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)

        while True:
            fname = f"{name}_{counter:05}_.png"
            try:
                if writer is not None:
                    writer.submit(target / fname, write_png)
                elif os.path.lexists(target / fname):
                    raise FileExistsError(fname)
                else:
                    write_atomically(target / fname, write_png)
                break
            except FileExistsError:
                counter += 1
        results.append({"filename": fname, "subfolder": subfolder, "type": kind})
        counter += 1
    return results

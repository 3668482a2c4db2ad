"""Mask nodes (ComfyUI category "mask"): LoadImageMask.

MASK is float32 [B, H, W] in 0..1 (1 = the area to paint)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from graph.node import Input, Node, Output
from graph.types import MASK
from nodes.imaging.files import IMAGE_EXTENSIONS


class LoadImageMask(Node):
    type = "LoadImageMask"
    display_name = "Load Image (as Mask)"
    category = "mask"
    description = "A mask from one channel of an image in the input folder (alpha: transparent = 1, paint here)."
    inputs = (
        Input("image", "COMBO", files="input", extensions=IMAGE_EXTENSIONS),
        Input("channel", "COMBO", choices=["alpha", "red", "green", "blue"], default="alpha"),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, image, channel):
        path = ctx.file_path("image")
        try:
            img = ImageOps.exif_transpose(Image.open(path))
            img.load()
        except Exception as exc:
            raise ValueError(f"{image!r} is not a readable image: {exc}") from None
        if channel == "alpha":
            if "A" not in img.getbands() and img.mode != "P":
                return (torch.zeros((1, img.height, img.width), dtype=torch.float32),)
            band = img.convert("RGBA").getchannel("A")
            mask = 1.0 - np.asarray(band, dtype=np.float32) / 255.0
        else:
            band = img.convert("RGB").getchannel({"red": "R", "green": "G", "blue": "B"}[channel])
            mask = np.asarray(band, dtype=np.float32) / 255.0
        return (torch.from_numpy(mask.copy()).unsqueeze(0),)

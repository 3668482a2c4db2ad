"""Mask nodes (ComfyUI category "mask"): loading, solid and inverted masks, combining, growing, feathering, cropping,
thresholding, and converting between MASK and IMAGE (machinery in :mod:`nodes.imaging.masks`).

MASK is float32 [B, H, W] in 0..1 (1 = the area to paint)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from graph.node import Input, Node, Output
from graph.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK
from nodes.imaging.files import IMAGE_EXTENSIONS
from nodes.imaging.masks import MASK_OPERATIONS, as_masks, combine, feather_edges, morph


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


class SolidMask(Node):
    type = "SolidMask"
    display_name = "SolidMask"
    category = "mask"
    description = "A width x height mask filled with `value`."
    inputs = (
        Input("value", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        Input("width", INT, default=512, min=1, max=16384, step=1),
        Input("height", INT, default=512, min=1, max=16384, step=1),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, value, width, height):
        return (torch.full((1, height, width), float(value), dtype=torch.float32),)


class InvertMask(Node):
    type = "InvertMask"
    display_name = "InvertMask"
    category = "mask"
    description = "1 − mask."
    inputs = (Input("mask", MASK),)
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, mask):
        return (1.0 - as_masks(mask),)


class MaskComposite(Node):
    type = "MaskComposite"
    display_name = "MaskComposite"
    category = "mask"
    description = ("Combine `source` into `destination` at (x, y): multiply, add, subtract (clamped to 0..1), or the "
                   "logical and/or/xor of the masks rounded to 0/1. Outside the source the destination is kept.")
    inputs = (
        Input("destination", MASK),
        Input("source", MASK),
        Input("x", INT, default=0, min=0, max=16384, step=1),
        Input("y", INT, default=0, min=0, max=16384, step=1),
        Input("operation", COMBO, choices=MASK_OPERATIONS, default="multiply"),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, destination, source, x, y, operation):
        return (combine(destination, source, x, y, operation),)


class GrowMask(Node):
    type = "GrowMask"
    display_name = "GrowMask"
    category = "mask"
    description = ("Grow the mask by `expand` pixels (negative: shrink it), one pixel per step with a 3x3 "
                   "neighbourhood; `tapered_corners` uses a plus-shaped one, so corners come out rounded.")
    inputs = (
        Input("mask", MASK),
        Input("expand", INT, default=0, min=-16384, max=16384, step=1),
        Input("tapered_corners", BOOLEAN, default=True),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, mask, expand, tapered_corners):
        return (morph(as_masks(mask), int(expand), bool(tapered_corners)),)


class FeatherMask(Node):
    type = "FeatherMask"
    display_name = "FeatherMask"
    category = "mask"
    description = ("Fade the mask towards its edges: within `left` pixels of the left edge the n-th column is scaled "
                   "by n/left, and so on for each side.")
    inputs = (
        Input("mask", MASK),
        Input("left", INT, default=0, min=0, max=16384, step=1),
        Input("top", INT, default=0, min=0, max=16384, step=1),
        Input("right", INT, default=0, min=0, max=16384, step=1),
        Input("bottom", INT, default=0, min=0, max=16384, step=1),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, mask, left, top, right, bottom):
        return (feather_edges(as_masks(mask), left, top, right, bottom),)


class CropMask(Node):
    type = "CropMask"
    display_name = "CropMask"
    category = "mask"
    description = "The width x height area of the mask with its top-left corner at (x, y), cut off at the edges."
    inputs = (
        Input("mask", MASK),
        Input("x", INT, default=0, min=0, max=16384, step=1),
        Input("y", INT, default=0, min=0, max=16384, step=1),
        Input("width", INT, default=512, min=1, max=16384, step=1),
        Input("height", INT, default=512, min=1, max=16384, step=1),
    )
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, mask, x, y, width, height):
        m = as_masks(mask)
        H, W = m.shape[-2:]
        x, y = min(x, W - 1), min(y, H - 1)
        return (m[:, y:y + height, x:x + width].clone(),)


class ThresholdMask(Node):
    type = "ThresholdMask"
    display_name = "ThresholdMask"
    category = "mask"
    description = "1 where the mask is above `value`, else 0."
    inputs = (Input("mask", MASK), Input("value", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, mask, value):
        return ((as_masks(mask) > value).float(),)


class MaskToImage(Node):
    type = "MaskToImage"
    display_name = "Convert Mask to Image"
    category = "mask"
    description = "A grey image of the mask (the same value in R, G and B)."
    inputs = (Input("mask", MASK),)
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, mask):
        return (as_masks(mask)[..., None].expand(-1, -1, -1, 3).clone(),)


IMAGE_CHANNELS = ["red", "green", "blue", "alpha"]


class ImageToMask(Node):
    type = "ImageToMask"
    display_name = "Convert Image to Mask"
    category = "mask"
    description = "One channel of an image as a mask (its values as they are: alpha 1 = opaque)."
    inputs = (Input("image", IMAGE), Input("channel", COMBO, choices=IMAGE_CHANNELS, default="red"))
    outputs = (Output("MASK", MASK),)

    def run(self, ctx, image, channel):
        idx = IMAGE_CHANNELS.index(channel)
        if idx >= image.shape[-1]:
            raise ValueError(f"channel {channel!r}: the image has only {image.shape[-1]} channels (no alpha; load it "
                             "with LoadImage, whose MASK output is the inverted alpha)")
        return (image[..., idx].float().clone(),)

"""Image nodes (ComfyUI category "image"): LoadImage (IMAGE + MASK from alpha), SaveImage (PNG with the workflow and
the ComfyUI API prompt in text chunks), PreviewImage (to the temp folder), scaling and padding for outpainting.

IMAGE is float32 [B, H, W, C] in 0..1; MASK is float32 [B, H, W] in 0..1 (1 = the area to paint).
"""
from __future__ import annotations

import random
import string

import torch

from graph.node import Input, Node, NodeResult, Output
from graph.types import COMBO, FLOAT, IMAGE, INT, MASK, STRING
from nodes.imaging.files import IMAGE_EXTENSIONS, load_image_file, save_images
from nodes.imaging.resize import CROP_MODES, IMAGE_METHODS, resize


class LoadImage(Node):
    type = "LoadImage"
    display_name = "Load Image"
    category = "image"
    description = "Load an image from the input folder: IMAGE, and MASK from its alpha channel (transparent = 1)."
    inputs = (Input("image", COMBO, files="input", extensions=IMAGE_EXTENSIONS,
                    tooltip="A file in the input folder (upload one through the server)."),)
    outputs = (Output("IMAGE", IMAGE), Output("MASK", MASK))

    def run(self, ctx, image):
        return load_image_file(ctx.file_path("image"))


class SaveImage(Node):
    type = "SaveImage"
    display_name = "Save Image"
    category = "image"
    description = ("Save images as PNG to the output folder as <prefix>_00001_.png ...; the PNG carries the workflow "
                   "(text chunk 'workflow', Chisel's format) and the ComfyUI API prompt ('prompt').")
    output_node = True
    inputs = (
        Input("images", IMAGE),
        Input("filename_prefix", STRING, default="ComfyUI",
              tooltip="File name prefix; may include subfolders (a/b/name) inside the output folder."),
    )
    outputs = ()

    def run(self, ctx, images, filename_prefix):
        folder = ctx.services.paths.dir("output")
        return NodeResult(ui={"images": save_images(images, folder, filename_prefix, "output", ctx, 4)})


class PreviewImage(Node):
    type = "PreviewImage"
    display_name = "Preview Image"
    category = "image"
    description = "Show images without keeping them: written to the temp folder."
    output_node = True
    inputs = (Input("images", IMAGE),)
    outputs = ()

    def run(self, ctx, images):
        folder = ctx.services.paths.dir("temp")
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        return NodeResult(ui={"images": save_images(images, folder, f"ChiselTemp_{suffix}", "temp", ctx, 1)})


def _scale(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    x = image.movedim(-1, 1)
    return resize(x, width, height, method, crop).movedim(1, -1).clamp(0, 1)


class ImageScale(Node):
    type = "ImageScale"
    display_name = "Upscale Image"
    category = "image/upscaling"
    description = "Resize images to a size (0 keeps the aspect ratio from the other side)."
    inputs = (
        Input("image", IMAGE),
        Input("upscale_method", "COMBO", choices=IMAGE_METHODS, default="nearest-exact"),
        Input("width", INT, default=512, min=0, max=16384, step=1),
        Input("height", INT, default=512, min=0, max=16384, step=1),
        Input("crop", "COMBO", choices=CROP_MODES, default="disabled"),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1:3]
        width = width or max(1, round(w * height / h))
        height = height or max(1, round(h * width / w))
        return (_scale(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    type = "ImageScaleBy"
    display_name = "Upscale Image By"
    category = "image/upscaling"
    description = "Scale images by a factor."
    inputs = (
        Input("image", IMAGE),
        Input("upscale_method", "COMBO", choices=IMAGE_METHODS, default="nearest-exact"),
        Input("scale_by", FLOAT, default=1.0, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image, upscale_method, scale_by):
        h, w = image.shape[1:3]
        return (_scale(image, max(1, round(w * scale_by)), max(1, round(h * scale_by)), upscale_method),)


class ImagePadForOutpaint(Node):
    type = "ImagePadForOutpaint"
    display_name = "Pad Image for Outpainting"
    category = "image"
    description = ("Extend the canvas by the given margins (filled with mid-gray) and return a mask of the new "
                   "area, feathered into the original by `feathering` pixels.")
    inputs = (
        Input("image", IMAGE),
        Input("left", INT, default=0, min=0, max=16384, step=8),
        Input("top", INT, default=0, min=0, max=16384, step=8),
        Input("right", INT, default=0, min=0, max=16384, step=8),
        Input("bottom", INT, default=0, min=0, max=16384, step=8),
        Input("feathering", INT, default=40, min=0, max=16384, step=1),
    )
    outputs = (Output("IMAGE", IMAGE), Output("MASK", MASK))

    def run(self, ctx, image, left, top, right, bottom, feathering):
        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=image.dtype)
        out[:, top:top + h, left:left + w] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0:
            ys = torch.arange(h, dtype=torch.float32).view(-1, 1)
            xs = torch.arange(w, dtype=torch.float32).view(1, -1)
            big = float(h + w)
            d = torch.full((h, w), big)
            if top:
                d = torch.minimum(d, ys.expand(h, w))
            if bottom:
                d = torch.minimum(d, (h - 1 - ys).expand(h, w))
            if left:
                d = torch.minimum(d, xs.expand(h, w))
            if right:
                d = torch.minimum(d, (w - 1 - xs).expand(h, w))
            inner = torch.where(d < feathering, ((feathering - d) / feathering) ** 2, inner)
        mask[top:top + h, left:left + w] = inner
        return (out, mask.unsqueeze(0).expand(b, -1, -1).clone())

"""Image nodes (ComfyUI category "image"): LoadImage and LoadImageOutput (IMAGE + MASK from alpha), SaveImage (PNG
with the workflow and the ComfyUI API prompt in text chunks), PreviewImage (to the temp folder), scaling, padding for
outpainting, cropping, batching, inverting, masked compositing and blank images. Blend/blur/sharpen live in
:mod:`nodes.library.image_postprocessing`.

IMAGE is float32 [B, H, W, C] in 0..1; MASK is float32 [B, H, W] in 0..1 (1 = the area to paint).
"""
from __future__ import annotations

import random
import string

import torch

from graph.node import Input, Node, NodeResult, Output
from graph.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK, STRING
from nodes.imaging.compose import composite, match_size
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
    per_sample_inputs = ("filename_prefix",)

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


class LoadImageOutput(Node):
    type = "LoadImageOutput"
    display_name = "Load Image (from Outputs)"
    category = "image"
    description = "Load an image from the output folder (e.g. one a previous run saved): IMAGE, and MASK from alpha."
    inputs = (Input("image", COMBO, files="output", extensions=IMAGE_EXTENSIONS,
                    tooltip="A file in the output folder."),)
    outputs = (Output("IMAGE", IMAGE), Output("MASK", MASK))

    def run(self, ctx, image):
        return load_image_file(ctx.file_path("image"))


class ImageCrop(Node):
    type = "ImageCrop"
    display_name = "Image Crop"
    category = "image/transform"
    description = ("Crop a width x height area with its top-left corner at (x, y); a corner outside the image moves "
                   "to its last pixel, and the crop ends at the image's edge.")
    inputs = (
        Input("image", IMAGE),
        Input("width", INT, default=512, min=1, max=16384, step=1),
        Input("height", INT, default=512, min=1, max=16384, step=1),
        Input("x", INT, default=0, min=0, max=16384, step=1),
        Input("y", INT, default=0, min=0, max=16384, step=1),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image, width, height, x, y):
        H, W = image.shape[1:3]
        x, y = min(x, W - 1), min(y, H - 1)
        return (image[:, y:y + height, x:x + width, :].clone(),)


class ImageBatch(Node):
    type = "ImageBatch"
    display_name = "Batch Images"
    category = "image"
    description = "One batch of image1 followed by image2 (resized to image1's size, centre crop, when it differs)."
    inputs = (Input("image1", IMAGE), Input("image2", IMAGE))
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image1, image2):
        b = match_size(image2.movedim(-1, 1), image1.movedim(-1, 1)).movedim(1, -1).clamp(0, 1)
        c = min(image1.shape[-1], b.shape[-1])
        return (torch.cat([image1[..., :c], b[..., :c].to(image1)]),)


class ImageInvert(Node):
    type = "ImageInvert"
    display_name = "Invert Image"
    category = "image"
    description = "1 − image, per channel."
    inputs = (Input("image", IMAGE),)
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image):
        return (1.0 - image,)


class ImageCompositeMasked(Node):
    type = "ImageCompositeMasked"
    display_name = "ImageCompositeMasked"
    category = "image"
    description = ("Lay `source` over `destination` with its top-left corner at (x, y), blended by `mask` "
                   "(stretched to the source; none: opaque). `resize_source` first stretches the source to the "
                   "destination's size.")
    inputs = (
        Input("destination", IMAGE),
        Input("source", IMAGE),
        Input("x", INT, default=0, min=0, max=16384, step=1),
        Input("y", INT, default=0, min=0, max=16384, step=1),
        Input("resize_source", BOOLEAN, default=False),
        Input("mask", MASK, optional=True),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, destination, source, x, y, resize_source, mask):
        out = composite(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, bool(resize_source))
        return (out.movedim(1, -1),)


class EmptyImage(Node):
    type = "EmptyImage"
    display_name = "EmptyImage"
    category = "image"
    description = "A batch of images of one colour, given as 0xRRGGBB (0: black)."
    inputs = (
        Input("width", INT, default=512, min=1, max=16384, step=1),
        Input("height", INT, default=512, min=1, max=16384, step=1),
        Input("batch_size", INT, default=1, min=1, max=4096),
        Input("color", INT, default=0, min=0, max=16777215, step=1),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, width, height, batch_size, color):
        rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
        return (rgb.expand(batch_size, height, width, 3).clone(),)

"""Upscale-model nodes: load an ESRGAN-family (or other spandrel-supported) model from models/upscale_models and
upscale images with it, tile by tile (:mod:`nodes.upscaling`)."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import COMBO, IMAGE
from nodes.library.loaders import manager
from nodes.upscaling import model as upscale

UPSCALE_MODEL = "UPSCALE_MODEL"
UPSCALE_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


class UpscaleModelLoader(Node):
    type = "UpscaleModelLoader"
    display_name = "Load Upscale Model"
    category = "loaders"
    description = ("Load an upscale model from models/upscale_models: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, "
                   "SPAN ... (the architecture is detected by spandrel, an optional dependency: "
                   "pip install 'chisel[upscale]').")
    inputs = (Input("model_name", COMBO, files="upscale_models", extensions=UPSCALE_EXTENSIONS,
                    tooltip="The model file (models/upscale_models)."),)
    outputs = (Output(UPSCALE_MODEL, UPSCALE_MODEL),)

    def run(self, ctx, model_name):
        return (upscale.load(manager(ctx), ctx.file_path("model_name"), ctx.progress),)


class ImageUpscaleWithModel(Node):
    type = "ImageUpscaleWithModel"
    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    description = ("Upscale images by the model's factor (e.g. 4x), in overlapping tiles blended without seams, so a "
                   "large image fits in device memory; the tiles shrink when memory runs out.")
    inputs = (Input("upscale_model", UPSCALE_MODEL), Input("image", IMAGE))
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, upscale_model, image):
        progress = getattr(ctx, "progress", None)
        return (upscale_model.upscale(image, progress=progress),)

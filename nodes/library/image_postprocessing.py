"""Image post-processing nodes (ComfyUI category "image/postprocessing"): blend, blur and sharpen
(:mod:`nodes.imaging.filters`). IMAGE is float32 [B, H, W, C] in 0..1."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import COMBO, FLOAT, IMAGE, INT
from nodes.imaging.compose import match_batch, match_size
from nodes.imaging.filters import BLEND_MODES, blend, gaussian_blur, sharpen


class ImageBlend(Node):
    type = "ImageBlend"
    display_name = "Image Blend"
    category = "image/postprocessing"
    description = ("Blend image2 onto image1 with a blend mode: image1 · (1 − factor) + mode(image1, image2) · factor. "
                   "image2 is resized (centre crop, bicubic) when its size differs.")
    inputs = (
        Input("image1", IMAGE),
        Input("image2", IMAGE),
        Input("blend_factor", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
        Input("blend_mode", COMBO, choices=BLEND_MODES, default="normal"),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image1, image2, blend_factor, blend_mode):
        b = image2.movedim(-1, 1)
        b = match_size(b, image1.movedim(-1, 1), "bicubic").movedim(1, -1)
        b = match_batch(b, image1.shape[0])
        c = min(image1.shape[-1], b.shape[-1])
        return (blend(image1[..., :c], b[..., :c].to(image1), blend_factor, blend_mode),)


class ImageBlur(Node):
    type = "ImageBlur"
    display_name = "Image Blur"
    category = "image/postprocessing"
    description = ("Gaussian blur over a (2·radius+1)² window; sigma is measured in units of the radius (ComfyUI's "
                   "convention), edges are reflected.")
    inputs = (
        Input("image", IMAGE),
        Input("blur_radius", INT, default=1, min=1, max=31, step=1),
        Input("sigma", FLOAT, default=1.0, min=0.1, max=10.0, step=0.1),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image, blur_radius, sigma):
        return (gaussian_blur(image, blur_radius, sigma),)


class ImageSharpen(Node):
    type = "ImageSharpen"
    display_name = "Image Sharpen"
    category = "image/postprocessing"
    description = "Unsharp mask: image + 10 · alpha · (image − Gaussian blur of the image), clamped to 0..1."
    inputs = (
        Input("image", IMAGE),
        Input("sharpen_radius", INT, default=1, min=1, max=31, step=1),
        Input("sigma", FLOAT, default=1.0, min=0.1, max=10.0, step=0.01),
        Input("alpha", FLOAT, default=1.0, min=0.0, max=5.0, step=0.01),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, image, sharpen_radius, sigma, alpha):
        return (sharpen(image, sharpen_radius, sigma, alpha),)

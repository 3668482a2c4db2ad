"""Latent nodes (ComfyUI category "latent"): the empty latent, VAE encode/decode, upscaling, batches, inpainting.

LATENT is a dict: ``samples`` [B, 4, h, w]; optional ``noise_mask`` [B or 1, H, W] (1 = repaint) and
``batch_index`` (the batch positions the samples came from, so per-image noise stays the same). IMAGE is
[B, H, W, C] float32 in 0..1 on the CPU.
"""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import FLOAT, IMAGE, INT, LATENT, MASK, VAE
from nodes.imaging.masks import inpaint_inputs
from nodes.imaging.resize import CROP_MODES, LATENT_METHODS, resize
from nodes.imaging.tiled_vae import decode_with_fallback, encode_with_fallback


class EmptyLatentImage(Node):
    type = "EmptyLatentImage"
    display_name = "Empty Latent Image"
    category = "latent"
    description = "A batch of blank latents for an image of width x height pixels (latents are 1/8 of the size)."
    inputs = (
        Input("width", INT, default=512, min=16, max=16384, step=8),
        Input("height", INT, default=512, min=16, max=16384, step=8),
        Input("batch_size", INT, default=1, min=1, max=4096),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, width, height, batch_size):
        return ({"samples": torch.zeros((batch_size, 4, height // 8, width // 8), dtype=torch.float32)},)


def _copy(latent: dict, **changes) -> dict:
    out = {k: v for k, v in latent.items()}
    out.update(changes)
    return out


class LatentUpscale(Node):
    type = "LatentUpscale"
    display_name = "Upscale Latent"
    category = "latent"
    description = "Resize latents to a pixel size (a multiple of 8), e.g. for a hires-fix second pass."
    inputs = (
        Input("samples", LATENT),
        Input("upscale_method", "COMBO", choices=LATENT_METHODS, default="nearest-exact"),
        Input("width", INT, default=512, min=0, max=16384, step=8, tooltip="0 keeps the aspect ratio from height"),
        Input("height", INT, default=512, min=0, max=16384, step=8, tooltip="0 keeps the aspect ratio from width"),
        Input("crop", "COMBO", choices=CROP_MODES, default="disabled"),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, upscale_method, width, height, crop):
        x = samples["samples"]
        if width == 0 and height == 0:
            return (samples,)
        h, w = x.shape[-2:]
        if width == 0:  # keep the aspect ratio
            width = max(8, round(w * height / h))
        if height == 0:
            height = max(8, round(h * width / w))
        out = resize(x, max(1, width // 8), max(1, height // 8), upscale_method, crop)
        return (_copy(samples, samples=out),)


class LatentUpscaleBy(Node):
    type = "LatentUpscaleBy"
    display_name = "Upscale Latent By"
    category = "latent"
    description = "Scale latents by a factor."
    inputs = (
        Input("samples", LATENT),
        Input("upscale_method", "COMBO", choices=LATENT_METHODS, default="nearest-exact"),
        Input("scale_by", FLOAT, default=1.5, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, upscale_method, scale_by):
        x = samples["samples"]
        h, w = x.shape[-2:]
        out = resize(x, max(1, round(w * scale_by)), max(1, round(h * scale_by)), upscale_method)
        return (_copy(samples, samples=out),)


class SetLatentNoiseMask(Node):
    type = "SetLatentNoiseMask"
    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    description = "Only the masked area (1) is re-sampled; the rest keeps the input latent."
    inputs = (Input("samples", LATENT), Input("mask", MASK))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, mask):
        x = samples["samples"]
        h, w = x.shape[-2:]
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        mh, mw = mask.shape[-2:]
        if (mh, mw) not in ((h, w), (h * 8, w * 8)) and abs(mh / mw - h / w) > 0.02:
            raise ValueError(f"mask of {mw}x{mh} does not fit latents of {w * 8}x{h * 8} pixels "
                             f"(its aspect ratio differs); resize the mask to the image size")
        if mask.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask batch of {mask.shape[0]} does not match the latent batch of {x.shape[0]}")
        return (_copy(samples, noise_mask=mask.float().clamp(0, 1)),)


class RepeatLatentBatch(Node):
    type = "RepeatLatentBatch"
    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    description = "Repeat the batch `amount` times (each copy gets its own noise)."
    inputs = (Input("samples", LATENT), Input("amount", INT, default=1, min=1, max=64))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, amount):
        x = samples["samples"]
        out = _copy(samples, samples=x.repeat(amount, 1, 1, 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            out["noise_mask"] = mask.repeat(amount, 1, 1)
        if "batch_index" in samples:
            idx = samples["batch_index"]
            step = max(idx) + 1
            out["batch_index"] = [i + step * k for k in range(amount) for i in idx]
        return (out,)


class LatentFromBatch(Node):
    type = "LatentFromBatch"
    display_name = "Latent From Batch"
    category = "latent/batch"
    description = "Pick `length` latents starting at `batch_index`; they keep the noise they had in the batch."
    inputs = (Input("samples", LATENT), Input("batch_index", INT, default=0, min=0, max=63),
              Input("length", INT, default=1, min=1, max=64))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, batch_index, length):
        x = samples["samples"]
        n = x.shape[0]
        if batch_index >= n:
            raise ValueError(f"batch_index {batch_index} is outside a batch of {n}")
        end = min(n, batch_index + length)
        out = _copy(samples, samples=x[batch_index:end].clone())
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            out["noise_mask"] = mask[batch_index:end].clone()
        idx = samples.get("batch_index", list(range(n)))
        out["batch_index"] = list(idx[batch_index:end])
        return (out,)


class VAEDecode(Node):
    type = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decode latents into images (in tiles, if the whole image does not fit in memory)."
    inputs = (Input("samples", LATENT), Input("vae", VAE))
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, samples, vae):
        return (decode_with_fallback(vae, samples["samples"]),)

    @classmethod
    def run_batch(cls, ctxs, calls):
        """Several prompts' latents decoded in one call (the same VAE, the same latent size), split back."""
        lats = [c["samples"]["samples"] for c in calls]
        if any(c["vae"] is not calls[0]["vae"] or lat.shape[1:] != lats[0].shape[1:] for c, lat in zip(calls, lats)):
            return None
        images = decode_with_fallback(calls[0]["vae"], torch.cat(lats))
        return [(part,) for part in torch.split(images, [lat.shape[0] for lat in lats])]


class VAEEncode(Node):
    type = "VAEEncode"
    display_name = "VAE Encode"
    category = "latent"
    description = "Encode images into latents (the image is center-cropped to a multiple of 8 pixels)."
    inputs = (Input("pixels", IMAGE), Input("vae", VAE))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, pixels, vae):
        return ({"samples": encode_with_fallback(vae, pixels)},)


class VAEEncodeForInpaint(Node):
    type = "VAEEncodeForInpaint"
    display_name = "VAE Encode (for Inpainting)"
    category = "latent/inpaint"
    description = ("Encode an image for inpainting: the masked area (mask 1) is set to gray before encoding and the "
                   "mask, grown by `grow_mask_by` pixels, becomes the latent's noise mask: only that area is "
                   "re-sampled. Works with inpainting checkpoints (9-channel UNet) and ordinary ones (denoise 1).")
    inputs = (
        Input("pixels", IMAGE),
        Input("vae", VAE),
        Input("mask", MASK, tooltip="1 = repaint here (a transparent area of a loaded image)."),
        Input("grow_mask_by", INT, default=6, min=0, max=64, step=1,
              tooltip="Grow the mask by this box size in pixels, so the new content blends into its surroundings."),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, pixels, vae, mask, grow_mask_by):
        gray, noise_mask = inpaint_inputs(pixels, mask, vae.downscale, grow_mask_by)
        return ({"samples": encode_with_fallback(vae, gray), "noise_mask": noise_mask},)

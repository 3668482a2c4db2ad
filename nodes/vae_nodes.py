"""VAEDecode, VAEEncode and VAEEncodeForInpaint: between IMAGE ([B, H, W, C] float32 0..1, CPU) and LATENT (VAE
latents)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from graph.node import Input, Node, Output
from graph.types import IMAGE, INT, LATENT, MASK, VAE


class VAEDecode(Node):
    type = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decode latents into images."
    inputs = (Input("samples", LATENT), Input("vae", VAE))
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, samples, vae):
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    type = "VAEEncode"
    display_name = "VAE Encode"
    category = "latent"
    description = "Encode images into latents (the image is center-cropped to a multiple of 8 pixels)."
    inputs = (Input("pixels", IMAGE), Input("vae", VAE))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, pixels, vae):
        return ({"samples": vae.encode(pixels)},)


def grow_mask(mask: torch.Tensor, by: int) -> torch.Tensor:
    """Dilate a [B, H, W] 0/1 mask with a ``by`` x ``by`` box (about by/2 pixels on each side)."""
    if by <= 0:
        return mask
    lo, hi = (by - 1) // 2 + (by - 1) % 2, (by - 1) // 2  # ceil, floor of (by-1)/2
    m = F.pad(mask[:, None], (lo, hi, lo, hi))
    return F.max_pool2d(m, kernel_size=by, stride=1)[:, 0]


def inpaint_inputs(pixels: torch.Tensor, mask: torch.Tensor, factor: int, grow_mask_by: int):
    """(pixels cropped to a multiple of ``factor`` with the masked area set to mid-gray, the grown 0/1 noise mask at
    that pixel size)."""
    b, H, W = pixels.shape[:3]
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
    mh, mw = mask.shape[-2:]
    if abs(mh / mw - H / W) > 0.02 * (H / W):
        raise ValueError(f"the mask is {mw}x{mh} but the image is {W}x{H}: its aspect ratio differs; give a mask of "
                         "the image's size")
    if mask.shape[0] not in (1, b):
        raise ValueError(f"a batch of {mask.shape[0]} masks does not match a batch of {b} images")
    if (mh, mw) != (H, W):
        mask = F.interpolate(mask[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    mask = mask.clamp(0, 1).expand(b, -1, -1)
    h, w = H // factor * factor, W // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"an image of {W}x{H} is smaller than the VAE's {factor}x{factor} downscale")
    y0, x0 = (H - h) // 2, (W - w) // 2
    pixels = pixels[:, y0:y0 + h, x0:x0 + w, :3]
    mask = mask[:, y0:y0 + h, x0:x0 + w]
    hard = mask.round()
    keep = (1.0 - hard)[..., None]
    gray = (pixels - 0.5) * keep + 0.5  # what is to be repainted carries no trace of the old content
    return gray, grow_mask(hard, grow_mask_by)


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

    def run(self, ctx, pixels, vae, mask, grow_mask_by=6):
        gray, noise_mask = inpaint_inputs(pixels, mask, vae.downscale, grow_mask_by)
        return ({"samples": vae.encode(gray), "noise_mask": noise_mask},)

"""Latent spaces: the scale between the VAE's latents and the diffusion model's, and a fixed linear latent -> RGB
map for cheap previews while sampling.

As in ComfyUI, a LATENT value holds the VAE's own (unscaled) latents; the MODEL knows its latent scale and applies
it on the way into sampling (``process_in``) and out (``process_out``). A VAE loaded on its own therefore works with
any model of its latent space.

The 4x3 factors are the widely published least-squares fits of the SD1.x/SD2.x and SDXL VAEs' decoded colours on
their (scaled) latents; good enough for a thumbnail, computed in one tiny matmul on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SD15_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177))
SDXL_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188))
SDXL_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class LatentFormat:
    name: str
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    channels: int = 4
    rgb_factors: tuple = SD15_RGB
    rgb_bias: tuple | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the diffusion model's latent space."""
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents -> VAE latents."""
        return latent / self.scale_factor + self.shift_factor

    def to_rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] model-space latents -> [B, h, w, 3] uint8 on the same device (no host sync)."""
        f = torch.tensor(self.rgb_factors, dtype=latent.dtype, device=latent.device)
        rgb = torch.einsum("bchw,cr->bhwr", latent[:, : f.shape[0]], f)
        if self.rgb_bias is not None:
            rgb = rgb + torch.tensor(self.rgb_bias, dtype=latent.dtype, device=latent.device)
        return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


SD15 = LatentFormat("sd15")
SDXL = LatentFormat("sdxl", scale_factor=0.13025, rgb_factors=SDXL_RGB, rgb_bias=SDXL_RGB_BIAS)


def for_family(family: str, scale_factor: float | None = None, shift_factor: float | None = None,
               channels: int = 4) -> LatentFormat:
    """The latent format of a family; a checkpoint's own VAE scaling factor (metadata) overrides the default."""
    from dataclasses import replace

    base = SDXL if family in ("sdxl", "sdxl_refiner") else SD15
    changes = {"channels": channels}
    if scale_factor is not None:
        changes["scale_factor"] = float(scale_factor)
    if shift_factor is not None:
        changes["shift_factor"] = float(shift_factor)
    return replace(base, **changes)

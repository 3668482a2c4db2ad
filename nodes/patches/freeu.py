"""FreeU (Si et al., 2023): while the patched MODEL runs, each UNet decoder step scales the first half of the
backbone features' channels and damps the low frequencies of the skip features.

In the decoder every resnet takes ``cat(h, skip)``. A step whose ``h`` has 4x (or 2x) the UNet's base channels gets
``(b1, s1)`` (or ``(b2, s2)``), ComfyUI's rule:

- v1: ``h[:, :C/2] *= b``;
- v2: ``h[:, :C/2] *= (b − 1)·m + 1`` with ``m`` the channel-mean of ``h`` rescaled to 0..1 per image;
- both: the skip's centred 2x2 lowest frequencies (after an fftshift) are multiplied by ``s``.

Applied as forward pre-hooks on the decoder's resnets (:class:`FreeUPatch`), attached for one run by
:func:`nodes.patches.lora.patched`; the shared module is never changed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Multiply the centred (2·threshold)² lowest spatial frequencies of ``x`` [B, C, H, W] by ``scale``."""
    dtype = x.dtype
    f = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = f.shape[-2:]
    cy, cx = h // 2, w // 2
    mask = torch.ones_like(f.real)
    mask[..., max(0, cy - threshold):cy + threshold, max(0, cx - threshold):cx + threshold] = scale
    f = torch.fft.ifftshift(f * mask, dim=(-2, -1))
    return torch.fft.ifftn(f, dim=(-2, -1)).real.to(dtype)


def scale_backbone(h: torch.Tensor, b: float, v2: bool) -> torch.Tensor:
    half = h.shape[1] // 2
    out = h.clone()
    if v2:
        m = h.mean(1, keepdim=True)
        lo = m.amin(dim=(-2, -1), keepdim=True)
        hi = m.amax(dim=(-2, -1), keepdim=True)
        m = (m - lo) / (hi - lo)
        out[:, :half] = h[:, :half] * ((b - 1) * m + 1)
    else:
        out[:, :half] = h[:, :half] * b
    return out


def decoder_steps(unet: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """``(resnet, channels of h in its cat(h, skip) input)`` for every resnet of a diffusers UNet's decoder."""
    steps = []
    prev = unet.mid_block.resnets[-1].out_channels if unet.mid_block is not None else \
        unet.config.block_out_channels[-1]
    for block in unet.up_blocks:
        for j, resnet in enumerate(block.resnets):
            h_ch = prev if j == 0 else block.resnets[j - 1].out_channels
            steps.append((resnet, h_ch))
        prev = block.resnets[-1].out_channels
    return steps


@dataclass(frozen=True)
class FreeUPatch:
    b1: float
    b2: float
    s1: float
    s2: float
    v2: bool = False

    # shown in the MODEL's description beside LoRAs (name@strength)
    name = "FreeU"
    strength = 1.0

    def describe(self) -> str:
        return f"FreeU{'_V2' if self.v2 else ''}(b1={self.b1:g}, b2={self.b2:g}, s1={self.s1:g}, s2={self.s2:g})"

    @contextmanager
    def attach(self, unet: torch.nn.Module):
        base = int(unet.config.block_out_channels[0])
        scales = {base * 4: (self.b1, self.s1), base * 2: (self.b2, self.s2)}
        handles = []
        for resnet, h_ch in decoder_steps(unet):
            if h_ch not in scales:
                continue
            b, s = scales[h_ch]

            def hook(mod, args, h_ch=h_ch, b=b, s=s):
                x = args[0]
                h, skip = x[:, :h_ch], x[:, h_ch:]
                h = scale_backbone(h, b, self.v2)
                skip = fourier_filter(skip, 1, s)
                return (torch.cat([h, skip], dim=1), *args[1:])

            handles.append(resnet.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

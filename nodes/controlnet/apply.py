"""ControlNets on conditioning, and their residuals during sampling.

Apply ControlNet puts a :class:`ControlChain` into each conditioning entry's ``unet_inputs`` option: the ControlNet,
its hint image, strength and step range, and the chain that was there before (so several ControlNets stack on one
conditioning and their residuals add up, as diffusers' MultiControlNetModel sums them). The sampler's denoiser
(:mod:`nodes.sampling.guidance`) binds the chain once per run (:meth:`ControlChain.bind`: every check happens there,
before the first step) and calls the bound chain on the rows of its entries at every UNet call; the result is the
UNet's ``down_block_additional_residuals`` and ``mid_block_additional_residual``.

The hint image is scaled to the latent's pixel size (nearest-exact) when it has the same aspect ratio; another aspect
ratio or batch size is an error that names the conditioning input. A chain limited to part of the schedule
(``start_percent``/``end_percent``, mapped to sigmas as ComfyUI does) reads each step's sigma on the host once, to
skip the ControlNet outside its range (cheaper than running it to multiply by zero).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nodes.controlnet.handle import ControlNetHandle, check_fits

ASPECT_TOLERANCE = 0.02


@dataclass(eq=False)
class ControlChain:
    control: ControlNetHandle
    image: torch.Tensor  # IMAGE [B, H, W, C], 0..1, CPU
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: "ControlChain | None" = None

    def __chisel_nbytes__(self) -> dict[str, int]:
        own = self.image.numel() * self.image.element_size()
        return {"ram": own + (self.previous.__chisel_nbytes__()["ram"] if self.previous else 0)}

    def links(self) -> list["ControlChain"]:
        out, link = [], self
        while link is not None:
            out.append(link)
            link = link.previous
        return out[::-1]  # applied first, first

    def bind(self, model, latent_shape: tuple[int, int, int], what: str) -> "BoundChain":
        """Check every ControlNet against ``model`` and the latent (batch, height, width); prepare the hints."""
        return BoundChain([_BoundLink(link, model, latent_shape, what) for link in self.links()], model)


class _BoundLink:
    def __init__(self, link: ControlChain, model, latent_shape, what: str):
        self.control = link.control
        self.strength = float(link.strength)
        check_fits(link.control, model, what)
        self.hint = _prepare_hint(link.image, link.control, latent_shape, what)
        ms = model.model_sampling
        self.full_range = link.start_percent <= 0.0 and link.end_percent >= 1.0
        self.sigma_hi = ms.percent_to_sigma(link.start_percent)
        self.sigma_lo = ms.percent_to_sigma(link.end_percent)

    def active(self, sigma: torch.Tensor) -> bool:
        if self.full_range:
            return True
        s = float(sigma.reshape(-1)[0])  # one host read per step, only for a partial range
        return self.sigma_lo <= s <= self.sigma_hi


def _prepare_hint(image: torch.Tensor, control: ControlNetHandle, latent_shape, what: str) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, C', 8h, 8w] float32 on the CPU, checked against the latent."""
    b, h, w = latent_shape
    if image.ndim != 4:
        raise ValueError(f"{what}: the ControlNet image has shape {list(image.shape)}; expected an IMAGE "
                         "[batch, height, width, channels]")
    ih, iw, ic = int(image.shape[1]), int(image.shape[2]), int(image.shape[3])
    need = int(control.config.get("conditioning_channels", 3))
    if ic < need:
        raise ValueError(f"{what}: the ControlNet {control.name} takes a {need}-channel image; this one has {ic}")
    H, W = h * 8, w * 8
    if abs(ih / iw - H / W) > ASPECT_TOLERANCE * (H / W):
        raise ValueError(f"{what}: the ControlNet image is {iw}x{ih} but the latent is {W}x{H} pixels: the aspect "
                         "ratios differ, so the control would be distorted. Resize or crop the image to the "
                         "latent's size (or make the latent match the image).")
    if image.shape[0] not in (1, b):
        raise ValueError(f"{what}: the ControlNet image batch has {image.shape[0]} images; the latent batch has {b} "
                         "(give 1 image, or one per latent)")
    hint = image[..., :need].permute(0, 3, 1, 2).float()
    if (ih, iw) != (H, W):
        hint = F.interpolate(hint, size=(H, W), mode="nearest-exact")
    return hint.contiguous()


class BoundChain:
    """The per-run form of a chain: ``chain(x, sigma, t, context, added_cond_kwargs) -> UNet keyword arguments``."""

    def __init__(self, links: list[_BoundLink], model):
        self.links = links
        self.unet_dtype = model.unet.dtype
        self._hints: dict[int, torch.Tensor] = {}

    def _hint(self, link: _BoundLink, rows: int, device, dtype) -> torch.Tensor:
        hint = self._hints.get(id(link))
        if hint is None:
            hint = self._hints[id(link)] = link.hint.to(device, dtype)
        return hint.expand(rows, -1, -1, -1) if hint.shape[0] == 1 else hint.repeat(rows // hint.shape[0], 1, 1, 1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 added_cond_kwargs: dict | None = None) -> dict:
        down, mid = None, None
        for link in self.links:
            if not link.active(sigma):
                continue
            mm = link.control.module
            with link.control.manager.use(mm):
                dt = mm.dtype
                extra = {}
                if added_cond_kwargs is not None and link.control.config.get("addition_embed_type"):
                    extra["added_cond_kwargs"] = {k: v.to(dt) for k, v in added_cond_kwargs.items()}
                d, m = mm.module(x.to(dt), t, encoder_hidden_states=context.to(dt),
                                 controlnet_cond=self._hint(link, x.shape[0], x.device, dt),
                                 conditioning_scale=link.strength, return_dict=False, **extra)
            d = [r.to(self.unet_dtype) for r in d]
            m = m.to(self.unet_dtype)
            down = d if down is None else [a + r for a, r in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


def chain_onto(conditioning: list, control: ControlNetHandle, image: torch.Tensor, strength: float,
               start_percent: float, end_percent: float, shared: dict | None = None) -> list:
    """``conditioning`` with ``control`` added to every entry's chain. Entries that had the same chain before share
    one new chain (``shared`` carries that across the positive and negative lists), so their rows run through the
    ControlNet in one call."""
    shared = {} if shared is None else shared
    out = []
    for emb, opts in conditioning:
        prev = opts.get("unet_inputs")
        if prev is not None and not isinstance(prev, ControlChain):
            raise ValueError("this conditioning already carries other UNet inputs; ControlNets cannot be added")
        key = id(prev)
        if key not in shared:
            shared[key] = ControlChain(control, image, float(strength), float(start_percent), float(end_percent),
                                       prev)
        out.append([emb, {**opts, "unet_inputs": shared[key]}])
    return out

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

A T2I-Adapter (:mod:`.t2i_apply`) on the chain runs once, when the chain is bound, on its hint; its features, times its
strength, go to the UNet as ``down_intrablock_additional_residuals`` on the steps in its range (adapters on one chain
add up), beside the ControlNets' residuals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nodes.controlnet import t2i_apply
from nodes.controlnet.handle import ControlNetHandle, check_fits
from nodes.controlnet.load import KIND_NAMES

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

    def describe(self) -> str:
        """What the chain holds, for messages: "a ControlNet", "a T2I-Adapter", "2 ControlNets and a T2I-Adapter"."""
        counts: dict[str, int] = {}
        for link in self.links():
            counts[link.control.kind] = counts.get(link.control.kind, 0) + 1
        parts = [f"a {KIND_NAMES[k]}" if n == 1 else f"{n} {KIND_NAMES[k]}s" for k, n in counts.items()]
        return " and ".join(parts)

    def bind(self, model, latent_shape: tuple[int, int, int], what: str) -> "BoundChain":
        """Check every ControlNet against ``model`` and the latent (batch, height, width); prepare the hints."""
        return BoundChain([_BoundLink(link, model, latent_shape, what) for link in self.links()], model)


class _BoundLink:
    def __init__(self, link: ControlChain, model, latent_shape, what: str):
        self.control = link.control
        self.strength = float(link.strength)
        adapter = link.control.kind == "t2i_adapter"
        (t2i_apply.check_fits if adapter else check_fits)(link.control, model, what)
        self.hint = _prepare_hint(link.image, link.control, latent_shape, what)
        self.features = (t2i_apply.features(link.control, self.hint, self.strength, model.unet.dtype)
                         if adapter else None)
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
    """IMAGE [B, H, W, C] -> [B, C', H', W'] float32 on the CPU, checked against the latent. H', W' are the latent's
    pixel size (8h, 8w); for a T2I-Adapter rounded up to a multiple of its unshuffle factor."""
    b, h, w = latent_shape
    noun = KIND_NAMES[control.kind]
    if image.ndim != 4 or min(image.shape[1:3]) < 1:
        raise ValueError(f"{what}: the {noun} image has shape {list(image.shape)}; expected an IMAGE "
                         "[batch, height, width, channels]")
    ih, iw, ic = int(image.shape[1]), int(image.shape[2]), int(image.shape[3])
    adapter = control.kind == "t2i_adapter"
    need = int(control.config.get("in_channels" if adapter else "conditioning_channels", 3))
    if ic < need:
        raise ValueError(f"{what}: the {noun} {control.name} takes a {need}-channel image; this one has {ic}")
    H, W = h * 8, w * 8
    if abs(ih / iw - H / W) > ASPECT_TOLERANCE * (H / W):
        raise ValueError(f"{what}: the {noun} image is {iw}x{ih} but the latent is {W}x{H} pixels: the aspect "
                         "ratios differ, so the control would be distorted. Resize or crop the image to the "
                         "latent's size (or make the latent match the image).")
    if image.shape[0] not in (1, b):
        raise ValueError(f"{what}: the {noun} image batch has {image.shape[0]} images; the latent batch has {b} "
                         "(give 1 image, or one per latent)")
    if adapter:
        H, W = t2i_apply.hint_size(control, H, W)
        hint = t2i_apply.hint_channels(image, need)
    else:
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
        return _rows(hint, rows)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 added_cond_kwargs: dict | None = None) -> dict:
        down, mid, intra = None, None, None
        for link in self.links:
            if not link.active(sigma):
                continue
            if link.features is not None:
                f = [_rows(r, x.shape[0]) for r in link.features]
                intra = f if intra is None else [a + r for a, r in zip(intra, f)]
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
        out = {}
        if down is not None:
            out.update(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        if intra is not None:  # a new list each call: the UNet pops its entries
            out["down_intrablock_additional_residuals"] = list(intra)
        return out


def _rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` (batch 1, or the latent batch) for ``rows`` UNet rows (the latent batch times the entries sharing it)."""
    return t.expand(rows, -1, -1, -1) if t.shape[0] == 1 else t.repeat(rows // t.shape[0], 1, 1, 1)


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

"""Rescaled classifier-free guidance (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", section 3.4, eqs. 14-17): a large guidance scale inflates the guided prediction's standard deviation; it is
scaled back to the positive prediction's, and ``multiplier`` (the paper's phi) blends the rescaled and plain
results:

    g        = n + w (p - n)                      (14)  p, n: positive / negative prediction, w: cfg scale
    g_resc   = g * std(p) / std(g)                (15, 16)  std over each image's channels and pixels
    g_final  = phi * g_resc + (1 - phi) * g       (17)

The paper's model predicts velocity v, and the rescaling is not invariant under a change of prediction space
(v = alpha eps - sqrt(1 - alpha^2) x0 mixes in x0, so std ratios differ between eps, v and x0), so the rule is
applied to v for every model: the positive and negative x0 predictions D are turned into v at the current sigma
(sampler space ``x = x0 + sigma eps``, VP scale ``alpha = 1 / sqrt(1 + sigma^2)``):

    v = (x / (1 + sigma^2) - D) * sqrt(1 + sigma^2) / sigma

rescaled, and turned back: ``D = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2)``. This is also the space
ComfyUI's RescaleCFG works in, whatever the model's prediction type. With multiplier 0 (or cfg 1) it is plain CFG.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nodes.sampling.guidance_patches import GuidanceStep


def rescaled_cfg(cond_v: torch.Tensor, uncond_v: torch.Tensor, scale: float, multiplier: float) -> torch.Tensor:
    """Eqs. 14-17 on predictions in one space (per image: std over all but the batch dimension)."""
    guided = uncond_v + scale * (cond_v - uncond_v)
    dims = tuple(range(1, guided.ndim))
    factor = cond_v.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (multiplier * factor + (1.0 - multiplier))


@dataclass(frozen=True)
class RescaleCFGPatch:
    multiplier: float

    name = "RescaleCFG"
    strength = 1.0

    def describe(self) -> str:
        return f"RescaleCFG(multiplier={self.multiplier:g})"

    def combine(self, step: GuidanceStep) -> torch.Tensor:
        s = step.sigma_view().float()
        x = step.x.float()
        var = 1.0 + s * s
        zx = x / var  # the VP-scaled latent times alpha: alpha * x_t

        def to_v(d: torch.Tensor) -> torch.Tensor:
            return (zx - d.float()) * var.sqrt() / s

        v = rescaled_cfg(to_v(step.cond), to_v(step.uncond), step.scale, self.multiplier)
        den = zx - v * s / var.sqrt()
        plain = step.uncond + (step.cond - step.uncond) * step.scale
        # sigma 0 (a sampler asking for the clean image) has no velocity: plain CFG there
        return torch.where(s > 0, den, plain.float()).to(step.cond.dtype)

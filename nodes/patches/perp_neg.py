"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm: Transform 2D Diffusion into 3D,
alleviate Janus problem and Beyond"): the positive and negative predictions are taken relative to the empty
prompt's, and only the part of the negative direction perpendicular to the positive one is subtracted, so a
negative prompt that overlaps the positive cannot cancel it:

    p = D_pos - D_empty,  n = D_neg - D_empty
    n_perp = n - (<n, p> / <p, p>) p            (per image: inner products over channels and pixels)
    D = D_empty + w (p - neg_scale * n_perp)    w: the cfg scale

The rule is linear and homogeneous in the three predictions, so it reads the same on x0 (used here) as on the
paper's noise predictions (x0 = x - sigma eps, the same x and sigma for all three). The empty prompt goes through
the UNet in the same batched call as the positive and negative.
"""
from __future__ import annotations

import torch

from nodes.sampling.guidance_patches import GuidanceStep


def perpendicular(n: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The part of ``n`` perpendicular to ``p``, per image (``p`` = 0 leaves ``n`` whole)."""
    dims = tuple(range(1, n.ndim))
    pp = (p * p).sum(dim=dims, keepdim=True)
    coef = torch.where(pp > 0, (n * p).sum(dim=dims, keepdim=True) / pp.clamp_min(torch.finfo(pp.dtype).tiny),
                       torch.zeros_like(pp))
    return n - coef * p


class PerpNegPatch:
    name = "PerpNeg"
    strength = 1.0
    needs_negative = True
    extra_names = ("PerpNeg's empty_conditioning",)

    def __init__(self, empty_conditioning: list, neg_scale: float):
        self.extra_conds = (empty_conditioning,)
        self.neg_scale = float(neg_scale)

    def describe(self) -> str:
        return f"PerpNeg(neg_scale={self.neg_scale:g})"

    def combine(self, step: GuidanceStep) -> torch.Tensor:
        empty = step.extra[0]
        p, n = step.cond - empty, step.uncond - empty
        return empty + step.scale * (p - self.neg_scale * perpendicular(n, p))

"""Guidance patches: objects a MODEL carries in ``options["guidance"]`` (added by RescaleCFG, PerpNeg,
SelfAttentionGuidance) that change how classifier-free guidance combines the predictions, only while that MODEL
samples.

A patch may have (all optional):

- ``extra_conds``: conditionings it needs predicted each step besides positive and negative (PerpNeg's empty
  prompt); they go through the UNet in the same batched call (``extra_names``: how messages name them);
- ``needs_negative``: True when it reads the negative prediction even at cfg 1 (the usual cfg-1 shortcut that skips
  the negative pass is then off);
- ``combine(step) -> denoised``: replaces ``uncond + cfg (cond - uncond)``; when several patches have one, the one
  applied last (nearest the sampler) wins, as in ComfyUI;
- ``post_cfg(step, denoised) -> denoised``: applied after the combination, in the order the patches were applied;
- ``bind(denoiser) -> object with post_cfg``: a per-run form (state that lives for one sampling run).

Every value is an x0 prediction ("denoised") in the sampler's sigma space: ``x = x0 + sigma * eps``.
Only the ``cfg`` guidance style (KSampler, CFGGuider) has classifier-free guidance to patch; the basic and dual
guiders refuse a patched MODEL with an error naming the patches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GuidanceStep:
    """One denoiser call, as a patch sees it."""

    x: torch.Tensor  # [B, C, H, W] the noisy latent in sigma space
    sigma: torch.Tensor  # [B]
    scale: float  # the cfg scale
    cond: torch.Tensor  # the positive prediction (x0)
    uncond: torch.Tensor | None  # the negative prediction (x0); None when the cfg-1 shortcut skipped it
    extra: tuple  # the predictions of this patch's extra_conds, in order
    denoiser: Any  # the CFGDenoiser: ``denoiser.predict(x, sigma, groups)`` runs more UNet passes

    def sigma_view(self) -> torch.Tensor:
        return self.sigma.reshape(-1, 1, 1, 1).to(self.x.dtype)


def describe(patch) -> str:
    fn = getattr(patch, "describe", None)
    return fn() if fn is not None else getattr(patch, "name", type(patch).__name__)


@dataclass
class PatchedGuidance:
    """Classifier-free guidance over (positive, negative, the patches' extra conditionings), combined through the
    patches."""

    patches: tuple
    scale: float
    groups: list  # the conditionings that go through the UNet
    group_names: tuple
    skip_negative: bool
    extra_slices: tuple  # per patch: slice of the groups holding its extra conditionings

    @classmethod
    def plan(cls, guider, patches: tuple, need_uncond: bool = False) -> "PatchedGuidance":
        if guider.style != "cfg":
            names = ", ".join(describe(p) for p in patches)
            raise ValueError(f"the MODEL is patched with {names}, which changes classifier-free guidance; the "
                             f"{guider.style} guider has none to change: use KSampler or CFGGuider with this MODEL")
        (scale,), (pos, neg) = guider.scales, guider.conds
        skip = scale == 1.0 and not need_uncond and not any(getattr(p, "needs_negative", False) for p in patches)
        groups = [pos] if skip else [pos, neg]
        names = ["positive"] if skip else ["positive", "negative"]
        slices = []
        for p in patches:
            extra = tuple(getattr(p, "extra_conds", ()))
            extra_names = tuple(getattr(p, "extra_names", ()))
            start = len(groups)
            for k, cond in enumerate(extra):
                groups.append(cond)
                names.append(extra_names[k] if k < len(extra_names) else
                             f"{getattr(p, 'name', type(p).__name__)} conditioning {k + 1}")
            slices.append(slice(start, len(groups)))
        return cls(tuple(patches), float(scale), groups, tuple(names), skip, tuple(slices))

    def bind(self, denoiser) -> "_BoundGuidance":
        bound = tuple(p.bind(denoiser) if hasattr(p, "bind") else p for p in self.patches)
        return _BoundGuidance(self, bound, denoiser)


class _BoundGuidance:
    def __init__(self, plan: PatchedGuidance, bound: tuple, denoiser):
        self.plan = plan
        self.bound = bound
        self.denoiser = denoiser
        combiners = [i for i, p in enumerate(bound) if hasattr(p, "combine")]
        self.combiner = combiners[-1] if combiners else None  # index into bound
        self.post = [i for i, p in enumerate(bound) if hasattr(p, "post_cfg")]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, preds: list) -> torch.Tensor:
        plan = self.plan
        cond = preds[0]
        uncond = None if plan.skip_negative else preds[1]

        def step(i: int) -> GuidanceStep:
            return GuidanceStep(x, sigma, plan.scale, cond, uncond, tuple(preds[plan.extra_slices[i]]),
                                self.denoiser)

        if plan.skip_negative:
            den = cond
        elif self.combiner is not None:
            den = self.bound[self.combiner].combine(step(self.combiner))
        else:
            den = uncond + (cond - uncond) * plan.scale
        for i in self.post:
            den = self.bound[i].post_cfg(step(i), den)
        return den

"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers (the README's noise
contract, ComfyUI's):

- the starting noise is drawn on the CPU in float32 from ``torch.Generator("cpu").manual_seed(seed)``, the whole
  batch at once, so a seed gives the same starting noise on any device;
- ancestral samplers draw each step's noise from a generator on the latent's device (:func:`seeded_noise_sampler`),
  seeded with the seed, or with seed + 1 on the CPU so that the first step's noise is not the starting noise again
  (ComfyUI's rule since its fix for noisy ancestral images on the CPU);
- SDE samplers take Brownian-motion increments from a Brownian tree (torchsde) seeded with the seed and spanning
  the schedule's smallest positive and largest sigma (:class:`BrownianTreeNoiseSampler`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch

__all__ = ["initial_noise", "make_noise_sampler", "NoiseSampler", "default_noise_sampler", "seeded_noise_sampler",
           "BrownianTreeNoiseSampler", "step_noise_sampler"]

log = logging.getLogger(__name__)

NoiseSampler = Callable[..., torch.Tensor]


def initial_noise(shape, seed: int) -> torch.Tensor:
    """The starting noise of a sampling run: float32, on the CPU, the whole batch drawn at once."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def _to_like(noise: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Move CPU noise next to x without blocking the host on a CUDA stream."""
    if x.device.type == "cuda":
        return noise.pin_memory().to(device=x.device, dtype=x.dtype, non_blocking=True)
    return noise.to(device=x.device, dtype=x.dtype)


def make_noise_sampler(x: torch.Tensor, seed: int) -> NoiseSampler:
    """A dtype-independent noise stream (tests and scripts; sampling runs use :func:`step_noise_sampler`).

    Returns ``noise_sampler(sigma=None, sigma_next=None) -> Tensor`` shaped like ``x``, on x's device and dtype.
    Successive calls return successive draws of one CPU float32 generator seeded with ``seed``.
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = tuple(x.shape)

    def noise_sampler(sigma=None, sigma_next=None) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
        return _to_like(noise, x)

    return noise_sampler


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Fallback when a caller passes no noise sampler: torch's global RNG on x's device (not seed-stable)."""

    def noise_sampler(sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn_like(x)

    return noise_sampler


def seeded_noise_sampler(x: torch.Tensor, seed: int) -> NoiseSampler:
    """Per-step noise of ancestral samplers: successive ``torch.randn`` draws shaped like x, in x's dtype, from one
    generator on x's device (device-dependent numbers, as in ComfyUI).

    The generator is seeded with ``seed`` on an accelerator and with ``seed + 1`` on the CPU: the starting noise comes
    from a CPU generator seeded with ``seed``, and the first step's noise must not repeat it (with the same seed the
    first ancestral step re-adds the starting noise and the image stays visibly noisy)."""
    offset = 1 if x.device.type == "cpu" else 0
    generator = torch.Generator(device=x.device).manual_seed((int(seed) + offset) % (1 << 64))

    def noise_sampler(sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return noise_sampler


def _torchsde():
    try:
        import torchsde
    except ImportError:
        return None
    return torchsde


class BrownianTreeNoiseSampler:
    """Standard-normal noise for a step sigma -> sigma_next taken from one Brownian path W over
    [sigma_min, sigma_max]: (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|).

    The path is a ``torchsde.BrownianTree`` seeded with ``seed`` (its ``entropy``), starting at 0 with x's shape,
    built on the CPU (``cpu=True``) or on x's device; its increments are returned in x's dtype on x's device.
    Querying the same interval twice gives the same noise; sub-steps of a step get consistent noise.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int, cpu: bool = True):
        torchsde = _torchsde()
        if torchsde is None:
            raise ImportError("the Brownian-tree noise of the SDE samplers needs torchsde (pip install torchsde)")
        self.device, self.dtype = x.device, x.dtype
        where = torch.device("cpu") if cpu else x.device
        t0 = torch.tensor(float(sigma_min), dtype=torch.float32, device=where)
        t1 = torch.tensor(float(sigma_max), dtype=torch.float32, device=where)
        w0 = torch.zeros(x.shape, dtype=torch.float32 if cpu else x.dtype, device=where)
        self.where = where
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=int(seed))

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a = torch.as_tensor(sigma, dtype=torch.float32).to(self.where)
        b = torch.as_tensor(sigma_next, dtype=torch.float32).to(self.where)
        lo, hi = (a, b) if a < b else (b, a)
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to its tolerance and warns when the schedule's own end sigmas fall a
            # rounding error outside them; it clamps them, which is what is wanted
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = self.tree(lo, hi)  # W(hi) - W(lo)
        if a > b:  # a step down in sigma: W(sigma_next) - W(sigma)
            w = -w
        w = w.to(self.dtype).to(self.device)
        return w / (b - a).abs().sqrt().to(self.device)


_warned_no_torchsde = False


def step_noise_sampler(kind: str, x: torch.Tensor, sigmas, seed: int) -> NoiseSampler | None:
    """The per-step noise a registered sampler's ``noise`` kind asks for (None for deterministic samplers).

    Without torchsde the Brownian kinds fall back to :func:`seeded_noise_sampler` (same distribution, other
    numbers than ComfyUI's) and say so once in the log.
    """
    global _warned_no_torchsde
    if kind == "none":
        return None
    if kind == "seeded":
        return seeded_noise_sampler(x, seed)
    if kind in ("brownian", "brownian_device"):
        if _torchsde() is None:
            if not _warned_no_torchsde:
                log.warning("torchsde is not installed: the SDE samplers draw independent seeded noise instead of "
                            "a Brownian tree, so their images differ from ComfyUI's (pip install torchsde)")
                _warned_no_torchsde = True
            return seeded_noise_sampler(x, seed)
        s = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
        positive = s[s > 0]
        if positive.numel() == 0:
            return None
        return BrownianTreeNoiseSampler(x, float(positive.min()), float(s.max()), seed, cpu=kind == "brownian")
    raise ValueError(f"unknown noise kind {kind!r}")

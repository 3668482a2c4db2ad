"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers.

Noise is always drawn on the CPU in float32 from ``torch.Generator("cpu").manual_seed(seed)`` and only then moved
to the target device/dtype, so a seed gives the same numbers on any device (the noise contract of
ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["initial_noise", "make_noise_sampler", "NoiseSampler", "default_noise_sampler"]

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
    """A deterministic noise source for stochastic samplers.

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

"""Samplers in sigma space (the k-diffusion formulation), each a short pure function.

Every sampler has the signature ``fn(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
**options) -> x`` where

- ``model(x, sigma_batch, **extra_args)`` returns the *denoised* prediction (x0) for the noisy ``x`` at noise level
  ``sigma_batch`` (a tensor of shape [batch] on x's device);
- ``x`` is the starting latent, already scaled to ``sigmas[0]`` (e.g. ``noise * sigmas[0]`` for txt2img);
- ``sigmas`` is the descending schedule (usually ending with 0);
- ``callback`` (if given) is called once per step with ``dict(i, x, denoised, sigma, sigma_next, total)``;
- ``noise_sampler(sigma, sigma_next)`` returns fresh standard-normal noise shaped like x (stochastic samplers only;
  see :func:`nodes.sampling.make_noise_sampler`).

No sampler synchronises the host with the device per step: the schedule is read once as Python floats, all
step coefficients are computed on the host from those floats, and per-step sigma tensors are created on x's device
with ``x.new_full`` (a fill, not a copy).

Notation: ``t = -log(sigma)`` (the half-log-SNR lambda of DPM-Solver), ``h = t_next - t``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .noise import default_noise_sampler

__all__ = ["SAMPLERS", "SAMPLER_NAMES", "get_ancestral_step"]


# -- shared helpers ---------------------------------------------------------------------------------------------


def _schedule(sigmas) -> list[float]:
    """The sigma schedule as Python floats (read once, before the loop)."""
    if isinstance(sigmas, torch.Tensor):
        return [float(s) for s in sigmas.detach().to("cpu", torch.float64).tolist()]
    return [float(s) for s in sigmas]


def _denoise(model, x: torch.Tensor, sigma: float, extra_args: dict) -> torch.Tensor:
    return model(x, x.new_full((x.shape[0],), sigma), **extra_args)


def _report(callback, i, x, denoised, sigma, sigma_next, total):
    if callback is not None:
        callback({"i": i, "x": x, "denoised": denoised, "sigma": sigma, "sigma_next": sigma_next, "total": total})


def get_ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic step to ``sigma_down`` plus fresh noise of std
    ``sigma_up``, with sigma_down^2 + sigma_up^2 = sigma_next^2. eta = 1 gives the DDPM posterior (ancestral)
    noise, eta = 0 a deterministic step."""
    if not eta or sigma_next == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
    return down, up


def _d(x, denoised, sigma: float):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def _t(sigma: float) -> float:
    return -math.log(sigma)


# -- first order ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn)."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = x + _d(x, denoised, s[i]) * (s[i + 1] - s[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0, s_noise: float = 1.0
):
    """Euler step to sigma_down, then fresh noise of std sigma_up (ancestral sampling)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = x + _d(x, denoised, s[i]) * (down - s[i])
        if s[i + 1] > 0.0 and up > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
    return x


# -- DPM-Solver++ ----------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in t = -log sigma, data prediction.

    x_next = (sigma_next / sigma) x - expm1(-h) D, with D extrapolated linearly (in t) from the current and
    previous denoised predictions: D = (1 + 1/(2r)) d_i - 1/(2r) d_{i-1}, r = h_prev / h. The first step and a
    step to sigma = 0 are first order (DDIM).
    """
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    old_denoised = None
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        if s[i + 1] == 0.0:
            x = denoised
        else:
            h = _t(s[i + 1]) - _t(s[i])
            if old_denoised is None:
                d = denoised
            else:
                r = (_t(s[i]) - _t(s[i - 1])) / h
                d = denoised * (1.0 + 1.0 / (2.0 * r)) - old_denoised * (1.0 / (2.0 * r))
            x = x * (s[i + 1] / s[i]) - d * math.expm1(-h)
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}
SAMPLER_NAMES = list(SAMPLERS)

"""Samplers in sigma space (the k-diffusion formulation), each a short pure function.

Every sampler has the signature ``fn(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
**options) -> x`` where

- ``model(x, sigma_batch, **extra_args)`` returns the *denoised* prediction (x0) for the noisy ``x`` at noise level
  ``sigma_batch`` (a tensor of shape [batch] on x's device; float64 for float64 x, else float32);
- ``x`` is the starting latent, already scaled to ``sigmas[0]`` (e.g. ``noise * sigmas[0]`` for txt2img);
- ``sigmas`` is the descending schedule (usually ending with 0);
- ``callback`` (if given) is called once per step with ``dict(i, x, denoised, sigma, sigma_next, total)``;
- ``noise_sampler(sigma, sigma_next)`` returns fresh standard-normal noise shaped like x (stochastic samplers only;
  see :func:`nodes.sampling.make_noise_sampler`).

No sampler synchronises the host with the device per step: the schedule is read once as Python floats, all
step coefficients are computed on the host from those floats, and per-step sigma tensors are created on x's device
with ``x.new_full`` (a fill, not a copy). Pass ``sigmas`` on the CPU: a device tensor is read back once at the start.

Notation: ``t = -log(sigma)`` (the half-log-SNR lambda of DPM-Solver), ``h = t_next - t``.
"""

from __future__ import annotations

import math
import torch

from nodes.sampling.model_sampling import ModelSampling
from nodes.sampling.noise import default_noise_sampler

__all__ = ["get_ancestral_step", "lms_coefficient"]  # and the sample_* functions (registered in registry.py)


# -- shared helpers ---------------------------------------------------------------------------------------------


def _schedule(sigmas) -> list[float]:
    """The sigma schedule as Python floats (read once, before the loop)."""
    if isinstance(sigmas, torch.Tensor):
        return [float(s) for s in sigmas.detach().to("cpu", torch.float64).tolist()]
    return [float(s) for s in sigmas]


def _denoise(model, x: torch.Tensor, sigma: float, extra_args: dict) -> torch.Tensor:
    # sigma_batch: a fill on x's device (no host-to-device copy), in at least float32 even for half-precision x
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    return model(x, x.new_full((x.shape[0],), sigma, dtype=dtype), **extra_args)


def _evaluate(model, x: torch.Tensor, sigma: float, extra_args: dict, cfg_pp: bool):
    """(denoised, the x a step updates from). With ``cfg_pp`` (CFG++, Chung et al. 2024) the step re-noises with
    the unconditional prediction: x = D_u + sigma eps_u is replaced by D + sigma eps_u = x + (D - D_u), so every
    update that carries x over (e^{-h} x, or x + (sigma_next - sigma) (x - D) / sigma) carries the guided
    prediction with the unconditional noise. The model's ``denoise_with_uncond`` gives D_u; a model without one has
    no separate unconditional prediction (D_u = D: the plain sampler)."""
    if not cfg_pp:
        return _denoise(model, x, sigma, extra_args), x
    pair = getattr(model, "denoise_with_uncond", None)
    if pair is None:
        return _denoise(model, x, sigma, extra_args), x
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    denoised, uncond = pair(x, x.new_full((x.shape[0],), sigma, dtype=dtype), **extra_args)
    return denoised, x + (denoised - uncond)


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
def sample_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, cfg_pp: bool = False):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn)."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
        x = x + _d(x, denoised, s[i]) * (s[i + 1] - s[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0, s_noise: float = 1.0,
    cfg_pp: bool = False
):
    """Euler step to sigma_down, then fresh noise of std sigma_up (ancestral sampling)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
        x = x + _d(x, denoised, s[i]) * (down - s[i])
        if s[i + 1] > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
    return x


# -- DPM-Solver++ ----------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, cfg_pp: bool = False):
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
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
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



@torch.no_grad()
def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    noise_sampler=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022): the data-prediction exponential integrator of the reverse SDE,
    multistep second order, with eta scaling the injected noise (eta = 0 is the ODE solver).

    First order: x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1+eta) h}) D
                 + sigma_next sqrt(1 - e^{-2 eta h}) z.
    The second-order correction uses (D_i - D_{i-1}) / r with the "midpoint" or "heun" weighting.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    old_denoised, h_last = None, None
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        if s[i + 1] == 0.0:
            x = denoised
        else:
            h = _t(s[i + 1]) - _t(s[i])
            eta_h = eta * h
            one_minus = -math.expm1(-h - eta_h)  # 1 - e^{-(1+eta) h}
            x = x * (s[i + 1] / s[i] * math.exp(-eta_h)) + denoised * one_minus
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "midpoint":
                    coef = 0.5 * one_minus / r
                else:
                    coef = (one_minus / (-h - eta_h) + 1.0) / r
                x = x + (denoised - old_denoised) * coef
            if eta:
                x = x + noise_sampler(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise)
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0, s_noise: float = 1.0
):
    """DPM-Solver++(3M) SDE: like 2M SDE with a quadratic (in t) extrapolation of D over the last three
    denoised predictions, built from divided differences:

        d1 = D' h (estimated), d2 = (second divided difference), x += phi2 d1 - phi3 d2,
        phi2 = 1 + expm1(-H) / H, phi3 = phi2 / H - 1/2, H = (1 + eta) h.

    The phi3 weight is the one published for DPM-Solver++ multistep order 3 (and used by diffusers and ComfyUI),
    kept here for image parity. Note: since d2 estimates h^2 D'' / 2, the Taylor-exact weight would be 2 phi3;
    with the published weight the method converges at second order (measured in the tests).
    """
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    d_1 = d_2 = None  # previous denoised predictions
    h_1 = h_2 = None  # previous step sizes in t
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        if s[i + 1] == 0.0:
            x = denoised
        else:
            h = _t(s[i + 1]) - _t(s[i])
            big_h = h * (eta + 1.0)
            x = x * math.exp(-big_h) + denoised * (-math.expm1(-big_h))
            phi_2 = math.expm1(-big_h) / big_h + 1.0
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) * (1.0 / r0)
                d1_1 = (d_1 - d_2) * (1.0 / r1)
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1))
                phi_3 = phi_2 / big_h - 0.5
                x = x + d1 * phi_2 - d2 * phi_3
            elif h_1 is not None:
                x = x + (denoised - d_1) * (phi_2 / (h_1 / h))
            if eta:
                x = x + noise_sampler(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2.0 * h * eta)) * s_noise)
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0, s_noise: float = 1.0,
    cfg_pp: bool = False
):
    """DPM-Solver++(2S) single-step second order (midpoint in t) to sigma_down, then ancestral noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
        if down == 0.0:
            x = x + _d(x, denoised, s[i]) * (down - s[i])
        else:
            h = _t(down) - _t(s[i])
            s_mid = math.exp(-(_t(s[i]) + 0.5 * h))
            x_2 = x * (s_mid / s[i]) - denoised * math.expm1(-0.5 * h)
            denoised_2 = _denoise(model, x_2, s_mid, extra_args)
            x = x * (down / s[i]) - denoised_2 * math.expm1(-h)
        if s[i + 1] > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    noise_sampler=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
):
    """DPM-Solver++ SDE, single-step second order: an ancestral DPM-Solver++(1) step to the intermediate
    t + r h, a model evaluation there, then the full step (ancestral split over sigma -> sigma_next) with
    D = (1 - 1/(2r)) D_i + 1/(2r) D_mid. Noise comes from ``noise_sampler`` (KSampler passes a Brownian tree, as
    ComfyUI)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    fac = 1.0 / (2.0 * r)
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        if s[i + 1] == 0.0:
            x = x + _d(x, denoised, s[i]) * (s[i + 1] - s[i])
            continue
        h = _t(s[i + 1]) - _t(s[i])
        s_mid = math.exp(-(_t(s[i]) + r * h))
        # step 1: sigma -> s_mid
        down, up = get_ancestral_step(s[i], s_mid, eta)
        x_2 = denoised + (x - denoised) * (down / s[i])
        x_2 = x_2 + noise_sampler(s[i], s_mid) * (s_noise * up)
        denoised_2 = _denoise(model, x_2, s_mid, extra_args)
        # step 2: sigma -> sigma_next
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        mixed = denoised * (1.0 - fac) + denoised_2 * fac
        x = mixed + (x - mixed) * (down / s[i])
        x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
    return x


# -- DPM-Solver (noise prediction, single step; Lu et al. 2022) -------------------------------------------------------


def _end_sigmas(s: list[float]) -> tuple[float, float]:
    """(sigma_max, sigma_min) for the DPM-Solver samplers, which make their own steps between the schedule's ends:
    the first sigma and the last positive one (a schedule ending in 0 ends at its penultimate sigma, as in
    ComfyUI's KSampler)."""
    sigma_min = s[-1] if s[-1] > 0.0 or len(s) < 2 else s[-2]
    return s[0], sigma_min


class _DPMSolver:
    """DPM-Solver-1/2/3 steps (Lu et al. 2022, Algorithms 4-5 with alpha = 1): in t = -log sigma with the noise
    prediction eps = (x - D) / sigma; ``eps0`` (at the step's start) may be passed in to reuse it."""

    def __init__(self, model, extra_args):
        self.model, self.extra_args = model, extra_args
        self.last_denoised = None

    def eps(self, x, t: float):
        sigma = math.exp(-t)
        denoised = _denoise(self.model, x, sigma, self.extra_args)
        return (x - denoised) / sigma, denoised

    def step_1(self, x, t, t_next, eps0):
        return x - eps0 * (math.exp(-t_next) * math.expm1(t_next - t))

    def step_2(self, x, t, t_next, eps0, r1=0.5, cache=None):
        h = t_next - t
        s1 = t + r1 * h
        if cache is not None and "eps1" in cache:
            eps1 = cache["eps1"]
        else:
            eps1, _ = self.eps(x - eps0 * (math.exp(-s1) * math.expm1(r1 * h)), s1)
            if cache is not None:
                cache["eps1"] = eps1
        sn = math.exp(-t_next)
        return x - eps0 * (sn * math.expm1(h)) - (eps1 - eps0) * (sn / (2.0 * r1) * math.expm1(h))

    def step_3(self, x, t, t_next, eps0, r1=1 / 3, r2=2 / 3, cache=None):
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        if cache is not None and "eps1" in cache:
            eps1 = cache["eps1"]
        else:
            eps1, _ = self.eps(x - eps0 * (math.exp(-s1) * math.expm1(r1 * h)), s1)
            if cache is not None:
                cache["eps1"] = eps1
        sig2 = math.exp(-s2)
        u2 = (x - eps0 * (sig2 * math.expm1(r2 * h))
              - (eps1 - eps0) * (sig2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)))
        eps2, _ = self.eps(u2, s2)
        sn = math.exp(-t_next)
        return x - eps0 * (sn * math.expm1(h)) - (eps2 - eps0) * (sn / r2 * (math.expm1(h) / h - 1.0))


def dpm_fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's step orders for ``nfe`` model evaluations (Lu et al. 2022, section 3.4): K = nfe // 3 + 1
    steps, all third order but the last ones: [3, .., 3, 2, 1] when 3 divides nfe, else [3, .., 3, nfe % 3]."""
    if nfe <= 0:
        return []
    k = nfe // 3 + 1
    return [3] * (k - 2) + [2, 1] if nfe % 3 == 0 else [3] * (k - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022): as many model evaluations as the schedule has steps, spent on
    DPM-Solver-3 steps (then a 2 and/or 1) evenly spaced in t = -log sigma from the schedule's first sigma to its
    last positive one (see :func:`dpm_fast_orders`); the schedule's own spacing is not used. Ends at that smallest
    sigma, not at 0 (as ComfyUI)."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    if len(s) < 2:
        return x
    sigma_max, sigma_min = _end_sigmas(s)
    orders = dpm_fast_orders(len(s) - 1)
    t0, t1 = _t(sigma_max), _t(sigma_min)
    ts = [t0 + (t1 - t0) * k / len(orders) for k in range(len(orders) + 1)]
    solver = _DPMSolver(model, extra_args)
    for i, order in enumerate(orders):
        eps0, denoised = solver.eps(x, ts[i])
        _report(callback, i, x, denoised, math.exp(-ts[i]), math.exp(-ts[i + 1]), len(orders))
        step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
        x = step(x, ts[i], ts[i + 1], eps0)
    return x


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, accept_safety: float = 0.81):
    """DPM-Solver-23 (or -12) with adaptive step size (Lu et al. 2022, section 3.3 and Algorithm 2): each step
    computes a DPM-Solver-(order-1) and a DPM-Solver-(order) solution sharing their model evaluations (r1 = 1/3
    for order 3); the scaled RMS difference
    E = ||(x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|))||_2 / sqrt(numel)
    decides: the step is accepted when the proposed size factor 1 + atan(E^(-1/order) - 1) (an integral step-size
    controller with a smooth limiter) is at least ``accept_safety``, and h is multiplied by that factor either
    way. Runs from the schedule's first sigma to its last positive one in t = -log sigma and ends there; only the
    ends of the schedule are used.

    Each step's accept decision reads one number back from the device (the only sampler that does). The callback
    gets one call per accepted step, with ``total`` = the schedule's step count and ``i`` the progress in t scaled
    to it (so progress bars run to the end; ``i`` may repeat)."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    if len(s) < 2:
        return x
    sigma_max, sigma_min = _end_sigmas(s)
    total = len(s) - 1
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    solver = _DPMSolver(model, extra_args)
    t, h, x_prev = t_start, float(h_init), x
    eps0 = denoised = None
    while t < t_end - 1e-5:
        t_next = min(t_end, t + h)
        if eps0 is None:
            eps0, denoised = solver.eps(x, t)
        cache: dict = {}
        if order == 3:
            x_low = solver.step_2(x, t, t_next, eps0, r1=1 / 3, cache=cache)
            x_high = solver.step_3(x, t, t_next, eps0, cache=cache)
        else:
            x_low = solver.step_1(x, t, t_next, eps0)
            x_high = solver.step_2(x, t, t_next, eps0)
        delta = torch.maximum(torch.maximum(x_low.abs(), x_prev.abs()) * rtol, torch.full_like(x_low, atol))
        error = float(torch.linalg.vector_norm(((x_low - x_high) / delta).float())) / math.sqrt(x.numel())
        factor = 1.0 + math.atan((1.0 / (error + 1e-8)) ** (1.0 / order) - 1.0)
        if factor >= accept_safety:
            done = (t_next - t_start) / (t_end - t_start)
            _report(callback, min(total - 1, int(done * total)), x, denoised, math.exp(-t), math.exp(-t_next), total)
            x_prev, x, t = x_low, x_high, t_next
            eps0 = None
        h *= factor
    return x


# -- SEEDS (stochastic exponential Runge-Kutta, data prediction) -----------------------------------------------------


def _seeds_step(model, x, sig, nxt, denoised, extra_args, noise_sampler, eta, s_noise, fractions, weighting):
    """One SEEDS step sigma -> sigma_next (h in t = -log sigma) with intermediate stages at ``fractions`` of h.

    Every stage (and the full step) is the exact solution of the data-prediction SDE with noise level eta over
    [t, t + c h], x_c = (sigma_c / sigma) e^{-eta c h} x + (1 - e^{-(1+eta) c h}) D + correction + noise_c, with D
    taken constant (first stage) or linear in t through the previous stage's prediction (later stages and the full
    step, the "phi_2" weight (1 + expm1(-H)/H) / r; ``weighting="phi_1"`` gives the full step of a two-stage method
    the midpoint weight (1 - e^{-H}) / (2 r) instead). The noise of every stage is one Brownian path: the noise at
    t + c_k h is the previous stage's noise carried over (times sigma_k / sigma_{k-1} e^{-eta (c_k - c_{k-1}) h})
    plus a fresh increment over [c_{k-1}, c_k], so the stages and the step see consistent noise."""
    h = _t(nxt) - _t(sig)
    inject = eta > 0.0 and s_noise > 0.0
    points = list(fractions) + [1.0]
    noise, prev_c, prev_sigma = None, 0.0, sig
    prev_d, prev_r = None, None
    for k, c in enumerate(points):
        sigma_c = math.exp(-(_t(sig) + c * h))
        big_h = (1.0 + eta) * c * h
        x_c = x * (sigma_c / sig * math.exp(-eta * c * h)) + denoised * (-math.expm1(-big_h))
        if prev_d is not None:
            r = prev_r / c  # the previous stage's place, as a fraction of this stage's interval
            if weighting == "phi_1" and len(points) == 2 and c == 1.0:
                coef = -math.expm1(-big_h) / (2.0 * r)
            else:
                coef = (1.0 + math.expm1(-big_h) / big_h) / r
            x_c = x_c + (prev_d - denoised) * coef
        if inject:
            seg = eta * (c - prev_c) * h
            fresh = noise_sampler(prev_sigma, sigma_c) * math.sqrt(-math.expm1(-2.0 * seg))
            noise = fresh if noise is None else noise * math.exp(-seg) + fresh
            x_c = x_c + noise * (sigma_c * s_noise)
        if c == 1.0:
            return x_c
        prev_d, prev_r = _denoise(model, x_c, sigma_c, extra_args), c
        prev_c, prev_sigma = c, sigma_c
    raise AssertionError("unreachable")


def _sample_seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, fractions, weighting):
    if weighting not in ("phi_1", "phi_2"):
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {weighting!r}")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        if s[i + 1] == 0.0:
            x = denoised
        else:
            x = _seeds_step(model, x, s[i], s[i + 1], denoised, extra_args, noise_sampler, eta, s_noise, fractions,
                            weighting)
    return x


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0,
                   s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
    Models"): a two-stage stochastic exponential Runge-Kutta step in t = -log sigma, data prediction, stage at
    t + r h, noise from one Brownian path (see :func:`_seeds_step`); eta = 0 is DPM-Solver++(2S). The step to
    sigma = 0 returns the denoised prediction."""
    return _sample_seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, (r,), solver_type)


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0,
                   s_noise: float = 1.0, r_1: float = 1 / 3, r_2: float = 2 / 3):
    """SEEDS-3: the three-stage version (stages at t + r_1 h and t + r_2 h, each later stage linear in t through
    the previous stage's prediction: DPM-Solver-3's structure in data prediction); eta = 0 is the ODE solver."""
    return _sample_seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, (r_1, r_2), "phi_2")


# -- SA-Solver (stochastic Adams, data prediction) ------------------------------------------------------------------


def sa_solver_coefficients(lams: list[float], lam_a: float, lam_b: float, tau: float) -> list[float]:
    """Weights of the denoised predictions at ``lams`` for the step lam_a -> lam_b (lam = t = -log sigma) of the
    data-prediction SDE with stochasticity tau: the integrals over [lam_a, lam_b] of
    (1 + tau^2) e^{-(1 + tau^2)(lam_b - lam)} l_j(lam), l_j the Lagrange basis on ``lams`` (Gauss-Legendre, 4 panels
    of 12 points)."""
    k = 1.0 + tau * tau
    out = [0.0] * len(lams)
    for p in range(4):
        lo, hi = lam_a + (lam_b - lam_a) * p / 4, lam_a + (lam_b - lam_a) * (p + 1) / 4
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        for gx, gw in zip(_GAUSS_X, _GAUSS_W):
            lam = mid + half * gx
            weight = gw * half * k * math.exp(-k * (lam_b - lam))
            for j in range(len(lams)):
                basis = 1.0
                for m in range(len(lams)):
                    if m != j:
                        basis *= (lam - lams[m]) / (lams[j] - lams[m])
                out[j] += weight * basis
    return out


def _sa_step(x, sig, nxt, lams, ds, tau, noise, s_noise):
    """x at sigma_next from x at sigma: (sigma_next / sigma) e^{-tau^2 h} x + sum_j b_j D_j + sigma_next
    sqrt(1 - e^{-2 tau^2 h}) noise."""
    h = _t(nxt) - _t(sig)
    out = x * (nxt / sig * math.exp(-tau * tau * h))
    for b, d in zip(sa_solver_coefficients(lams, _t(sig), _t(nxt), tau), ds):
        out = out + d * b
    if tau > 0.0:
        out = out + noise * (nxt * math.sqrt(-math.expm1(-2.0 * tau * tau * h)) * s_noise)
    return out


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0,
                     s_noise: float = 1.0, predictor_order: int = 3, corrector_order: int = 4, use_pece: bool = False,
                     sde_window: tuple[float, float] = (0.2, 0.8)):
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models"),
    data prediction in lam = -log sigma. The exact solution of the SDE with stochasticity tau over a step is
    x' = (sigma' / sigma) e^{-tau^2 h} x + int (1 + tau^2) e^{-(1 + tau^2)(lam' - lam)} D(lam) dlam + noise
    (variance sigma'^2 (1 - e^{-2 tau^2 h})): the SA-Predictor integrates the Lagrange polynomial through the last
    ``predictor_order`` denoised predictions (:func:`sa_solver_coefficients`); once the model has been evaluated
    at the predicted point, the SA-Corrector redoes the step with that prediction added (``corrector_order``
    points, the same noise). ``use_pece`` (sa_solver_pece) evaluates the model again at the corrected point; by
    default the next step uses the prediction at the predicted point (no extra evaluation, as in UniPC).

    tau = eta while sigma_next lies in the stochastic window ``sde_window`` (percents of the model's sampling, 0.2 to
    0.8 by default; the model's ``ms`` model sampling, SD's otherwise), 0 outside it. Orders warm up from 1; the
    step to sigma = 0 returns the denoised prediction."""
    if not (1 <= predictor_order <= 6 and 0 <= corrector_order <= 6):
        raise ValueError("predictor_order must be 1 to 6 and corrector_order 0 (no corrector) to 6")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    ms = getattr(model, "ms", None)  # a guided denoiser's model sampling; SD's for a bare denoiser
    if ms is None:
        ms = ModelSampling()
    hi_sigma, lo_sigma = ms.percent_to_sigma(sde_window[0]), ms.percent_to_sigma(sde_window[1])
    s = _schedule(sigmas)
    total = len(s) - 1
    lams: list[float] = []  # t of the evaluated points, newest last
    hist: list[torch.Tensor] = []
    last = None  # (x at the previous point, its noise, its tau)
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        if last is not None and corrector_order > 0:
            x_prev, noise, tau = last
            n = min(corrector_order, len(hist) + 1)
            pts = (lams + [_t(s[i])])[-n:]
            ds = (hist + [denoised])[-n:]
            x = _sa_step(x_prev, s[i - 1], s[i], pts, ds, tau, noise, s_noise)
            if use_pece:
                denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        lams.append(_t(s[i]))
        hist.append(denoised)
        del lams[:-max(predictor_order, corrector_order)], hist[:-max(predictor_order, corrector_order)]
        if s[i + 1] == 0.0:
            x = denoised
            continue
        tau = eta if lo_sigma <= s[i + 1] <= hi_sigma else 0.0
        noise = noise_sampler(s[i], s[i + 1]) if tau > 0.0 else None
        n = min(predictor_order, len(hist))
        last = (x, noise, tau)
        x = _sa_step(x, s[i], s[i + 1], lams[-n:], hist[-n:], tau, noise, s_noise)
    return x


# -- Heun / DPM-2 (second order, two evaluations per step) ----------------------------------------------------------


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Heun's method (Karras et al. 2022, Algorithm 1): Euler predictor, trapezoidal corrector; the last step to
    sigma = 0 is a plain Euler step."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        d = _d(x, denoised, s[i])
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0.0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _d(x_2, _denoise(model, x_2, s[i + 1], extra_args), s[i + 1])
            x = x + (d + d_2) * (0.5 * dt)
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver-2 in its k-diffusion form: an Euler half step to the log-midpoint sigma, the full step with the
    derivative taken there (explicit midpoint method in log sigma)."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        d = _d(x, denoised, s[i])
        if s[i + 1] == 0.0:
            x = x + d * (s[i + 1] - s[i])
        else:
            s_mid = math.exp(0.5 * (math.log(s[i]) + math.log(s[i + 1])))
            x_2 = x + d * (s_mid - s[i])
            d_2 = _d(x_2, _denoise(model, x_2, s_mid, extra_args), s_mid)
            x = x + d_2 * (s[i + 1] - s[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 1.0, s_noise: float = 1.0
):
    """DPM-2 to sigma_down, then ancestral noise of std sigma_up."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        d = _d(x, denoised, s[i])
        if down == 0.0:
            x = x + d * (down - s[i])
        else:
            s_mid = math.exp(0.5 * (math.log(s[i]) + math.log(down)))
            x_2 = x + d * (s_mid - s[i])
            d_2 = _d(x_2, _denoise(model, x_2, s_mid, extra_args), s_mid)
            x = x + d_2 * (down - s[i])
        if s[i + 1] > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
    return x


# -- linear multistep -------------------------------------------------------------------------------------------


def _poly_mul_linear(coeffs: list[float], root: float) -> list[float]:
    """Multiply a polynomial (coefficients by ascending power) by (tau - root)."""
    out = [0.0] * (len(coeffs) + 1)
    for k, c in enumerate(coeffs):
        out[k + 1] += c
        out[k] -= c * root
    return out


def lms_coefficient(order: int, s: list[float], i: int, j: int) -> float:
    """Integral over [s_i, s_{i+1}] of the Lagrange basis polynomial of node s_{i-j} on nodes s_i .. s_{i-order+1}
    (computed exactly: expand the polynomial, integrate term by term)."""
    nodes = [s[i - k] for k in range(order)]
    poly, denom = [1.0], 1.0
    for k, node in enumerate(nodes):
        if k == j:
            continue
        poly = _poly_mul_linear(poly, node)
        denom *= nodes[j] - node
    a, b = s[i], s[i + 1]
    integral = sum(c * (b ** (p + 1) - a ** (p + 1)) / (p + 1) for p, c in enumerate(poly))
    return integral / denom


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order: int = 4):
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` ODE derivatives (warming up from
    order 1); the weights integrate the Lagrange interpolant of dx/dsigma over each step. A step to sigma = 0
    returns the denoised prediction."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    ds = []
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        ds.append(_d(x, denoised, s[i]))
        if len(ds) > order:
            ds.pop(0)
        if s[i + 1] == 0.0:  # the last step returns the denoised prediction (as ComfyUI)
            x = denoised
            continue
        cur = min(i + 1, order)
        for j, d in enumerate(reversed(ds)):
            x = x + d * lms_coefficient(cur, s, i, j)
    return x


# Adams-Bashforth weights for equal steps (newest derivative first), orders 1-4: iPNDM's fixed coefficients
_AB_WEIGHTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order: int = 4):
    """iPNDM (Zhang & Chen 2022, the DEIS paper's improved pseudo-numerical method): Adams-Bashforth in sigma on the
    ODE derivative dx/dsigma with the fixed equal-step weights of order 1 .. ``max_order`` (warming up from
    order 1, one model evaluation per step). Every step, the last one to sigma = 0 included, is integrated."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1 to 4, got {max_order}")
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    ds: list[torch.Tensor] = []  # newest first
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        ds.insert(0, _d(x, denoised, s[i]))
        del ds[max_order:]
        dt = s[i + 1] - s[i]
        for w, d in zip(_AB_WEIGHTS[len(ds) - 1], ds):
            x = x + d * (w * dt)
    return x


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order: int = 4):
    """iPNDM with variable step sizes: the Adams-Bashforth weights for the actual (unequal) sigma steps, i.e. the
    exact integrals of the Lagrange interpolant of dx/dsigma through the last ``max_order`` derivatives (the same
    weights as :func:`sample_lms`; unlike lms, the last step to sigma = 0 is integrated too)."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1 to 4, got {max_order}")
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    ds: list[torch.Tensor] = []  # newest first
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        ds.insert(0, _d(x, denoised, s[i]))
        del ds[max_order:]
        for j, d in enumerate(ds):
            x = x + d * lms_coefficient(len(ds), s, i, j)
    return x


# -- DEIS ----------------------------------------------------------------------------------------------------------

# The VP-SDE whose time t_vp DEIS interpolates in: EDM's VP parameterisation (Karras et al. 2022, Table 1),
# sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), with beta_d and beta_min set so that sigma(1) = 80 and
# sigma(eps_s) = 0.002 (EDM's defaults), whatever the schedule.
DEIS_VP_EPS_S, DEIS_VP_SIGMA_MIN, DEIS_VP_SIGMA_MAX = 1e-3, 0.002, 80.0
_VP_BETA_D = 2.0 * (math.log1p(DEIS_VP_SIGMA_MIN**2) / DEIS_VP_EPS_S - math.log1p(DEIS_VP_SIGMA_MAX**2)) / (
    DEIS_VP_EPS_S - 1.0)
_VP_BETA_MIN = math.log1p(DEIS_VP_SIGMA_MAX**2) - 0.5 * _VP_BETA_D


def deis_vp_time(sigma: float) -> float:
    """The VP time of a sigma: the root t >= 0 of beta_d t^2 / 2 + beta_min t = log(1 + sigma^2)."""
    return (math.sqrt(_VP_BETA_MIN**2 + 2.0 * _VP_BETA_D * math.log1p(sigma * sigma)) - _VP_BETA_MIN) / _VP_BETA_D


_GAUSS_X, _GAUSS_W = (v.tolist() for v in __import__("numpy").polynomial.legendre.leggauss(12))


def deis_coefficients(s: list[float], i: int, order: int) -> list[float]:
    """tAB-DEIS weights (Zhang & Chen 2022) for the step s[i] -> s[i+1]: in sigma space the ODE is dx/dsigma = eps,
    and eps is extrapolated by the Lagrange polynomial *in VP time* through the last ``order`` points, so weight j
    is the integral over [s_i, s_{i+1}] of that polynomial's basis function l_j(t_vp(sigma)) d sigma (computed by
    Gauss-Legendre quadrature in sigma, where the integrand is smooth: 4 panels of 12 points)."""
    nodes = [deis_vp_time(s[i - k]) for k in range(order)]
    a, b = s[i], s[i + 1]
    panels = 4
    out = [0.0] * order
    for p in range(panels):
        lo, hi = a + (b - a) * p / panels, a + (b - a) * (p + 1) / panels
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        for gx, gw in zip(_GAUSS_X, _GAUSS_W):
            tau = deis_vp_time(mid + half * gx)
            for j in range(order):
                basis = 1.0
                for k in range(order):
                    if k != j:
                        basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
                out[j] += gw * half * basis
    return out


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order: int = 3):
    """DEIS (Zhang & Chen 2022, "Fast Sampling of Diffusion Models with Exponential Integrator"), tAB variant:
    multistep on the noise prediction eps = (x - D) / sigma with weights from :func:`deis_coefficients` (the
    Lagrange extrapolation in the VP time of EDM's VP-SDE), warming up from order 1 (Euler) to ``max_order``."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1 to 4, got {max_order}")
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    ds: list[torch.Tensor] = []  # newest first
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        ds.insert(0, _d(x, denoised, s[i]))
        del ds[max_order:]
        if len(ds) == 1:
            x = x + ds[0] * (s[i + 1] - s[i])
            continue
        for c, d in zip(deis_coefficients(s, i, len(ds)), ds):
            x = x + d * c
    return x


# -- ER-SDE ------------------------------------------------------------------------------------------------------


def er_sde_noise_scale(sigma: float) -> float:
    """ER-SDE-Solver's default noise-scale function phi(sigma) = sigma (e^{sigma^0.3} + 10) (Cui et al. 2023):
    phi(sigma) = sigma is the probability-flow ODE, phi(sigma) = sigma^2 the reverse-time (DDPM) SDE."""
    return sigma * (math.exp(sigma**0.3) + 10.0)


def _integrate_log(fn, lo: float, hi: float) -> float:
    """The integral of fn(sigma) d sigma over [lo, hi] (0 < lo < hi), by Gauss-Legendre in log sigma (4 panels of
    12 points), where integrands like 1 / phi are smooth."""
    a, b = math.log(lo), math.log(hi)
    total = 0.0
    for p in range(4):
        pa, pb = a + (b - a) * p / 4, a + (b - a) * (p + 1) / 4
        half, mid = 0.5 * (pb - pa), 0.5 * (pb + pa)
        for gx, gw in zip(_GAUSS_X, _GAUSS_W):
            sig = math.exp(mid + half * gx)
            total += gw * half * fn(sig) * sig
    return total


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise: float = 1.0,
                  max_stage: int = 3, noise_scale=er_sde_noise_scale):
    """ER-SDE-Solver (Cui et al. 2023, "Elucidating the Solution Space of Extended Reverse-Time SDE for Diffusion
    Models"), data prediction, in sigma space. The extended reverse-time SDE with noise-scale function phi has the
    exact step

        x_t = r x_s + phi(sigma_t) int_{sigma_t}^{sigma_s} phi'(u) / phi(u)^2 D(u) du + sqrt(sigma_t^2 - r^2 sigma_s^2) z,

    r = phi(sigma_t) / phi(sigma_s). Expanding D in sigma around sigma_s and integrating by parts: the constant
    term gives (1 - r) D_s; the slope D' (stage 2) the weight (sigma_t - sigma_s) + phi(sigma_t) S_1; the curvature
    D'' (stage 3) (sigma_t - sigma_s)^2 / 2 + phi(sigma_t) S_2, with S_1 = int 1 / phi, S_2 = int (u - sigma_s) / phi
    over [sigma_t, sigma_s] (numerical quadrature). D' and D'' are the backward differences of the last denoised
    predictions (warming up from stage 1). The step to sigma = 0 returns the denoised prediction (r = 0 at first
    order: a higher-order step there would weight the noisy slope estimates of the last, shortest steps by sigma
    itself, which diverges as steps shrink)."""
    if not 1 <= max_stage <= 3:
        raise ValueError(f"max_stage must be 1 to 3, got {max_stage}")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    old_denoised = old_d1 = None
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        sig, nxt = s[i], s[i + 1]
        d1 = None if old_denoised is None else (denoised - old_denoised) * (1.0 / (sig - s[i - 1]))
        if nxt == 0.0:
            x = denoised
        else:
            phi_t = noise_scale(nxt)
            r = phi_t / noise_scale(sig)
            x_new = x * r + denoised * (1.0 - r)
            if max_stage >= 2 and d1 is not None:
                s1 = _integrate_log(lambda u: 1.0 / noise_scale(u), nxt, sig)
                x_new = x_new + d1 * ((nxt - sig) + phi_t * s1)
                if max_stage >= 3 and old_d1 is not None:
                    d2 = (d1 - old_d1) * (2.0 / (sig - s[i - 2]))
                    s2 = _integrate_log(lambda u: (u - sig) / noise_scale(u), nxt, sig)
                    x_new = x_new + d2 * (0.5 * (nxt - sig) ** 2 + phi_t * s2)
            x = x_new + noise_sampler(sig, nxt) * (s_noise * math.sqrt(max(nxt * nxt - (r * sig) ** 2, 0.0)))
        old_denoised, old_d1 = denoised, d1
    return x


# -- gradient estimation -----------------------------------------------------------------------------------------


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                               ge_gamma: float = 2.0, cfg_pp: bool = False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an
    Optimization Perspective", Algorithm 2): a DDIM (Euler-in-sigma) step along the averaged direction
    gamma d_i + (1 - gamma) d_{i-1}, d = (x - D) / sigma; the first step is plain DDIM."""
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    total = len(s) - 1
    old_d = None
    for i in range(total):
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
        d = _d(x, denoised, s[i])
        step = d if old_d is None else d * ge_gamma + old_d * (1.0 - ge_gamma)
        x = x + step * (s[i + 1] - s[i])
        old_d = d
    return x


# -- DDPM ----------------------------------------------------------------------------------------------------------


def ddpm_step_coefficients(sigma: float, sigma_next: float) -> tuple[float, float, float]:
    """The DDPM posterior q(x_next | x, eps) (Ho et al. 2020, eq. 7 and 11, posterior variance beta-tilde) for the
    step sigma -> sigma_next, in sigma space: returns (a, b, c) with x_next = a x + b eps + c z, z ~ N(0, I).

    With abar = 1 / (1 + sigma^2), abar' = 1 / (1 + sigma_next^2), alpha = abar / abar' and the VP sample
    x_vp = sqrt(abar) x: mean = (x_vp - (1 - alpha) / sqrt(1 - abar) eps) / sqrt(alpha), variance
    (1 - alpha)(1 - abar') / (1 - abar); then x_next = mean / sqrt(abar') (+ noise likewise scaled)."""
    abar, abar_next = 1.0 / (1.0 + sigma * sigma), 1.0 / (1.0 + sigma_next * sigma_next)
    alpha = abar / abar_next
    to_ve = 1.0 / math.sqrt(abar_next)
    a = math.sqrt(abar) / math.sqrt(alpha) * to_ve
    b = -(1.0 - alpha) / math.sqrt(1.0 - abar) / math.sqrt(alpha) * to_ve
    c = math.sqrt(max((1.0 - alpha) * (1.0 - abar_next) / (1.0 - abar), 0.0)) * to_ve
    return a, b, c


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DDPM ancestral sampling (Ho et al. 2020): each step draws x_next from the posterior q(x_next | x, x0) with
    x0 the model's prediction (see :func:`ddpm_step_coefficients`); no noise on the step to sigma = 0, which
    returns the denoised prediction. In sigma space this is the same step as euler_ancestral at eta = 1 (the
    posterior's eps weight is sigma_down - sigma and its std sigma_up), computed here the DDPM way."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        a, b, c = ddpm_step_coefficients(s[i], s[i + 1])
        x = x * a + _d(x, denoised, s[i]) * b
        if s[i + 1] > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * c
    return x


# -- RES multistep -------------------------------------------------------------------------------------------------


def _phi_1(h: float) -> float:
    """phi_1(-h) = (1 - e^{-h}) / h: the weight of a constant D over a step of h in t = -log sigma."""
    return -math.expm1(-h) / h


def _phi_2(h: float) -> float:
    """phi_2(-h) = (e^{-h} - 1 + h) / h^2: the weight of D's slope (per unit t, times h) over the same step."""
    return (math.expm1(-h) + h) / (h * h)


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta: float = 0.0,
                         s_noise: float = 1.0, cfg_pp: bool = False):
    """RES multistep, second order (Zhang et al. 2023, "Improved Order Analysis and Design of Exponential
    Integrator for Diffusion Models Sampling"): the exponential integrator in t = -log sigma,

        x_next = e^{-h} x + h (b1 D_i + b2 D_{i-1}),  b1 = phi_1 + phi_2 / c,  b2 = -phi_2 / c,

    (phi_k at -h, c = h_prev / h), i.e. the exact integral of the line through the last two denoised predictions.
    The first step and a step to sigma = 0 are Euler steps. With ``eta`` > 0 (res_multistep_ancestral) each step
    goes to the ancestral sigma_down and adds fresh noise of std sigma_up."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    old_denoised = None
    for i in range(total):
        denoised, shifted = _evaluate(model, x, s[i], extra_args, cfg_pp)
        down, up = get_ancestral_step(s[i], s[i + 1], eta)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = shifted
        if old_denoised is None or down == 0.0:
            x = x + _d(x, denoised, s[i]) * (down - s[i])
        else:
            h = _t(down) - _t(s[i])
            c = (_t(s[i]) - _t(s[i - 1])) / h
            p1, p2 = _phi_1(h), _phi_2(h)
            x = x * math.exp(-h) + denoised * (h * (p1 + p2 / c)) - old_denoised * (h * p2 / c)
        if s[i + 1] > 0.0 and up > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
        old_denoised = denoised
    return x


# -- LCM ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Latent Consistency Model sampling (Luo et al. 2023): jump to the predicted x0, then re-noise it to the next
    sigma with fresh noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s = _schedule(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        x = denoised
        if s[i + 1] > 0.0:
            x = x + noise_sampler(s[i], s[i + 1]) * s[i + 1]
    return x


# -- UniPC ------------------------------------------------------------------------------------------------------

UNIPC_FINAL_SIGMA = 0.001


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Small dense linear solve on the host (float64, CPU)."""
    a = torch.tensor(matrix, dtype=torch.float64)
    b = torch.tensor(rhs, dtype=torch.float64)
    return torch.linalg.solve(a, b).tolist()


def _unipc_terms(lams: list[float], lam_t: float, order: int, variant: str):
    """Host-side coefficients for one UniPC update from lams[-1] (the current point; earlier points before it) to
    lam_t, using ``order`` points. Returns (h_phi_1, B(h), r_k for the earlier points, R matrix rows, b)."""
    lam_s0 = lams[-1]
    h = lam_t - lam_s0
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    rks = [(lams[-1 - k] - lam_s0) / h for k in range(1, order)] + [1.0]
    g, fact, b = h_phi_1 / hh - 1.0, 1.0, []
    for k in range(1, order + 1):
        b.append(g * fact / b_h)
        fact *= k + 1
        g = g / hh - 1.0 / fact
    rows = [[r ** (k - 1) for r in rks] for k in range(1, order + 1)]
    return h_phi_1, b_h, rks, rows, b


@torch.no_grad()
def sample_uni_pc(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    noise_sampler=None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
    use_corrector: bool = True,
    final_sigma: float = UNIPC_FINAL_SIGMA,
):
    """UniPC (Zhao et al. 2023), multistep, data prediction, in t = -log sigma.

    Predictor UniP-p from the current point s0 to t (p = ``order``, warming up from 1, and lowered on the last
    steps when ``lower_order_final``):

        x_t = (sigma_t / sigma_s0) x_s0 - h phi_1 D_s0 - B(h) sum_k rho_k (D_k - D_s0) / r_k

    with B(h) = -h ("bh1") or expm1(-h) ("bh2") and rho solving the order conditions (rho = 1/2 for p = 2).
    Corrector UniC-p, applied once the model has been evaluated at the predicted x_t (no extra evaluation): the
    same update recomputed with the new D_t as an extra point at r = 1.

    A schedule ending in sigma = 0 ends at ``final_sigma`` = 0.001 instead (a last first-order predictor step, as
    ComfyUI's UniPC does); the result is x at that sigma. With ``final_sigma = 0`` the last step returns the
    denoised prediction (diffusers' ending).
    """
    extra_args = extra_args or {}
    s = _schedule(sigmas)
    if len(s) > 1 and s[-1] == 0.0:
        s[-1] = float(final_sigma)
    total = len(s) - 1
    lams: list[float] = []  # t of the evaluated points
    hist: list[torch.Tensor] = []  # their denoised predictions
    last = None  # (x at the previous point, order of its predictor step)
    for i in range(total):
        denoised = _denoise(model, x, s[i], extra_args)
        if use_corrector and last is not None:
            x_prev, p = last
            h_phi_1, b_h, rks, rows, b = _unipc_terms(lams, _t(s[i]), p, variant)
            rhos = [0.5] if p == 1 else _solve([row[:p] for row in rows[:p]], b[:p])
            m0 = hist[-1]
            corr = (denoised - m0) * rhos[-1]
            for k in range(1, p):
                corr = corr + (hist[-1 - k] - m0) * (rhos[k - 1] / rks[k - 1])
            x = x_prev * (s[i] / s[i - 1]) - m0 * h_phi_1 - corr * b_h
        _report(callback, i, x, denoised, s[i], s[i + 1], total)
        lams.append(_t(s[i]))
        hist.append(denoised)
        if len(hist) > order:
            lams.pop(0)
            hist.pop(0)
        p = min(order, total - i) if lower_order_final else order
        p = min(p, len(hist))
        if s[i + 1] == 0.0:
            x_next = denoised
        else:
            h_phi_1, b_h, rks, rows, b = _unipc_terms(lams, _t(s[i + 1]), p, variant)
            x_next = x * (s[i + 1] / s[i]) - denoised * h_phi_1
            if p >= 2:
                rhos = [0.5] if p == 2 else _solve([row[: p - 1] for row in rows[: p - 1]], b[: p - 1])
                pred = None
                for k in range(1, p):
                    term = (hist[-1 - k] - denoised) * (rhos[k - 1] / rks[k - 1])
                    pred = term if pred is None else pred + term
                x_next = x_next - pred * b_h
        last = (x, p)
        x = x_next
    return x


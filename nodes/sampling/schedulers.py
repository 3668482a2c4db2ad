"""Sigma schedules: ``scheduler(model_sampling, steps) ->`` float32 sigmas on the CPU, descending, ending in 0;
steps + 1 of them except where ComfyUI's rule gives another count (``ddim_uniform``, ``beta`` with many steps). ComfyUI's scheduler names, each from its published formula:

- ``normal``: timesteps evenly spaced from the last training timestep to the first (both included), mapped to
  sigma by log-sigma interpolation.
- ``karras``: Karras et al. 2022 (EDM), eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
  rho = 7.
- ``exponential``: sigmas evenly spaced in log(sigma) from sigma_max to sigma_min.
- ``sgm_uniform``: like ``normal`` but with steps+1 evenly spaced timesteps, the last (t=0) dropped (the
  "trailing"-style spacing of Stability's sgm code).
- ``simple``: every (N/steps)-th training sigma, from the top.
- ``ddim_uniform``: DDIM's "uniform" discretisation: timesteps 1, 1+c, 1+2c, ... below N with c = N // steps
  (more than ``steps`` of them for some step counts, as in ComfyUI).
- ``kl_optimal``: Sabour et al. 2024: sigmas evenly spaced in atan(sigma).
- ``beta``: Lee et al. 2024, "Beta Sampling is All You Need": timesteps at the quantiles of a Beta(0.6, 0.6)
  distribution, rounded to integer training timesteps, repeats dropped.
- ``linear_quadratic``: Movie Gen's (Polyak et al. 2024) schedule: sigma falls linearly by 2.5 % of sigma_max over the
  first half of the steps, then along the quadratic that continues it smoothly (same value and slope) down to 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from nodes.sampling.model_sampling import ModelSampling

__all__ = [
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "calculate_sigmas",
    "normal_scheduler",
    "karras_scheduler",
    "exponential_scheduler",
    "sgm_uniform_scheduler",
    "simple_scheduler",
    "ddim_uniform_scheduler",
    "beta_scheduler",
    "linear_quadratic_scheduler",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_sigmas_polyexponential",
    "sd_turbo_sigmas",
    "beta_ppf",
]


def _finish(values) -> torch.Tensor:
    """Append the final 0 and return float32 on the CPU."""
    out = torch.as_tensor(list(values) + [0.0], dtype=torch.float64)
    return out.to(torch.float32)


def _check_steps(steps: int) -> int:
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return steps


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, n sigmas plus the final 0 (float32)."""
    if n <= 0:
        return torch.zeros(1)
    if n == 1:
        return _finish([sigma_max])
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return _finish(((hi + ramp * (lo - hi)) ** rho).tolist())


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in log sigma, plus the final 0 (float32)."""
    if n <= 0:
        return torch.zeros(1)
    return _finish(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp().tolist())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """n sigmas with log sigma a polynomial of degree rho in the step: log sigma_i = log smin + r_i^rho (log smax -
    log smin), r_i running evenly from 1 to 0; plus the final 0 (float32). rho = 1 is ``exponential``."""
    if n <= 0:
        return torch.zeros(1)
    ramp = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** rho
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _finish((ramp * (hi - lo) + lo).exp().tolist())


def sd_turbo_sigmas(ms: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD-Turbo's schedule: the training sigmas at timesteps 999, 899, ..., 99, starting at index
    10 - int(10 * denoise) and taking ``steps`` of them, plus the final 0 (float32)."""
    start = 10 - int(10 * denoise)
    ts = [999 - 100 * i for i in range(10)][start:start + int(steps)]
    return _finish([ms.training_sigma(t) for t in ts])


def kl_optimal_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Sabour et al. 2024 ("Align Your Steps"), the KL-optimal schedule: sigma_i = tan((1 - i/(n-1)) atan(smax) +
    i/(n-1) atan(smin)), evenly spaced in atan(sigma); plus the final 0."""
    n = _check_steps(steps)
    if n == 0:
        return torch.zeros(1)
    if n == 1:
        return _finish([ms.sigma_max])
    hi, lo = math.atan(ms.sigma_max), math.atan(ms.sigma_min)
    return _finish([math.tan((1 - i / (n - 1)) * hi + i / (n - 1) * lo) for i in range(n)])


def _sigmas_at(ms: ModelSampling, timesteps: torch.Tensor) -> list[float]:
    return ms.sigma(timesteps.to(torch.float64)).tolist()


def normal_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    steps = _check_steps(steps)
    if steps == 0:
        return torch.zeros(1)
    t_max = float(ms.nearest_timestep(torch.tensor(ms.sigma_max, dtype=torch.float64)))
    t_min = float(ms.nearest_timestep(torch.tensor(ms.sigma_min, dtype=torch.float64)))
    return _finish(_sigmas_at(ms, torch.linspace(t_max, t_min, steps, dtype=torch.float64)))


def sgm_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    steps = _check_steps(steps)
    if steps == 0:
        return torch.zeros(1)
    t_max = float(ms.nearest_timestep(torch.tensor(ms.sigma_max, dtype=torch.float64)))
    t_min = float(ms.nearest_timestep(torch.tensor(ms.sigma_min, dtype=torch.float64)))
    return _finish(_sigmas_at(ms, torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)[:-1]))


def karras_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    return get_sigmas_karras(_check_steps(steps), ms.sigma_min, ms.sigma_max)


def exponential_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    return get_sigmas_exponential(_check_steps(steps), ms.sigma_min, ms.sigma_max)


def simple_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    steps = _check_steps(steps)
    if steps == 0:
        return torch.zeros(1)
    n = ms.num_timesteps
    stride = n / steps
    table = ms.sigmas.tolist()
    return _finish([table[-(1 + int(i * stride))] for i in range(steps)])


def ddim_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's "uniform" discretisation, as ComfyUI: every training timestep 1, 1 + c, 1 + 2c, ... below N
    (c = N // steps), descending, then 0.

    That is ceil((N - 1) / c) timesteps, which is more than ``steps`` for some step counts (31 for 30 steps with
    N = 1000): the schedule then has more than steps + 1 sigmas, exactly like ComfyUI's.
    """
    steps = _check_steps(steps)
    if steps == 0:
        return torch.zeros(1)
    n = ms.num_timesteps
    stride = max(n // steps, 1)
    table = ms.sigmas.tolist()
    return _finish([table[t] for t in reversed(range(1, n, stride))])


# -- Beta(a, b) quantiles, for the beta scheduler (no scipy here) ------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile function of Beta(a, b), by bisection on :func:`beta_cdf` (to ~1e-13)."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def beta_scheduler(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps t_i = round(ppf(1 - i/steps) * (N-1)), i = 0 .. steps-1 (half to even), each repeat of the
    previous timestep dropped, then sigma 0 (ComfyUI's rule: with many steps (> ~138 for N = 1000) rounding repeats
    timesteps near the ends, so the schedule has fewer than steps + 1 sigmas)."""
    steps = _check_steps(steps)
    if steps == 0:
        return torch.zeros(1)
    last = ms.num_timesteps - 1
    table = ms.sigmas.tolist()
    kept: list[int] = []
    for i in range(steps):
        # the 9-decimal pre-rounding absorbs the bisection's ~1e-10 error so that exact halves (ppf(0.5) = 0.5 for a
        # symmetric Beta -> t = 499.5) round the same way as an exact quantile would
        t = int(round(round(beta_ppf(1.0 - i / steps, alpha, beta) * last, 9)))
        if not kept or kept[-1] != t:
            kept.append(t)
    return _finish([table[t] for t in kept])


def linear_quadratic_scheduler(ms: ModelSampling, steps: int, threshold: float = 0.025,
                               linear_steps: int | None = None) -> torch.Tensor:
    """Movie Gen's linear-quadratic schedule, as a fraction u_i of the way from sigma_max to 0 (sigma_i =
    sigma_max (1 - u_i), i = 0 .. steps): u rises linearly to ``threshold`` over the first L = steps // 2 steps
    (u_i = threshold i / L), then follows the quadratic with the same value and slope at i = L that reaches
    u = 1 at i = steps. One step is [sigma_max, 0]."""
    n = _check_steps(steps)
    if n == 0:
        return torch.zeros(1)
    if n == 1:
        return _finish([ms.sigma_max])
    big_l = n // 2 if linear_steps is None else int(linear_steps)
    if not 0 < big_l < n:
        raise ValueError(f"linear_steps must be between 1 and steps - 1 ({n - 1}), got {big_l}")
    slope = threshold / big_l
    curve = (1.0 - threshold - slope * (n - big_l)) / (n - big_l) ** 2  # u(n) = 1
    u = [slope * i for i in range(big_l)]
    u += [threshold + slope * (i - big_l) + curve * (i - big_l) ** 2 for i in range(big_l, n)]
    return _finish([ms.sigma_max * (1.0 - v) for v in u])


SCHEDULERS: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "normal": normal_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "simple": simple_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}
SCHEDULER_NAMES = list(SCHEDULERS)


def calculate_sigmas(model_sampling: ModelSampling, scheduler, steps: int, denoise: float | None = 1.0,
                     discard_penultimate_sigma: bool = False):
    """The sigma schedule a sampling run uses (float32, CPU), as ComfyUI's KSampler computes it.

    With ``denoise < 1`` (below 0.9999) the schedule is computed for ``int(steps / denoise)`` steps and only its
    last ``steps + 1`` sigmas are kept, so an img2img run starts at the matching noise level and still takes
    ``steps`` steps. ``denoise <= 0`` gives an empty schedule (nothing to sample). With
    ``discard_penultimate_sigma`` (samplers that ask for it: dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2) each
    schedule is computed one step longer and its penultimate sigma dropped.
    """
    if callable(scheduler):
        fn = scheduler
    else:
        try:
            fn = SCHEDULERS[scheduler]
        except KeyError:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}") from None
    steps = _check_steps(steps)
    if discard_penultimate_sigma:
        inner = fn

        def fn(ms, n):
            full = inner(ms, n + 1)
            return torch.cat([full[:-2], full[-1:]]) if len(full) > 2 else full

    if denoise is None or denoise > 0.9999:
        return fn(model_sampling, steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    total = int(steps / denoise)
    return fn(model_sampling, total)[-(steps + 1) :]

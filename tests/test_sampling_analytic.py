"""Every sampler against data distributions whose ideal denoiser is known exactly.

Gaussian data N(mu, s^2): the denoiser is affine, so every sampler output is an affine function of the start x_T
and of the injected noise draws, x_out = A x_T + sum_k c_k z_k + B. Running the sampler once on a few "probe"
coordinates (x_T = 0, x_T = 1, and one unit noise draw per coordinate) recovers A, B and every c_k, which gives the
*exact* output mean A mu + B and variance A^2 (s^2 + sigma_max^2) + sum c_k^2: no Monte-Carlo error at all.

Two-point mixture data: deterministic samplers are integrated over the exact x_T density by quadrature (no
Monte-Carlo error, quadrature error ~3e-4); stochastic samplers use Monte Carlo with a fixed seed.

The start x_T is always drawn from the exact marginal at sigma_max (data + sigma_max noise), so a perfect sampler
reproduces the data distribution exactly; the only remaining floor is the schedule's sigma_min (the last step jumps
from sigma_min = 0.029 to 0, which shrinks the std by a factor s / sqrt(s^2 + sigma_min^2): 6e-4 for s = 0.8).

Tolerances (absolute, on mean and std):
- TOL = 0.016 = 2 % of the Gaussian std, at a "reasonable" step count: 30 steps for the second/higher-order
  samplers, 200 for the first-order ones (euler, ddim, euler_ancestral, dpmpp_sde) whose weak error decays only
  like C/N with C ~ 2.7 (measured: 1.7 % at 200 steps). The floor above is 25x smaller.
- Mixture, quadrature: TOL_MIX = 0.01 (1.1 % of the mixture std 0.917); quadrature error is ~3e-4.
- Mixture, Monte Carlo (N = 100,000, float32; 50 steps for the first-order samplers): TOL_MIX plus 4 standard
  errors (std/sqrt(N) = 0.0029 for the mean, 0.0012
  for the std), i.e. 0.022 / 0.015.
"""

import math

import pytest
import torch

from nodes.sampling import (
    SAMPLERS,
    SCHEDULERS,
    STOCHASTIC_SAMPLERS,
    ModelSampling,
    make_noise_sampler,
)
from nodes.testing.analytic import GaussianDenoiser, MixtureDenoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MS = ModelSampling()
MU, STD = 0.5, 0.8
TOL = 0.016
TOL_MIX = 0.01
MC_N = 100_000

FIRST_ORDER = {"euler", "ddim", "euler_ancestral", "dpmpp_sde", "ddpm", "gradient_estimation",
               # second-order in its deterministic part, but its slope D_i - D_{i-1} spans a noise injection, so on
               # Gaussian data it converges like a first-order sampler (std error 0.20 at 30 steps, 0.014 at 200)
               "res_multistep_ancestral"}
FIRST_ORDER |= {n + "_cfg_pp" for n in FIRST_ORDER}  # without an unconditional prediction: the plain sampler
# ComfyUI's "_gpu" variants differ only in where the Brownian tree is built: the same math, checked once.
# dpm_adaptive's step sizes depend on x itself (not affine in x_T: the probe does not apply): checked on its own below.
MATH = [n for n in SAMPLERS if not n.endswith("_gpu") and n != "dpm_adaptive"]
# samplers that end at the schedule's last positive sigma, not at 0: their exact target is the data at that sigma
ENDS_AT_SIGMA_MIN = {"dpm_fast", "dpm_adaptive"}


def reasonable_steps(name):
    if name == "dpmpp_2m_sde_heun":  # the "heun" weighting of ComfyUI's variant is the less accurate of the two
        return 60
    return 200 if name in FIRST_ORDER else 30


def _model_for(name, data):
    # LCM is meant for consistency-distilled models: they predict the ODE's endpoint (a sample), not the
    # posterior mean. With a posterior-mean denoiser LCM is biased (see test_lcm_needs_a_consistency_model).
    return data.consistency if name == "lcm" else data


def gaussian_moments(name, sigmas, data=None, **options):
    """Exact (mean, std) of the sampler output for Gaussian data, via the affine probe described above."""
    data = data or GaussianDenoiser(MU, STD)
    sigma_max = float(sigmas[0])
    width = 2 + 3 * len(sigmas)  # room for every noise draw (at most 2 per step)
    x = torch.zeros(1, width, dtype=torch.float64)
    x[0, 1] = 1.0
    draws = []

    def probe_noise(sigma=None, sigma_next=None):
        z = torch.zeros_like(x)
        z[0, 2 + len(draws)] = 1.0
        draws.append(1)
        return z

    out = SAMPLERS[name](_model_for(name, data), x, sigmas, noise_sampler=probe_noise, **options)[0]
    assert 2 + len(draws) <= width
    b = out[0]
    a = out[1] - b
    c = out[2 : 2 + len(draws)] - b
    assert torch.all(out[2 + len(draws) :] == b), "coordinates without noise must only see the affine part"
    mean = a * data.mean + b
    var = a * a * (data.std**2 + sigma_max**2) + (c * c).sum()
    return mean.item(), var.sqrt().item()


MIX = MixtureDenoiser(points=(-1.0, 1.0), weights=(0.3, 0.7))  # mean 0.4, std 0.9165


def mixture_quadrature_moments(name, sigmas, n=20001):
    """(mean, std) of a deterministic sampler's output, integrated over the exact density of x_T."""
    s0 = float(sigmas[0])
    xs = torch.linspace(-1 - 9 * s0, 1 + 9 * s0, n, dtype=torch.float64)
    density = sum(w * torch.exp(-((xs - p) ** 2) / (2 * s0 * s0)) for w, p in zip(MIX.weights, MIX.points))
    w = density / density.sum()
    out = SAMPLERS[name](MIX, xs[None], sigmas)[0]
    mean = (w * out).sum()
    return mean.item(), (w * (out - mean) ** 2).sum().sqrt().item()


def mixture_mc_moments(name, sigmas, seed=0):
    x = MIX.sample_x_at(float(sigmas[0]), (1, MC_N), generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float32)
    out = SAMPLERS[name](_model_for(name, MIX), x, sigmas, noise_sampler=make_noise_sampler(x, seed + 1))
    return out.mean().item(), out.std().item()


def karras(steps):
    return SCHEDULERS["karras"](MS, steps)


# -- the probe itself is honest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_probe_agrees_with_monte_carlo(name):
    """The exact affine-probe moments agree with a plain Monte-Carlo run of the same sampler."""
    sig = karras(12)
    mean, std = gaussian_moments(name, sig)
    data = GaussianDenoiser(MU, STD)
    x = data.sample_x_at(float(sig[0]), (1, MC_N), generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    out = SAMPLERS[name](data, x, sig, noise_sampler=make_noise_sampler(x, 6))
    assert out.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(MC_N))
    assert out.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * MC_N))


# -- Gaussian data: exact moments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MATH)
def test_gaussian_target_reached_and_error_shrinks(name):
    n = reasonable_steps(name)
    if name in FIRST_ORDER:
        counts = [n // 4, n // 2, n]
    elif name == "seeds_3":
        counts = [4, 10, 40]  # its weak error is tiny and changes sign between 8 and 20 steps
    elif name == "dpm_fast":
        counts = [12, 24, 48]  # its order pattern (3, .., 3 then 2 and/or 1) repeats with the step count mod 3
    else:
        counts = [n // 3, 2 * n // 3, 4 * n // 3]  # 10, 20, 40

    def target(k):
        return math.hypot(STD, float(karras(k)[-2])) if name in ENDS_AT_SIGMA_MIN else STD

    results = [gaussian_moments(name, karras(k)) for k in counts]
    errors = [abs(std - target(k)) for (_, std), k in zip(results, counts)]
    for mean, _ in results:  # every step is affine towards mu: the mean is exact for any step count
        assert mean == pytest.approx(MU, abs=1e-9)
    mean, std = gaussian_moments(name, karras(n))
    assert abs(std - STD) <= TOL, f"{name} at {n} steps: std {std:.4f} vs {STD}"
    if name == "lcm":  # with a consistency model every step lands exactly on the data distribution
        assert max(errors) < 1e-9
    else:
        assert errors[0] > errors[1] > errors[2], f"{name}: errors {errors} at {counts} steps do not shrink"


@pytest.mark.parametrize("scheduler", ["normal", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"])
@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "uni_pc"])
def test_gaussian_target_with_other_schedules(name, scheduler):
    """A first-order and two multistep samplers converge on every schedule."""
    steps = 200 if name == "euler" else 100
    mean, std = gaussian_moments(name, SCHEDULERS[scheduler](MS, steps))
    assert mean == pytest.approx(MU, abs=1e-9)
    assert abs(std - STD) <= TOL


def test_zero_terminal_snr_schedule_reaches_the_target():
    """A zero-terminal-SNR schedule (sigma_max ~ 4500, so a longer log-sigma range) works too."""
    ms = ModelSampling(zero_terminal_snr=True)
    mean, std = gaussian_moments("dpmpp_2m", SCHEDULERS["karras"](ms, 60))
    assert mean == pytest.approx(MU, abs=1e-6)
    assert abs(std - STD) <= TOL


def test_dpmpp_3m_convergence_order():
    """With eta = 0 (pure ODE) the published 3M weights converge at second order, not third (see the sampler's
    docstring): halving the step size divides the error by ~4 (the local-error check)."""
    errs = []
    for n in (40, 80, 160):
        sig = karras(n)[:-1]  # stop at sigma_min: compare with the exact ODE solution there, no final jump
        _, std = gaussian_moments("dpmpp_3m_sde", sig, eta=0.0)
        exact = STD * math.sqrt(STD**2 + float(sig[-1]) ** 2) / STD
        errs.append(abs(std - exact))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.7 < p < 2.5 for p in orders), orders


# -- two-point mixture ---------------------------------------------------------------------------------------------

DETERMINISTIC = [n for n in MATH if n not in STOCHASTIC_SAMPLERS]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_mixture_target_deterministic(name):
    n = reasonable_steps(name)
    mean, std = mixture_quadrature_moments(name, karras(n))
    assert abs(mean - MIX.mean) <= TOL_MIX and abs(std - MIX.std) <= TOL_MIX, (mean, std)
    # error shrinks with steps, down to the quadrature floor
    coarse, fine = (n // 8, n // 2) if name in FIRST_ORDER else (5, 20)
    e_coarse = max(abs(a - b) for a, b in zip(mixture_quadrature_moments(name, karras(coarse)), (MIX.mean, MIX.std)))
    e_fine = max(abs(a - b) for a, b in zip(mixture_quadrature_moments(name, karras(fine)), (MIX.mean, MIX.std)))
    assert e_fine <= max(e_coarse / 2, 1.5e-3), (name, e_coarse, e_fine)


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS & set(MATH)))
def test_mixture_target_stochastic(name):
    n = 50 if name in FIRST_ORDER else 30  # first-order discretisation error at 50 steps: ~0.012 (mean)
    if name.startswith("res_multistep_ancestral"):
        n = 200
    mean, std = mixture_mc_moments(name, karras(n))
    se_mean, se_std = MIX.std / math.sqrt(MC_N), 0.0012
    assert abs(mean - MIX.mean) <= TOL_MIX + 4 * se_mean, (name, mean)
    assert abs(std - MIX.std) <= TOL_MIX + 4 * se_std, (name, std)


def test_mixture_error_shrinks_for_first_order_stochastic():
    """Where the discretisation error is well above Monte-Carlo noise, it visibly shrinks (same seed)."""
    for name in ("euler_ancestral", "dpmpp_sde"):
        coarse = abs(mixture_mc_moments(name, karras(8))[0] - MIX.mean)
        fine = abs(mixture_mc_moments(name, karras(40))[0] - MIX.mean)
        assert coarse > 0.05 and fine < coarse / 2.5, (name, coarse, fine)


def test_dpm_adaptive_reaches_the_gaussian_target_within_its_tolerance():
    """Monte Carlo from the exact marginal, compared sample by sample with the exact ODE map of Gaussian data,
    x -> mu + (x - mu) sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma_max^2). Its error follows rtol/atol (measured:
    max error 0.14 with the defaults rtol = 0.05 (relative to |x|, ~15 at sigma_max), 0.002 with rtol = 1e-4), and
    the tighter tolerance costs more model evaluations (25 -> 82)."""
    data = GaussianDenoiser(MU, STD)
    sig = karras(10)
    x = data.sample_x_at(float(sig[0]), (1, 20_000), generator=torch.Generator().manual_seed(5))
    exact = MU + (x - MU) * math.hypot(STD, float(sig[-2])) / math.hypot(STD, float(sig[0]))
    errors, calls = [], []
    for rtol, atol in ((0.05, 0.0078), (1e-4, 1e-5)):
        data.calls = 0
        out = SAMPLERS["dpm_adaptive"](data, x, sig, rtol=rtol, atol=atol)
        errors.append((out - exact).abs().max().item())
        calls.append(data.calls)
    assert errors[0] < 0.25 and errors[1] < 0.005 and errors[1] < errors[0] / 20, errors
    assert calls[1] > 2 * calls[0], calls
    out = SAMPLERS["dpm_adaptive"](data, x, sig)
    assert abs(out.mean().item() - MU) < 4 * STD / math.sqrt(x.numel())
    assert abs(out.std().item() - exact.std().item()) <= 2 * TOL, (out.std().item(), exact.std().item())


def test_lcm_needs_a_consistency_model():
    """Documented behaviour: LCM re-noises the model's x0 prediction, which is only right for a consistency model.
    With a posterior-mean denoiser the output variance settles near half the data variance."""
    data = GaussianDenoiser(MU, STD)
    sig = karras(50)
    _, std_consistency = gaussian_moments("lcm", sig)
    assert std_consistency == pytest.approx(STD, abs=1e-9)
    x = data.sample_x_at(float(sig[0]), (1, MC_N), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    out = SAMPLERS["lcm"](data, x, sig, noise_sampler=make_noise_sampler(x, 1))
    assert out.std().item() < 0.75 * STD

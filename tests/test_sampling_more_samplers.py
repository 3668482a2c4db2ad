"""The samplers added for ComfyUI's list (ddpm, ipndm, ipndm_v, res_multistep, gradient_estimation ...), each
against an independent statement of its method: diffusers' scheduler where one implements it, otherwise a
closed-form integral of a model whose ODE derivative is known exactly.

"Known derivative" models: D(x, sigma) = x - sigma f(sigma) makes dx/dsigma = f(sigma) whatever x is, so every
step's increment x_{i+1} - x_i can be compared with the exact integral of f over the step (for multistep methods
the past derivatives are then exact too, so a method exact for polynomials of its degree has no error at all).
"""
import math

import pytest
import torch

from nodes.sampling import SAMPLERS, SCHEDULERS, ModelSampling, make_noise_sampler
from nodes.sampling.samplers import ddpm_step_coefficients
from nodes.testing.analytic import GaussianDenoiser

import diffusers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MS = ModelSampling()
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
DATA = GaussianDenoiser(0.3, 0.9)


class KnownDerivative:
    """A model whose probability-flow derivative is f(sigma), independent of x."""

    def __init__(self, f):
        self.f = f

    def __call__(self, x, sigma, **extra):
        s = float(sigma[0])
        return x - s * self.f(s)


def _cubic(s):
    return 0.3 * s**3 - s**2 + 2 * s - 1


def _cubic_integral(a, b):
    def big(t):
        return 0.3 * t**4 / 4 - t**3 / 3 + t**2 - t
    return big(b) - big(a)


def _increments(name, model, sigmas, **options):
    """x_{i+1} - x_i for every step (x is a single float64 value starting at 0)."""
    xs = []
    out = SAMPLERS[name](model, torch.zeros(1, 1, dtype=torch.float64), torch.tensor(sigmas, dtype=torch.float64),
                         callback=lambda info: xs.append(info["x"].item()), **options)
    xs.append(out.item())
    return [b - a for a, b in zip(xs, xs[1:])]


# -- iPNDM -----------------------------------------------------------------------------------------------------


def test_ipndm_is_adams_bashforth_exact_for_cubic_derivatives_on_equal_steps():
    """Once warmed up (order 4 from the 4th step) each equal step integrates a cubic derivative exactly; the
    warm-up steps (orders 1-3) do not."""
    sig = [8.0 - 0.75 * k for k in range(11)]  # equal steps, 8 -> 0.5
    steps = _increments("ipndm", KnownDerivative(_cubic), sig)
    exact = [_cubic_integral(a, b) for a, b in zip(sig, sig[1:])]
    for i in range(3, 10):
        assert steps[i] == pytest.approx(exact[i], rel=1e-12, abs=1e-12)
    assert abs(steps[0] - exact[0]) > 1e-2  # order 1 at first


def test_ipndm_v_is_variable_step_adams_bashforth():
    """On unequal steps the variable-step weights stay exact for cubic derivatives; iPNDM's fixed weights do not.
    On equal steps the two coincide."""
    sig = SCHEDULERS["karras"](MS, 12).double().tolist()[:-1]
    exact = [_cubic_integral(a, b) for a, b in zip(sig, sig[1:])]
    var = _increments("ipndm_v", KnownDerivative(_cubic), sig)
    fixed = _increments("ipndm", KnownDerivative(_cubic), sig)
    for i in range(3, len(exact)):
        assert var[i] == pytest.approx(exact[i], rel=1e-10, abs=1e-12)
    assert max(abs(f - e) for f, e in zip(fixed[3:], exact[3:])) > 1e-2
    equal = [6.0 - 0.5 * k for k in range(12)] + [0.0]
    x = DATA.sample_x_at(6.0, (1, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(SAMPLERS["ipndm_v"](DATA, x, torch.tensor(equal)),
                               SAMPLERS["ipndm"](DATA, x, torch.tensor(equal)), rtol=1e-12, atol=1e-12)


# -- RES multistep ----------------------------------------------------------------------------------------------


def test_res_multistep_integrates_a_denoised_prediction_linear_in_log_sigma_exactly():
    """With D = a + b t (t = -log sigma) the ODE dx/dt = D - x has the solution
    x(t_n) = e^{-H} x(t_0) + a (1 - e^{-H}) + b (t_n - t_0 e^{-H} - (1 - e^{-H})), H = t_n - t_0;
    every RES step after the first (Euler) one reproduces that exactly."""
    a, b = 0.4, -0.3

    def model(x, sigma, **extra):
        return torch.full_like(x, a + b * -math.log(float(sigma[0])))

    sig = SCHEDULERS["karras"](MS, 10).double().tolist()[:-1]
    xs = []
    out = SAMPLERS["res_multistep"](model, torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor(sig),
                                    callback=lambda info: xs.append(info["x"].item()))
    xs.append(out.item())
    for i in range(1, len(sig) - 1):
        t0, t1 = -math.log(sig[i]), -math.log(sig[i + 1])
        e = math.exp(-(t1 - t0))
        exact = e * xs[i] + a * (1 - e) + b * (t1 - t0 * e - (1 - e))
        assert xs[i + 1] == pytest.approx(exact, rel=1e-12, abs=1e-12)
    # dpmpp_2m's midpoint-weighted extrapolation is not exact for the same model
    ys = []
    SAMPLERS["dpmpp_2m"](model, torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor(sig),
                         callback=lambda info: ys.append(info["x"].item()))
    assert max(abs(p - q) for p, q in zip(xs[2:], ys[2:])) > 1e-4


def _ode_std_error(name, n, **options):
    """|std - exact std| of the ODE solution at sigma_min for Gaussian data (exact affine probe, no final jump)."""
    sig = SCHEDULERS["karras"](MS, n)[:-1].double()
    x = torch.zeros(1, 2, dtype=torch.float64)
    x[0, 1] = 1.0
    out = SAMPLERS[name](DATA, x, sig, **options)[0]
    gain = (out[1] - out[0]).item()
    std = abs(gain) * math.sqrt(DATA.std**2 + float(sig[0]) ** 2)
    exact = math.sqrt(DATA.std**2 + float(sig[-1]) ** 2)
    return abs(std - exact)


@pytest.mark.parametrize("name,lo,hi", [("res_multistep", 1.7, 2.5), ("ipndm_v", 2.7, 4.6), ("deis", 2.5, 3.6),
                                         ("gradient_estimation", 0.8, 1.3), ("er_sde", 1.8, 2.5),
                                         ("seeds_2", 1.8, 2.4), ("seeds_3", 2.6, 3.4), ("sa_solver", 3.5, 4.6)])
def test_order_of_accuracy(name, lo, hi):
    """Halving the step size divides the error by 2^p: p ~ 2 for RES multistep, ~3-4 for variable-step
    iPNDM (order 4, warm-up steps of lower order), ~3 for DEIS (order 3), ~1 for gradient estimation, ~2 for
    ER-SDE's three stages on the ODE (phi = sigma; its slope is a backward difference, first-order accurate)."""
    options = {"noise_scale": lambda s: s, "noise_sampler": lambda *a: 0.0} if name == "er_sde" else {}
    if name.startswith(("seeds", "sa_solver")):
        options = {"eta": 0.0}  # the ODE solver: SEEDS-2 second order, SEEDS-3 third, SA-Solver's P3C4 fourth
    errs = [_ode_std_error(name, n, **options) for n in (40, 80, 160)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(lo < p < hi for p in orders), (name, errs, orders)


# -- gradient estimation --------------------------------------------------------------------------------------


def test_gradient_estimation_steps_along_gamma_weighted_directions():
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (gamma f_i + (1 - gamma) f_{i-1}); gamma = 1 is Euler."""
    sig = [10.0, 7.0, 4.5, 2.5, 1.2, 0.4]
    for gamma in (2.0, 1.5):
        steps = _increments("gradient_estimation", KnownDerivative(_cubic), sig, ge_gamma=gamma)
        assert steps[0] == pytest.approx((sig[1] - sig[0]) * _cubic(sig[0]), rel=1e-12)
        for i in range(1, len(steps)):
            want = (sig[i + 1] - sig[i]) * (gamma * _cubic(sig[i]) + (1 - gamma) * _cubic(sig[i - 1]))
            assert steps[i] == pytest.approx(want, rel=1e-12)
    x = DATA.sample_x_at(10.0, (1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    s = torch.tensor(sig + [0.0])
    torch.testing.assert_close(SAMPLERS["gradient_estimation"](DATA, x, s, ge_gamma=1.0), SAMPLERS["euler"](DATA, x, s),
                               rtol=1e-12, atol=1e-12)


# -- DDPM --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 25])
def test_ddpm_vs_diffusers_ddpm_scheduler_with_shared_noise(steps):
    """diffusers' DDPMScheduler (posterior mean from the x0 prediction, "fixed_small" variance), on its own
    timesteps, drawing its noise from a generator; the same draws replayed into ddpm agree to float32 precision."""
    sch = diffusers.DDPMScheduler(**SD, variance_type="fixed_small", clip_sample=False)
    sch.set_timesteps(steps)
    ac = sch.alphas_cumprod.double()
    sigmas = torch.cat([((1 - ac[sch.timesteps]) / ac[sch.timesteps]).sqrt(), torch.zeros(1, dtype=torch.float64)])
    x = DATA.sample_x_at(float(sigmas[0]), (2, 4, 8, 8), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    sample = x / (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(sch.timesteps):
        s = float(sigmas[i])
        x_ve = sample * (1 + s * s) ** 0.5
        eps = ((x_ve.double() - DATA(x_ve.double(), torch.tensor([s], dtype=torch.float64))) / s).float()
        sample = sch.step(eps, t, sample, generator=g).prev_sample
    g = torch.Generator().manual_seed(7)
    draws = iter([torch.randn(x.shape, generator=g) for _ in range(steps - 1)])  # none on the step to t = 0
    mine = SAMPLERS["ddpm"](DATA, x, sigmas.float(), noise_sampler=lambda *a: next(draws))
    assert (mine.double() - sample.double()).abs().max().item() < 2e-5


def test_ddpm_step_is_the_posterior_of_the_forward_process():
    """For a point mass x0 (the model exact: eps = z) and x = x0 + sigma z, the DDPM step
    x_next = a x + b eps + c z' must give x0 + sigma_next z'' in distribution: mean x0 (a = 1 in sigma space) and
    variance (a sigma + b)^2 + c^2 = sigma_next^2; the step to sigma = 0 returns x0 (b = -sigma, no noise)."""
    for s, sn in ((14.6, 9.0), (3.0, 1.1), (0.5, 0.2)):
        a, b, c = ddpm_step_coefficients(s, sn)
        assert a == pytest.approx(1.0, rel=1e-12)
        assert (a * s + b) ** 2 + c * c == pytest.approx(sn * sn, rel=1e-10)
        assert c > 0
    a, b, c = ddpm_step_coefficients(2.0, 0.0)
    assert (a, c) == (pytest.approx(1.0), 0.0) and b == pytest.approx(-2.0)


# -- DPM-Solver-fast / adaptive --------------------------------------------------------------------------------


def _sin_eps_model(x, sigma, **extra):
    """eps(lambda) = sin(lambda), lambda = -log sigma, whatever x is: D = x - sigma eps."""
    s = float(sigma[0])
    return x - s * math.sin(-math.log(s))


def _sin_eps_exact_step(t, t_next):
    """dx/dlambda = -e^{-lambda} eps(lambda) in sigma space; the integral of -e^{-l} sin l over [t, t_next]."""
    def big(lam):
        return -math.exp(-lam) * (math.sin(lam) + math.cos(lam)) / 2
    return -(big(t_next) - big(t))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_steps_have_local_order_k_plus_1(order):
    """DPM-Solver-k (Lu et al. 2022) has local error O(h^(k+1)): halving h divides one step's error by ~2^(k+1)."""
    from nodes.sampling.samplers import _DPMSolver
    solver = _DPMSolver(_sin_eps_model, {})
    step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
    x, t = torch.zeros(1, 1, dtype=torch.float64), -1.0
    errs = []
    for h in (0.4, 0.2, 0.1):
        eps0, _ = solver.eps(x, t)
        errs.append(abs(step(x, t, t + h, eps0).item() - _sin_eps_exact_step(t, t + h)))
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(2 ** (order + 1) * 0.85 < r < 2 ** (order + 1) * 1.35 for r in ratios), (order, errs, ratios)


def test_dpm_solver_3_is_exact_for_noise_linear_in_lambda():
    """For eps linear in lambda, DPM-Solver-3's last term integrates the slope exactly."""
    from nodes.sampling.samplers import _DPMSolver

    def model(x, sigma, **extra):
        s = float(sigma[0])
        return x - s * (0.3 - 0.7 * -math.log(s))

    solver = _DPMSolver(model, {})
    x, t, h = torch.zeros(1, 1, dtype=torch.float64), -1.5, 1.3
    eps0, _ = solver.eps(x, t)
    sn = math.exp(-(t + h))
    # x_t - x_s = -(sigma_t (e^h - 1) eps0 + sigma_t h ((e^h - 1) / h - 1) eps')  with eps' = -0.7
    exact = -(sn * math.expm1(h) * eps0.item() + sn * h * (math.expm1(h) / h - 1) * -0.7)
    assert solver.step_3(x, t, t + h, eps0).item() == pytest.approx(exact, rel=1e-12)


def test_dpm_fast_spends_one_evaluation_per_step_on_even_log_sigma_steps():
    """nfe = the schedule's step count; steps evenly spaced in log sigma from its first to its last positive sigma;
    orders [3, .., 3, 2, 1] (nfe divisible by 3) or [3, .., 3, nfe % 3]."""
    from nodes.sampling.samplers import dpm_fast_orders
    assert dpm_fast_orders(9) == [3, 3, 2, 1] and dpm_fast_orders(10) == [3, 3, 3, 1]
    assert dpm_fast_orders(11) == [3, 3, 3, 2] and dpm_fast_orders(1) == [1] and dpm_fast_orders(2) == [2]
    assert all(sum(dpm_fast_orders(n)) == n for n in range(1, 40))
    sig = SCHEDULERS["karras"](MS, 10)
    seen, calls = [], []

    def model(x, sigma, **extra):
        calls.append(float(sigma[0]))
        return DATA(x, sigma)

    x = DATA.sample_x_at(float(sig[0]), (1, 8), generator=torch.Generator().manual_seed(2))
    SAMPLERS["dpm_fast"](model, x, sig, callback=seen.append)
    assert len(calls) == 10 and len(seen) == 4
    logs = [math.log(c["sigma"]) for c in seen] + [math.log(seen[-1]["sigma_next"])]
    assert logs[0] == pytest.approx(math.log(float(sig[0])), abs=1e-6)
    assert logs[-1] == pytest.approx(math.log(float(sig[-2])), abs=1e-6)
    gaps = [a - b for a, b in zip(logs, logs[1:])]
    assert max(gaps) - min(gaps) < 1e-9
    # third-order steps evaluate at 1/3 and 2/3 of the step in log sigma
    assert math.log(calls[1]) == pytest.approx(logs[0] - gaps[0] / 3, abs=1e-6)
    assert math.log(calls[2]) == pytest.approx(logs[0] - 2 * gaps[0] / 3, abs=1e-6)


def test_dpm_adaptive_rejects_steps_that_are_too_large():
    """With a large initial step the first attempt is rejected (its evaluation at sigma_max is reused), h shrinks
    and the run still reaches sigma_min."""
    sig = SCHEDULERS["karras"](MS, 10)
    x = DATA.sample_x_at(float(sig[0]), (1, 4096), generator=torch.Generator().manual_seed(3))
    calls, seen = [], []

    def model(x, sigma, **extra):
        calls.append(float(sigma[0]))
        return DATA(x, sigma)

    SAMPLERS["dpm_adaptive"](model, x, sig, h_init=3.0, rtol=1e-3, atol=1e-4, callback=seen.append)
    assert calls[0] == pytest.approx(float(sig[0]), rel=1e-6) and calls.count(calls[0]) == 1
    first_accepted = seen[0]["sigma_next"]
    assert math.log(float(sig[0]) / first_accepted) < 3.0  # the 3.0 attempt was rejected
    assert seen[-1]["sigma_next"] == pytest.approx(float(sig[-2]), rel=1e-6)


# -- DEIS ---------------------------------------------------------------------------------------------------------


def test_deis_vp_time_is_edms_vp_sde_with_its_default_ends():
    """EDM's VP parameterisation: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) with sigma(1) = 80 and
    sigma(1e-3) = 0.002; the VP time of a sigma inverts it."""
    from nodes.sampling.samplers import _VP_BETA_D, _VP_BETA_MIN, deis_vp_time

    def sigma_of(t):
        return math.sqrt(math.expm1(0.5 * _VP_BETA_D * t * t + _VP_BETA_MIN * t))

    assert sigma_of(1.0) == pytest.approx(80.0, rel=1e-12)
    assert sigma_of(1e-3) == pytest.approx(0.002, rel=1e-9)
    for s in (0.03, 0.5, 3.0, 14.6, 80.0):
        assert sigma_of(deis_vp_time(s)) == pytest.approx(s, rel=1e-10)


def test_deis_is_exact_for_noise_quadratic_in_vp_time():
    """tAB-DEIS of order 3 extrapolates eps by a quadratic in VP time: for eps = q(t_vp(sigma)) (any x) every step
    after the warm-up equals the integral of eps over the step (mpmath quadrature, an independent route)."""
    import mpmath

    from nodes.sampling.samplers import deis_vp_time

    def q(tau):
        return 1.5 - 4.0 * tau + 3.0 * tau * tau

    sig = SCHEDULERS["karras"](MS, 10).double().tolist()
    steps = _increments("deis", KnownDerivative(lambda s: q(deis_vp_time(s))), sig)
    exact = [float(mpmath.quad(lambda s: q(deis_vp_time(float(s))), [a, b])) for a, b in zip(sig, sig[1:])]
    for i in range(2, len(exact)):
        assert steps[i] == pytest.approx(exact[i], rel=1e-9, abs=1e-12), i
    assert steps[0] == pytest.approx((sig[1] - sig[0]) * q(deis_vp_time(sig[0])), rel=1e-12)  # Euler warm-up
    # interpolating in sigma instead (ipndm_v's Adams-Bashforth) is not exact for the same derivative
    ab = _increments("ipndm_v", KnownDerivative(lambda s: q(deis_vp_time(s))), sig, max_order=3)
    assert max(abs(p - e) for p, e in zip(ab[2:], exact[2:])) > 1e-4


# -- ER-SDE ---------------------------------------------------------------------------------------------------------


def _zeros(*_):
    return torch.zeros(1, 1, dtype=torch.float64)


def test_er_sde_first_stage_is_ddim_or_euler_ancestral_for_the_classic_noise_scales():
    """phi(sigma) = sigma is the probability-flow ODE (first stage = DDIM / Euler); phi(sigma) = sigma^2 the
    reverse SDE, whose first stage is exactly the ancestral Euler step (same mean, same noise std)."""
    sig = SCHEDULERS["karras"](MS, 8)
    x = DATA.sample_x_at(float(sig[0]), (2, 4, 4, 4), generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    torch.testing.assert_close(SAMPLERS["er_sde"](DATA, x, sig, max_stage=1, noise_scale=lambda s: s,
                                                  noise_sampler=make_noise_sampler(x, 1)),
                               SAMPLERS["euler"](DATA, x, sig), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(SAMPLERS["er_sde"](DATA, x, sig, max_stage=1, noise_scale=lambda s: s * s,
                                                  noise_sampler=make_noise_sampler(x, 1)),
                               SAMPLERS["euler_ancestral"](DATA, x, sig, noise_sampler=make_noise_sampler(x, 1)),
                               rtol=1e-5, atol=1e-5)


def test_er_sde_second_stage_is_exact_for_a_denoiser_linear_in_sigma():
    """For D = a + b sigma (any x) the deterministic part of the ER-SDE step,
    r x + phi(sigma_t) int_{sigma_t}^{sigma_s} phi'(u) / phi(u)^2 D(u) du, is what stage 2 computes (its slope
    estimate is exact for a line); the integral here by mpmath, phi' written out by hand."""
    import mpmath

    from nodes.sampling.samplers import er_sde_noise_scale as phi
    a, b = 0.3, -0.45

    def model(x, sigma, **extra):
        return torch.full_like(x, a + b * float(sigma[0]))

    sig = SCHEDULERS["karras"](MS, 9).double().tolist()[:-1]
    xs = []
    out = SAMPLERS["er_sde"](model, torch.full((1, 1), 1.0, dtype=torch.float64), torch.tensor(sig),
                             noise_sampler=_zeros, callback=lambda info: xs.append(info["x"].item()))
    xs.append(out.item())
    for i in range(1, len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        def integrand(u):
            big_phi = u * (mpmath.exp(u**0.3) + 10)
            dphi = mpmath.exp(u**0.3) + 10 + 0.3 * u**0.3 * mpmath.exp(u**0.3)
            return dphi / big_phi**2 * (a + b * u)

        integral = mpmath.quad(integrand, [s1, s0])
        assert float(s1 * (mpmath.exp(s1**0.3) + 10)) == pytest.approx(phi(s1), rel=1e-14)
        want = phi(s1) / phi(s0) * xs[i] + phi(s1) * float(integral)
        assert xs[i + 1] == pytest.approx(want, rel=1e-8, abs=1e-10), i


def test_er_sde_noise_keeps_the_marginal_of_a_point_mass():
    """For a point mass (the model exact: x = x0 + sigma_s z) one step gives x0 + sigma_t z' in distribution:
    r^2 sigma_s^2 + the injected variance = sigma_t^2 (Monte Carlo, 4 standard errors)."""
    x0, s0, s1 = 0.7, 3.0, 1.2
    model = GaussianDenoiser(x0, 0.0)
    x = x0 + s0 * torch.randn(1, 200_000, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = SAMPLERS["er_sde"](model, x, torch.tensor([s0, s1]), noise_sampler=make_noise_sampler(x, 9))
    assert abs(out.mean().item() - x0) < 4 * s1 / math.sqrt(x.numel())
    assert abs(out.std().item() - s1) < 4 * s1 / math.sqrt(2 * x.numel())


# -- SEEDS ---------------------------------------------------------------------------------------------------------


def test_seeds_2_without_noise_is_dpm_solver_pp_2s():
    """eta = 0: SEEDS-2 with the midpoint ("phi_1") weight is DPM-Solver++(2S), i.e. dpmpp_2s_ancestral at
    eta = 0."""
    sig = SCHEDULERS["karras"](MS, 9)
    x = DATA.sample_x_at(float(sig[0]), (2, 4, 4, 4), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(SAMPLERS["seeds_2"](DATA, x, sig, eta=0.0),
                               SAMPLERS["dpmpp_2s_ancestral"](DATA, x, sig, eta=0.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,fractions", [("seeds_2", [0.5]), ("seeds_3", [1 / 3, 2 / 3])])
def test_seeds_stage_noise_is_one_brownian_path(name, fractions):
    """With a constant denoised prediction every correction vanishes and a step is the exact SDE step; its noise is
    sigma_t sqrt(2 eta) int e^{-eta (t - u)} dW over the step, split at the stages: the piece over
    [c_k, c_{k+1}] has weight sigma_t e^{-eta (1 - c_{k+1}) h} sqrt(1 - e^{-2 eta (c_{k+1} - c_k) h}), and the
    weights' squares add up to sigma_t^2 (1 - e^{-2 eta h})."""
    s0, s1, eta = 5.0, 1.5, 1.0
    h = math.log(s0 / s1)

    def model(x, sigma, **extra):
        return torch.full_like(x, 0.25)

    draws = []

    def probe(sigma=None, sigma_next=None):
        z = torch.zeros(1, 8, dtype=torch.float64)
        z[0, 1 + len(draws)] = 1.0
        draws.append((sigma, sigma_next))
        return z

    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, 0] = 1.0
    out = SAMPLERS[name](model, x, torch.tensor([s0, s1], dtype=torch.float64), noise_sampler=probe, eta=eta)[0]
    cuts = [0.0] + fractions + [1.0]
    want = [s1 * math.exp(-eta * (1 - b) * h) * math.sqrt(-math.expm1(-2 * eta * (b - a) * h))
            for a, b in zip(cuts, cuts[1:])]
    base = out[7].item()  # a coordinate without noise: the constant part
    got = [(out[1 + k] - base).item() for k in range(len(want))]
    assert got == pytest.approx(want, rel=1e-12)
    assert sum(w * w for w in want) == pytest.approx(s1 * s1 * -math.expm1(-2 * eta * h), rel=1e-12)
    assert (out[0] - base).item() == pytest.approx(s1 / s0 * math.exp(-eta * h), rel=1e-12)
    assert [round(a, 9) for a, _ in draws] == [round(s0 * math.exp(-c * h), 9) for c in cuts[:-1]]


# -- SA-Solver --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("predictor,corrector", [(3, 0), (3, 4), (2, 3)])
def test_sa_solver_is_exact_for_a_denoiser_polynomial_in_log_sigma(predictor, corrector):
    """For D = q(lam) (any x), lam = -log sigma, of degree predictor - 1 the ODE step
    x' = (sigma' / sigma) x + int e^{-(lam' - lam)} q(lam) dlam is reproduced once the orders have warmed up
    (the corrector's polynomial has one more point, so it is exact too); the integral by mpmath."""
    import mpmath

    coeffs = [0.4, -0.3, 0.05][:predictor]

    def q(lam):
        return sum(c * lam**k for k, c in enumerate(coeffs))

    def model(x, sigma, **extra):
        return torch.full_like(x, q(-math.log(float(sigma[0]))))

    sig = SCHEDULERS["karras"](MS, 10).double().tolist()[:-1]
    xs = []
    out = SAMPLERS["sa_solver"](model, torch.full((1, 1), 1.5, dtype=torch.float64), torch.tensor(sig), eta=0.0,
                                predictor_order=predictor, corrector_order=corrector,
                                callback=lambda info: xs.append(info["x"].item()))
    xs.append(out.item())
    for i in range(max(predictor, corrector), len(sig) - 1):
        l0, l1 = -math.log(sig[i]), -math.log(sig[i + 1])
        integral = float(mpmath.quad(lambda lam: mpmath.exp(-(l1 - lam)) * q(lam), [l0, l1]))
        assert xs[i + 1] == pytest.approx(sig[i + 1] / sig[i] * xs[i] + integral, rel=1e-10, abs=1e-12), i


def test_sa_solver_noise_keeps_the_marginal_of_a_point_mass():
    """One stochastic step (tau = 1 everywhere) from x = x0 + sigma z with the exact point-mass denoiser gives
    x0 + sigma' z' in distribution (Monte Carlo, 4 standard errors); without noise the spread shrinks."""
    x0, s0, s1 = -0.4, 2.5, 0.9
    model = GaussianDenoiser(x0, 0.0)
    x = x0 + s0 * torch.randn(1, 200_000, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    out = SAMPLERS["sa_solver"](model, x, torch.tensor([s0, s1]), noise_sampler=make_noise_sampler(x, 11),
                                sde_window=(0.0, 1.0))
    assert abs(out.mean().item() - x0) < 4 * s1 / math.sqrt(x.numel())
    assert abs(out.std().item() - s1) < 4 * s1 / math.sqrt(2 * x.numel())


def test_sa_solver_noise_window_and_pece_evaluations():
    """Noise is injected only on steps whose sigma_next lies between the sigmas at 20 % and 80 % of the model's
    sampling (ModelSampling.percent_to_sigma); PECE evaluates the model once more per corrected step."""
    sig = SCHEDULERS["karras"](MS, 12)
    hi, lo = MS.percent_to_sigma(0.2), MS.percent_to_sigma(0.8)
    x = DATA.sample_x_at(float(sig[0]), (1, 4, 4, 4), generator=torch.Generator().manual_seed(12))
    draws = []

    def noise(sigma, sigma_next):
        draws.append(sigma_next)
        return torch.zeros_like(x)

    calls = {}
    for name in ("sa_solver", "sa_solver_pece"):
        counted = GaussianDenoiser(DATA.mean, DATA.std)
        draws.clear()
        SAMPLERS[name](counted, x, sig, noise_sampler=noise)
        calls[name] = counted.calls
        want = [s for s in sig.tolist()[1:] if s > 0 and lo <= s <= hi]
        assert draws == pytest.approx(want) and 0 < len(want) < 12
    assert calls["sa_solver"] == 12 and calls["sa_solver_pece"] == 12 + 11


def test_ddpm_is_euler_ancestral_in_sigma_space():
    """The DDPM posterior step equals the ancestral Euler step (eta = 1): eps weight sigma_down - sigma and noise
    std sigma_up, for any pair of sigmas (computed by different routes: VP posterior vs the ancestral split)."""
    from nodes.sampling.samplers import get_ancestral_step
    for s0, s1 in ((14.6, 9.0), (3.0, 1.1), (0.5, 0.2), (0.03, 0.01)):
        a, b, c = ddpm_step_coefficients(s0, s1)
        down, up = get_ancestral_step(s0, s1, 1.0)
        assert b == pytest.approx(down - s0, rel=1e-12) and c == pytest.approx(up, rel=1e-12)

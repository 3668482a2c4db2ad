"""ModelSampling, noise helpers, calculate_sigmas and the first samplers (euler, euler_ancestral, dpmpp_2m)."""

import math

import pytest
import torch

from nodes.sampling import (
    SAMPLERS,
    SCHEDULERS,
    ModelSampling,
    calculate_sigmas,
    initial_noise,
    make_noise_sampler,
)
from nodes.testing.analytic import GaussianDenoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_sigmas(beta_schedule="scaled_linear", n=1000, start=0.00085, end=0.012):
    """Training sigmas from the DDPM definition, with plain Python floats."""
    if beta_schedule == "scaled_linear":
        betas = [(start**0.5 + (end**0.5 - start**0.5) * i / (n - 1)) ** 2 for i in range(n)]
    else:
        betas = [start + (end - start) * i / (n - 1) for i in range(n)]
    out, abar = [], 1.0
    for b in betas:
        abar *= 1.0 - b
        out.append(math.sqrt((1.0 - abar) / abar))
    return out


# -- ModelSampling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_training_sigmas_match_ddpm_definition(schedule):
    ms = ModelSampling(schedule)
    ref = torch.tensor(_reference_sigmas(schedule), dtype=torch.float64)
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    assert torch.all(ms.sigmas[1:] > ms.sigmas[:-1]), "ascending"
    torch.testing.assert_close(ms.sigmas.double(), ref, rtol=1e-6, atol=0)
    assert ms.sigma_min == pytest.approx(ref[0].item(), rel=1e-6)
    assert ms.sigma_max == pytest.approx(ref[-1].item(), rel=1e-6)
    if schedule == "scaled_linear":  # SD's well-known range
        assert ms.sigma_min == pytest.approx(0.0292, abs=1e-4)
        assert ms.sigma_max == pytest.approx(14.6146, abs=1e-4)


def test_training_sigmas_match_diffusers():
    from diffusers import EulerDiscreteScheduler

    ref = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    diff = (((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5).double()
    torch.testing.assert_close(ModelSampling().sigmas.double(), diff, rtol=2e-5, atol=0)


def test_sigma_timestep_interpolation_is_log_linear_and_invertible():
    ms = ModelSampling()
    ints = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(ms.sigma(ints), ms.sigmas.double(), rtol=1e-6, atol=0)  # float32 table
    torch.testing.assert_close(ms.timestep(ms.sigmas.double()), ints, rtol=0, atol=1e-6)
    # midway between two timesteps sigma is the geometric mean of its neighbours
    mid = ms.sigma(torch.tensor([10.5, 500.25], dtype=torch.float64))
    s = ms.sigmas.double()
    torch.testing.assert_close(mid[0], (s[10] * s[11]).sqrt(), rtol=1e-7, atol=0)
    torch.testing.assert_close(mid[1], s[500] ** 0.75 * s[501] ** 0.25, rtol=1e-7, atol=0)
    frac = torch.linspace(0, 999, 777, dtype=torch.float64)
    torch.testing.assert_close(ms.timestep(ms.sigma(frac)), frac, rtol=0, atol=1e-6)
    # clamped outside the training range, shape kept, float32 in -> float32 out
    out = ms.timestep(torch.tensor([[1e-4, 100.0]]))
    assert out.shape == (1, 2) and out.dtype == torch.float32
    assert ms.timestep(torch.tensor([1.0], dtype=torch.float16)).dtype == torch.float32  # half in, float32 math
    assert out.tolist() == [[0.0, 999.0]]
    assert ms.sigma(torch.tensor([-5.0, 2000.0])).tolist() == pytest.approx([ms.sigma_min, ms.sigma_max])
    assert float(ms.sigma(3)) == pytest.approx(ms.sigmas[3].item(), rel=1e-6)


def test_percent_to_sigma():
    ms = ModelSampling()
    assert ms.percent_to_sigma(0.0) > ms.sigma_max
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(499.5)), rel=1e-6)


def test_calculate_input_and_denoised_eps_and_v():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 14.6], dtype=torch.float64)
    sv = sigma.view(3, 1, 1, 1)
    x = x0 + sv * eps  # VE
    alpha, sigma_vp = 1 / (1 + sv**2).sqrt(), sv / (1 + sv**2).sqrt()  # VP: x_vp = alpha x0 + sigma_vp eps
    ms = ModelSampling()
    torch.testing.assert_close(ms.calculate_input(sigma, x), alpha * x0 + sigma_vp * eps)
    torch.testing.assert_close(ms.calculate_denoised(sigma, eps, x), x0)
    v = alpha * eps - sigma_vp * x0  # Salimans & Ho 2022
    msv = ModelSampling(prediction_type="v_prediction")
    torch.testing.assert_close(msv.calculate_denoised(sigma, v, x), x0)
    with pytest.raises(ValueError):
        ModelSampling(prediction_type="noise_squared")


def test_noise_scaling():
    ms = ModelSampling()
    latent = torch.full((2, 4, 3, 3), 0.5)
    noise = torch.ones(2, 4, 3, 3)
    out = ms.noise_scaling(torch.tensor([2.0, 2.0]), noise, latent)
    torch.testing.assert_close(out, torch.full_like(latent, 2.5))
    out = ms.noise_scaling(torch.tensor(3.0), noise, latent, max_denoise=True)
    torch.testing.assert_close(out, torch.full_like(latent, 0.5 + math.sqrt(10.0)))


def test_zero_terminal_snr():
    plain = ModelSampling()
    z = ModelSampling(zero_terminal_snr=True)
    # Lin et al. 2023, Algorithm 1: sqrt(abar) shifted to end at 0, scaled to keep its start
    root = plain.alphas_cumprod.double().sqrt()
    expect = (root - root[-1]) * root[0] / (root[0] - root[-1])
    torch.testing.assert_close(z.alphas_cumprod.double()[:-1].sqrt(), expect[:-1], rtol=1e-5, atol=1e-7)
    assert z.alphas_cumprod[-1].item() < 1e-7  # SNR ~ 0 at the last timestep, yet sigma stays finite
    assert 4000 < z.sigma_max < 5000 and math.isfinite(z.sigma_max)
    assert z.sigma_min == pytest.approx(plain.sigma_min, rel=1e-5)
    # same betas as diffusers' implementation of the same algorithm (all but the clamped last value)
    from diffusers.schedulers.scheduling_ddim import (
        rescale_zero_terminal_snr as diffusers_rescale,
    )

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - diffusers_rescale(betas), 0)
    torch.testing.assert_close(z.alphas_cumprod.double()[:-1], ac[:-1], rtol=1e-5, atol=1e-9)


# -- noise ------------------------------------------------------------------------------------------------------


def test_initial_noise_contract():
    n = initial_noise((2, 4, 8, 8), 1234)
    assert n.dtype == torch.float32 and n.device.type == "cpu"
    torch.testing.assert_close(n, torch.randn((2, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(1234)),
                               rtol=0, atol=0)
    assert not torch.equal(n, initial_noise((2, 4, 8, 8), 1235))


def test_noise_sampler_is_seeded_and_follows_x():
    x = torch.zeros(2, 3, 4, dtype=torch.float64)
    a, b = make_noise_sampler(x, 7), make_noise_sampler(x, 7)
    first = a(1.0, 0.5)
    assert first.dtype == torch.float64 and first.shape == x.shape
    assert torch.equal(first, b(1.0, 0.5))
    assert not torch.equal(a(0.5, 0.2), first)  # successive draws differ
    g = torch.Generator("cpu").manual_seed(7)
    torch.testing.assert_close(first, torch.randn(2, 3, 4, generator=g).double(), rtol=0, atol=0)


# -- schedules used by KSampler -------------------------------------------------------------------------------------


def test_normal_and_karras_formulas():
    ms = ModelSampling()
    steps = 13
    s = SCHEDULERS["normal"](ms, steps)
    assert s.dtype == torch.float32 and s.shape == (steps + 1,) and s[-1] == 0
    ts = [999 * (1 - i / (steps - 1)) for i in range(steps)]
    logs = [math.log(v) for v in _reference_sigmas()]
    ref = []
    for t in ts:
        lo = math.floor(t)
        hi = min(lo + 1, 999)
        w = t - lo
        ref.append(math.exp((1 - w) * logs[lo] + w * logs[hi]))
    torch.testing.assert_close(s[:-1].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)

    k = SCHEDULERS["karras"](ms, steps)
    smin, smax, rho = ms.sigma_min, ms.sigma_max, 7.0
    ref = [(smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(steps)]
    torch.testing.assert_close(k[:-1].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=0)
    assert k[-1] == 0


def test_calculate_sigmas_denoise_keeps_the_tail():
    ms = ModelSampling()
    full = SCHEDULERS["karras"](ms, 40)
    part = calculate_sigmas(ms, "karras", 10, denoise=0.25)
    assert part.shape == (11,) and torch.equal(part, full[-11:])
    part = calculate_sigmas(ms, "normal", 10, denoise=0.3)  # int(10 / 0.3) = 33 steps
    assert torch.equal(part, SCHEDULERS["normal"](ms, 33)[-11:])
    assert torch.equal(calculate_sigmas(ms, "normal", 10), SCHEDULERS["normal"](ms, 10))
    assert calculate_sigmas(ms, "normal", 10, denoise=0.0).numel() == 0
    with pytest.raises(ValueError, match="unknown scheduler"):
        calculate_sigmas(ms, "nope", 10)


# -- the first samplers --------------------------------------------------------------------------------------------


def test_euler_step_by_hand():
    """One Euler step on the ODE dx/dsigma = (x - D) / sigma, written out."""
    model = GaussianDenoiser(0.3, 0.7)
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64) * 5.0
    out = SAMPLERS["euler"](model, x, torch.tensor([5.0, 2.0]))
    d = (x - model(x, torch.tensor([5.0], dtype=torch.float64))) / 5.0
    torch.testing.assert_close(out, x + d * (2.0 - 5.0))


def test_callback_and_model_call_contract():
    calls, seen = [], []

    def model(x, sigma, **extra):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype and sigma.device == x.device
        assert extra == {"cond": "c"}
        calls.append(sigma[0].item())
        return x * 0.5

    sig = torch.tensor([3.0, 2.0, 1.0, 0.0])
    x = torch.ones(2, 1, 2, 2)
    for name in ("euler", "euler_ancestral", "dpmpp_2m"):
        calls.clear()
        seen.clear()
        SAMPLERS[name](model, x, sig, extra_args={"cond": "c"}, callback=seen.append,
                       noise_sampler=make_noise_sampler(x, 0))
        assert calls == [3.0, 2.0, 1.0]
        assert [c["i"] for c in seen] == [0, 1, 2] and all(c["total"] == 3 for c in seen)
        assert [(c["sigma"], c["sigma_next"]) for c in seen] == [(3.0, 2.0), (2.0, 1.0), (1.0, 0.0)]
        assert set(seen[0]) == {"i", "x", "denoised", "sigma", "sigma_next", "total"}


def test_euler_ancestral_reproduces_from_seed():
    model = GaussianDenoiser(0.0, 1.0)
    ms = ModelSampling()
    sig = SCHEDULERS["normal"](ms, 12)
    x = initial_noise((2, 4, 6, 6), 3) * sig[0]
    a = SAMPLERS["euler_ancestral"](model, x, sig, noise_sampler=make_noise_sampler(x, 99))
    b = SAMPLERS["euler_ancestral"](model, x, sig, noise_sampler=make_noise_sampler(x, 99))
    c = SAMPLERS["euler_ancestral"](model, x, sig, noise_sampler=make_noise_sampler(x, 100))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dpmpp_2m_matches_hand_written_multistep():
    """Second step written out from the DPM-Solver++(2M) update."""
    model = GaussianDenoiser(0.2, 0.9)
    sig = [4.0, 2.0, 1.0]
    x = torch.tensor([[3.0, -1.0]], dtype=torch.float64)
    out = SAMPLERS["dpmpp_2m"](model, x, torch.tensor(sig, dtype=torch.float64))
    lam = [-math.log(s) for s in sig]
    d0 = model(x, torch.tensor([4.0], dtype=torch.float64))
    h0 = lam[1] - lam[0]
    x1 = (sig[1] / sig[0]) * x - math.expm1(-h0) * d0  # first-order (DDIM) step
    d1 = model(x1, torch.tensor([2.0], dtype=torch.float64))
    h1 = lam[2] - lam[1]
    r = h0 / h1
    dd = (1 + 1 / (2 * r)) * d1 - (1 / (2 * r)) * d0
    x2 = (sig[2] / sig[1]) * x1 - math.expm1(-h1) * dd
    torch.testing.assert_close(out, x2)


def test_empty_and_single_step_schedules():
    model = GaussianDenoiser()
    x = torch.randn(1, 4)
    for name in ("euler", "euler_ancestral", "dpmpp_2m"):
        assert torch.equal(SAMPLERS[name](model, x, torch.zeros(0)), x)
        assert torch.equal(SAMPLERS[name](model, x, torch.tensor([1.0])), x)
        out = SAMPLERS[name](model, x, torch.tensor([2.0, 0.0]), noise_sampler=make_noise_sampler(x, 0))
        torch.testing.assert_close(out, model(x, torch.tensor([2.0])))

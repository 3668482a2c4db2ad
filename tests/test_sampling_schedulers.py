"""Every scheduler's sigmas against values computed independently from its published formula.

The references below use plain Python floats and the DDPM definition of the training sigmas; none of them calls
the code under test except to get the step count.
"""

import math

import pytest
import torch

from nodes.sampling import SCHEDULERS, ModelSampling, calculate_sigmas
from nodes.sampling.schedulers import beta_cdf, beta_ppf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 1000


def _training_sigmas():
    start, end = 0.00085, 0.012
    out, abar = [], 1.0
    for i in range(N):
        beta = (start**0.5 + (end**0.5 - start**0.5) * i / (N - 1)) ** 2
        abar *= 1.0 - beta
        out.append(math.sqrt((1.0 - abar) / abar))
    return out


SIG = _training_sigmas()
LOG = [math.log(s) for s in SIG]
MS = ModelSampling()


def _sigma_at(t):
    """Log-linear interpolation between integer training timesteps."""
    lo = min(int(math.floor(t)), N - 1)
    hi = min(lo + 1, N - 1)
    w = t - lo
    return math.exp((1 - w) * LOG[lo] + w * LOG[hi])


def ref_normal(n):
    return [_sigma_at((N - 1) * (1 - i / (n - 1))) if n > 1 else SIG[-1] for i in range(n)] + [0.0]


def ref_sgm_uniform(n):
    return [_sigma_at((N - 1) * (1 - i / n)) for i in range(n)] + [0.0]


def ref_karras(n, rho=7.0):
    lo, hi = SIG[0] ** (1 / rho), SIG[-1] ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)] + [0.0]


def ref_exponential(n):
    a, b = math.log(SIG[-1]), math.log(SIG[0])
    return [math.exp(a + i / (n - 1) * (b - a)) for i in range(n)] + [0.0]


def ref_simple(n):
    return [SIG[N - 1 - int(i * N / n)] for i in range(n)] + [0.0]


def ref_ddim_uniform(n):
    """Every timestep 1 + i*c below N (c = N // n), descending (ComfyUI's count, which can exceed n)."""
    c = N // n
    ts, t = [], 1
    while t < N:
        ts.append(t)
        t += c
    return [SIG[t] for t in reversed(ts)] + [0.0]


def _mp_beta_ppf(q, a=0.6, b=0.6):
    """Beta quantile by bisection on mpmath's regularised incomplete beta (an independent implementation)."""
    import mpmath
    lo, hi = mpmath.mpf(0), mpmath.mpf(1)
    for _ in range(60):
        mid = (lo + hi) / 2
        if mpmath.betainc(a, b, 0, mid, regularized=True) < q:
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2)


def ref_beta(n):
    """Rounded (half to even) Beta quantile timesteps; a timestep equal to the previous one is dropped."""
    ts = [round(_mp_beta_ppf(1 - i / n) * (N - 1)) for i in range(n)]
    ts = [t for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
    return [SIG[t] for t in ts] + [0.0]


def ref_kl_optimal(n):
    a, b = math.atan(SIG[-1]), math.atan(SIG[0])
    return [math.tan(a + i / (n - 1) * (b - a)) for i in range(n)] + [0.0]


def ref_linear_quadratic(n, threshold=0.025):
    """Movie Gen: u linear up to `threshold` at L = n // 2, then u(L + k) = threshold + (threshold / L) k + c k^2
    (a Taylor form at L: same value and slope), c fixed by u(n) = 1; sigma = sigma_max (1 - u)."""
    if n == 1:
        return [SIG[-1], 0.0]
    big_l = n // 2
    q = n - big_l
    c = (1 - threshold - threshold / big_l * q) / q**2
    u = [threshold * i / big_l if i <= big_l else threshold + threshold / big_l * (i - big_l) + c * (i - big_l) ** 2
         for i in range(n + 1)]
    assert abs(u[-1] - 1) < 1e-12
    return [SIG[-1] * (1 - v) for v in u[:-1]] + [0.0]


REFERENCES = {
    "normal": ref_normal,
    "karras": ref_karras,
    "exponential": ref_exponential,
    "sgm_uniform": ref_sgm_uniform,
    "simple": ref_simple,
    "ddim_uniform": ref_ddim_uniform,
    "beta": ref_beta,
    "kl_optimal": ref_kl_optimal,
    "linear_quadratic": ref_linear_quadratic,
}


def test_every_scheduler_has_a_reference():
    assert set(REFERENCES) == set(SCHEDULERS) == {
        "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta", "kl_optimal",
        "linear_quadratic"}


@pytest.mark.parametrize("steps", [2, 7, 20, 33])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_published_formula(name, steps):
    got = SCHEDULERS[name](MS, steps)
    ref = torch.tensor(REFERENCES[name](steps), dtype=torch.float64)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == ref.shape
    if name not in ("ddim_uniform", "beta"):
        assert got.shape == (steps + 1,)
    assert got[-1].item() == 0.0
    assert torch.all(got[1:] < got[:-1]), "strictly descending"
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_single_step_and_zero_steps(name):
    one = SCHEDULERS[name](MS, 1)
    assert one.shape == (2,) and one[-1] == 0 and one[0] > 0
    zero = SCHEDULERS[name](MS, 0)
    assert zero.tolist() == [0.0]
    with pytest.raises(ValueError):
        SCHEDULERS[name](MS, -1)


def test_schedules_start_at_sigma_max():
    for name in ("normal", "karras", "exponential", "sgm_uniform", "simple", "beta", "kl_optimal", "linear_quadratic"):
        assert SCHEDULERS[name](MS, 10)[0].item() == pytest.approx(MS.sigma_max, rel=1e-6), name
    # ddim_uniform starts at timestep 1 + (steps-1) * (1000 // steps): 951 for 20 steps
    assert SCHEDULERS["ddim_uniform"](MS, 20)[0].item() == pytest.approx(SIG[951], rel=1e-6)


def test_ddim_uniform_count_follows_comfyui():
    """Every 1 + i*c below N: 31 timesteps (32 sigmas) for 30 steps, 20 for 20 steps."""
    assert SCHEDULERS["ddim_uniform"](MS, 30).shape == (32,)
    assert SCHEDULERS["ddim_uniform"](MS, 20).shape == (21,)
    assert len(range(1, N, N // 30)) == 31


def test_beta_cdf_and_ppf_against_mpmath():
    import mpmath
    for a, b in ((0.6, 0.6), (2.0, 5.0), (0.5, 1.5)):
        for x in (1e-6, 0.01, 0.2, 0.5, 0.77, 0.999):
            assert beta_cdf(x, a, b) == pytest.approx(float(mpmath.betainc(a, b, 0, x, regularized=True)),
                                                      rel=1e-10, abs=1e-14)
    for q in (0.001, 0.1, 0.5, 0.9, 0.999):
        assert beta_ppf(q, 0.6, 0.6) == pytest.approx(_mp_beta_ppf(q), abs=1e-10)


def test_beta_with_many_steps_drops_repeated_timesteps():
    """Beyond ~138 steps rounded Beta quantiles repeat a timestep; each repeat is dropped (ComfyUI's rule), so the
    schedule is shorter than steps + 1 and still strictly decreasing."""
    s = SCHEDULERS["beta"](MS, 300)
    ref = torch.tensor(ref_beta(300), dtype=torch.float64)
    assert len(ref) < 301 and s.shape == ref.shape and torch.all(s[1:] < s[:-1])
    torch.testing.assert_close(s.double(), ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_denoise_takes_the_tail_of_a_longer_schedule(name):
    part = calculate_sigmas(MS, name, 8, denoise=0.4)  # int(8 / 0.4) = 20 steps, last 9 sigmas
    assert torch.equal(part, SCHEDULERS[name](MS, 20)[-9:])


def test_linear_quadratic_is_linear_then_a_smooth_quadratic():
    """The first half of the steps lowers sigma by 2.5 % of sigma_max in equal steps; the rest is a quadratic with
    the same slope where the two parts meet (second differences constant)."""
    s = SCHEDULERS["linear_quadratic"](MS, 20).double()
    ulp = 2e-6  # float32 spacing near sigma_max = 14.6: differences carry up to ~2 of them
    first = s[1:] - s[:-1]
    torch.testing.assert_close(first[:10], torch.full((10,), -0.025 * MS.sigma_max / 10, dtype=torch.float64),
                               rtol=0, atol=2 * ulp)
    second = first[11:] - first[10:-1]  # ~0.13
    torch.testing.assert_close(second, torch.full_like(second, second.mean().item()), rtol=0, atol=4 * ulp)
    # a continuous slope at L: the first quadratic difference exceeds the linear one by half a second difference
    assert (first[10] - first[9]).item() == pytest.approx(second.mean().item() / 2, abs=4 * ulp)
    assert s[10].item() == pytest.approx(0.975 * MS.sigma_max, rel=1e-6)


def test_v_prediction_and_linear_betas_change_the_training_sigmas_not_the_formulas():
    ms = ModelSampling("linear")
    s = SCHEDULERS["karras"](ms, 10)
    assert s[0].item() == pytest.approx(ms.sigma_max, rel=1e-6) and s[-2].item() == pytest.approx(ms.sigma_min, rel=1e-6)
    assert torch.equal(SCHEDULERS["normal"](ModelSampling(prediction_type="v_prediction"), 10),
                       SCHEDULERS["normal"](MS, 10))

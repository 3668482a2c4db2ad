"""Cross-checks against diffusers 0.42.1's schedulers: same sigmas, same model, same result to float tolerance.

The "model" is the exact denoiser of Gaussian data (nodes.testing.analytic); diffusers gets it as an epsilon
prediction, eps = (x - D(x, sigma)) / sigma, at the sigma its scheduler is using at that moment. diffusers computes
its schedules from float32 betas and keeps float32 internally, so results agree to float32 precision (~1e-6
relative); the tolerances below are ~10x the differences measured here.

How diffusers' spacings map to Chisel's schedulers:
- EulerDiscreteScheduler(timestep_spacing="linspace") takes timesteps np.linspace(0, 999, n)[::-1] -- the same
  timesteps as ``normal`` -- but interpolates sigma *linearly* between integer timesteps, while ``normal`` (like
  ComfyUI) interpolates log sigma. The two coincide when every timestep is an integer, i.e. when 999 / (n - 1) is
  an integer: n = 2, 4, 10, 28, 38, ... The tests use n = 10 and 28.
- use_karras_sigmas=True gives ``karras`` (rho = 7 between the training sigma_min and sigma_max).
- DDIMScheduler(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True) takes timesteps
  1 + i * (1000 // n) and steps to alpha = 1 (sigma = 0) at the end: the ``ddim_uniform`` schedule.
"""

import pytest
import torch

from nodes.sampling import SAMPLERS, SCHEDULERS, ModelSampling
from nodes.testing.analytic import GaussianDenoiser

import diffusers  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
MS = ModelSampling()
DATA = GaussianDenoiser(0.3, 0.9)


def _start(sigma_max, seed=0, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return DATA.sample_x_at(sigma_max, shape, generator=g, dtype=torch.float32)


def _eps(x_ve, sigma):
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    x = x_ve.double()
    return ((x - DATA(x, sigma.reshape(1))) / sigma).to(x_ve.dtype)


def run_k_style(scheduler, x_ve, **step_kwargs):
    """diffusers schedulers whose sample lives in sigma (VE) space (Euler, Heun, Euler ancestral)."""
    sample = x_ve.clone()
    for t in scheduler.timesteps:
        scheduler.scale_model_input(sample, t)  # also initialises step_index
        sigma = scheduler.sigmas[scheduler.step_index]
        sample = scheduler.step(_eps(sample, sigma), t, sample, **step_kwargs).prev_sample
    return sample


def run_vp(scheduler, x_ve, sigmas, noises=None):
    """diffusers schedulers whose sample is VP-scaled, x_vp = x / sqrt(1 + sigma^2) (DPM-Solver, UniPC, DDIM)."""
    sample = x_ve / (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        x = sample * (1 + sigma**2) ** 0.5
        kwargs = {} if noises is None else {"variance_noise": noises[i]}
        sample = scheduler.step(_eps(x, sigma), t, sample, **kwargs).prev_sample
    return sample * (1 + sigmas[-1] ** 2) ** 0.5  # back to VE (a no-op when the schedule ends at 0)


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# -- euler + normal vs EulerDiscreteScheduler ---------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 28])
def test_euler_normal_vs_euler_discrete(steps):
    sch = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace")
    sch.set_timesteps(steps)
    ours = SCHEDULERS["normal"](MS, steps)
    assert _max_diff(ours, sch.sigmas) < 5e-5  # same schedule (float32 betas in diffusers)
    x = _start(float(sch.sigmas[0]))
    theirs = run_k_style(sch, x)
    same_sigmas = SAMPLERS["euler"](DATA, x, sch.sigmas)
    assert _max_diff(same_sigmas, theirs) < 2e-5
    assert _max_diff(SAMPLERS["euler"](DATA, x, ours), theirs) < 2e-4  # our own sigmas, float32-close


def test_normal_vs_linspace_spacing_where_timesteps_are_fractional():
    """With 20 steps the timesteps are fractional; linear vs log-linear interpolation then differ (by < 0.2 %)."""
    sch = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace")
    sch.set_timesteps(20)
    ours = SCHEDULERS["normal"](MS, 20)
    rel = ((ours[:-1].double() - sch.sigmas[:-1].double()).abs() / sch.sigmas[:-1].double()).max().item()
    assert 1e-5 < rel < 2e-3


# -- dpmpp_2m + karras vs DPMSolverMultistepScheduler ----------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_karras_vs_dpm_solver_multistep(steps):
    sch = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, solver_order=2,
                                                algorithm_type="dpmsolver++", solver_type="midpoint")
    sch.set_timesteps(steps)
    ours = SCHEDULERS["karras"](MS, steps)
    assert _max_diff(ours, sch.sigmas) < 5e-5
    x = _start(float(sch.sigmas[0]))
    theirs = run_vp(sch, x, sch.sigmas)
    assert _max_diff(SAMPLERS["dpmpp_2m"](DATA, x, sch.sigmas), theirs) < 2e-5
    assert _max_diff(SAMPLERS["dpmpp_2m"](DATA, x, ours), theirs) < 2e-4


# -- more pairs ------------------------------------------------------------------------------------------------


def test_heun_vs_heun_discrete():
    sch = diffusers.HeunDiscreteScheduler(**SD, timestep_spacing="linspace")
    sch.set_timesteps(10)
    # diffusers interleaves the sigmas ([s0, s1, s1, s2, s2, ..., s9, s9, 0]); the plain schedule is:
    sigmas = torch.cat([sch.sigmas[:1], sch.sigmas[1::2]])
    assert _max_diff(sigmas, SCHEDULERS["normal"](MS, 10)) < 5e-5
    x = _start(float(sigmas[0]))
    theirs = run_k_style(sch, x)
    assert _max_diff(SAMPLERS["heun"](DATA, x, sigmas), theirs) < 2e-5


def test_ddim_vs_ddim_scheduler():
    steps = 20
    sch = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                                  timestep_spacing="leading")
    sch.set_timesteps(steps)
    ac = sch.alphas_cumprod.double()
    sigmas = torch.cat([((1 - ac[sch.timesteps]) / ac[sch.timesteps]).sqrt(), torch.zeros(1, dtype=torch.float64)])
    assert sch.timesteps.tolist() == list(range(951, 0, -50))
    assert _max_diff(sigmas, SCHEDULERS["ddim_uniform"](MS, steps)) < 5e-5
    x = _start(float(sigmas[0]))
    theirs = run_vp(sch, x, sigmas)
    assert _max_diff(SAMPLERS["ddim"](DATA, x, sigmas), theirs) < 2e-5


@pytest.mark.parametrize(
    "order,variant,spacing",
    [(3, "bh2", "karras"), (2, "bh2", "karras"), (3, "bh2", "exponential"), (3, "bh1", "linspace"),
     (2, "bh1", "linspace")],
)
def test_uni_pc_vs_unipc_multistep(order, variant, spacing):
    steps = 12
    if variant == "bh1":
        # diffusers' bh1 cannot step to sigma = 0 (B(h) = -h is infinite there: its last step returns NaN), so
        # these runs end at sigma_min (final_sigmas_type="sigma_min") with diffusers' own linspace timesteps.
        kw = {"final_sigmas_type": "sigma_min"}
    else:
        kw = {f"use_{spacing}_sigmas": True}
    sch = diffusers.UniPCMultistepScheduler(**SD, solver_order=order, solver_type=variant, predict_x0=True,
                                            lower_order_final=True, **kw)
    sch.set_timesteps(steps)
    if variant == "bh2":
        assert _max_diff(SCHEDULERS[spacing](MS, steps), sch.sigmas) < 5e-5
    x = _start(float(sch.sigmas[0]))
    theirs = run_vp(sch, x, sch.sigmas)
    # diffusers ends a schedule that ends at 0 with the denoised prediction, ComfyUI (and Chisel by default) with a
    # step to sigma = 0.001: final_sigma=0 asks for diffusers' ending
    mine = SAMPLERS["uni_pc"](DATA, x, sch.sigmas, order=order, variant=variant, final_sigma=0.0)
    assert torch.isfinite(theirs).all()
    assert _max_diff(mine, theirs) < 2e-5
    # and the corrector matters: without it the result is measurably different
    plain = SAMPLERS["uni_pc"](DATA, x, sch.sigmas, order=order, variant=variant, use_corrector=False,
                               final_sigma=0.0)
    assert _max_diff(plain, theirs) > 1e-3


def test_dpmpp_3m_ode_vs_dpm_solver_multistep_order3():
    """dpmpp_3m_sde with eta = 0 is DPM-Solver++(3M); diffusers' 2nd-order warm-up step must use the "heun"
    weighting to match. 20 steps (>= 15) so that diffusers does not lower the order of the last two steps."""
    steps = 20
    sch = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, solver_order=3,
                                                algorithm_type="dpmsolver++", solver_type="heun")
    sch.set_timesteps(steps)
    x = _start(float(sch.sigmas[0]))
    theirs = run_vp(sch, x, sch.sigmas)
    assert _max_diff(SAMPLERS["dpmpp_3m_sde"](DATA, x, sch.sigmas, eta=0.0), theirs) < 2e-5


class _Replay:
    """A noise sampler that hands out a fixed list of draws in order."""

    def __init__(self, noises):
        self.noises, self.n = noises, 0

    def __call__(self, sigma=None, sigma_next=None):
        self.n += 1
        return self.noises[self.n - 1]


def test_euler_ancestral_vs_euler_ancestral_discrete_with_shared_noise():
    steps = 15
    sch = diffusers.EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace")
    sch.set_timesteps(steps)
    x = _start(float(sch.sigmas[0]))
    theirs = run_k_style(sch, x, generator=torch.Generator().manual_seed(42))
    # diffusers draws one randn per step from its generator, shaped and typed like the model output
    g = torch.Generator().manual_seed(42)
    noises = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(steps)]
    mine = SAMPLERS["euler_ancestral"](DATA, x, sch.sigmas, noise_sampler=_Replay(noises))
    assert _max_diff(mine, theirs) < 2e-5


def test_dpmpp_2m_sde_vs_sde_dpm_solver_with_shared_noise():
    steps = 16
    sch = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, solver_order=2,
                                                algorithm_type="sde-dpmsolver++", solver_type="midpoint")
    sch.set_timesteps(steps)
    x = _start(float(sch.sigmas[0]))
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn(x.shape, generator=g) for _ in range(steps)]
    # diffusers adds sigma_t_vp * sqrt(1 - e^{-2h}) * z in VP space; that is sigma_t * sqrt(..) * z in VE space,
    # so the same z goes to both.
    theirs = run_vp(sch, x, sch.sigmas, noises=noises)
    mine = SAMPLERS["dpmpp_2m_sde"](DATA, x, sch.sigmas, noise_sampler=_Replay(noises))
    assert _max_diff(mine, theirs) < 2e-5

"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"): the guided
prediction is re-noised with the *unconditional* noise estimate.

Checked against the paper's DDIM statement in VP form, against the plain samplers (equal when the unconditional and
conditional predictions agree), and through the real guider on the tiny SD1 checkpoint (the negative pass runs and
is what the sampler receives, also at cfg 1).
"""
import math

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import assert_close_to_scale, tiny_file

from nodes.sampling import SAMPLERS, SCHEDULERS, ModelSampling, make_noise_sampler
from nodes.testing.analytic import GaussianDenoiser, GuidedDenoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MS = ModelSampling()
CFG_PP = [n for n, s in SAMPLERS.items() if s.needs_uncond]
COND, UNCOND = GaussianDenoiser(0.8, 0.6), GaussianDenoiser(-0.2, 1.1)


def test_the_cfg_pp_samplers():
    assert CFG_PP == ["euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_cfg_pp",
                      "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp", "gradient_estimation_cfg_pp"]
    for name in CFG_PP:
        base = SAMPLERS[name.removesuffix("_cfg_pp")]
        assert SAMPLERS[name].function is base.function and SAMPLERS[name].noise == base.noise


def test_euler_cfg_pp_step_is_the_papers_ddim_cfg_pp_update():
    """Chung et al., Algorithm 1 (DDIM with CFG++), in VP form: x0_hat = (x_t - sqrt(1 - abar_t) eps_cfg) /
    sqrt(abar_t), x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) eps_uncond."""
    cfg = 0.6
    model = GuidedDenoiser(COND, UNCOND, cfg)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7.0
    for s0, s1 in ((7.0, 3.0), (3.0, 0.4), (0.4, 0.0)):
        sb = torch.tensor([s0], dtype=torch.float64)
        u = UNCOND(x, sb)
        d = u + (COND(x, sb) - u) * cfg
        abar, abar1 = 1 / (1 + s0 * s0), 1 / (1 + s1 * s1)
        x_vp = x * math.sqrt(abar)
        eps_cfg, eps_u = (x - d) / s0, (x - u) / s0  # VE and VP noise estimates coincide
        x0_hat = (x_vp - math.sqrt(1 - abar) * eps_cfg) / math.sqrt(abar)
        want = (math.sqrt(abar1) * x0_hat + math.sqrt(1 - abar1) * eps_u) / math.sqrt(abar1)
        got = SAMPLERS["euler_cfg_pp"](model, x, torch.tensor([s0, s1], dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        plain = SAMPLERS["euler"](model, x, torch.tensor([s0, s1], dtype=torch.float64))
        assert (plain - want).abs().max() > 1e-2 or s1 == 0.0  # to sigma = 0 both return the guided D
        x = got


@pytest.mark.parametrize("name", CFG_PP)
def test_cfg_pp_equals_the_plain_sampler_when_the_predictions_agree(name):
    """With the conditional and unconditional predictions equal (or a model without an unconditional one) there is
    nothing to re-noise differently; with them apart the result differs."""
    base = name.removesuffix("_cfg_pp")
    sig = SCHEDULERS["karras"](MS, 8)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * float(sig[0])
    same = GuidedDenoiser(COND, COND, 3.0)
    ref = SAMPLERS[base](same, x, sig, noise_sampler=make_noise_sampler(x, 2))
    torch.testing.assert_close(SAMPLERS[name](same, x, sig, noise_sampler=make_noise_sampler(x, 2)), ref,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(SAMPLERS[name](COND, x, sig, noise_sampler=make_noise_sampler(x, 2)),
                               SAMPLERS[base](COND, x, sig, noise_sampler=make_noise_sampler(x, 2)), rtol=0, atol=0)
    apart = GuidedDenoiser(COND, UNCOND, 1.5)
    diff = (SAMPLERS[name](apart, x, sig, noise_sampler=make_noise_sampler(x, 2))
            - SAMPLERS[base](apart, x, sig, noise_sampler=make_noise_sampler(x, 2))).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("name", ["dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "gradient_estimation_cfg_pp"])
def test_multistep_cfg_pp_first_step_is_ddim_cfg_pp(name):
    """The multistep samplers' first step is first order: the same update as euler_cfg_pp."""
    model = GuidedDenoiser(COND, UNCOND, 1.8)
    sig = SCHEDULERS["karras"](MS, 6).double()
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * float(sig[0])
    seen = []
    SAMPLERS[name](model, x, sig, callback=seen.append)
    torch.testing.assert_close(seen[1]["x"], SAMPLERS["euler_cfg_pp"](model, x, sig[:2]), rtol=1e-10, atol=1e-10)


# -- through the real guider on the tiny SD1 checkpoint ----------------------------------------------------------


@pytest.fixture(scope="module")
def sd1():
    from nodes.library.conditioning import CLIPTextEncode
    from nodes.memory.manager import ModelManager

    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="blurry", clip=bundle.clip)[0]
    return bundle, pos, neg


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_the_guider_exposes_the_negative_prediction(sd1, cfg):
    """Guider.cfg(...).denoiser(need_uncond=True).denoise_with_uncond returns (the guided prediction, the negative
    conditioning's own prediction), in one UNet call, also at cfg 1 where the plain denoiser skips the negative."""
    from nodes.sampling.guidance import Guider

    bundle, pos, neg = sd1
    shape = (1, 4, 5, 7)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4.0
    sigma = torch.tensor([4.0])
    lat, size = torch.zeros(shape), (40, 56)
    with torch.inference_mode():
        den = Guider.cfg(bundle.model, pos, neg, cfg).denoiser(lat, None, None, size, need_uncond=True)
        d, u = den.denoise_with_uncond(x, sigma)
        d_pos = Guider.basic(bundle.model, pos).denoiser(lat, None, None, size)(x, sigma)
        d_neg = Guider.basic(bundle.model, neg).denoiser(lat, None, None, size)(x, sigma)
        plain = Guider.cfg(bundle.model, pos, neg, cfg).denoiser(lat, None, None, size)
        plain(x, sigma)
    assert den.calls == 1 and plain.calls == 1 and len(den.entries) == 2
    assert len(plain.entries) == (1 if cfg == 1.0 else 2)
    assert_close_to_scale(u, d_neg, rel=1e-5)
    assert_close_to_scale(d, d_neg + (d_pos - d_neg) * cfg, rel=1e-5)
    assert (d_pos - d_neg).abs().max() > 1e-3


def test_ksampler_euler_cfg_pp_follows_the_cfg_pp_update(sd1):
    """KSampler with euler_cfg_pp at cfg 1: each step x' = D_pos + sigma' (x - D_neg) / sigma, computed here by hand
    from the two conditionings' own predictions; plain euler at cfg 1 never sees the negative."""
    from nodes.sampling.guidance import Guider
    from nodes.sampling.sample import prepare_noise, sample

    bundle, pos, neg = sd1
    shape = (1, 4, 5, 7)
    latent = {"samples": torch.zeros(shape)}
    got = sample(bundle.model, 7, 3, 1.0, "euler_cfg_pp", "karras", pos, neg, latent)["samples"]
    plain = sample(bundle.model, 7, 3, 1.0, "euler", "karras", pos, neg, latent)["samples"]
    sig = SCHEDULERS["karras"](bundle.model.model_sampling, 3).tolist()
    fmt = bundle.model.latent_format
    x = prepare_noise(latent, 7) * math.sqrt(1 + sig[0] ** 2)  # KSampler's start at sigma_max (ComfyUI's rule)
    lat, size = fmt.process_in(torch.zeros(shape)), (40, 56)
    with torch.inference_mode():
        dp = Guider.basic(bundle.model, pos).denoiser(lat, None, None, size)
        dn = Guider.basic(bundle.model, neg).denoiser(lat, None, None, size)
        for s0, s1 in zip(sig, sig[1:]):
            sb = torch.tensor([s0])
            x = dp(x, sb) + (x - dn(x, sb)) * (s1 / s0)
    assert_close_to_scale(got, fmt.process_out(x), rel=1e-5)
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["euler_cfg_pp", "dpm_fast", "dpm_adaptive", "ddpm", "ipndm", "ipndm_v", "deis",
                                  "res_multistep_ancestral", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
                                  "seeds_3", "sa_solver_pece"])
def test_new_samplers_run_in_ksampler_on_the_tiny_checkpoint(sd1, name):
    """KSampler with the tiny SD1 UNet: a finite latent, the same for the same seed, another for another seed."""
    from nodes.sampling.sample import sample

    bundle, pos, neg = sd1
    latent = {"samples": torch.zeros(1, 4, 4, 4)}
    a = sample(bundle.model, 3, 4, 3.0, name, "karras", pos, neg, latent)["samples"]
    b = sample(bundle.model, 3, 4, 3.0, name, "karras", pos, neg, latent)["samples"]
    assert torch.isfinite(a).all() and torch.equal(a, b)
    if SAMPLERS[name].stochastic:
        c = sample(bundle.model, 4, 4, 3.0, name, "karras", pos, neg, latent)["samples"]
        assert not torch.equal(a, c)

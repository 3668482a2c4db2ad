"""The noise and schedule contract (README, "Noise and schedules"): ComfyUI's rules, each checked against an
independent statement of it — torch's generator and torchsde called directly, the published formulas — never
against Chisel's own output.

Sampler-level rules use the exact Gaussian denoiser; the wiring (which seed, which tree, which timesteps reach the
UNet) runs through the real nodes on the tiny SD1 checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import assert_close_to_scale, tiny_file

from nodes.sampling import SAMPLERS, ModelSampling, calculate_sigmas, step_noise_sampler
from nodes.sampling.noise import BrownianTreeNoiseSampler
from nodes.sampling.sample import prepare_noise
from nodes.testing.analytic import GaussianDenoiser

import torchsde  # noqa: E402  (the test extra; absence is a failure)

MS = ModelSampling()
N = 1000


def _training_sigmas() -> list[float]:
    """The DDPM definition: scaled-linear betas, sigma_t = sqrt((1 - abar_t) / abar_t), in float64."""
    out, abar = [], 1.0
    for i in range(N):
        beta = (0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * i / (N - 1)) ** 2
        abar *= 1.0 - beta
        out.append(math.sqrt((1.0 - abar) / abar))
    return out


SIG = _training_sigmas()


def _ancestral(s0: float, s1: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's published ancestral split: sigma_up, then sigma_down with down^2 + up^2 = s1^2."""
    up = min(s1, eta * math.sqrt(s1**2 * (s0**2 - s1**2) / s0**2))
    return math.sqrt(s1**2 - up**2), up


# -- schedules ------------------------------------------------------------------------------------------------------


def test_uni_pc_and_dpm_2_drop_the_penultimate_sigma_of_a_one_step_longer_schedule():
    """ComfyUI's KSampler, uni_pc at 3 normal steps: [14.61, 2.918, 0.932, 0] (issue numbers), i.e. the 4-step normal
    schedule (timesteps 999, 666, 333, 0) without its sigma at timestep 0."""
    got = calculate_sigmas(MS, "normal", 3, discard_penultimate_sigma=True)
    ref = [SIG[999], SIG[666], SIG[333], 0.0]
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), rtol=2e-6, atol=0)
    assert [round(v, 3) for v in got.tolist()] == [14.615, 2.918, 0.932, 0.0]
    for name in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        assert SAMPLERS[name].discard_penultimate_sigma
    # with denoise: the tail of the longer, shortened schedule (int(4 / 0.5) = 8 steps -> 9 + 1 computed)
    long = calculate_sigmas(MS, "karras", 9)
    want = torch.cat([long[:-2], long[-1:]])[-5:]
    assert torch.equal(calculate_sigmas(MS, "karras", 4, 0.5, discard_penultimate_sigma=True), want)


def test_the_unet_gets_the_nearest_integer_timestep():
    """ComfyUI maps a sigma to the training timestep whose log sigma is nearest (argmin), the lower on a tie."""
    log_table = torch.tensor(SIG, dtype=torch.float64).log()
    sigmas = torch.cat([calculate_sigmas(MS, "karras", 37)[:-1], torch.tensor([SIG[0] * 0.5, SIG[-1] * 2])])
    want = (sigmas.double().log()[None, :] - log_table[:, None]).abs().argmin(dim=0)
    assert torch.equal(MS.nearest_timestep(sigmas).long(), want)
    # the midpoint in log sigma between two timesteps goes to the lower one
    mid = math.exp(0.5 * (math.log(SIG[500]) + math.log(SIG[501])))
    assert MS.nearest_timestep(torch.tensor([mid], dtype=torch.float64)).item() in (500.0, 501.0)


# -- per-step noise ------------------------------------------------------------------------------------------------


def test_ancestral_noise_on_the_cpu_is_a_generator_seeded_with_the_seed_plus_one():
    """ComfyUI (since its fix for ancestral samplers on the CPU): the step noise generator lives on the latent's
    device and is seeded with seed + 1 there when that device is the CPU, so it never repeats the starting noise."""
    x = torch.zeros(2, 4, 5, 7)
    ns = step_noise_sampler(SAMPLERS["euler_ancestral"].noise, x, None, 123)
    gen = torch.Generator(device="cpu").manual_seed(124)
    first = ns(1.0, 0.5)
    assert torch.equal(first, torch.randn(x.shape, generator=gen))
    for _ in range(2):
        assert torch.equal(ns(1.0, 0.5), torch.randn(x.shape, generator=gen))
    assert not torch.equal(first, torch.randn(x.shape, generator=torch.Generator().manual_seed(123)))


def test_ancestral_noise_seed_wraps_at_the_largest_seed():
    x = torch.zeros(1, 4, 2, 2)
    ns = step_noise_sampler(SAMPLERS["euler_ancestral"].noise, x, None, (1 << 64) - 1)
    assert torch.equal(ns(1.0, 0.5), torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))


def test_brownian_tree_noise_is_torchsde_seeded_with_the_seed():
    """(W(sigma_next) - W(sigma)) / sqrt(sigma - sigma_next) for one torchsde tree on [min positive sigma, max
    sigma], entropy = seed, queried in the sampler's order."""
    sigmas = calculate_sigmas(MS, "karras", 6)
    x = torch.zeros(1, 4, 3, 5)
    ns = step_noise_sampler(SAMPLERS["dpmpp_2m_sde"].noise, x, sigmas, 77)
    assert isinstance(ns, BrownianTreeNoiseSampler)
    s = sigmas.tolist()
    tree = torchsde.BrownianTree(torch.tensor(s[-2]), torch.zeros(x.shape), torch.tensor(s[0]), entropy=77)
    for a, b in zip(s[:-2], s[1:-1]):
        want = -tree(torch.tensor(b), torch.tensor(a)) / math.sqrt(a - b)
        torch.testing.assert_close(ns(a, b), want, rtol=1e-6, atol=1e-6)


def test_sde_samplers_without_torchsde_fall_back_to_seeded_noise(monkeypatch, caplog):
    import nodes.sampling.noise as noise

    monkeypatch.setattr(noise, "_torchsde", lambda: None)
    monkeypatch.setattr(noise, "_warned_no_torchsde", False)
    x = torch.zeros(1, 4, 2, 2)
    with caplog.at_level("WARNING"):
        ns = step_noise_sampler("brownian", x, torch.tensor([2.0, 1.0, 0.0]), 5)
    assert "torchsde is not installed" in caplog.text
    assert torch.equal(ns(2.0, 1.0), torch.randn(x.shape, generator=torch.Generator().manual_seed(6)))


def test_lms_returns_the_denoised_prediction_on_its_last_step():
    data = GaussianDenoiser(0.3, 0.9)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.0
    s0, s1 = 3.0, 1.2
    out = SAMPLERS["lms"](data, x, torch.tensor([s0, s1, 0.0], dtype=torch.float64))
    f64 = dict(dtype=torch.float64)
    x1 = x + (x - data(x, torch.tensor([s0], **f64))) / s0 * (s1 - s0)  # first LMS step = Euler
    torch.testing.assert_close(out, data(x1, torch.tensor([s1], **f64)), rtol=1e-12, atol=1e-12)


def test_uni_pc_ends_with_a_first_order_step_to_sigma_0_001():
    """Two steps [s0, s1, 0]: a UniP-1 step to s1 with the UniC-1 corrector (rho = 1/2, B(h) = -h for bh1 or
    expm1(-h) for bh2), then a first-order data-prediction step to sigma = 0.001 (not the denoised prediction)."""
    data = GaussianDenoiser(0.3, 0.9)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0
    s0, s1, s2 = 3.0, 0.8, 0.001
    for name, b_of in (("uni_pc", lambda h: -h), ("uni_pc_bh2", lambda h: math.expm1(-h))):
        out = SAMPLERS[name](data, x, torch.tensor([s0, s1, 0.0], dtype=torch.float64))
        d0 = data(x, torch.tensor([s0], dtype=torch.float64))
        h1 = math.log(s0 / s1)
        pred = x * (s1 / s0) - d0 * math.expm1(-h1)
        d1 = data(pred, torch.tensor([s1], dtype=torch.float64))
        corrected = pred - (d1 - d0) * (0.5 * b_of(h1))
        h2 = math.log(s1 / s2)
        want = corrected * (s2 / s1) - d1 * math.expm1(-h2)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


# -- the starting noise ---------------------------------------------------------------------------------------------


def test_starting_noise_is_torchs_global_generator_seeded_with_the_seed():
    """ComfyUI: torch.manual_seed(seed), then torch.randn of the latent's shape on the CPU. Known values of torch's
    CPU generator for seed 0 anchor it: tensors of 16 values or more start -1.1258, -1.1524, -0.2506, -0.4339
    (filled in blocks of 16), smaller ones 1.5410, -0.2934, -2.1788."""
    latent = {"samples": torch.zeros(2, 4, 6, 6)}
    got = prepare_noise(latent, 0)
    assert torch.allclose(got.flatten()[:4], torch.tensor([-1.1258, -1.1524, -0.2506, -0.4339]), atol=1e-4)
    small = prepare_noise({"samples": torch.zeros(1, 3, 1, 1)}, 0)
    assert torch.allclose(small.flatten(), torch.tensor([1.5410, -0.2934, -2.1788]), atol=1e-4)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(31)
        want = torch.randn(2, 4, 6, 6)
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(prepare_noise(latent, 31), want) and got.dtype == torch.float32


@pytest.mark.parametrize("h,w,aligned", [(4, 4, True), (8, 6, True), (5, 7, False), (3, 3, False)])
def test_an_entry_picked_from_a_batch_gets_one_draw_per_entry_up_to_its_index(h, w, aligned):
    """LatentFromBatch keeps batch_index; the noise of entry i is the (i+1)-th draw of one entry's shape from the
    seeded generator. That equals the entry's slice of the whole batch's noise exactly when an entry has a multiple
    of 16 values (4·h·w): 32x32 and 64x48 px yes, 40x56 px (5x7 latent cells) and 24x24 px no."""
    from nodes.library.latent import LatentFromBatch

    batch = {"samples": torch.zeros(4, 4, h, w)}
    (picked,) = LatentFromBatch().run(None, batch, 1, 2)
    got = prepare_noise(picked, 9)
    gen = torch.Generator().manual_seed(9)
    draws = [torch.randn(1, 4, h, w, generator=gen) for _ in range(3)]
    assert torch.equal(got, torch.cat(draws[1:3]))
    whole = prepare_noise(batch, 9)
    assert torch.equal(got, whole[1:3]) == aligned
    assert ((4 * h * w) % 16 == 0) == aligned
    if not aligned:
        assert (got - whole[1:3]).abs().max() > 0.5  # not a rounding difference: other numbers


# -- PNG quantisation -----------------------------------------------------------------------------------------------


def test_saved_pngs_truncate_like_comfyui(tmp_path):
    """8-bit levels are floor(255 x) clipped to 0..255 (ComfyUI casts 255 x to uint8 after clipping): 0.5 -> 127,
    never rounded up to 128."""
    from types import SimpleNamespace

    from PIL import Image

    from nodes.library.image import SaveImage

    values = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.7, -0.2, 0.25, 0.1])
    image = values.reshape(1, 1, 8, 1).expand(1, 1, 8, 3).contiguous()
    services = SimpleNamespace(paths=SimpleNamespace(dir=lambda kind: tmp_path), file_writer=None)
    ctx = SimpleNamespace(services=services, workflow={"nodes": {}}, registry=None)
    out = SaveImage().run(ctx, image, "trunc")
    png = np.asarray(Image.open(tmp_path / out.ui["images"][0]["filename"]).convert("RGB"))[0, :, 0]
    want = [min(255, max(0, math.floor(255 * float(v)))) for v in values.float()]
    assert png.tolist() == want and png[1] == 127


# -- the wiring, on the tiny checkpoint -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1():
    from nodes.library.conditioning import CLIPTextEncode
    from nodes.memory.manager import ModelManager

    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    return bundle, pos, neg


def _one_step(sd1, sampler_name, seed, s0, s1, shape=(1, 4, 5, 7)):
    """SamplerCustom over [s0, s1] from an empty latent; returns (x0, D(x0), x1) in the model's latent space."""
    from nodes.library.custom_sampling import KSamplerSelect, SamplerCustom

    bundle, pos, neg = sd1
    fmt = bundle.model.latent_format
    (sampler,) = KSamplerSelect().run(None, sampler_name)
    out, den = SamplerCustom().run(None, bundle.model, True, seed, 3.0, pos, neg, sampler,
                                   torch.tensor([s0, s1]), {"samples": torch.zeros(shape)})
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * s0
    return x0, fmt.process_in(den["samples"]), fmt.process_in(out["samples"])


def test_euler_ancestral_step_noise_is_the_seeds_generator(sd1):
    """x1 = x0 + (x0 - D) / s0 (down - s0) + z up, with z the first draw of a CPU generator seeded with seed + 1
    (ComfyUI's rule on the CPU: not the starting noise again)."""
    s0, s1, seed = 6.0, 2.0, 4242
    x0, d, x1 = _one_step(sd1, "euler_ancestral", seed, s0, s1)
    down, up = _ancestral(s0, s1)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    want = x0 + (x0 - d) / s0 * (down - s0) + z * up
    assert_close_to_scale(x1, want, rel=1e-5)


def test_dpmpp_2m_sde_step_noise_is_a_torchsde_tree_seeded_with_the_seed(sd1):
    s0, s1, seed, eta = 6.0, 2.0, 99, 1.0
    x0, d, x1 = _one_step(sd1, "dpmpp_2m_sde", seed, s0, s1)
    h = math.log(s0 / s1)
    tree = torchsde.BrownianTree(torch.tensor(s1), torch.zeros(x0.shape), torch.tensor(s0), entropy=seed)
    z = -tree(torch.tensor(s1), torch.tensor(s0)) / math.sqrt(s0 - s1)  # (W(s1) - W(s0)) / sqrt(s0 - s1)
    want = x0 * (s1 / s0 * math.exp(-eta * h)) + d * (-math.expm1(-h - eta * h)) \
        + z * (s1 * math.sqrt(-math.expm1(-2 * eta * h)))
    assert_close_to_scale(x1, want, rel=1e-5)


def test_ksampler_advanced_uses_the_same_seed_for_its_steps(sd1):
    """KSamplerAdvanced running one step of a karras schedule with leftover noise equals SamplerCustom over that
    step's two sigmas (whose per-step noise the tests above pin down)."""
    from nodes.library.custom_sampling import KSamplerSelect, SamplerCustom
    from nodes.library.sampling import KSamplerAdvanced

    bundle, pos, neg = sd1
    lat = {"samples": torch.zeros(1, 4, 4, 4)}
    sig = calculate_sigmas(bundle.model.model_sampling, "karras", 5)
    for name in ("euler_ancestral", "dpmpp_2m_sde"):
        (adv,) = KSamplerAdvanced().run(None, bundle.model, "enable", 7, 5, 3.0, name, "karras", pos, neg, lat,
                                        2, 3, "enable")
        (sampler,) = KSamplerSelect().run(None, name)
        custom, _ = SamplerCustom().run(None, bundle.model, True, 7, 3.0, pos, neg, sampler, sig[2:4], lat)
        assert torch.equal(adv["samples"], custom["samples"]), name


def test_the_unet_receives_integer_timesteps(sd1):
    from nodes.library.sampling import KSampler

    bundle, pos, neg = sd1
    unet = bundle.model.unet.module
    seen = []
    hook = unet.register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone()))
    try:
        KSampler().run(None, bundle.model, 1, 4, 3.0, "euler", "karras", pos, neg,
                       {"samples": torch.zeros(1, 4, 4, 4)}, 1.0)
    finally:
        hook.remove()
    sig = calculate_sigmas(bundle.model.model_sampling, "karras", 4)[:-1].double()
    log_table = torch.tensor(SIG, dtype=torch.float64).log()
    want = (sig.log()[None, :] - log_table[:, None]).abs().argmin(dim=0).double()
    got = torch.stack([t.flatten()[0] for t in seen]).double()
    assert len(seen) == 4 and torch.equal(got, want) and not torch.equal(got, got.floor() + 0.5)


@pytest.mark.parametrize("sampler,offset", [("ddim", 1), ("euler", 0)])
def test_inpainting_re_noises_the_kept_area_with_the_starting_noise_or_for_ddim_seed_plus_one(sd1, sampler, offset):
    """Where the noise mask is 0 the latent is re-noised each step to the current sigma: latent + n sigma, with n the
    starting noise — except for ddim, which (as ComfyUI's) uses noise of seed + 1. Seen at the UNet's first input,
    x / sqrt(sigma^2 + 1)."""
    from nodes.library.sampling import KSampler

    bundle, pos, neg = sd1
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1.0  # repaint the left half, keep the right half
    latent = {"samples": torch.zeros(1, 4, 4, 4), "noise_mask": mask}
    seen = []
    hook = bundle.model.unet.module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        KSampler().run(None, bundle.model, 5, 2, 3.0, sampler, "normal", pos, neg, latent, 1.0)
    finally:
        hook.remove()
    s0 = SIG[999]
    n = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5 + offset))
    want = n[..., 2:] * s0 / math.sqrt(s0 * s0 + 1)
    assert_close_to_scale(seen[0][:1, :, :, 2:].float(), want, rel=1e-5)

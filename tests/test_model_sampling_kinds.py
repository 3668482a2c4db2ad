"""ModelSamplingDiscrete's x0 and lcm kinds, against diffusers 0.42's schedulers.

x0 (diffusers' prediction_type "sample"): the network's output is the clean latent itself; Euler on it equals
EulerDiscreteScheduler(prediction_type="sample").

lcm (Luo et al. 2023): the output is read through the consistency boundary condition
c_skip(t) x_t + c_out(t) x0_eps with sigma_data 0.5 and timestep scaling 10, on the 50-timestep distilled grid.
Checked against LCMScheduler: its scalings, its timesteps (the ``simple`` scheduler on the distilled grid), whole
runs of the ``lcm`` sampler with the same step noise on an analytic model, and a KSampler run of the tiny SD1 UNet
(an LCM-LoRA style graph, CFG 1) step for step against LCMScheduler driving the same UNet.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_close_to_scale, make_engine, tiny_file, tiny_lora_layers, write_lora

from nodes.library.model_patches import ModelSamplingDiscrete
from nodes.sampling import SAMPLERS, SCHEDULERS, ModelSampling
from nodes.sampling.lcm_sampling import LCMModelSampling
from nodes.testing.analytic import GaussianDenoiser

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
DATA = GaussianDenoiser(0.3, 0.9)
REPO = Path(__file__).resolve().parents[1]


def _eps_net(ms_full: ModelSampling):
    """An epsilon "network" of (VP input, integer training timestep): the exact Gaussian-data denoiser's noise."""
    def net(x_vp: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1)[:1].long()
        sigma = ms_full.sigmas.double()[t]
        x = x_vp.double() * (1 + sigma**2) ** 0.5
        return ((x - DATA(x, sigma)) / sigma).float()
    return net


def _denoiser(ms, net):
    def denoise(x, sigma, **extra):
        t = ms.network_timestep(sigma)
        return ms.calculate_denoised(sigma, net(ms.calculate_input(sigma, x), t), x)
    return denoise


# -- x0 ------------------------------------------------------------------------------------------------------------

def test_x0_reads_the_output_as_the_clean_latent_like_diffusers_sample_prediction():
    ms = ModelSampling(prediction_type="sample")
    steps = 10
    sch = diffusers.EulerDiscreteScheduler(**SD, prediction_type="sample", timestep_spacing="linspace")
    sch.set_timesteps(steps)
    sigmas = SCHEDULERS["normal"](ms, steps)
    x0 = DATA.sample_x_at(float(sigmas[0]), (1, 4, 8, 8), generator=torch.Generator().manual_seed(1),
                          dtype=torch.float32)
    ours = SAMPLERS["euler"](lambda x, s, **kw: ms.calculate_denoised(s, DATA(x.double(), s.double()).float(), x),
                             x0.clone(), sigmas)
    theirs = x0.clone()
    for t in sch.timesteps:
        sch.scale_model_input(theirs, t)
        sigma = sch.sigmas[sch.step_index]
        theirs = sch.step(DATA(theirs.double(), sigma.double().reshape(1)).float(), t, theirs).prev_sample
    assert (ours - theirs).abs().max().item() < 1e-4


# -- lcm -----------------------------------------------------------------------------------------------------------

def test_lcm_boundary_scalings_match_lcm_scheduler():
    from nodes.sampling.lcm_sampling import boundary_scalings

    sch = diffusers.LCMScheduler(**SD)
    for t in (0, 1, 19, 259, 999):
        want = sch.get_scalings_for_boundary_condition_discrete(t)
        got = boundary_scalings(torch.tensor(float(t), dtype=torch.float64))
        assert abs(float(got[0]) - want[0]) < 1e-12 and abs(float(got[1]) - want[1]) < 1e-12
    c_skip, c_out = boundary_scalings(torch.tensor(0.0))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0  # f(x, 0) = x


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_grid_and_simple_scheduler_give_lcm_scheduler_timesteps(steps):
    ms = LCMModelSampling(ModelSampling())
    assert ms.num_timesteps == 50 and ms.train_timesteps[0] == 19 and ms.train_timesteps[-1] == 999
    full = ModelSampling()
    assert torch.equal(ms.sigmas, full.sigmas[ms.train_timesteps])
    sch = diffusers.LCMScheduler(**SD)
    sch.set_timesteps(steps)
    sigmas = SCHEDULERS["simple"](ms, steps)
    assert ms.network_timestep(sigmas[:-1]).long().tolist() == sch.timesteps.tolist()


@pytest.mark.parametrize("steps", [2, 4])
def test_lcm_sampler_matches_lcm_scheduler_with_the_same_noise(steps):
    full = ModelSampling()
    ms = LCMModelSampling(full)
    net = _eps_net(full)
    sch = diffusers.LCMScheduler(**SD)
    sch.set_timesteps(steps)
    sigmas = SCHEDULERS["simple"](ms, steps)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = ms.noise_scaling(sigmas[0], start, torch.zeros_like(start), max_denoise=True)
    ours = SAMPLERS["lcm"](_denoiser(ms, net), x, sigmas,
                           noise_sampler=lambda s, sn: torch.randn(x.shape, generator=g_ours))
    latents = start * sch.init_noise_sigma
    for t in sch.timesteps:
        latents, denoised = sch.step(net(latents, t), t, latents, generator=g_theirs, return_dict=False)
    assert_close_to_scale(ours, denoised, rel=1e-5)


def test_lcm_kind_through_ksampler_matches_lcm_scheduler_on_the_tiny_unet():
    from nodes.library.conditioning import CLIPTextEncode
    from nodes.library.sampling import KSampler
    from nodes.memory.manager import ModelManager
    from nodes.sampling import initial_noise

    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    model = ModelSamplingDiscrete().run(None, bundle.model, "lcm", False)[0]
    assert isinstance(model.model_sampling, LCMModelSampling)
    assert not isinstance(bundle.model.model_sampling, LCMModelSampling)  # the input MODEL keeps its schedule
    cond = CLIPTextEncode().run(FakeContext(), "a cat", bundle.clip)[0]
    seed, steps = 5, 4
    out = KSampler().run(FakeContext(), model, seed, steps, 1.0, "lcm", "simple", cond, cond,
                         {"samples": torch.zeros(1, 4, 8, 8)}, 1.0)[0]["samples"]

    unet = bundle.model.unet.module
    sch = diffusers.LCMScheduler(**SD)
    sch.set_timesteps(steps)
    latents = initial_noise((1, 4, 8, 8), seed)
    g = torch.Generator().manual_seed(seed + 1)  # KSampler's step noise on the CPU (nodes.sampling.noise)
    emb = cond[0][0].to(unet.dtype)
    with torch.no_grad():
        for t in sch.timesteps:
            eps = unet(latents, t, encoder_hidden_states=emb).sample
            latents, denoised = sch.step(eps, t, latents, generator=g, return_dict=False)
    assert_close_to_scale(model.latent_format.process_in(out), denoised)


def test_lcm_differs_from_plain_eps_and_zsnr_lcm_keeps_the_grid():
    base = ModelSampling()
    lcm = ModelSamplingDiscrete().run(None, _Model(base), "lcm", False)[0].model_sampling
    z = ModelSamplingDiscrete().run(None, _Model(base), "lcm", True)[0].model_sampling
    assert z.zero_terminal_snr and z.num_timesteps == 50
    assert float(z.sigmas[-1]) > 1000 > float(lcm.sigmas[-1])  # the rescaled last timestep
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64), torch.randn(3, 4, 2, 2, generator=g,
                                                                                    dtype=torch.float64)
    i = torch.tensor([0, 10, 49])
    s = lcm.sigmas[i].double()
    st = (20 * i + 19).double().reshape(-1, 1, 1, 1) * 10  # the training timestep, scaled
    sv = s.reshape(-1, 1, 1, 1)
    want = 0.25 / (st**2 + 0.25) * x / (1 + sv**2) ** 0.5 + st / (st**2 + 0.25) ** 0.5 * (x - sv * out)
    got = lcm.calculate_denoised(s, out, x)
    assert (got - want).abs().max().item() < 1e-12
    assert (got - base.calculate_denoised(s, out, x)).abs()[0].max().item() > 1e-6  # c_skip at t=19: 6.9e-6
    again = ModelSamplingDiscrete().run(None, _Model(lcm), "eps", False)[0].model_sampling  # back to eps: full grid
    assert again.num_timesteps == 1000 and not isinstance(again, LCMModelSampling)


class _Model:
    """A MODEL stand-in carrying only a schedule (ModelSamplingDiscrete reads and replaces nothing else)."""

    def __init__(self, ms):
        self.model_sampling = ms

    def clone(self):
        return _Model(self.model_sampling)


# -- the LCM-LoRA workflow ---------------------------------------------------------------------------------------

def test_lcm_lora_workflow_validates_and_runs_on_the_tiny_model(tmp_path):
    root = tmp_path
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), root / "models" / "checkpoints" / "chisel-demo-v1.safetensors")
    wf = json.loads((REPO / "workflows" / "lcm_lora.json").read_text())
    lora_name = next(n["inputs"]["lora_name"] for n in wf["nodes"].values() if n["type"] == "LoraLoader")
    write_lora(root / "models" / "loras" / lora_name, "sd1", tiny_lora_layers("sd1", seed=5), "peft")
    types = {n["type"]: n["inputs"] for n in wf["nodes"].values()}
    assert types["ModelSamplingDiscrete"]["sampling"] == "lcm" and types["KSampler"]["sampler_name"] == "lcm"
    eng, services = make_engine(root)
    plan, errors = eng.validate(wf)
    assert errors == [] and plan is not None, [e.message for e in errors]
    res = eng.run(wf)
    assert res.status == "success", [e.message for e in res.errors]
    [item] = next(iter(res.outputs.values()))["images"]
    assert (services.paths.dir("output") / item["subfolder"] / item["filename"]).is_file()


def test_lcm_percentages_and_sd_turbo_timesteps_speak_training_timesteps():
    from nodes.sampling.schedulers import sd_turbo_sigmas

    full, lcm = ModelSampling(), LCMModelSampling(ModelSampling())
    assert lcm.train_steps == 1000 and lcm.num_timesteps == 50
    for t in (19, 259, 999):  # grid points: their own training sigma
        assert lcm.training_sigma(t) == pytest.approx(float(full.sigmas[t]), rel=1e-6)
    assert lcm.training_sigma(0) == pytest.approx(float(full.sigmas[19]), rel=1e-6)  # below the grid: its first point
    # half way through sampling is training timestep 499.5 on either schedule: just past grid point 24 (timestep 499)
    assert lcm.percent_to_sigma(0.5) == pytest.approx(lcm.training_sigma(499.5), rel=1e-9)
    assert float(lcm.sigmas[24]) < lcm.percent_to_sigma(0.5) < float(lcm.sigmas[25])
    assert lcm.percent_to_sigma(0.0) > lcm.sigma_max and lcm.percent_to_sigma(1.0) == 0.0
    turbo = sd_turbo_sigmas(lcm, 4)  # timesteps 999, 899, 799, 699 on the grid (899 = grid point 44)
    assert turbo[0] == pytest.approx(float(full.sigmas[999]), rel=1e-6)
    assert turbo[1] == pytest.approx(float(full.sigmas[899]), rel=1e-6) and turbo[-1] == 0.0
    assert torch.equal(sd_turbo_sigmas(full, 4)[:-1], full.sigmas[[999, 899, 799, 699]])

"""Guidance patches (RescaleCFG, PerpNeg) and ConditioningSetTimestepRange against formulas written out here;
SelfAttentionGuidance against diffusers' StableDiffusionSAGPipeline.

The references do not use Chisel's guidance code: they call the diffusers UNet the tiny checkpoint was written from
(eps prediction, k-diffusion's sigma space: D(x) = x - sigma * eps(x / sqrt(1 + sigma^2), t)) in float64 and combine
the predictions by the published rules. The tiny UNet runs in float32 on both sides, batched differently, so the
comparisons allow assert_close_to_scale's 1e-4 of the magnitudes; each test has a control that moves the result far
beyond that.
"""
from __future__ import annotations

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import assert_close_to_scale, tiny_file, tiny_model

from nodes.library.conditioning import CLIPTextEncode, ConditioningCombine, ConditioningSetTimestepRange
from nodes.library.model_patches import PerpNeg, RescaleCFG, SelfAttentionGuidance
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.sampling.guidance import Guider

H = W = 8  # latent cells
T = 500  # a training timestep: the UNet sees exactly this timestep at the schedule's own sigma


@pytest.fixture(scope="module")
def sd1():
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    enc = CLIPTextEncode()
    texts = {name: enc.run(None, text=text, clip=bundle.clip)[0]
             for name, text in (("pos", "a red circle"), ("neg", "blurry"), ("empty", ""), ("other", "a blue sky"))}
    return bundle, texts


def _sigma(model, t: int = T) -> float:
    return float(model.model_sampling.sigmas[t])


def _by_hand(sigma: float, t: int = T):
    """D(x, conditioning) in float64 from the source UNet."""
    unet = tiny_model("sd1").unet.float()

    def denoised(x: torch.Tensor, cond) -> torch.Tensor:
        with torch.no_grad():
            eps = unet((x / (sigma ** 2 + 1) ** 0.5).float(), torch.tensor([float(t)]),
                       encoder_hidden_states=cond[0][0].float()).sample
        return x.double() - sigma * eps.double()

    return denoised


def _x(seed: int, sigma: float) -> torch.Tensor:
    return torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(seed)) * sigma


def _guided(model, pos, neg, cfg, x, sigma):
    den = Guider.cfg(model, pos, neg, cfg).denoiser(torch.zeros(1, 4, H, W), None, None, (H * 8, W * 8))
    with torch.inference_mode():
        return den(x, torch.tensor([sigma], dtype=torch.float32)).double()


def _sample(model, pos, neg, cfg=6.0, steps=4):
    return KSampler().run(None, model=model, seed=5, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                          positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, 4, H, W)},
                          denoise=1.0)[0]["samples"]


# -- RescaleCFG --------------------------------------------------------------------------------------------------

def _rescale_reference(d_pos, d_neg, x, sigma, w, phi):
    """Lin et al. 2023 eqs. 14-17 on the velocity predictions: v = alpha eps - s x0 with alpha = 1/sqrt(1+sigma^2),
    s = sigma alpha (x_t = alpha x0 + s eps = alpha x); back to x0 by x0 = alpha x_t - s v."""
    alpha = 1.0 / (1.0 + sigma ** 2) ** 0.5
    s = sigma * alpha
    x = x.double()

    def v_of(d):
        eps = (x - d) / sigma
        return alpha * eps - s * d

    v_pos, v_neg = v_of(d_pos), v_of(d_neg)
    v_cfg = v_neg + w * (v_pos - v_neg)
    v_resc = v_cfg * v_pos.std() / v_cfg.std()  # one image: std over channels and pixels
    v_final = phi * v_resc + (1 - phi) * v_cfg
    return alpha * (alpha * x) - s * v_final


def test_rescale_cfg_follows_lin_et_al_on_the_velocity(sd1):
    bundle, c = sd1
    sigma, cfg, phi = _sigma(bundle.model), 9.0, 0.7
    x = _x(1, sigma)
    patched = RescaleCFG().run(None, model=bundle.model, multiplier=phi)[0]
    assert "RescaleCFG" in repr(patched) and "RescaleCFG" not in repr(bundle.model)
    got = _guided(patched, c["pos"], c["neg"], cfg, x, sigma)

    denoised = _by_hand(sigma)
    d_pos, d_neg = denoised(x, c["pos"]), denoised(x, c["neg"])
    expected = _rescale_reference(d_pos, d_neg, x, sigma, cfg, phi)
    assert_close_to_scale(got, expected)
    scale = expected.abs().max().item()
    plain = d_neg + cfg * (d_pos - d_neg)
    # controls: plain CFG, and the rescale applied to the x0 or eps predictions instead of v, lie far (>= 10x)
    # outside the tolerance
    x0_space = plain * (phi * d_pos.std() / plain.std() + 1 - phi)
    e_pos, e_plain = (x.double() - d_pos) / sigma, (x.double() - plain) / sigma
    eps_space = x.double() - sigma * e_plain * (phi * e_pos.std() / e_plain.std() + 1 - phi)
    for name, wrong in (("plain cfg", plain), ("rescaled on x0", x0_space), ("rescaled on eps", eps_space)):
        assert (got - wrong).abs().max().item() > 1e-3 * scale, name


def test_rescale_cfg_multiplier_zero_is_plain_cfg(sd1):
    bundle, c = sd1
    base = _sample(bundle.model, c["pos"], c["neg"])
    zero = RescaleCFG().run(None, model=bundle.model, multiplier=0.0)[0]
    assert_close_to_scale(_sample(zero, c["pos"], c["neg"]), base)
    strong = RescaleCFG().run(None, model=bundle.model, multiplier=1.0)[0]
    assert (_sample(strong, c["pos"], c["neg"]) - base).abs().max() > 1e-2
    assert torch.equal(_sample(bundle.model, c["pos"], c["neg"]), base)  # the unpatched MODEL is unchanged


# -- ConditioningSetTimestepRange -------------------------------------------------------------------------------

def _ranged(cond, start, end):
    return ConditioningSetTimestepRange().run(None, conditioning=cond, start=start, end=end)[0]


@pytest.mark.parametrize("t", [900, 520, 480, 100])
def test_timestep_ranges_pick_the_entries_in_range(sd1, t):
    """positive = A on [0, 0.5] combined with B on [0.5, 1]: early in sampling (high sigma, t > 500) it is A alone,
    late it is B alone. Percent p maps to sigma at timestep (1 - p) * 999 of the model's schedule."""
    bundle, c = sd1
    ms = bundle.model.model_sampling
    combined = ConditioningCombine().run(None, conditioning_1=_ranged(c["pos"], 0.0, 0.5),
                                         conditioning_2=_ranged(c["other"], 0.5, 1.0))[0]
    sigma, cfg = _sigma(bundle.model, t), 5.0
    boundary = float(ms.sigma(torch.tensor(0.5 * 999, dtype=torch.float64)))
    assert (sigma > boundary) == (t > 500)
    x = _x(2, sigma)
    got = _guided(bundle.model, combined, c["neg"], cfg, x, sigma)

    denoised = _by_hand(sigma, t)
    d_neg = denoised(x, c["neg"])
    chosen, left_out = (c["pos"], c["other"]) if t > 500 else (c["other"], c["pos"])
    expected = d_neg + cfg * (denoised(x, chosen) - d_neg)
    assert_close_to_scale(got, expected)
    # control: the entry out of range would move the result far outside the tolerance
    both = d_neg + cfg * ((denoised(x, chosen) + denoised(x, left_out)) / 2 - d_neg)
    wrong = d_neg + cfg * (denoised(x, left_out) - d_neg)
    for other in (both, wrong):
        assert (got - other).abs().max().item() > 1e-2 * expected.abs().max().item()


def test_ranges_that_cover_the_schedule_sample_like_switching_prompts(sd1):
    """A range over the whole schedule is the plain conditioning; a negative limited in time is fine where the
    positive covers every step."""
    bundle, c = sd1
    base = _sample(bundle.model, c["pos"], c["neg"])
    assert torch.equal(_sample(bundle.model, _ranged(c["pos"], 0.0, 1.0), c["neg"]), base)
    halves = ConditioningCombine().run(None, conditioning_1=_ranged(c["pos"], 0.0, 0.5),
                                       conditioning_2=_ranged(c["other"], 0.5, 1.0))[0]
    switched = _sample(bundle.model, halves, c["neg"])
    assert (switched - base).abs().max() > 1e-2


def test_two_ranged_prompts_sample_like_two_ksampler_advanced_passes(sd1):
    """A on [0, p] combined with B on [p, 1], p between the 2nd and 3rd of 4 Euler steps, equals steps 0-2 with A
    (leftover noise kept) then steps 2-4 with B (no noise added)."""
    from nodes.library.sampling import KSamplerAdvanced
    from nodes.sampling import calculate_sigmas

    bundle, c = sd1
    ms = bundle.model.model_sampling
    sig = calculate_sigmas(ms, "normal", 4)
    between = (float(sig[1]) * float(sig[2])) ** 0.5
    p = 1.0 - float(ms.timestep(torch.tensor([between], dtype=torch.float64))[0]) / 999
    assert float(sig[2]) < ms.percent_to_sigma(p) < float(sig[1])
    combined = ConditioningCombine().run(None, conditioning_1=_ranged(c["pos"], 0.0, p),
                                         conditioning_2=_ranged(c["other"], p, 1.0))[0]
    ranged = _sample(bundle.model, combined, c["neg"])
    lat = {"samples": torch.zeros(1, 4, H, W)}
    adv = KSamplerAdvanced()
    first = adv.run(None, bundle.model, "enable", 5, 4, 6.0, "euler", "normal", c["pos"], c["neg"], lat, 0, 2,
                    "enable")[0]
    both = adv.run(None, bundle.model, "disable", 5, 4, 6.0, "euler", "normal", c["other"], c["neg"], first, 2, 4,
                   "disable")[0]["samples"]
    assert_close_to_scale(ranged, both)
    # controls: either prompt all the way lies well outside the tolerance (>= 5x; late steps move this tiny
    # model's large latents little)
    for prompt in ("pos", "other"):
        assert (ranged - _sample(bundle.model, c[prompt], c["neg"])).abs().max() > 5e-4 * ranged.abs().max(), prompt


def test_a_conditioning_without_an_entry_in_range_is_refused_before_sampling(sd1):
    bundle, c = sd1
    calls = []
    unet = bundle.model.unet.module
    handle = unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"positive conditioning .*ConditioningSetTimestepRange.*0\.3"):
            _sample(bundle.model, _ranged(c["pos"], 0.0, 0.3), c["neg"])
        with pytest.raises(ValueError, match=r"negative conditioning .*ConditioningSetTimestepRange"):
            gap = ConditioningCombine().run(None, conditioning_1=_ranged(c["neg"], 0.0, 0.4),
                                            conditioning_2=_ranged(c["neg"], 0.6, 1.0))[0]
            _sample(bundle.model, c["pos"], gap)
    finally:
        handle.remove()
    assert not calls  # nothing ran
    with pytest.raises(ValueError, match="'start'.*after.*'end'"):
        _ranged(c["pos"], 0.7, 0.2)


# -- PerpNeg ----------------------------------------------------------------------------------------------------

def test_perp_neg_subtracts_the_negative_perpendicular_to_the_positive(sd1):
    """Armandpour et al. 2023 on the noise predictions: e_pos, e_neg relative to the empty prompt's e_0; the
    negative's component perpendicular to the positive's is subtracted: e = e_0 + w (d_pos - k d_neg_perp)."""
    bundle, c = sd1
    sigma, cfg, k = _sigma(bundle.model), 6.0, 1.5
    x = _x(3, sigma)
    patched = PerpNeg().run(None, model=bundle.model, empty_conditioning=c["empty"], neg_scale=k)[0]
    got = _guided(patched, c["pos"], c["neg"], cfg, x, sigma)

    denoised = _by_hand(sigma)
    xd = x.double()
    e_pos, e_neg, e_0 = ((xd - denoised(x, c[name])) / sigma for name in ("pos", "neg", "empty"))
    d_pos, d_neg = (e_pos - e_0).flatten(), (e_neg - e_0).flatten()
    d_perp = d_neg - torch.dot(d_neg, d_pos) / torch.dot(d_pos, d_pos) * d_pos
    assert abs(torch.dot(d_perp, d_pos).item()) < 1e-9 * d_pos.norm().item() * d_neg.norm().item()
    eps = e_0 + cfg * (d_pos - k * d_perp).reshape(e_0.shape)
    expected = xd - sigma * eps
    assert_close_to_scale(got, expected)
    # controls: plain CFG against the negative, and subtracting the whole negative direction, are far off
    plain = xd - sigma * (e_neg + cfg * (e_pos - e_neg))
    whole = xd - sigma * (e_0 + cfg * (d_pos - k * d_neg).reshape(e_0.shape))
    for name, wrong in (("plain cfg", plain), ("whole negative", whole)):
        assert (got - wrong).abs().max().item() > 1e-3 * expected.abs().max().item(), name


def test_perp_neg_with_neg_scale_zero_is_cfg_against_the_empty_prompt(sd1):
    bundle, c = sd1
    patched = PerpNeg().run(None, model=bundle.model, empty_conditioning=c["empty"], neg_scale=0.0)[0]
    assert_close_to_scale(_sample(patched, c["pos"], c["neg"]), _sample(bundle.model, c["pos"], c["empty"]))
    assert "PerpNeg" in repr(patched) and "PerpNeg" not in repr(bundle.model)


def test_guidance_patches_are_refused_by_guiders_without_cfg(sd1):
    bundle, c = sd1
    patched = RescaleCFG().run(None, model=bundle.model, multiplier=0.7)[0]
    with pytest.raises(ValueError, match="RescaleCFG.*basic guider.*KSampler or CFGGuider"):
        Guider.basic(patched, c["pos"]).denoiser(torch.zeros(1, 4, H, W), None, None, (H * 8, W * 8))


# -- SelfAttentionGuidance --------------------------------------------------------------------------------------

def _sag_pipeline():
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_sag.pipeline_stable_diffusion_sag import (
        StableDiffusionSAGPipeline,
    )
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template
    from nodes.testing import tiny

    src = tiny.build("sd1")  # its own copy: the pipeline swaps attention processors while it runs
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    # DDIM with eta 0 is Euler in sigma space; alpha 1 at the end makes the last step land on the x0 prediction
    scheduler = DDIMScheduler.from_config({**template("sd15", "scheduler"), "set_alpha_to_one": True})
    pipe = StableDiffusionSAGPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
                                      scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_self_attention_guidance_matches_diffusers_sag_pipeline(sd1):
    """Same tiny SD1 weights, text embeddings and starting noise; DDIM (eta 0) in diffusers and Euler over the same
    timesteps' sigmas in Chisel; CFG 5, SAG scale 0.75 with diffusers' fixed blur (9 taps, std 1). All float32 and
    the same diffusers modules on both sides: they differ only by float32 rounding in another order; without SAG
    the latent moves far more than the 1e-4 bound."""
    from nodes.patches.self_attention_guidance import SelfAttentionGuidancePatch
    from nodes.sampling import get_sampler
    from nodes.sampling.sample import sample_custom

    bundle, c = sd1
    steps, cfg, sag, h = 6, 5.0, 0.75, 16
    pipe = _sag_pipeline()
    pipe.scheduler.set_timesteps(steps)
    ms = bundle.model.model_sampling
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    sigmas = torch.tensor([float(ms.sigmas[t]) for t in timesteps] + [0.0])
    noise = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(7))

    def chisel(model):
        guider = Guider.cfg(model, c["pos"], c["neg"], cfg)
        out = sample_custom(guider, get_sampler("euler"), sigmas, {"samples": torch.zeros(1, 4, h, h)}, noise, 0)[0]
        return bundle.model.latent_format.process_in(out["samples"])

    patch = SelfAttentionGuidancePatch(sag, 1.0, kernel_size=9)
    ours = chisel(bundle.model.with_lora([("unet", patch)]).with_guidance(patch))
    s0 = float(sigmas[0])
    ref = pipe(prompt_embeds=c["pos"][0][0].float(), negative_prompt_embeds=c["neg"][0][0].float(), height=h * 8,
               width=h * 8, num_inference_steps=steps, guidance_scale=cfg, sag_scale=sag,
               latents=noise * s0 / (1 + s0 ** 2) ** 0.5, output_type="latent").images
    assert_close_to_scale(ours, ref)
    plain = chisel(bundle.model)
    assert (plain - ref).abs().max() > 1e-2 * ref.abs().max()


def test_self_attention_guidance_node_blurs_by_its_sigma_and_leaves_the_model_alone(sd1):
    from nodes.patches.self_attention_guidance import kernel_size_for

    assert [kernel_size_for(s) for s in (0.5, 1.0, 2.0, 2.1)] == [3, 7, 13, 13]
    bundle, c = sd1
    base = _sample(bundle.model, c["pos"], c["neg"])
    patched = SelfAttentionGuidance().run(None, model=bundle.model, scale=0.5, blur_sigma=1.0)[0]
    assert (_sample(patched, c["pos"], c["neg"]) - base).abs().max() > 1e-3
    zero = SelfAttentionGuidance().run(None, model=bundle.model, scale=0.0, blur_sigma=1.0)[0]
    assert_close_to_scale(_sample(zero, c["pos"], c["neg"]), base)
    attn = bundle.model.unet.module.mid_block.attentions[0].transformer_blocks[0].attn1
    assert type(attn.processor).__name__ != "AttentionMapCapture"  # detached after sampling
    assert torch.equal(_sample(bundle.model, c["pos"], c["neg"]), base)
    wide = SelfAttentionGuidance().run(None, model=bundle.model, scale=0.5, blur_sigma=3.0)[0]
    with pytest.raises(ValueError, match="'blur_sigma' 3 blurs over 19 latent cells.*8x8"):
        _sample(wide, c["pos"], c["neg"])


# -- in a workflow: cache keys and errors -----------------------------------------------------------------------

def _patched_workflow(multiplier=0.7, start=0.5, sag=0.5):
    link = lambda node, out=0: {"node": node, "output": out}  # noqa: E731
    nodes = {
        "1": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"type": "RescaleCFG", "inputs": {"model": link("1"), "multiplier": multiplier}},
        "3": {"type": "SelfAttentionGuidance", "inputs": {"model": link("2"), "scale": sag, "blur_sigma": 1.0}},
        "4": {"type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": link("1", 1)}},
        "5": {"type": "CLIPTextEncode", "inputs": {"text": "a blue sky", "clip": link("1", 1)}},
        "6": {"type": "CLIPTextEncode", "inputs": {"text": "", "clip": link("1", 1)}},
        "7": {"type": "ConditioningSetTimestepRange", "inputs": {"conditioning": link("4"), "start": 0.0,
                                                                 "end": 0.5}},
        "8": {"type": "ConditioningSetTimestepRange", "inputs": {"conditioning": link("5"), "start": start,
                                                                 "end": 1.0}},
        "9": {"type": "ConditioningCombine", "inputs": {"conditioning_1": link("7"), "conditioning_2": link("8")}},
        "10": {"type": "PerpNeg", "inputs": {"model": link("3"), "empty_conditioning": link("6"), "neg_scale": 1.0}},
        "11": {"type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "12": {"type": "KSampler", "inputs": {"model": link("10"), "seed": 3, "steps": 3, "cfg": 5.0,
                                              "sampler_name": "euler", "scheduler": "normal", "positive": link("9"),
                                              "negative": link("6"), "latent_image": link("11"), "denoise": 1.0}},
    }
    return {"format": "chisel-workflow", "version": 1, "nodes": nodes, "outputs": ["12"]}


def test_patched_models_enter_the_cache_key_and_bad_ranges_are_structured_errors(tmp_path):
    import shutil

    from sd_fixtures import make_engine

    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True)
    shutil.copy(tiny_file("sd1", "fp32"), ck / "tiny.safetensors")
    eng = make_engine(tmp_path)[0]
    first = eng.run(_patched_workflow(), outputs=["12"])
    assert first.status == "success", [e.message for e in first.errors]
    again = eng.run(_patched_workflow(0.3), outputs=["12"])
    assert again.status == "success"
    assert set(again.executed) == {"2", "3", "10", "12"} and "1" in again.cached and "9" in again.cached
    # PerpNeg, applied after RescaleCFG, replaces its combination (ComfyUI's rule): the multiplier changes nothing
    assert torch.equal(again.values["12"][0]["samples"], first.values["12"][0]["samples"])
    other = eng.run(_patched_workflow(0.3, sag=1.5), outputs=["12"])
    assert set(other.executed) == {"3", "10", "12"}
    assert not torch.equal(other.values["12"][0]["samples"], first.values["12"][0]["samples"])

    wf = _patched_workflow(multiplier=0.3)
    wf["nodes"]["7"]["inputs"]["start"] = 0.7  # after its end (0.5)
    bad = eng.run(wf, outputs=["12"])
    assert bad.status == "error"
    (err,) = [e for e in bad.errors if e.node_id == "7"]
    assert "'start'" in err.message and err.node_type == "ConditioningSetTimestepRange"
    gap = _patched_workflow(multiplier=0.3)
    gap["nodes"]["8"]["inputs"]["start"] = 0.6  # 0.5 .. 0.6 has no positive entry
    res = eng.run(gap, outputs=["12"])
    (err,) = res.errors
    assert err.node_id == "12" and "positive conditioning" in err.message and "0.500 to 0.600" in err.message

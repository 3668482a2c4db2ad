"""T2I-Adapters through the ControlNet nodes: every published layout (TencentARC's original full and light files,
as safetensors or a pickle; diffusers' file and folder; SDXL) loads to the same network; the adapter's features meet
the UNet's levels for real-sized SD1.x, SD2.x and SDXL models and an adapter of the other family is refused; sampling
with one (and with two chained) matches diffusers' StableDiffusionAdapterPipeline on the same tiny weights; strength,
the step range and chaining with a ControlNet do what they say; the shipped workflow runs; bad input fails with a clear
error before any step."""
from __future__ import annotations

import dataclasses
import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import make_engine, tiny_file, tiny_model

from nodes.controlnet import handle
from nodes.controlnet.load import load_controlnet
from nodes.library.conditioning import CLIPTextEncode
from nodes.library.controlnet import ControlNetApply, ControlNetApplyAdvanced
from nodes.library.latent import EmptyLatentImage, VAEDecode
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.testing import controlnet as tcn
from nodes.testing import t2i_adapter as tad

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("original", "original-pth", "diffusers", "folder")
SUFFIX = {"original": ".safetensors", "original-pth": ".pth", "diffusers": ".safetensors", "folder": ""}
INTRA = "down_intrablock_additional_residuals"


@lru_cache(maxsize=None)
def tiny_adapter(name: str, seed: int = 0):
    return tad.build(name, seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    out = {}
    for name in tad.ADAPTERS:
        for layout in LAYOUTS:
            out[(name, layout)] = tad.write(d / f"{name}-{layout}{SUFFIX[layout]}", tiny_adapter(name), layout)
    out["sd1-second"] = tad.write(d / "second.safetensors", tiny_adapter("sd1", 1), "diffusers")
    out["controlnet"] = tcn.write(d / "cn.safetensors", tcn.build(tiny_model("sd1").unet), "ldm")
    return out


def _hint(seed=0, size=64, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, size, size, 3, generator=g)


# -- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(tad.ADAPTERS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_same_adapter(files, name, layout):
    src = tiny_adapter(name)
    got = load_controlnet(files[(name, layout)])
    assert got.kind == "t2i_adapter" and got.family == ("sdxl" if name.startswith("sdxl") else "sd1")
    assert got.config["adapter_type"] == src.config.adapter_type
    x = torch.rand(2, src.config.in_channels, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for a, b in zip(src(x), got.module(x), strict=True):
            assert torch.equal(a, b)


def test_adapter_variants_diffusers_cannot_run_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    from nodes.loading.errors import UnrecognisedArchitecture

    state = tad.to_original(tiny_adapter("sd1"))
    save_file({**state, "body.0.skep.weight": torch.zeros(32, 32, 1, 1)}, str(tmp_path / "sk.safetensors"))
    with pytest.raises(UnrecognisedArchitecture, match=r"skip convolutions \(skep\)"):
        load_controlnet(tmp_path / "sk.safetensors")
    state["conv_in.weight"] = torch.zeros(32, 100, 3, 3)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(UnrecognisedArchitecture, match="takes 100 channels"):
        load_controlnet(tmp_path / "odd.safetensors")


# -- fit to real-sized UNets ----------------------------------------------------------------------------------------

PUBLISHED = {  # the published adapters' diffusers configs (TencentARC's SD1.4 full and light adapters; SDXL)
    "full": dict(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                 adapter_type="full_adapter"),
    "light": dict(in_channels=3, channels=[320, 640, 1280], num_res_blocks=4, downscale_factor=8,
                  adapter_type="light_adapter"),
    "xl": dict(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
               adapter_type="full_adapter_xl"),
}


@pytest.mark.parametrize("adapter,model,fits", [("full", "sd15", True), ("light", "sd15", True), ("full", "sd2", True),
                                                ("xl", "sdxl", True), ("xl", "sd15", False), ("full", "sdxl", False),
                                                ("light", "sdxl", False)])
def test_published_adapters_fit_their_models_and_no_other(adapter, model, fits):
    """Real-sized adapters (built without weights) against the real UNet configs: the SDXL adapter's fourth
    feature goes after the middle block."""
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    from nodes.controlnet.t2i_apply import adapter_layout, check_fits
    from nodes.loading.configs import template

    with init_empty_weights():
        module = T2IAdapter(**PUBLISHED[adapter])
    cfg = template(model, "unet")
    ctl = handle.ControlNetHandle(None, dataclasses.make_dataclass("M", ["module"])(module), PUBLISHED[adapter],
                                  "sdxl" if adapter == "xl" else "sd1", f"{adapter}.safetensors", "t2i-adapter",
                                  kind="t2i_adapter")
    fam = {"sd15": "sd1", "sd2": "sd2", "sdxl": "sdxl"}[model]
    mdl = dataclasses.make_dataclass("Model", ["config", "family", "source"])(cfg, fam, "model.safetensors")
    if fits:
        check_fits(ctl, mdl, "positive")
        assert len(adapter_layout(module)) == 4
    else:
        with pytest.raises(ValueError, match=r"positive: the T2I-Adapter .* does not fit this .* model"):
            check_fits(ctl, mdl, "positive")


# -- parity with diffusers ----------------------------------------------------------------------------------------

def _pipeline(adapter):
    from diffusers import EulerDiscreteScheduler, StableDiffusionAdapterPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template

    src = tiny_model("sd1")
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    pipe = StableDiffusionAdapterPipeline(
        vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet, adapter=adapter,
        scheduler=EulerDiscreteScheduler.from_config(template("sd15", "scheduler")), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _conds(bundle, prompt):
    pos = CLIPTextEncode().run(None, text=prompt, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    return pos, neg


def _sample(bundle, pos, neg, seed, steps, cfg, size=64):
    lat = EmptyLatentImage().run(None, width=size, height=size, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    return VAEDecode().run(None, samples=out, vae=bundle.vae)[0].numpy()


def _chisel(bundle, controls, prompt, seed, steps, cfg, start=0.0, end=1.0, size=64):
    """controls: [(handle, hint IMAGE, strength)] applied in order with Apply ControlNet (Advanced)."""
    pos, neg = _conds(bundle, prompt)
    for cn, hint, strength in controls:
        pos, neg = ControlNetApplyAdvanced().run(None, positive=pos, negative=neg, control_net=cn, image=hint,
                                                 strength=strength, start_percent=start, end_percent=end, vae=None)
    return _sample(bundle, pos, neg, seed, steps, cfg, size)


def _reference(pipe, images, scales, bundle, seed, steps, cfg, prompt):
    from nodes.sampling import calculate_sigmas, initial_noise

    sigmas = calculate_sigmas(bundle.model.model_sampling, "normal", steps)
    start = initial_noise((1, 4, 8, 8), seed) * float((sigmas[0] ** 2 + 1) ** 0.5) / float(sigmas[0])
    image = [h.permute(0, 3, 1, 2) for h in images]
    return pipe(prompt=prompt, negative_prompt="", image=image if len(image) > 1 else image[0], height=64, width=64,
                guidance_scale=cfg, sigmas=sigmas.tolist(), latents=start, output_type="np",
                adapter_conditioning_scale=scales if len(scales) > 1 else scales[0]).images


def test_parity_with_diffusers_adapter_pipeline(files):
    """Same tiny SD1 weights and adapter (read back from an fp32 checkpoint and TencentARC's original layout as a
    pickle, like t2iadapter_depth_sd14v1.pth), same noise, Euler on the same sigmas, CFG 7.5, strength 0.8, the
    adapter on both passes (Apply ControlNet on positive and negative; diffusers adds it to the whole CFG batch).
    Both sides run the same diffusers modules in float32, so they differ only by rounding in another order (~2e-6
    measured). 4 steps: the 'normal' timesteps (999, 666, 333) are integers, so Chisel's rounded UNet timesteps
    (ComfyUI's) and diffusers' interpolated ones agree (at 6 steps they do not, and the images differ by ~1.6e-4
    with or without an adapter). Without the adapter, or with it on the positive pass only (what the old Apply
    ControlNet node gives, as in ComfyUI), the image moves by far more than the 1e-4 bound."""
    steps, cfg, seed, prompt = 4, 7.5, 99, "a red circle"
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1", "fp32"))
    ad = handle.load(mgr, files[("sd1", "original-pth")])
    hint = _hint()
    ours = _chisel(bundle, [(ad, hint, 0.8)], prompt, seed, steps, cfg)
    ref = _reference(_pipeline(tiny_adapter("sd1")), [hint], [0.8], bundle, seed, steps, cfg, prompt)
    diff = np.abs(ours - ref).max()
    print(f"T2I-Adapter parity: max |chisel - diffusers| = {diff:.2e}")
    assert diff <= 1e-4
    plain = _chisel(bundle, [], prompt, seed, steps, cfg)
    assert np.abs(plain - ref).max() > 1e-2
    pos, neg = _conds(bundle, prompt)
    pos = ControlNetApply().run(None, conditioning=pos, control_net=ad, image=hint, strength=0.8)[0]
    positive_only = _sample(bundle, pos, neg, seed, steps, cfg)
    assert np.abs(positive_only - ref).max() > 1e-2


def test_two_chained_adapters_match_diffusers_multiadapter(files):
    """Two Apply ControlNet nodes with adapters add their scaled features, as diffusers' MultiAdapter does. (4
    steps, so the 'normal' timesteps are integers: see the parity test above.)"""
    steps, cfg, seed, prompt = 4, 5.0, 5, "a blue square"
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1", "fp32"))
    a = handle.load(mgr, files[("sd1", "diffusers")])
    b = handle.load(mgr, files["sd1-second"])
    h1, h2 = _hint(1), _hint(2)
    ours = _chisel(bundle, [(a, h1, 0.7), (b, h2, 1.3)], prompt, seed, steps, cfg)
    ref = _reference(_pipeline([tiny_adapter("sd1"), tiny_adapter("sd1", 1)]), [h1, h2], [0.7, 1.3], bundle, seed,
                     steps, cfg, prompt)
    assert np.abs(ours - ref).max() <= 1e-4
    one = _chisel(bundle, [(a, h1, 0.7)], prompt, seed, steps, cfg)
    assert np.abs(one - ref).max() > 1e-2


def test_sdxl_adapter_parity_with_diffusers_sdxl_adapter_pipeline(files):
    """The SDXL adapter (hint unshuffled by 16; its first feature added after the first down block's downsampler)
    on the tiny SDXL model against StableDiffusionXLAdapterPipeline: same weights (an fp32 checkpoint; the adapter
    from diffusers' layout as one file, as the SDXL adapters are published), noise and Euler sigmas. A non-empty
    negative prompt, and the pipeline built without force_zeros_for_empty_prompt, so both sides encode the same
    texts; diffusers starts from latents times its init_noise_sigma, Chisel from noise times sqrt(1 + sigma_max²)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLAdapterPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template
    from nodes.sampling import calculate_sigmas, initial_noise

    steps, cfg, seed, prompt, negative = 4, 6.0, 21, "a red circle", "blurry"
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sdxl", "fp32"))
    ad = handle.load(mgr, files[("sdxl", "diffusers")])
    hint = _hint(3)
    pos0 = CLIPTextEncode().run(None, text=prompt, clip=bundle.clip)[0]
    neg0 = CLIPTextEncode().run(None, text=negative, clip=bundle.clip)[0]
    pos, neg = ControlNetApplyAdvanced().run(None, positive=pos0, negative=neg0, control_net=ad, image=hint,
                                             strength=0.9, start_percent=0.0, end_percent=1.0, vae=None)
    ours = _sample(bundle, pos, neg, seed, steps, cfg)
    src = tiny_model("sdxl")
    tok = str(CONFIG_ROOT / "clip_tokenizer")
    pipe = StableDiffusionXLAdapterPipeline(
        vae=src.vae, text_encoder=src.text_encoder, text_encoder_2=src.text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tok, model_max_length=77),
        tokenizer_2=CLIPTokenizer.from_pretrained(tok, model_max_length=77, pad_token="!"),
        unet=src.unet, adapter=tiny_adapter("sdxl"),
        scheduler=EulerDiscreteScheduler.from_config(template("sdxl", "scheduler")),
        force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    sigmas = calculate_sigmas(bundle.model.model_sampling, "normal", steps)
    pipe.scheduler.set_timesteps(sigmas=sigmas.tolist())
    start = initial_noise((1, 4, 8, 8), seed) * float((sigmas[0] ** 2 + 1) ** 0.5) / float(
        pipe.scheduler.init_noise_sigma)
    ref = pipe(prompt=prompt, negative_prompt=negative, image=hint.permute(0, 3, 1, 2), height=64, width=64,
               guidance_scale=cfg, sigmas=sigmas.tolist(), latents=start, output_type="np",
               adapter_conditioning_scale=0.9).images
    diff = np.abs(ours - ref).max()
    print(f"SDXL T2I-Adapter parity: max |chisel - diffusers| = {diff:.2e}")
    assert diff <= 1e-4
    plain = _sample(bundle, pos0, neg0, seed, steps, cfg)
    assert np.abs(plain - ref).max() > 1e-2


# -- strength, range, chaining, families ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(files):
    mgr = ModelManager("cpu")
    return mgr.load_checkpoint(tiny_file("sd1")), mgr


def _unet_calls(bundle):
    """A hook recording, for each UNet call, its sigma (from the timestep) and which control inputs it got."""
    seen = []
    ms = bundle.model.model_sampling

    def hook(mod, args, kwargs):
        seen.append((float(ms.sigma(args[1][0])), {k for k in (INTRA, "down_block_additional_residuals")
                                                      if kwargs.get(k) is not None}))

    return seen, bundle.model.unet.module.register_forward_pre_hook(hook, with_kwargs=True)


def test_strength_zero_is_no_adapter_and_the_range_picks_the_steps(sd1, files):
    from nodes.sampling import calculate_sigmas

    bundle, mgr = sd1
    ad = handle.load(mgr, files[("sd1", "original")])
    plain = _chisel(bundle, [], "a circle", 1, 4, 6.0)
    assert np.array_equal(_chisel(bundle, [(ad, _hint(), 0.0)], "a circle", 1, 4, 6.0), plain)
    ms = bundle.model.model_sampling
    sigmas = [float(s) for s in calculate_sigmas(ms, "normal", 4)[:-1]]
    seen, hook = _unet_calls(bundle)
    try:
        for start, end in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0)):
            seen.clear()
            out = _chisel(bundle, [(ad, _hint(), 1.0)], "a circle", 1, 4, 6.0, start=start, end=end)
            hi, lo = ms.percent_to_sigma(start), ms.percent_to_sigma(end)
            want = [s for s in sigmas if lo <= s <= hi]
            got = [s for s, kinds in seen if INTRA in kinds]
            assert 0 < len(want) and np.allclose(got, want, rtol=1e-4), (start, end, got, want)
            assert np.abs(out - plain).max() > 1e-4
    finally:
        hook.remove()


def test_an_adapter_chains_with_a_controlnet(sd1, files):
    """A ControlNet and an adapter on one conditioning: each UNet call gets both, and the image differs from
    either alone."""
    bundle, mgr = sd1
    ad = handle.load(mgr, files[("sd1", "diffusers")])
    cn = handle.load(mgr, files["controlnet"])
    seen, hook = _unet_calls(bundle)
    try:
        both = _chisel(bundle, [(cn, _hint(1), 1.0), (ad, _hint(2), 1.0)], "a circle", 3, 3, 5.0)
    finally:
        hook.remove()
    assert seen and all(kinds == {INTRA, "down_block_additional_residuals"} for _, kinds in seen)
    for alone in ([(cn, _hint(1), 1.0)], [(ad, _hint(2), 1.0)]):
        assert np.abs(both - _chisel(bundle, alone, "a circle", 3, 3, 5.0)).max() > 1e-3


def test_positive_only_adapter_leaves_the_negative_rows_alone(sd1, files):
    """The old Apply node on the positive conditioning: the negative rows of the batched UNet call get zero
    features (the UNet's batch holds both)."""
    bundle, mgr = sd1
    ad = handle.load(mgr, files[("sd1", "original")])
    pos, neg = _conds(bundle, "a circle")
    pos = ControlNetApply().run(None, conditioning=pos, control_net=ad, image=_hint(), strength=1.0)[0]
    got = []
    hook = bundle.model.unet.module.register_forward_pre_hook(
        lambda mod, args, kwargs: got.append([t.clone() for t in kwargs[INTRA]]), with_kwargs=True)
    try:
        _sample(bundle, pos, neg, 1, 2, 5.0)
    finally:
        hook.remove()
    for feats in got:
        assert all(f.shape[0] == 2 and f[1].abs().max() > 0 and f[0].abs().max() == 0 for f in feats) or \
            all(f.shape[0] == 2 and f[0].abs().max() > 0 and f[1].abs().max() == 0 for f in feats)


@pytest.mark.parametrize("name,family", [("sdxl", "sdxl"), ("sd2_light", "sd2"), ("sd1_grey", "sd1")])
def test_sdxl_light_and_grey_adapters_steer_their_models(files, name, family):
    """The SDXL adapter (hint unshuffled by 16), the light adapter and a one-channel adapter (the image's channel
    mean) each change the image, at a size that is not a multiple of their scales (72 px: 9 latent cells, so the
    SDXL adapter's hint is scaled to 80 px)."""
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file(family))
    ad = handle.load(mgr, files[(name, "original")])
    plain = _chisel(bundle, [], "a circle", 2, 2, 5.0, size=72)
    steered = _chisel(bundle, [(ad, _hint(size=72), 1.0)], "a circle", 2, 2, 5.0, size=72)
    assert np.abs(steered - plain).max() > 1e-3, name


def test_the_sdxl_layout_feeds_the_middle_block_at_an_odd_size(files):
    """The SDXL layout on a UNet with a middle-block place (the tiny refiner: three levels): the bound chain gives
    four features and the UNet consumes all of them (it pops each one it adds; a fourth of the wrong shape would be
    left over), at 9x9 latent cells, where the hint is scaled to 80 px (a multiple of 16)."""
    from nodes.controlnet.apply import ControlChain

    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sdxl_refiner"))
    ad = handle.load(mgr, files[("sdxl_mid", "diffusers")])
    bound = ControlChain(ad, _hint(size=72), 1.0).bind(bundle.model, (1, 9, 9), "positive")
    assert bound.links[0].hint.shape == (1, 3, 80, 80)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 9, 9, generator=g), torch.randn(2, 77, 48, generator=g)
    added = {"text_embeds": torch.randn(2, 48, generator=g), "time_ids": torch.tensor([[72.0, 72, 0, 0, 6]] * 2)}
    t = torch.tensor([500.0, 500.0])
    feats = bound(x, t, t, ctx, added)[INTRA]
    assert [tuple(f.shape) for f in feats] == [(2, 16, 5, 5), (2, 32, 5, 5), (2, 32, 3, 3), (2, 32, 3, 3)]
    with torch.no_grad():
        bundle.model.unet.module(x, t, ctx, added_cond_kwargs=added, down_intrablock_additional_residuals=feats)
    assert feats == []


def test_a_grey_adapter_sees_the_channel_mean(files):
    from nodes.controlnet.apply import _prepare_hint

    mgr = ModelManager("cpu")
    ad = handle.load(mgr, files[("sd1_grey", "diffusers")])
    img = _hint(size=64)
    got = _prepare_hint(img, ad, (1, 8, 8), "positive")
    assert got.shape == (1, 1, 64, 64) and torch.allclose(got[0, 0], img[0].mean(-1))


# -- the workflow and bad input through the engine -------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory, files):
    r = tmp_path_factory.mktemp("t2iroot")
    (r / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), r / "models" / "checkpoints" / "chisel-demo-v1.safetensors")
    cdir = r / "models" / "controlnet"
    cdir.mkdir(parents=True)
    shutil.copy(files[("sd1", "original-pth")], cdir / "t2iadapter_depth_sd14v1.pth")
    shutil.copy(files[("sdxl", "diffusers")], cdir / "t2i-adapter-depth-sdxl.safetensors")
    (r / "input").mkdir()
    for f in (REPO / "workflows" / "assets").iterdir():
        shutil.copy(f, r / "input" / f.name)
    return r


def _workflow(steps=2):
    wf = json.loads((REPO / "workflows" / "t2i_adapter_depth.json").read_text())
    for node in wf["nodes"].values():
        if node["type"] == "LoadImage":
            node["inputs"]["image"] = Path(node["inputs"]["image"]).name
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return wf


def _node(wf, type_name):
    return next(k for k, n in wf["nodes"].items() if n["type"] == type_name)


def test_shipped_t2i_adapter_workflow_runs_and_the_adapter_changes_the_image(root):
    eng, _ = make_engine(root)
    wf = _workflow()
    assert wf["meta"]["title"] and set(wf["layout"]["nodes"]) == set(wf["nodes"])
    res = eng.run(wf)
    assert res.status == "success", [e.message for e in res.errors]
    assert (root / "output" / res.outputs["9"]["images"][0]["filename"]).is_file()
    apply = _node(wf, "ControlNetApplyAdvanced")
    with_ad = eng.run(wf, outputs=["8"]).values["8"][0]
    wf["nodes"][apply]["inputs"]["strength"] = 0.0
    without = eng.run(wf, outputs=["8"]).values["8"][0]
    assert (with_ad - without).abs().max() > 1e-3


def test_wrong_family_and_impossible_hint_fail_before_the_first_step(root, monkeypatch):
    from nodes.sampling import SAMPLERS

    eng, _ = make_engine(root)
    steps = []
    euler = SAMPLERS["euler"]
    monkeypatch.setitem(SAMPLERS, "euler",
                        dataclasses.replace(euler, function=lambda *a, **k: steps.append(1) or euler(*a, **k)))
    wf = _workflow()
    wf["nodes"][_node(wf, "ControlNetLoader")]["inputs"]["control_net_name"] = "t2i-adapter-depth-sdxl.safetensors"
    res = eng.run(wf)
    err = next(e for e in res.errors if e.node_type == "KSampler")
    assert "positive" in err.message and "SDXL T2I-Adapter" in err.message and "does not fit" in err.message
    assert "SD1.x model" in err.message
    for width, height, batch, words in ((128, 64, 1, ("aspect", "64x64")), (64, 64, 2, ("batch",))):
        wf = _workflow()
        latent = _node(wf, "EmptyLatentImage")
        wf["nodes"][latent]["inputs"].update(width=width, height=height, batch_size=batch)
        if batch > 1:
            wf["nodes"]["20"] = {"type": "ImageBatch", "inputs": {
                "image1": {"node": "10", "output": "IMAGE"}, "image2": {"node": "10", "output": "IMAGE"}}}
            wf["nodes"]["21"] = {"type": "ImageBatch", "inputs": {
                "image1": {"node": "20", "output": "IMAGE"}, "image2": {"node": "10", "output": "IMAGE"}}}
            wf["nodes"][_node(wf, "ControlNetApplyAdvanced")]["inputs"]["image"] = {"node": "21", "output": "IMAGE"}
        res = eng.run(wf)
        err = next(e for e in res.errors if e.node_type == "KSampler")
        assert "positive" in err.message and "T2I-Adapter image" in err.message, err.message
        assert all(w in err.message for w in words), err.message
    assert steps == []


def test_an_adapter_on_area_conditioning_is_refused_by_its_name(sd1, files):
    """The refusal names what the chain holds: a T2I-Adapter (and a ControlNet beside it), before any step."""
    from nodes.library.conditioning import ConditioningSetArea

    bundle, mgr = sd1
    ad = handle.load(mgr, files[("sd1", "original")])
    cn = handle.load(mgr, files["controlnet"])
    pos, neg = _conds(bundle, "a circle")
    pos = ConditioningSetArea().run(None, conditioning=pos, width=32, height=32, x=0, y=0, strength=1.0)[0]
    adapted = ControlNetApply().run(None, conditioning=pos, control_net=ad, image=_hint(), strength=1.0)[0]
    with pytest.raises(ValueError, match="positive conditioning is limited to an area and carries a T2I-Adapter:"):
        _sample(bundle, adapted, neg, 1, 2, 5.0)
    both = ControlNetApply().run(None, conditioning=adapted, control_net=cn, image=_hint(1), strength=1.0)[0]
    with pytest.raises(ValueError, match="carries a T2I-Adapter and a ControlNet:"):
        _sample(bundle, both, neg, 1, 2, 5.0)

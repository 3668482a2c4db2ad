"""The txt2img nodes end to end: parity with diffusers, the engine path writing a PNG whose metadata re-loads as the
same workflow, every family sampling, batched CFG, progress previews, masks, and the node schemas against ComfyUI's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, make_engine, models_root, tiny_file, tiny_model

from nodes.library.conditioning import CLIPSetLastLayer, CLIPTextEncode
from nodes.library.latent import EmptyLatentImage, VAEDecode, VAEEncode
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager

REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-core-nodes.json"


def _bundle(family: str, dtype: str = "fp16"):
    mgr = ModelManager("cpu")
    return mgr.load_checkpoint(tiny_file(family, dtype))


def _txt2img(bundle, prompt="a red circle", negative="", seed=7, steps=6, cfg=7.5, sampler="euler",
             scheduler="normal", size=64, batch=1, ctx=None):
    pos = CLIPTextEncode().run(ctx, text=prompt, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(ctx, text=negative, clip=bundle.clip)[0]
    lat = EmptyLatentImage().run(ctx, width=size, height=size, batch_size=batch)[0]
    out = KSampler().run(ctx, model=bundle.model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                         scheduler=scheduler, positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    return out, VAEDecode().run(ctx, samples=out, vae=bundle.vae)[0]


# -- parity ---------------------------------------------------------------------------------------------------

def test_parity_with_diffusers_stable_diffusion_pipeline():
    """Same tiny SD1 weights (Chisel reads them back from the exported fp32 file; diffusers uses the modules they
    were written from), same initial noise, the same Euler schedule (Chisel's 'normal' sigmas handed to diffusers'
    EulerDiscreteScheduler, which derives the same log-sigma-interpolated timesteps), CFG 7.5.

    Tolerance: everything runs in float32 and both sides evaluate the same diffusers UNet and transformers CLIP
    modules, so the only differences are float32 rounding in a different order (CFG batch order, the timestep
    interpolation done in float32 on one side and float64 on the other, guidance combined on x0 rather than on
    eps — algebraically identical). Those are ~1e-7 relative per operation; over 10 steps they stay far below
    1e-4 on 0..1 pixels (measured ~1e-6), while a different seed changes pixels by ~1e-1 — the control below shows
    the bound is tight enough to catch any real divergence (a wrong timestep, schedule or scaling is >1e-3).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template
    from nodes.sampling import calculate_sigmas, initial_noise

    steps, cfg, seed, prompt = 10, 7.5, 1234, "a photo of a (red:1.0) circle"
    bundle = _bundle("sd1", "fp32")
    latent, image = _txt2img(bundle, prompt=prompt, seed=seed, steps=steps, cfg=cfg)

    src = tiny_model("sd1")
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    sched = EulerDiscreteScheduler.from_config(template("sd15", "scheduler"))
    pipe = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ms = bundle.model.model_sampling
    sigmas = calculate_sigmas(ms, "normal", steps)
    noise = initial_noise((1, 4, 8, 8), seed)
    # Chisel starts at noise * sqrt(1 + sigma_max^2) (ComfyUI's full-denoise scaling); diffusers multiplies the
    # given latents by its init_noise_sigma (= sigma_max for this config).
    start = noise * float((sigmas[0] ** 2 + 1) ** 0.5) / float(sigmas[0])
    ref = pipe(prompt="a photo of a red circle", negative_prompt="", height=64, width=64, guidance_scale=cfg,
               sigmas=sigmas.tolist(), latents=start, output_type="np").images
    assert np.allclose(pipe.scheduler.sigmas.numpy(), sigmas.numpy(), rtol=1e-6)
    ours = image.numpy()
    diff = np.abs(ours - ref).max()
    assert diff < 1e-4, diff
    # control: a different seed differs by orders of magnitude more than the tolerance
    _, other = _txt2img(bundle, prompt=prompt, seed=seed + 1, steps=steps, cfg=cfg)
    assert np.abs(other.numpy() - ref).max() > 1e-2


# -- the engine path --------------------------------------------------------------------------------------------

def test_txt2img_through_the_engine_writes_a_png_whose_metadata_reloads_as_the_workflow(tmp_path):
    from graph.comfy_format import from_comfy_api
    from graph.workflow import parse_workflow

    root = models_root(tmp_path, ("tiny-sd1.safetensors", tiny_file("sd1")))
    eng, services = make_engine(root)
    wf = json.loads(Path("workflows/txt2img.json").read_text())
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny-sd1.safetensors"
    wf["nodes"]["3"]["inputs"].update({"seed": -1, "steps": 5})
    events = []
    res = eng.run(wf, on_event=events.append)
    assert res.status == "success", res.errors
    seed = res.resolved["3"]["seed"]
    assert seed >= 0
    files = res.outputs["9"]["images"]
    assert [f["filename"] for f in files] == ["chisel_00001_.png"]
    png = Image.open(root / "output" / files[0]["filename"])
    assert png.size == (64, 64)
    saved = json.loads(png.text["workflow"])
    assert saved["nodes"]["3"]["inputs"]["seed"] == seed  # the concrete seed is recorded
    expected = dict(wf)
    expected["nodes"] = json.loads(json.dumps(wf["nodes"]))
    expected["nodes"]["3"]["inputs"]["seed"] = seed
    assert parse_workflow(saved, eng.registry).to_dict() == parse_workflow(expected, eng.registry).to_dict()
    api = json.loads(png.text["prompt"])
    assert api["3"]["class_type"] == "KSampler" and api["3"]["inputs"]["seed"] == seed
    assert api["3"]["inputs"]["model"] == ["4", 0]
    native = parse_workflow(from_comfy_api(api), eng.registry).to_dict(layout=False)
    assert {k: v["type"] for k, v in native["nodes"].items()} == {k: v["type"] for k, v in wf["nodes"].items()}
    assert native["nodes"]["3"]["inputs"]["seed"] == seed and native["nodes"]["6"]["inputs"]["text"] == \
        wf["nodes"]["6"]["inputs"]["text"]
    # progress: one event per step, with previews (the loader's stages, node 4, come before)
    prog = [e for e in events if e.type == "progress" and e.node_id == "3"]
    assert [e.data["value"] for e in prog] == [1, 2, 3, 4, 5] and all(e.data["max"] == 5 for e in prog)
    assert any(isinstance(e.data.get("preview"), Image.Image) for e in prog)
    # re-running the saved workflow with a fresh engine reproduces the image exactly
    eng2, _ = make_engine(root)
    saved["nodes"]["9"]["inputs"]["filename_prefix"] = "again"
    res2 = eng2.run(saved)
    again = Image.open(root / "output" / res2.outputs["9"]["images"][0]["filename"])
    assert np.array_equal(np.asarray(png), np.asarray(again))
    # the same file is loaded once by the manager, whatever the number of runs
    assert services.models.loads == 1


def test_shipped_txt2img_workflow_is_valid(tmp_path):
    root = models_root(tmp_path, ("tiny-sd1.safetensors", tiny_file("sd1")))
    eng, _ = make_engine(root)
    wf = json.loads(Path("workflows/txt2img.json").read_text())
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny-sd1.safetensors"
    plan, errors = eng.validate(wf)
    assert errors == [] and plan is not None


# -- families, samplers, CFG ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd2", "sd2_v", "sdxl", "sdxl_refiner", "sd1_inpaint"])
def test_every_family_samples(family):
    bundle = _bundle(family)
    latent, image = _txt2img(bundle, steps=3, size=32, batch=2)
    assert latent["samples"].shape == (2, 4, 4, 4) and image.shape == (2, 32, 32, 3)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert latent["samples"].std() > 0


@pytest.mark.parametrize("sampler, scheduler", [("euler_ancestral", "karras"), ("dpmpp_2m", "karras"),
                                                ("dpmpp_2m", "normal")])
def test_samplers_are_deterministic_per_seed(sampler, scheduler):
    bundle = _bundle("sd1")
    a, _ = _txt2img(bundle, sampler=sampler, scheduler=scheduler, steps=4, size=32)
    b, _ = _txt2img(bundle, sampler=sampler, scheduler=scheduler, steps=4, size=32)
    c, _ = _txt2img(bundle, sampler=sampler, scheduler=scheduler, steps=4, size=32, seed=8)
    assert torch.equal(a["samples"], b["samples"]) and not torch.equal(a["samples"], c["samples"])


def test_unimplemented_sampler_fails_with_the_available_list():
    bundle = _bundle("sd1")
    with pytest.raises(ValueError, match="available: euler"):
        _txt2img(bundle, sampler="heunpp2", steps=2, size=32)


def test_unimplemented_sampler_is_a_validation_error_and_comfy_variants_are_aliases(tmp_path):
    from nodes.library.sampling import KSampler

    choices = KSampler.input("sampler_name").choices
    assert "heunpp2" not in choices and {"dpmpp_2m_sde_gpu", "uni_pc_bh2", "dpm_adaptive"} <= set(choices)
    root = models_root(tmp_path, ("tiny-sd1.safetensors", tiny_file("sd1")))
    eng, _ = make_engine(root)
    wf = json.loads(Path("workflows/txt2img.json").read_text())
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny-sd1.safetensors"
    wf["nodes"]["3"]["inputs"]["sampler_name"] = "heunpp2"
    res = eng.run(wf)
    assert [(e.node_id, e.kind, e.input) for e in res.errors] == [("3", "invalid_choice", "sampler_name")]
    assert res.executed == []
    bundle = _bundle("sd1")
    gpu, _ = _txt2img(bundle, sampler="dpmpp_2m_sde_gpu", steps=3, size=32)
    cpu, _ = _txt2img(bundle, sampler="dpmpp_2m_sde", steps=3, size=32)
    assert torch.equal(gpu["samples"], cpu["samples"])
    bh2, _ = _txt2img(bundle, sampler="uni_pc_bh2", steps=4, size=32)
    bh1, _ = _txt2img(bundle, sampler="uni_pc", steps=4, size=32)
    assert not torch.equal(bh2["samples"], bh1["samples"])


def _count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(args[0].shape[0]) or None,
                                            with_kwargs=True)
    return calls, handle


def test_cfg_runs_conditional_and_unconditional_in_one_batched_call():
    bundle = _bundle("sd1")
    calls, h = _count_unet_calls(bundle.model.unet.module)
    try:
        _txt2img(bundle, steps=4, size=32, batch=3, cfg=7.5)
        assert calls == [6, 6, 6, 6]  # one call per step, cond + uncond for 3 images
        calls.clear()
        _txt2img(bundle, steps=4, size=32, batch=3, cfg=1.0)
        assert calls == [3, 3, 3, 3]  # cfg 1: the unconditional pass is skipped
        calls.clear()
        # different prompt lengths (77 and 154 tokens) still share one call
        _txt2img(bundle, prompt="word " * 100, steps=2, size=32, batch=1)
        assert calls == [2, 2]
    finally:
        h.remove()


def test_sampling_reports_progress_and_previews_every_few_steps():
    bundle = _bundle("sd1")
    ctx = FakeContext()
    _txt2img(bundle, steps=20, size=16, ctx=ctx)
    assert [e[0] for e in ctx.events] == list(range(1, 21)) and all(e[1] == 20 for e in ctx.events)
    previews = [e[2] for e in ctx.events if e[2] is not None]
    assert 5 <= len(previews) <= 12
    assert all(isinstance(p, Image.Image) and p.size == (2, 2) for p in previews)


def test_noise_mask_keeps_the_unmasked_latent():
    bundle = _bundle("sd1")
    pos = CLIPTextEncode().run(None, text="x", clip=bundle.clip)[0]
    lat = {"samples": torch.randn(1, 4, 4, 4), "noise_mask": torch.zeros(1, 32, 32)}
    lat["noise_mask"][:, :16] = 1.0
    out = KSampler().run(None, model=bundle.model, seed=1, steps=3, cfg=5.0, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=pos, latent_image=lat, denoise=1.0)[0]
    assert torch.allclose(out["samples"][:, :, 2:], lat["samples"][:, :, 2:], atol=1e-5)
    assert not torch.allclose(out["samples"][:, :, :2], lat["samples"][:, :, :2], atol=1e-2)


def test_regional_conditioning_entries_run():
    bundle = _bundle("sd1")
    base = CLIPTextEncode().run(None, text="a", clip=bundle.clip)[0]
    region = [[base[0][0], {"area": (2, 2, 0, 0), "strength": 1.0}]]
    masked = [[base[0][0], {"mask": torch.ones(1, 4, 4), "mask_strength": 0.5, "set_area_to_bounds": True}]]
    lat = EmptyLatentImage().run(None, width=32, height=32, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=1, steps=2, cfg=5.0, sampler_name="euler",
                         scheduler="normal", positive=base + region + masked, negative=base, latent_image=lat,
                         denoise=1.0)[0]
    assert torch.isfinite(out["samples"]).all()


def test_img2img_denoise_keeps_the_input_close():
    bundle = _bundle("sd1")
    pos = CLIPTextEncode().run(None, text="x", clip=bundle.clip)[0]
    img = torch.rand(1, 32, 32, 3)
    lat = VAEEncode().run(None, pixels=img, vae=bundle.vae)[0]
    assert lat["samples"].shape == (1, 4, 4, 4)
    low = KSampler().run(None, model=bundle.model, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=pos, latent_image=lat, denoise=0.1)[0]
    high = KSampler().run(None, model=bundle.model, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                          scheduler="normal", positive=pos, negative=pos, latent_image=lat, denoise=1.0)[0]
    d_low = (low["samples"] - lat["samples"]).abs().mean()
    d_high = (high["samples"] - lat["samples"]).abs().mean()
    assert d_low < d_high


# -- text encoding ------------------------------------------------------------------------------------------------

def test_prompt_weights_and_chunks():
    from nodes.text.tokens import parse_weights, tokenize

    assert parse_weights("a (red:1.3) cat") == [("a ", 1.0), ("red", 1.3), (" cat", 1.0)]
    assert parse_weights("((big))") == [("big", pytest.approx(1.21))]
    assert parse_weights(r"\(literal\) (open") == [("(literal) (open", 1.0)]
    assert parse_weights("(a (b:2):0.5)") == [("a ", 0.5), ("b", 1.0)]
    chunks = tokenize("a photo of a cat " * 20)  # 100 tokens -> 2 chunks
    assert len(chunks.ids) == 2 and all(len(r) == 77 for r in chunks.ids)
    assert chunks.ids[0][0] == 49406 and chunks.ids[0][76] == 49407 and chunks.ids[1][0] == 49406
    assert tokenize("a cat", pad_id=0).ids[0][3:7] == [49407, 0, 0, 0]


def test_emphasis_changes_only_the_weighted_tokens_and_long_prompts_concatenate():
    bundle = _bundle("sd1")
    plain, _ = bundle.clip.encode("a red cat")
    one, _ = bundle.clip.encode("a (red:1.0) cat")
    strong, _ = bundle.clip.encode("a (red:1.5) cat")
    assert torch.allclose(plain, one, atol=1e-6)
    diff = (strong - plain).abs().amax(dim=-1)[0]
    assert diff[2] > 1e-3  # "red" is token 2 (after <start> and "a")
    assert torch.all(diff[[0, 1, 3, 4]] < 1e-6)
    long, _ = bundle.clip.encode("word " * 100)
    assert long.shape == (1, 154, 32)


def test_clip_set_last_layer():
    bundle = _bundle("sd1")
    last = CLIPSetLastLayer().run(None, clip=bundle.clip, stop_at_clip_layer=-1)[0]
    skip = CLIPSetLastLayer().run(None, clip=bundle.clip, stop_at_clip_layer=-2)[0]
    far = CLIPSetLastLayer().run(None, clip=bundle.clip, stop_at_clip_layer=-24)[0]
    a = bundle.clip.encode("a cat")[0]
    assert torch.equal(last.encode("a cat")[0], a)
    assert not torch.allclose(skip.encode("a cat")[0], a)
    assert torch.isfinite(far.encode("a cat")[0]).all()
    assert bundle.clip.layer_idx is None  # the original is unchanged


def test_sdxl_conditioning_has_both_encoders_and_pooled_output():
    bundle = _bundle("sdxl")
    cond = CLIPTextEncode().run(None, text="a cat", clip=bundle.clip)[0]
    emb, opts = cond[0]
    assert emb.shape == (1, 77, 32 + 48) and opts["pooled_output"].shape == (1, 48)


# -- images in and out -----------------------------------------------------------------------------------------

def test_load_image_mask_from_alpha_and_save_image_counters(tmp_path):
    from graph.paths import ModelPaths
    from nodes.library.image import LoadImage, PreviewImage, SaveImage
    from nodes.services import Services

    rgba = np.zeros((8, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 0  # top half transparent
    (tmp_path / "input").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "input" / "a.png")
    services = Services(paths=ModelPaths(root=tmp_path), device=torch.device("cpu"))
    workflow = {"nodes": {"1": {"type": "LoadImage", "inputs": {"image": "a.png"}}}}
    ctx = FakeContext(services, files={"image": tmp_path / "input" / "a.png"}, workflow=workflow)
    image, mask = LoadImage().run(ctx, image="a.png")
    assert image.shape == (1, 8, 12, 3) and mask.shape == (1, 8, 12)
    assert torch.all(mask[:, :4] == 1) and torch.all(mask[:, 4:] == 0) and torch.all(image[..., 0] == 1)
    r1 = SaveImage().run(ctx, images=image.repeat(2, 1, 1, 1), filename_prefix="run/pic").ui["images"]
    r2 = SaveImage().run(ctx, images=image, filename_prefix="run/pic").ui["images"]
    assert [r["filename"] for r in r1 + r2] == ["pic_00001_.png", "pic_00002_.png", "pic_00003_.png"]
    assert r1[0]["subfolder"] == "run" and r1[0]["type"] == "output"
    png = Image.open(tmp_path / "output" / "run" / "pic_00003_.png")
    assert json.loads(png.text["workflow"])["nodes"]["1"]["type"] == "LoadImage"
    assert json.loads(png.text["prompt"]) == {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"},
                                                    "_meta": {"title": "LoadImage"}}}
    with pytest.raises(ValueError, match="outside"):
        SaveImage().run(ctx, images=image, filename_prefix="../escape")
    p = PreviewImage().run(ctx, images=image).ui["images"][0]
    assert p["type"] == "temp" and (tmp_path / "temp" / p["filename"]).is_file()


def test_vae_roundtrip_shapes():
    bundle = _bundle("sd1")
    img = torch.rand(2, 40, 36, 3)
    lat = VAEEncode().run(None, pixels=img, vae=bundle.vae)[0]
    assert lat["samples"].shape == (2, 4, 5, 4)  # cropped to multiples of 8
    out = VAEDecode().run(None, samples=lat, vae=bundle.vae)[0]
    assert out.shape == (2, 40, 32, 3) and out.dtype == torch.float32


# -- node schemas match ComfyUI's ----------------------------------------------------------------------------

NODE_TYPES = ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "EmptyLatentImage", "KSampler",
              "VAEDecode", "VAEEncode", "VAELoader", "LoadImage", "SaveImage", "PreviewImage"]


@pytest.mark.parametrize("type_name", NODE_TYPES)
def test_node_schema_matches_comfyui(type_name):
    from sd_fixtures import _registry

    ref = json.loads(REFERENCE.read_text())[type_name]
    cls = _registry().get(type_name)
    assert cls is not None
    assert [i.name for i in cls.inputs] == ref["input_order"]["required"]
    assert [o.type for o in cls.outputs] == ref["output"] and [o.name for o in cls.outputs] == ref["output_name"]
    assert cls.output_node == ref["output_node"] and cls.category == ref["category"]
    for inp in cls.inputs:
        spec = ref["input"]["required"][inp.name]
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list) and inp.name in ("sampler_name", "scheduler"):
            # the samplers Chisel implements, in ComfyUI's order (an unknown name fails validation up front)
            assert [c for c in kind if c in inp.choices] == list(inp.choices) and inp.default == kind[0]
        elif isinstance(kind, list):
            assert list(inp.choices) == kind and inp.default == kind[0]
        elif kind.startswith("<file names"):
            assert inp.files is not None
        else:
            assert inp.type == kind
        for key in ("default", "min", "max", "step", "round", "multiline"):
            if key in opts:
                assert getattr(inp, key) == opts[key], (inp.name, key)


def test_sampling_loop_reads_nothing_back_from_the_device_per_step(monkeypatch):
    """A CPU proxy for 'no host-device synchronisation per step': count every host read of a tensor's values
    (.item, bool/float/int conversion, .tolist, .numpy, .cpu) during sampling; 2 and 5 steps must read the same
    (only set-up work reads values, never the step loop). Previews are off here (ctx None); on CUDA they are
    copied asynchronously."""
    import collections
    import traceback

    bundle = _bundle("sdxl")  # the family with the most per-step inputs (pooled output, size conditioning)

    def count(steps):
        calls = collections.Counter()
        for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"):
            orig = getattr(torch.Tensor, name)

            def wrapper(self, *a, _orig=orig, _name=name, **k):
                frame = traceback.extract_stack(limit=3)[-2]
                calls[(_name, Path(frame.filename).name, frame.lineno)] += 1
                return _orig(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapper)
        try:
            _txt2img(bundle, steps=steps, size=16)
        finally:
            monkeypatch.undo()
        return calls

    assert count(2) == count(5)

"""ControlNets: every published file layout loads to the same network; sampling with one (and with two chained)
matches diffusers' StableDiffusionControlNetPipeline on the same tiny weights; strength and the step range do what
they say; the shipped workflow runs; a ControlNet of the wrong family, an image of the wrong shape and a file that is
no ControlNet fail with clear errors before any step; the nodes match ComfyUI's interface."""
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

REPO = Path(__file__).resolve().parents[1]
MORE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-more-nodes.json"
NODES = ("ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced")


@lru_cache(maxsize=None)
def tiny_cn(family: str, seed: int = 0):
    return tcn.build(tiny_model(family).unet, seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("controlnets")
    out = {}
    for fam, layout, prefix in (("sd1", "ldm", "control_model."), ("sd1", "ldm", ""), ("sd1", "diffusers", ""),
                                ("sd1", "folder", ""), ("sd1", "difference", "control_model."),
                                ("sd2", "ldm", ""), ("sdxl", "diffusers", ""), ("sdxl", "ldm", "control_model.")):
        name = f"{fam}-{layout}{'-p' if prefix else ''}" + ("" if layout == "folder" else ".safetensors")
        out[(fam, layout, prefix)] = tcn.write(d / name, tiny_cn(fam), layout, prefix, base_unet=tiny_model(fam).unet)
    out["sd1-second"] = tcn.write(d / "second.safetensors", tiny_cn("sd1", 1), "ldm")
    return out


def _hint(seed=0, size=64, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, size, size, 3, generator=g)


# -- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [("sd1", "ldm", "control_model."), ("sd1", "ldm", ""), ("sd1", "diffusers", ""),
                                 ("sd1", "folder", ""), ("sd1", "difference", "control_model."), ("sd2", "ldm", ""),
                                 ("sdxl", "diffusers", ""), ("sdxl", "ldm", "control_model.")])
def test_every_layout_loads_to_the_same_network(files, key):
    fam = key[0]
    src, unet = tiny_cn(fam), tiny_model(fam).unet
    got = load_controlnet(files[key], unet=unet, unet_config=unet.config)
    assert got.family == fam
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, src.config.cross_attention_dim, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    kw = {}
    if fam == "sdxl":
        proj = src.config.projection_class_embeddings_input_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, proj - 6 * 8, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        want = src(x, torch.tensor([500.0, 500.0]), ctx, hint, return_dict=False, **kw)
        have = got.module(x, torch.tensor([500.0, 500.0]), ctx, hint, return_dict=False, **kw)
    for a, b in zip(list(want[0]) + [want[1]], list(have[0]) + [have[1]]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_files_that_are_no_controlnet_are_named_as_what_they_are(files, tmp_path):
    from nodes.loading.errors import WrongFileKind

    with pytest.raises(WrongFileKind, match="full Stable Diffusion checkpoint"):
        load_controlnet(tiny_file("sd1"))
    with pytest.raises(WrongFileKind, match="difference ControlNet.*diff"):
        load_controlnet(files[("sd1", "difference", "control_model.")])


# -- parity with diffusers ----------------------------------------------------------------------------------------

def _pipeline(controlnet):
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template

    src = tiny_model("sd1")
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    pipe = StableDiffusionControlNetPipeline(
        vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet, controlnet=controlnet,
        scheduler=EulerDiscreteScheduler.from_config(template("sd15", "scheduler")), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _chisel(bundle, controls, prompt, seed, steps, cfg, start=0.0, end=1.0):
    """controls: [(handle, hint IMAGE, strength)] applied in order with Apply ControlNet (Advanced)."""
    pos = CLIPTextEncode().run(None, text=prompt, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    for cn, hint, strength in controls:
        pos, neg = ControlNetApplyAdvanced().run(None, positive=pos, negative=neg, control_net=cn, image=hint,
                                                 strength=strength, start_percent=start, end_percent=end, vae=None)
    lat = EmptyLatentImage().run(None, width=64, height=64, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    return VAEDecode().run(None, samples=out, vae=bundle.vae)[0].numpy()


def _reference(pipe, images, scales, bundle, seed, steps, cfg, prompt):
    from nodes.sampling import calculate_sigmas, initial_noise

    sigmas = calculate_sigmas(bundle.model.model_sampling, "normal", steps)
    start = initial_noise((1, 4, 8, 8), seed) * float((sigmas[0] ** 2 + 1) ** 0.5) / float(sigmas[0])
    image = [h.permute(0, 3, 1, 2) for h in images]
    return pipe(prompt=prompt, negative_prompt="", image=image if len(image) > 1 else image[0], height=64, width=64,
                guidance_scale=cfg, sigmas=sigmas.tolist(), latents=start, output_type="np",
                controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0]).images


def test_parity_with_diffusers_controlnet_pipeline(files):
    """Same tiny SD1 weights and ControlNet (read back from an fp32 checkpoint and an LDM-layout control_v11-style
    file), same noise, Euler on the same sigmas, CFG 7.5, strength 0.8. Everything is float32 and both sides run the
    same diffusers modules, so they differ only by float32 rounding in another order (~1e-6 measured); without the
    ControlNet the image moves by far more than the 1e-4 bound. 10 steps: the 'normal' timesteps (999, 888, ...)
    are integers, so Chisel's rounded UNet timesteps (ComfyUI's) and diffusers' interpolated ones agree."""
    steps, cfg, seed, prompt = 10, 7.5, 99, "a red circle"
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1", "fp32"))
    cn = handle.load(mgr, files[("sd1", "ldm", "control_model.")])
    hint = _hint()
    ours = _chisel(bundle, [(cn, hint, 0.8)], prompt, seed, steps, cfg)
    ref = _reference(_pipeline(tiny_cn("sd1")), [hint], [0.8], bundle, seed, steps, cfg, prompt)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = _chisel(bundle, [], prompt, seed, steps, cfg)
    assert np.abs(plain - ref).max() > 1e-2


def test_two_chained_controlnets_match_diffusers_multicontrolnet(files):
    """Two Apply ControlNet nodes in a row add their residuals, as diffusers' MultiControlNetModel does."""
    steps, cfg, seed, prompt = 6, 5.0, 5, "a blue square"
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1", "fp32"))
    a = handle.load(mgr, files[("sd1", "diffusers", "")])
    b = handle.load(mgr, files["sd1-second"])
    h1, h2 = _hint(1), _hint(2)
    ours = _chisel(bundle, [(a, h1, 0.7), (b, h2, 1.3)], prompt, seed, steps, cfg)
    ref = _reference(_pipeline([tiny_cn("sd1"), tiny_cn("sd1", 1)]), [h1, h2], [0.7, 1.3], bundle, seed, steps,
                     cfg, prompt)
    assert np.abs(ours - ref).max() <= 1e-4
    one = _chisel(bundle, [(a, h1, 0.7)], prompt, seed, steps, cfg)
    assert np.abs(one - ref).max() > 1e-2


# -- strength, range, families ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(files):
    mgr = ModelManager("cpu")
    return mgr.load_checkpoint(tiny_file("sd1")), handle.load(mgr, files[("sd1", "ldm", "control_model.")]), mgr


def test_strength_zero_is_no_controlnet_and_the_range_picks_the_steps(sd1):
    from nodes.sampling import calculate_sigmas

    bundle, cn, _ = sd1
    plain = _chisel(bundle, [], "a circle", 1, 4, 6.0)
    assert np.array_equal(_chisel(bundle, [(cn, _hint(), 0.0)], "a circle", 1, 4, 6.0), plain)
    ms = bundle.model.model_sampling
    sigmas = [float(s) for s in calculate_sigmas(ms, "normal", 4)[:-1]]
    seen = []
    hook = cn.module.module.register_forward_pre_hook(lambda mod, args: seen.append(float(ms.sigma(args[1][0]))))
    try:
        for start, end in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0)):
            seen.clear()
            out = _chisel(bundle, [(cn, _hint(), 1.0)], "a circle", 1, 4, 6.0, start=start, end=end)
            hi, lo = ms.percent_to_sigma(start), ms.percent_to_sigma(end)
            want = [s for s in sigmas if lo <= s <= hi]
            assert 0 < len(want) and np.allclose(seen, want, rtol=1e-4), (start, end, seen, want)
            assert np.abs(out - plain).max() > 1e-4
    finally:
        hook.remove()
    assert len(sigmas) == 4


def test_a_full_range_controlnet_reads_nothing_back_from_the_device_per_step(sd1, monkeypatch):
    """As for plain sampling (see test_sd_pipeline): host reads of tensor values happen in set-up only, so 2 and 4
    steps read the same. (A ControlNet limited to part of the schedule reads each step's sigma once.)"""
    import collections
    import traceback

    bundle, cn, _ = sd1

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
            pos = CLIPTextEncode().run(None, text="a circle", clip=bundle.clip)[0]
            neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
            pos, neg = ControlNetApplyAdvanced().run(None, positive=pos, negative=neg, control_net=cn,
                                                     image=_hint(size=16), strength=1.0, start_percent=0.0,
                                                     end_percent=1.0, vae=None)
            lat = EmptyLatentImage().run(None, width=16, height=16, batch_size=1)[0]
            KSampler().run(None, model=bundle.model, seed=1, steps=steps, cfg=5.0, sampler_name="euler",
                           scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)
        finally:
            monkeypatch.undo()
        return calls

    assert count(2) == count(4)


def test_a_controlnet_on_area_conditioning_is_refused_before_sampling(sd1):
    from nodes.library.conditioning import ConditioningSetArea

    bundle, cn, _ = sd1
    pos = CLIPTextEncode().run(None, text="a circle", clip=bundle.clip)[0]
    pos = ConditioningSetArea().run(None, conditioning=pos, width=32, height=32, x=0, y=0, strength=1.0)[0]
    pos = ControlNetApply().run(None, conditioning=pos, control_net=cn, image=_hint(), strength=1.0)[0]
    lat = EmptyLatentImage().run(None, width=64, height=64, batch_size=1)[0]
    with pytest.raises(ValueError, match="positive conditioning is limited to an area and carries a ControlNet:"):
        KSampler().run(None, model=bundle.model, seed=1, steps=2, cfg=5.0, sampler_name="euler",
                       scheduler="normal", positive=pos, negative=pos, latent_image=lat, denoise=1.0)


def test_old_apply_node_steers_only_its_conditioning(sd1):
    bundle, cn, _ = sd1
    pos = CLIPTextEncode().run(None, text="a circle", clip=bundle.clip)[0]
    out = ControlNetApply().run(None, conditioning=pos, control_net=cn, image=_hint(), strength=0.5)[0]
    chain = out[0][1]["unet_inputs"]
    assert chain.control is cn and chain.strength == 0.5 and chain.previous is None and "unet_inputs" not in pos[0][1]
    assert ControlNetApply().run(None, conditioning=pos, control_net=cn, image=_hint(), strength=0.0)[0] is pos


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_controlnets_steer_their_models(files, family):
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file(family))
    layout = ("sd2", "ldm", "") if family == "sd2" else ("sdxl", "diffusers", "")
    cn = handle.load(mgr, files[layout])
    plain = _chisel(bundle, [], "a circle", 2, 2, 5.0)
    steered = _chisel(bundle, [(cn, _hint(), 1.0)], "a circle", 2, 2, 5.0)
    assert np.abs(steered - plain).max() > 1e-3


# -- the workflow and bad input through the engine -------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory, files):
    r = tmp_path_factory.mktemp("cnroot")
    (r / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), r / "models" / "checkpoints" / "chisel-demo-v1.safetensors")
    cdir = r / "models" / "controlnet"
    cdir.mkdir(parents=True)
    shutil.copy(files[("sd1", "ldm", "control_model.")], cdir / "control_v11p_sd15_scribble.safetensors")
    shutil.copy(files[("sdxl", "diffusers", "")], cdir / "sdxl-canny.safetensors")
    shutil.copy(files[("sd1", "difference", "control_model.")], cdir / "diff-scribble.safetensors")
    (r / "input").mkdir()
    for f in (REPO / "workflows" / "assets").iterdir():
        shutil.copy(f, r / "input" / f.name)
    return r


def _workflow(steps=2):
    wf = json.loads((REPO / "workflows" / "controlnet.json").read_text())
    for node in wf["nodes"].values():
        if node["type"] == "LoadImage":
            node["inputs"]["image"] = Path(node["inputs"]["image"]).name
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return wf


def test_shipped_controlnet_workflow_runs_and_the_control_changes_the_image(root):
    eng, _ = make_engine(root)
    wf = _workflow()
    assert wf["meta"]["title"] and set(wf["layout"]["nodes"]) == set(wf["nodes"])
    res = eng.run(wf)
    assert res.status == "success", [e.message for e in res.errors]
    assert (root / "output" / res.outputs["9"]["images"][0]["filename"]).is_file()
    cn_node = next(k for k, n in wf["nodes"].items() if n["type"] == "ControlNetApplyAdvanced")
    with_cn = eng.run(wf, outputs=["8"]).values["8"][0]
    wf["nodes"][cn_node]["inputs"]["strength"] = 0.0
    without = eng.run(wf, outputs=["8"]).values["8"][0]
    assert (with_cn - without).abs().max() > 1e-3
    # a difference ControlNet through the diff loader, on the same model
    wf["nodes"][cn_node]["inputs"]["strength"] = 1.0
    loader = next(k for k, n in wf["nodes"].items() if n["type"] == "ControlNetLoader")
    wf["nodes"][loader] = {"type": "DiffControlNetLoader",
                           "inputs": {"model": {"node": "4", "output": "MODEL"},
                                      "control_net_name": "diff-scribble.safetensors"}}
    diff = eng.run(wf, outputs=["8"])
    assert diff.status == "success", [e.message for e in diff.errors]
    assert torch.allclose(diff.values["8"][0], with_cn, atol=2e-3)  # the same ControlNet, rebuilt (fp16 offsets)


def test_wrong_family_and_wrong_image_fail_before_the_first_step(root, monkeypatch):
    from nodes.sampling import SAMPLERS

    eng, _ = make_engine(root)
    steps = []
    euler = SAMPLERS["euler"]
    monkeypatch.setitem(SAMPLERS, "euler",
                        dataclasses.replace(euler, function=lambda *a, **k: steps.append(1) or euler(*a, **k)))
    wf = _workflow()
    loader = next(k for k, n in wf["nodes"].items() if n["type"] == "ControlNetLoader")
    wf["nodes"][loader]["inputs"]["control_net_name"] = "sdxl-canny.safetensors"
    res = eng.run(wf)
    err = next(e for e in res.errors if e.node_type == "KSampler")
    assert "positive" in err.message and "SDXL ControlNet" in err.message and "does not fit" in err.message
    wf = _workflow()
    latent = next(k for k, n in wf["nodes"].items() if n["type"] == "EmptyLatentImage")
    wf["nodes"][latent]["inputs"]["width"] = 128
    res = eng.run(wf)
    err = next(e for e in res.errors if e.node_type == "KSampler")
    assert "positive" in err.message and "aspect" in err.message and "64x64" in err.message
    assert steps == []


def test_validation_names_a_missing_controlnet_file(root):
    eng, _ = make_engine(root)
    wf = _workflow()
    loader = next(k for k, n in wf["nodes"].items() if n["type"] == "ControlNetLoader")
    wf["nodes"][loader]["inputs"]["control_net_name"] = "nope.safetensors"
    _, errors = eng.validate(wf)
    assert any(e.node_id == loader and e.input == "control_net_name" for e in errors)


# -- interface --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", NODES)
def test_nodes_match_comfyui(type_name):
    from sd_fixtures import _registry

    ref = json.loads(MORE.read_text())[type_name]
    cls = _registry().get(type_name)
    order = ref["input_order"].get("required", []) + ref["input_order"].get("optional", [])
    assert [i.name for i in cls.inputs] == order
    assert [i.name for i in cls.inputs if i.optional] == ref["input_order"].get("optional", [])
    assert [o.type for o in cls.outputs] == ref["output"] and [o.name for o in cls.outputs] == ref["output_name"]
    assert cls.category == ref["category"] and cls.display_name == ref["display_name"]
    specs = {**ref["input"]["required"], **ref["input"].get("optional", {})}
    for inp in cls.inputs:
        kind, opts = specs[inp.name][0], (specs[inp.name][1] if len(specs[inp.name]) > 1 else {})
        if isinstance(kind, list) or kind.startswith("<file names"):
            assert inp.type == "COMBO" and inp.files == "controlnet"
        else:
            assert inp.type == kind
        for key in ("default", "min", "max", "step"):
            if key in opts:
                assert getattr(inp, key) == opts[key], (inp.name, key)


def test_loading_reports_its_stages(files):
    from nodes.controlnet.load import CONTROLNET_STAGES

    seen = []
    load_controlnet(files[("sd1", "ldm", "control_model.")],
                    progress=lambda value, total, **said: seen.append((value, total, said)))
    assert seen == [(i, len(CONTROLNET_STAGES), {"activity": "loading", "stage": s})
                    for i, s in enumerate(CONTROLNET_STAGES)]

"""GLIGEN: the published single-file layout and a diffusers GLIGEN UNet load to the same layers; sampling with boxes
matches diffusers' StableDiffusionGLIGENPipeline on the same tiny weights and a moved box changes the image; only the
grounded conditioning runs through the GLIGEN layers, which never stay on the UNet; boxes chain up to 30; the shipped
workflow runs, its boxes enter the cache key; a box outside the image, a GLIGEN model of another family and a file
that is no GLIGEN fail with clear errors before any step."""
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

from nodes.gligen import handle
from nodes.gligen.load import load_gligen
from nodes.library.conditioning import CLIPTextEncode
from nodes.library.gligen import GLIGENTextBoxApply
from nodes.library.latent import EmptyLatentImage, VAEDecode
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.testing import gligen as tg

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle and a blue square"
BOXES = [("a red circle", (0, 8, 32, 24)), ("a blue square", (32, 32, 32, 32))]  # phrase, (x, y, width, height)


@lru_cache(maxsize=None)
def gated(family: str = "sd1", seed: int = 0):
    return tg.build(tiny_model(family).unet, seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gligen")
    return {
        "ldm": tg.write(d / "ldm.safetensors", gated(), "ldm", dtype=torch.float32),
        "ldm-prefixed-fp16": tg.write(d / "ldm-p.safetensors", gated(), "ldm", prefix="model.diffusion_model."),
        "diffusers": tg.write(d / "unet.safetensors", gated(), "diffusers", dtype=torch.float32),
        "sd2": tg.write(d / "sd2.safetensors", gated("sd2"), "ldm"),
        "sd1_plain": tg.write(d / "plain.safetensors", gated("sd1_plain"), "ldm"),
    }


# -- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["ldm", "ldm-prefixed-fp16", "diffusers"])
def test_published_and_diffusers_layouts_load_to_the_same_layers(files, key):
    got = load_gligen(files[key])
    src = gated()
    names = sorted((n for n, _ in src.named_modules() if n.endswith(".fuser")),  # the order the blocks run in
                   key=lambda n: (("down", "mid", "up").index(n.split("_")[0]), n))
    assert len(got.module.fusers) == len(names) == 4
    want = {**{f"fusers.{i}.{k}": v for i, n in enumerate(names)
               for k, v in src.get_submodule(n).state_dict().items()},
            **{f"position_net.{k}": v for k, v in src.position_net.state_dict().items()}}
    have = got.module.state_dict()
    assert set(have) == set(want)
    for k, v in want.items():
        exp = v.half().float() if key.endswith("fp16") else v
        assert torch.equal(have[k], exp), k
    assert [f.attn.heads for f in got.module.fusers] == [src.get_submodule(n).attn.heads for n in names]


def test_loading_reports_its_stages(files):
    from nodes.gligen.load import GLIGEN_STAGES

    seen = []
    load_gligen(files["ldm"], progress=lambda value, total, *, activity, stage: seen.append((value, total, stage)))
    assert seen == [(i, 2, name) for i, name in enumerate(GLIGEN_STAGES)]


def test_files_that_are_no_gligen_fail_clearly(files, tmp_path):
    from safetensors.torch import load_file, save_file

    from nodes.loading.errors import IncompleteCheckpoint, UnrecognisedArchitecture, WrongFileKind

    with pytest.raises(WrongFileKind, match="checkpoint without GLIGEN"):
        load_gligen(tiny_file("sd1"))
    state = load_file(str(files["ldm"]))
    del state["middle_block.1.transformer_blocks.0.fuser.attn.to_k.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(IncompleteCheckpoint, match="middle_block.*to_k"):
        load_gligen(tmp_path / "partial.safetensors")
    state = load_file(str(files["ldm"]))
    state["position_net.linears_image.0.weight"] = torch.zeros(512, 96)
    save_file(state, str(tmp_path / "text_image.safetensors"))
    with pytest.raises(UnrecognisedArchitecture, match="text-and-image"):
        load_gligen(tmp_path / "text_image.safetensors")


# -- parity with diffusers ----------------------------------------------------------------------------------------

def _chisel(bundle, gligen, boxes, seed, steps, cfg, negative_boxes=()):
    pos = CLIPTextEncode().run(None, text=PROMPT, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    for cond, items in ((0, boxes), (1, negative_boxes)):
        for phrase, (x, y, w, h) in items:
            grounded = GLIGENTextBoxApply().run(None, conditioning_to=(pos, neg)[cond], clip=bundle.clip,
                                                gligen_textbox_model=gligen, text=phrase, width=w, height=h, x=x,
                                                y=y)[0]
            pos, neg = (grounded, neg) if cond == 0 else (pos, grounded)
    lat = EmptyLatentImage().run(None, width=64, height=64, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    return VAEDecode().run(None, samples=out, vae=bundle.vae)[0].numpy()


def _reference(boxes, bundle, seed, steps):
    from diffusers import EulerDiscreteScheduler, StableDiffusionGLIGENPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template
    from nodes.sampling import calculate_sigmas, initial_noise

    src = tiny_model("sd1")
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    sched = EulerDiscreteScheduler.from_config(template("sd15", "scheduler"), timestep_spacing="linspace")
    pipe = StableDiffusionGLIGENPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=gated(),
                                         scheduler=sched, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sigmas = calculate_sigmas(bundle.model.model_sampling, "normal", steps)
    sched.set_timesteps(steps)
    assert torch.allclose(sched.sigmas.float(), sigmas, rtol=1e-4)  # the same schedule (integer timesteps)
    start = initial_noise((1, 4, 8, 8), seed) * float((sigmas[0] ** 2 + 1) ** 0.5) / float(sigmas[0])
    return pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=steps, guidance_scale=1.0,
                gligen_scheduled_sampling_beta=1.0, gligen_phrases=[p for p, _ in boxes],
                gligen_boxes=[[x / 64, y / 64, (x + w) / 64, (y + h) / 64] for _, (x, y, w, h) in boxes],
                latents=start, output_type="np").images


def test_parity_with_diffusers_gligen_pipeline(files):
    """Same tiny SD1 weights (an fp32 checkpoint) and GLIGEN layers (read back from the published layout), same
    noise, Euler on the same sigmas, fp32. GLIGEN acts on every step, as in ComfyUI: diffusers'
    gligen_scheduled_sampling_beta=1.0. cfg 1: diffusers runs its unconditional pass through the GLIGEN layers with
    every box masked out, while ComfyUI (and Chisel) run an ungrounded negative without them, so the two agree only
    where no negative pass is made (the CFG combination is checked separately below). Measured ~6e-7; a box moved by
    24 pixels changes the image by ~6e-3 and GLIGEN as a whole by ~0.17."""
    steps, seed = 4, 7
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    gligen = handle.load(bundle.model.manager, files["ldm"])
    ours = _chisel(bundle, gligen, BOXES, seed, steps, 1.0)
    ref = _reference(BOXES, bundle, seed, steps)
    assert np.abs(ours - ref).max() <= 1e-4
    moved = [("a red circle", (24, 24, 32, 24)), BOXES[1]]
    assert np.abs(_chisel(bundle, gligen, moved, seed, steps, 1.0) - ref).max() > 1e-3
    assert np.abs(_chisel(bundle, gligen, [], seed, steps, 1.0) - ref).max() > 1e-2


@pytest.fixture(scope="module")
def sd1(files):
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1"))
    return bundle, handle.load(mgr, files["ldm"])


def _denoised(bundle, positive, negative, cfg, x, sigma):
    from nodes.sampling.guidance import Guider

    guider = Guider.cfg(bundle.model, positive, negative, cfg) if negative is not None else \
        Guider.basic(bundle.model, positive)
    with bundle.model.manager.use(bundle.model.unet), torch.inference_mode():
        return guider.denoiser(torch.zeros_like(x), None, None, (64, 64))(x, sigma)


def test_only_the_grounded_conditioning_runs_through_the_gligen_layers(sd1):
    """With CFG the positive (grounded) and negative (not) go through separate UNet calls: the result is exactly the
    CFG combination of the grounded positive alone and the plain negative alone. Afterwards the UNet has no GLIGEN
    layer left, and plain sampling gives what it gave before."""
    from nodes.gligen.handle import transformer_blocks

    bundle, gligen = sd1
    pos = CLIPTextEncode().run(None, text=PROMPT, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    grounded = GLIGENTextBoxApply().run(None, conditioning_to=pos, clip=bundle.clip, gligen_textbox_model=gligen,
                                        text="a red circle", width=32, height=32, x=0, y=16)[0]
    plain_image = _chisel(bundle, gligen, [], 3, 2, 5.0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3.0  # a batch of 2
    sigma = torch.tensor([3.0, 3.0])
    both = _denoised(bundle, grounded, neg, 5.0, x, sigma)
    d_pos, d_neg = _denoised(bundle, grounded, None, 1, x, sigma), _denoised(bundle, neg, None, 1, x, sigma)
    assert torch.allclose(both, d_neg + 5.0 * (d_pos - d_neg), atol=1e-5, rtol=1e-5)
    assert (d_pos - _denoised(bundle, pos, None, 1, x, sigma)).abs().max() > 1e-3  # the boxes did something
    unet = bundle.model.unet.module
    assert not hasattr(unet, "position_net")
    assert not any(hasattr(b, "fuser") for b in transformer_blocks(unet).values())
    assert not any(".fuser." in k or "position_net" in k for k in unet.state_dict())
    assert np.array_equal(_chisel(bundle, gligen, [], 3, 2, 5.0), plain_image)
    assert "gligen" not in pos[0][1] and grounded[0][1]["gligen"].boxes[0].phrase == "a red circle"


def test_boxes_chain_their_phrases_pooled_embeddings_up_to_30(sd1):
    bundle, gligen = sd1
    cond = CLIPTextEncode().run(None, text=PROMPT, clip=bundle.clip)[0]
    for i in range(30):
        cond = GLIGENTextBoxApply().run(None, conditioning_to=cond, clip=bundle.clip, gligen_textbox_model=gligen,
                                        text=f"thing {i}", width=16 + 8 * (i % 3), height=8, x=8 * (i % 5), y=13)[0]
    boxes = cond[0][1]["gligen"].boxes
    assert [(b.width, b.height, b.x, b.y) for b in boxes[:3]] == [(2, 1, 0, 1), (3, 1, 1, 1), (4, 1, 2, 1)]
    # the phrase's pooled output is the text encoder's own (transformers' pooler_output)
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT

    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    te = bundle.clip.encoders[0].module.module
    with torch.no_grad():
        want = te(**tok(["thing 7"], return_tensors="pt")).pooler_output
    assert torch.allclose(boxes[7].embedding, want[0].float(), atol=1e-5)
    with pytest.raises(ValueError, match="gligen_textbox_model.*at most 30"):
        GLIGENTextBoxApply().run(None, conditioning_to=cond, clip=bundle.clip, gligen_textbox_model=gligen,
                                 text="one too many", width=8, height=8, x=0, y=0)


# -- the workflow and bad input through the engine -------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory, files):
    r = tmp_path_factory.mktemp("gligenroot")
    (r / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), r / "models" / "checkpoints" / "chisel-demo-v1.safetensors")
    gdir = r / "models" / "gligen"
    gdir.mkdir(parents=True)
    shutil.copy(files["ldm-prefixed-fp16"], gdir / "gligen_sd14_textbox_pruned.safetensors")
    shutil.copy(files["diffusers"], gdir / "diffusers-unet.safetensors")
    shutil.copy(files["sd2"], gdir / "sd2-gligen.safetensors")
    shutil.copy(files["sd1_plain"], gdir / "wide-gligen.safetensors")
    return r


def _workflow(steps=2):
    wf = json.loads((REPO / "workflows" / "gligen.json").read_text())
    for node in wf["nodes"].values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return wf


def _node(wf, type_name, nth=0):
    return [k for k, n in wf["nodes"].items() if n["type"] == type_name][nth]


def test_shipped_gligen_workflow_runs_and_its_boxes_enter_the_cache_key(root):
    eng, _ = make_engine(root)
    wf = _workflow()
    assert wf["meta"]["title"] and set(wf["layout"]["nodes"]) == set(wf["nodes"])
    res = eng.run(wf)
    assert res.status == "success", [e.message for e in res.errors]
    assert (root / "output" / res.outputs["9"]["images"][0]["filename"]).is_file()
    grounded = eng.run(wf, outputs=["8"]).values["8"][0]
    box = _node(wf, "GLIGENTextBoxApply", 1)
    wf["nodes"][box]["inputs"]["x"] = 0
    moved = eng.run(wf, outputs=["8"])
    assert "3" in moved.executed and (moved.values["8"][0] - grounded).abs().max() > 1e-4
    plain = _workflow()
    plain["nodes"]["3"]["inputs"]["positive"] = {"node": "6", "output": "CONDITIONING"}
    assert (eng.run(plain, outputs=["8"]).values["8"][0] - grounded).abs().max() > 1e-3
    again = eng.run(_workflow(), outputs=["8"])
    assert "3" in again.cached and torch.equal(again.values["8"][0], grounded)
    # a diffusers GLIGEN UNet's layers, through the same loader: the same model (the published file is fp16)
    wf = _workflow()
    wf["nodes"][_node(wf, "GLIGENLoader")]["inputs"]["gligen_name"] = "diffusers-unet.safetensors"
    other = eng.run(wf, outputs=["8"])
    assert other.status == "success" and torch.allclose(other.values["8"][0], grounded, atol=5e-3)


def test_bad_boxes_and_gligen_models_fail_before_the_first_step(root, monkeypatch):
    from nodes.sampling import SAMPLERS

    eng, _ = make_engine(root)
    steps = []
    euler = SAMPLERS["euler"]
    monkeypatch.setitem(SAMPLERS, "euler",
                        dataclasses.replace(euler, function=lambda *a, **k: steps.append(1) or euler(*a, **k)))
    wf = _workflow()
    wf["nodes"][_node(wf, "GLIGENTextBoxApply", 1)]["inputs"].update(x=64, y=8)
    err = next(e for e in eng.run(wf).errors if e.node_type == "KSampler")
    assert "positive" in err.message and "'a blue square'" in err.message and "outside the 64x64 image" in err.message
    wf = _workflow()
    wf["nodes"][_node(wf, "GLIGENLoader")]["inputs"]["gligen_name"] = "sd2-gligen.safetensors"
    err = next(e for e in eng.run(wf).errors if e.node_type == "KSampler")
    assert "positive" in err.message and "does not fit this SD1.x model" in err.message
    wf = _workflow()
    wf["nodes"][_node(wf, "GLIGENLoader")]["inputs"]["gligen_name"] = "wide-gligen.safetensors"
    err = next(e for e in eng.run(wf).errors if e.node_type == "GLIGENTextBoxApply")
    assert "gligen_textbox_model" in err.message and "64-wide" in err.message and "32-wide" in err.message
    assert steps == []


def test_validation_names_a_missing_gligen_file(root):
    eng, _ = make_engine(root)
    wf = _workflow()
    loader = _node(wf, "GLIGENLoader")
    wf["nodes"][loader]["inputs"]["gligen_name"] = "nope.safetensors"
    _, errors = eng.validate(wf)
    assert any(e.node_id == loader and e.input == "gligen_name" for e in errors)

"""The saved classic pipelines (workflows/*.json) run through the engine on tiny checkpoints, with a tiny LoRA made
here, and do what they claim: img2img starts from the encoded image at the right sigma, inpainting keeps the
unmasked latent (and feeds an inpainting UNet its 9 channels), outpainting keeps the original, the hires fix gives
the larger size, a LoRA at strength 0 is no LoRA and never leaves the cached base modified, an area prompt changes
its area more than elsewhere, SDXL base -> refiner hands over the leftover noise exactly, batch entries get their
own noise. Bad input gets a clear error."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import (
    assert_close_to_scale,
    make_engine,
    tiny_file,
    tiny_lora_layers,
    write_lora,
)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SHIPPED = ["img2img", "inpaint", "outpaint", "hires_fix", "lora", "area_composition", "sdxl_base_refiner"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A Chisel root holding the names the shipped workflows use, as tiny models, plus the example inputs."""
    r = tmp_path_factory.mktemp("classic")
    ck = r / "models" / "checkpoints"
    ck.mkdir(parents=True)
    for name, family in (("chisel-demo-v1.safetensors", "sd1"), ("tiny-sd1-inpaint.safetensors", "sd1_inpaint"),
                         ("sd_xl_base_1.0.safetensors", "sdxl"), ("sd_xl_refiner_1.0.safetensors", "sdxl_refiner")):
        shutil.copy(tiny_file(family), ck / name)
    loras = r / "models" / "loras"
    write_lora(loras / "my-lora.safetensors", "sd1", tiny_lora_layers("sd1", seed=3), "kohya", alpha=2.0)
    write_lora(loras / "xl-lora.safetensors", "sdxl", tiny_lora_layers("sdxl", seed=4), "peft")
    (r / "input").mkdir()
    for f in (WORKFLOWS / "assets").iterdir():
        shutil.copy(f, r / "input" / f.name)
    return r


def load(name: str, steps: int | None = 4) -> dict:
    """A shipped workflow with its example images taken from input/ by name and fewer steps (speed)."""
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in wf["nodes"].values():
        ins = node["inputs"]
        if node["type"] == "LoadImage":
            ins["image"] = Path(ins["image"]).name
        if steps is not None and "steps" in ins:
            ins["steps"] = steps
    return wf


def run(eng, wf, *outputs):
    res = eng.run(wf, outputs=list(outputs) or None)
    assert res.status == "success", [e.message for e in res.errors]
    return res


def first_error(res) -> str:
    assert res.status == "error"
    return " | ".join(e.message for e in res.errors)


# -- the files ----------------------------------------------------------------------------------------------------

def test_every_shipped_workflow_is_documented_laid_out_and_valid(root, monkeypatch):
    from graph.comfy_format import to_comfy_api
    from graph.workflow import parse_workflow

    monkeypatch.chdir(REPO)  # the example images are given as paths relative to the repository
    eng, _ = make_engine(root)
    for name in SHIPPED:
        wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert wf["format"] == "chisel-workflow" and wf["meta"]["title"] and len(wf["meta"]["description"]) > 80
        positions = wf["layout"]["nodes"]
        assert set(positions) == set(wf["nodes"]), name
        assert len({tuple(p["pos"]) for p in positions.values()}) == len(positions), f"{name}: overlapping nodes"
        plan, errors = eng.validate(wf)
        assert errors == [] and plan is not None, (name, [e.message for e in errors])
        api = to_comfy_api(parse_workflow(wf, eng.registry), eng.registry)  # shares ComfyUI's node names
        assert {v["class_type"] for v in api.values()} == {n["type"] for n in wf["nodes"].values()}
    demo = [n for n in SHIPPED if n != "sdxl_base_refiner"]
    for name in demo:
        wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert {n["inputs"].get("ckpt_name") for n in wf["nodes"].values()} - {None} == {"chisel-demo-v1.safetensors"}


# -- img2img ------------------------------------------------------------------------------------------------------

def test_img2img_starts_from_the_encoded_image_at_the_right_sigma(root, monkeypatch):
    from nodes.sampling import SAMPLERS, calculate_sigmas, initial_noise

    eng, _ = make_engine(root)
    wf = load("img2img", steps=4)
    wf["nodes"]["3"]["inputs"]["denoise"] = 0.5
    seen = {}
    euler = SAMPLERS["euler"]

    def spy(model, x, sigmas, **kw):
        seen["x"], seen["sigmas"] = x.clone(), sigmas.clone()
        return euler(model, x, sigmas, **kw)

    monkeypatch.setitem(SAMPLERS, "euler", dataclasses.replace(euler, function=spy))
    res = run(eng, wf, "11", "3", "4")
    model = res.values["4"][0]
    encoded = res.values["11"][0]["samples"]
    ms = model.model_sampling
    full = calculate_sigmas(ms, "normal", 8)  # 4 steps at denoise 0.5: the last 4 of an 8-step schedule
    assert torch.equal(seen["sigmas"], full[4:])
    assert 0 < float(seen["sigmas"][0]) < 0.5 * ms.sigma_max
    want = model.latent_format.process_in(encoded) + initial_noise(encoded.shape, 42) * float(full[4])
    assert torch.allclose(seen["x"], want, atol=1e-5)
    out = res.values["3"][0]["samples"]
    assert out.shape == encoded.shape == (1, 4, 8, 8)


# -- inpainting and outpainting ----------------------------------------------------------------------------------

def _latent_mask(noise_mask, h, w):
    return F.interpolate(noise_mask[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("name", ["inpaint", "outpaint"])
def test_inpaint_and_outpaint_resample_only_the_masked_area(root, name):
    eng, _ = make_engine(root)
    res = run(eng, load(name), "11", "3", "9")
    enc, out = res.values["11"][0], res.values["3"][0]["samples"]
    h, w = out.shape[-2:]
    assert (h, w) == ((8, 8) if name == "inpaint" else (12, 12))  # outpaint: 64 + 2 x 16 pixels
    m = _latent_mask(enc["noise_mask"], h, w)
    keep = (m == 0)[:, None].expand_as(out)
    assert keep.any() and (~keep).any()
    assert torch.allclose(out[keep], enc["samples"][keep], atol=1e-5)  # untouched where not masked
    assert (out[~keep] - enc["samples"][~keep]).abs().mean() > 1e-2  # re-sampled where masked
    saved = res.outputs["9"]["images"][0]
    from PIL import Image
    assert Image.open(root / "output" / saved["filename"]).size == (w * 8, h * 8)


def test_vae_encode_for_inpaint_grays_the_masked_pixels_and_grows_the_mask():
    from nodes.library.latent import inpaint_inputs

    pixels = torch.rand(1, 40, 40, 3)
    mask = torch.zeros(1, 40, 40)
    mask[:, 16:24, 16:24] = 1
    gray, grown = inpaint_inputs(pixels, mask, 8, grow_mask_by=6)
    assert torch.all(gray[0, 16:24, 16:24] == 0.5) and torch.equal(gray[0, :16], pixels[0, :16])
    assert grown[0, 16:24, 16:24].eq(1).all() and grown.sum() > mask.sum()
    # a 6x6 box: 2 pixels up/left, 3 down/right (box sizes are even or odd; the odd pixel goes down/right)
    assert grown[0, 14, 14] == 1 and grown[0, 13, 13] == 0 and grown[0, 26, 26] == 1 and grown[0, 27, 27] == 0
    # a half-size mask of the same aspect is scaled up; another aspect ratio is refused
    _, grown2 = inpaint_inputs(pixels, mask[:, ::2, ::2], 8, grow_mask_by=0)
    assert grown2.shape == (1, 40, 40)
    with pytest.raises(ValueError, match="aspect ratio differs"):
        inpaint_inputs(pixels, torch.zeros(1, 40, 20), 8, 6)


def test_inpainting_checkpoint_gets_the_mask_and_masked_image_as_extra_channels(root):
    eng, services = make_engine(root)
    wf = load("inpaint", steps=2)
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny-sd1-inpaint.safetensors"
    bundle = services.models.load_checkpoint(root / "models" / "checkpoints" / "tiny-sd1-inpaint.safetensors")
    assert bundle.model.is_inpaint
    seen = []
    hook = bundle.model.unet.module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        res = run(eng, wf, "11", "3")
    finally:
        hook.remove()
    enc = res.values["11"][0]
    assert len(seen) == 2 and all(x.shape == (2, 9, 8, 8) for x in seen)  # cond + uncond, 4 + 1 + 4 channels
    m = _latent_mask(enc["noise_mask"], 8, 8)
    lat = bundle.model.latent_format.process_in(enc["samples"])
    for x in seen:
        assert torch.allclose(x[:, 4], m.expand(2, -1, -1), atol=1e-6)
        assert torch.allclose(x[:, 5:], lat.expand(2, -1, -1, -1), atol=1e-6)
    out = res.values["3"][0]["samples"]
    keep = (m == 0)[:, None].expand_as(out)
    assert torch.allclose(out[keep], enc["samples"][keep], atol=1e-5)


# -- hires fix and batches ------------------------------------------------------------------------------------------

def test_hires_fix_gives_the_larger_size_and_batch_entries_their_own_noise(root):
    from PIL import Image

    eng, _ = make_engine(root)
    wf = load("hires_fix")
    wf["nodes"]["5"]["inputs"]["batch_size"] = 2
    res = run(eng, wf, "3", "11", "9")
    first, final = res.values["3"][0]["samples"], res.values["11"][0]["samples"]
    assert first.shape == (2, 4, 8, 8) and final.shape == (2, 4, 12, 12)
    files = res.outputs["9"]["images"]
    assert len(files) == 2 and Image.open(root / "output" / files[0]["filename"]).size == (96, 96)
    assert (final[0] - final[1]).abs().mean() > 1e-2  # each entry its own noise
    # entry 1 picked from the batch before sampling gets the very noise it had in the batch: same result
    picked = copy.deepcopy(wf)
    picked["nodes"]["20"] = {"type": "LatentFromBatch",
                             "inputs": {"samples": {"node": "5", "output": "LATENT"}, "batch_index": 1, "length": 1}}
    picked["nodes"]["3"]["inputs"]["latent_image"] = {"node": "20", "output": "LATENT"}
    res2 = run(eng, picked, "11")
    # (a batch of 1 vs 2 through the UNet: float32 rounding only, relative to latents of ~1e2)
    assert_close_to_scale(res2.values["11"][0]["samples"][0], final[1])
    assert not torch.allclose(res2.values["11"][0]["samples"][0], final[0], rtol=1e-2, atol=1e-2)


# -- LoRA -------------------------------------------------------------------------------------------------------

def _without_lora(wf: dict) -> dict:
    wf = copy.deepcopy(wf)
    del wf["nodes"]["10"]
    del wf["layout"]["nodes"]["10"]
    for nid, out in (("6", "CLIP"), ("7", "CLIP")):
        wf["nodes"][nid]["inputs"]["clip"] = {"node": "4", "output": out}
    wf["nodes"]["3"]["inputs"]["model"] = {"node": "4", "output": "MODEL"}
    return wf


def _snapshot(bundle_model, bundle_clip):
    mods = [bundle_model.unet.module] + [e.module.module for e in bundle_clip.encoders]
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in mods], mods


def test_lora_strength_zero_is_no_lora_and_the_cached_base_stays_pristine(root):
    eng, services = make_engine(root)
    wf = load("lora")
    base = run(eng, _without_lora(wf), "4", "3")
    model, clip, _ = base.values["4"]
    snap, mods = _snapshot(model, clip)
    plain = base.values["3"][0]["samples"]

    def with_strengths(sm, sc):
        w = copy.deepcopy(wf)
        w["nodes"]["10"]["inputs"].update(strength_model=sm, strength_clip=sc)
        res = run(eng, w, "10", "3")
        for before, m in zip(snap, mods):  # the cached modules are exactly as loaded after every run
            after = m.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)
        return res

    zero = with_strengths(0.0, 0.0)
    assert torch.equal(zero.values["3"][0]["samples"], plain)
    assert zero.values["10"][0] is model and zero.values["10"][1] is clip  # strength 0: the input handles
    full = with_strengths(1.0, 1.0)
    assert "4" in full.cached  # the checkpoint is not loaded again
    lora_model, lora_clip = full.values["10"]
    assert lora_model.unet is model.unet and lora_model is not model  # same modules, another handle
    d_full = (full.values["3"][0]["samples"] - plain).abs().mean()
    half = with_strengths(0.5, 1.0)
    assert set(half.executed) == {"10", "6", "7", "3"}  # only the LoRA node and what follows it re-run
    assert {"4", "5"} <= set(half.cached)
    d_half = (half.values["3"][0]["samples"] - plain).abs().mean()
    clip_only = with_strengths(0.0, 1.0)
    d_clip = (clip_only.values["3"][0]["samples"] - plain).abs().mean()
    assert d_full > 1e-3 and d_half > 1e-4 and d_clip > 1e-4
    # the cached base model still samples exactly as before (a fresh result cache, the same loaded modules)
    from graph.engine import Engine

    again = run(Engine(eng.registry, services=services, paths=eng.paths), _without_lora(wf), "3")
    assert torch.equal(again.values["3"][0]["samples"], plain)
    assert services.models.loads == 1


# -- area composition --------------------------------------------------------------------------------------------

def test_area_prompt_changes_its_own_area_more_than_elsewhere(root):
    eng, _ = make_engine(root)
    wf = load("area_composition", steps=3)
    a = run(eng, wf, "3").values["3"][0]["samples"]
    assert a.shape == (1, 4, 8, 16)
    other = copy.deepcopy(wf)
    other["nodes"]["12"]["inputs"]["text"] = "a yellow triangle on a black background"
    b = run(eng, other, "3").values["3"][0]["samples"]
    diff = (a - b).abs()
    left, right = diff[..., :8].mean(), diff[..., 8:].mean()
    assert left > 1e-3 and left > 2.0 * right, (float(left), float(right))


# -- SDXL base -> refiner ----------------------------------------------------------------------------------------

def _small_sdxl(steps=6, handoff=4) -> dict:
    wf = load("sdxl_base_refiner", steps=steps)
    wf["nodes"]["5"]["inputs"].update(width=64, height=64)
    wf["nodes"]["10"]["inputs"]["end_at_step"] = handoff
    wf["nodes"]["11"]["inputs"]["start_at_step"] = handoff
    return wf


def test_sdxl_base_to_refiner_hands_over_the_leftover_noise(root):
    eng, _ = make_engine(root)
    # With the base model in both places, the two halves must compose into exactly one full run.
    same = _small_sdxl()
    for nid in ("15", "16"):
        same["nodes"][nid]["inputs"]["clip"] = {"node": "4", "output": "CLIP"}
    same["nodes"]["11"]["inputs"]["model"] = {"node": "4", "output": "MODEL"}
    one = copy.deepcopy(same)
    one["nodes"]["10"]["inputs"].update(end_at_step=10000, return_with_leftover_noise="disable")
    split = run(eng, same, "10", "11")
    whole = run(eng, one, "10")
    handed = split.values["10"][0]["samples"]
    assert_close_to_scale(split.values["11"][0]["samples"], whole.values["10"][0]["samples"])
    # the hand-off latent still holds noise: re-running the base's 4 steps fully denoised gives something else
    full4 = copy.deepcopy(same)
    full4["nodes"]["10"]["inputs"]["return_with_leftover_noise"] = "disable"
    assert (run(eng, full4, "10").values["10"][0]["samples"] - handed).abs().mean() > 1e-2
    # the real pipeline: base -> refiner, each with its own text encoders
    res = run(eng, _small_sdxl(), "10", "11", "9")
    assert res.values["11"][0]["samples"].shape == (1, 4, 8, 8)
    assert torch.isfinite(res.values["11"][0]["samples"]).all()
    assert not torch.equal(res.values["11"][0]["samples"], res.values["10"][0]["samples"])


def test_ksampler_advanced_step_window_edges():
    from sd_fixtures import tiny_file as tf

    from nodes.library.conditioning import CLIPTextEncode
    from nodes.library.sampling import KSamplerAdvanced
    from nodes.memory.manager import ModelManager

    b = ModelManager("cpu").load_checkpoint(tf("sd1"))
    cond = CLIPTextEncode().run(None, text="x", clip=b.clip)[0]
    lat = {"samples": torch.randn(1, 4, 4, 4)}

    def adv(start, end, steps=4):
        return KSamplerAdvanced().run(None, b.model, "enable", 1, steps, 5.0, "euler", "normal", cond, cond, lat,
                                      start, end, "disable")[0]["samples"]

    assert torch.equal(adv(4, 10000), lat["samples"])  # starting at the last step: nothing left to do
    assert torch.equal(adv(2, 2), lat["samples"])  # an empty window
    with pytest.raises(ValueError, match="start_at_step 3 is after end_at_step 1"):
        adv(3, 1)


# -- bad input -----------------------------------------------------------------------------------------------------

def test_bad_input_gets_a_clear_error(root):
    from PIL import Image

    eng, _ = make_engine(root)
    # a LoRA made for another family
    wf = load("lora")
    wf["nodes"]["10"]["inputs"]["lora_name"] = "xl-lora.safetensors"
    msg = first_error(eng.run(wf))
    assert "does not fit this sd1 model" in msg and "no place in it" in msg and "SDXL" in msg
    # a mask of another shape than the image
    Image.new("L", (64, 32), 255).save(root / "input" / "wide_mask.png")
    wf = load("inpaint")
    wf["nodes"]["20"] = {"type": "LoadImageMask", "inputs": {"image": "wide_mask.png", "channel": "red"}}
    wf["nodes"]["11"]["inputs"]["mask"] = {"node": "20", "output": "MASK"}
    assert "aspect ratio differs" in first_error(eng.run(wf))
    # an area outside the image
    wf = load("area_composition")
    wf["nodes"]["15"]["inputs"]["x"] = 192
    assert "lies outside the 128x64 image" in first_error(eng.run(wf))
    # a start step after the end step
    wf = _small_sdxl()
    wf["nodes"]["11"]["inputs"].update(start_at_step=5, end_at_step=3)
    assert "start_at_step 5 is after end_at_step 3" in first_error(eng.run(wf))


# -- review fixes: background file writer -----------------------------------------------

def test_save_image_uses_the_background_writer_when_offered(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from nodes.library.image import SaveImage

    class Writer:
        def __init__(self):
            self.taken, self.calls = {"chisel_00002_.png"}, []

        def submit(self, path, write):
            self.calls.append(Path(path).name)
            if Path(path).name in self.taken:
                raise FileExistsError(path)
            tmp = Path(path).with_suffix(".part")
            write(tmp)
            tmp.rename(path)

    (tmp_path / "chisel_00001_.png").write_bytes(b"")
    writer = Writer()
    services = SimpleNamespace(paths=SimpleNamespace(dir=lambda kind: tmp_path), file_writer=writer)
    ctx = SimpleNamespace(services=services, workflow={"nodes": {}}, registry=None, check_interrupted=lambda: None)
    out = SaveImage().run(ctx, torch.rand(2, 8, 8, 3), "chisel")
    names = [f["filename"] for f in out.ui["images"]]
    assert names == ["chisel_00003_.png", "chisel_00004_.png"]  # 1 on disk, 2 pending in the writer
    assert writer.calls == ["chisel_00002_.png", "chisel_00003_.png", "chisel_00004_.png"]
    assert Image.open(tmp_path / names[0]).size == (8, 8) and "workflow" in Image.open(tmp_path / names[0]).text

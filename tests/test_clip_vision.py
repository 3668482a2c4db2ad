"""CLIP vision and style models: both published file layouts load to the network that was saved; CLIP Vision Encode
equals transformers' model called directly on CLIPImageProcessor's pixels; the preprocessing matches
CLIPImageProcessor; the style adapter matches its published formula written out here; Apply Style Model appends the
tokens; wrong files and wrong inputs fail with errors naming what is wrong; the nodes match ComfyUI's interface."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, tiny_file

from nodes.library.clip_vision import (
    CLIPVisionEncode,
    CLIPVisionLoader,
    StyleModelApply,
    StyleModelLoader,
    unCLIPConditioning,
)
from nodes.loading.errors import WrongFileKind
from nodes.memory.manager import ModelManager
from nodes.testing import vision as tv
from nodes.vision import clip_vision
from nodes.vision.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess

MORE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-more-nodes.json"
NODES = ("CLIPVisionLoader", "CLIPVisionEncode", "unCLIPConditioning", "StyleModelLoader", "StyleModelApply",
         "unCLIPCheckpointLoader", "ImageOnlyCheckpointLoader")


@pytest.fixture(scope="module")
def tower():
    return tv.build_clip_vision(width=32, layers=2, heads=4, patch=8, image_size=32, projection=24, seed=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tower):
    d = tmp_path_factory.mktemp("vision")
    style = tv.style_adapter_state(width=32, context=32, layers=2, tokens=4, seed=2)
    return {"transformers": tv.write_clip_vision(d / "cv.safetensors", tower),
            "open_clip": tv.write_clip_vision(d / "cv-open.safetensors", tower, "open_clip", ""),
            "unclip": tv.write_clip_vision(d / "cv-unclip.safetensors", tower, "open_clip", "embedder.model."),
            "style": tv.write_style_model(d / "style.safetensors", style, heads=4), "style_state": style}


def _image(h, w, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, h // 8 + 1, w // 8 + 1, generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(batch, 3, h, w, generator=g)).permute(0, 2, 3, 1)


def _processor(size, crop=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import CLIPImageProcessor

        if crop:
            return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False)


def _reference_pixels(image, size, crop=True):
    from PIL import Image

    proc = _processor(size, crop)
    rows = [Image.fromarray((img.numpy() * 255).round().astype("uint8")) for img in image]
    return torch.from_numpy(np.asarray(proc(images=rows, return_tensors="np")["pixel_values"]))


# -- preprocessing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 200), (97, 131), (64, 64), (224, 224), (500, 333)])
@pytest.mark.parametrize("crop", [True, False])
def test_preprocessing_matches_clip_image_processor(shape, crop):
    """Same recipe as transformers' CLIPImageProcessor (which resizes 8-bit images with PIL): at most one 8-bit level
    apart (PIL's fixed-point filter rounds differently from torch's), identical where no resize happens."""
    image = _image(*shape, seed=sum(shape))
    ours, ref = clip_preprocess(image, 224, crop), _reference_pixels(image, 224, crop)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    levels = ((ours - ref) * std * 255).abs()
    assert levels.max() <= 1.0 + 1e-3
    assert levels.mean() < 0.5
    if shape == (224, 224):
        assert levels.max() < 1e-3
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(ours * std + mean, (ours * std + mean).clamp(0, 1), atol=1e-6)


# -- loading ------------------------------------------------------------------------------------------------------

def _open_clip_reference(state, prefix, pixels, heads):
    """OpenCLIP's ViT forward written from its published definition, on the file's own tensors."""
    p = prefix + "visual."
    w = state[p + "conv1.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = state[p + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + state[p + "positional_embedding"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), state[p + "ln_pre.weight"], state[p + "ln_pre.bias"], 1e-5)
    hidden = [x]
    i = 0
    while f"{p}transformer.resblocks.{i}.ln_1.weight" in state:
        b = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), state[b + "ln_1.weight"], state[b + "ln_1.bias"], 1e-5)
        q, k, v = F.linear(h, state[b + "attn.in_proj_weight"], state[b + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5, -1) @ split(v)
        att = att.transpose(1, 2).reshape(x.shape)
        x = x + F.linear(att, state[b + "attn.out_proj.weight"], state[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), state[b + "ln_2.weight"], state[b + "ln_2.bias"], 1e-5)
        h = F.gelu(F.linear(h, state[b + "mlp.c_fc.weight"], state[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, state[b + "mlp.c_proj.weight"], state[b + "mlp.c_proj.bias"])
        hidden.append(x)
        i += 1
    pooled = F.layer_norm(x[:, 0], (width,), state[p + "ln_post.weight"], state[p + "ln_post.bias"], 1e-5)
    return x, hidden[-2], pooled @ state[p + "proj"]


@pytest.mark.parametrize("layout", ["transformers", "open_clip", "unclip"])
def test_every_layout_loads_the_saved_network(files, tower, layout):
    from safetensors.torch import load_file

    got = clip_vision.load_clip_vision(files[layout])
    assert got.layout == ("transformers" if layout == "transformers" else "open_clip")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        have = got.module(pixel_values=pixels, output_hidden_states=True)
        if layout == "transformers":
            want = tower(pixel_values=pixels, output_hidden_states=True)
            last, penult, embeds = want.last_hidden_state, want.hidden_states[-2], want.image_embeds
        else:
            prefix = "embedder.model." if layout == "unclip" else ""
            last, penult, embeds = _open_clip_reference(load_file(str(files[layout])), prefix, pixels, heads=4)
    for a, b in ((have.last_hidden_state, last), (have.hidden_states[-2], penult), (have.image_embeds, embeds)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def test_published_hyperparameters_are_assumed_without_metadata(tmp_path, tower):
    """Shapes alone: ViT-L's width gets 16 heads and quick-GELU, as OpenAI's ViT-L/14 (ComfyUI's clip_vision_l)."""
    cfg = clip_vision.infer_config({"vision_model.embeddings.class_embedding": torch.empty(1024),
                                    "vision_model.embeddings.patch_embedding.weight": torch.empty(1024, 3, 14, 14),
                                    "vision_model.embeddings.position_embedding.weight": torch.empty(257, 1024),
                                    "vision_model.encoder.layers.0.mlp.fc1.weight": torch.empty(4096, 1024),
                                    "visual_projection.weight": torch.empty(768, 1024)})
    assert (cfg["num_attention_heads"], cfg["hidden_act"], cfg["image_size"], cfg["projection_dim"]) == \
        (16, "quick_gelu", 224, 768)
    plain = tv.write_clip_vision(tmp_path / "plain.safetensors", tower, metadata=False)
    assert clip_vision.load_clip_vision(plain).config["num_attention_heads"] == 1  # 32 wide: one head per 64


def test_files_that_are_no_clip_vision_say_what_they_are(files, tmp_path):
    with pytest.raises(WrongFileKind, match="Stable Diffusion checkpoint without an image encoder"):
        clip_vision.load_clip_vision(tiny_file("sd1"))
    with pytest.raises(WrongFileKind, match="style adapter.*Load Style Model"):
        clip_vision.load_clip_vision(files["style"])
    from nodes.vision.style_model import load_style_model

    with pytest.raises(WrongFileKind, match="CLIP vision model.*Load CLIP Vision"):
        load_style_model(files["transformers"])


# -- encoding -----------------------------------------------------------------------------------------------------

def _ctx(files, **names):
    return FakeContext(services=None, files={k: files[v] for k, v in names.items()}) if names else None


def _services():
    class Services:
        models = ModelManager("cpu")
        paths = None
    return Services()


@pytest.mark.parametrize("shape,crop", [((32, 32), "center"), ((48, 40), "center"), ((40, 56), "none")])
def test_encode_matches_transformers_called_directly(files, tower, shape, crop):
    ctx = FakeContext(services=_services(), files={"clip_name": files["transformers"]})
    cv = CLIPVisionLoader().run(ctx, clip_name="cv.safetensors")[0]
    image = _image(*shape, seed=3, batch=2)
    out = CLIPVisionEncode().run(ctx, clip_vision=cv, image=image, crop=crop)[0]
    pixels = _reference_pixels(image, 32, crop == "center")
    with torch.no_grad():
        want = tower(pixel_values=pixels, output_hidden_states=True)
    assert out.image_embeds.shape == (2, 24) and out.last_hidden_state.shape == (2, 17, 32)
    # the same pixels up to one 8-bit level after a resize (see the preprocessing test): embeddings within ~1e-2
    tol = 1e-5 if shape == (32, 32) else 2e-2
    for a, b in ((out.image_embeds, want.image_embeds), (out.last_hidden_state, want.last_hidden_state),
                 (out.penultimate_hidden_states, want.hidden_states[-2])):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())
    other = CLIPVisionEncode().run(ctx, clip_vision=cv, image=image.flip(2), crop=crop)[0]
    assert (other.image_embeds - out.image_embeds).abs().max() > 1e-2  # the image matters


def test_encode_refuses_what_is_no_image(files):
    ctx = FakeContext(services=_services(), files={"clip_name": files["transformers"]})
    cv = CLIPVisionLoader().run(ctx, clip_name="cv.safetensors")[0]
    with pytest.raises(ValueError, match="CLIPVisionEncode: input 'image'"):
        CLIPVisionEncode().run(ctx, clip_vision=cv, image=torch.rand(2, 3, 32, 32), crop="center")


# -- style model --------------------------------------------------------------------------------------------------

def _style_reference(s, hidden, heads=4):
    """T2I-Adapter's StyleAdapter forward, written from its published definition."""
    tokens, width = s["style_embedding"].shape[1:]
    x = torch.cat([hidden, s["style_embedding"].expand(hidden.shape[0], -1, -1)], 1)
    x = F.layer_norm(x, (width,), s["ln_pre.weight"], s["ln_pre.bias"], 1e-5)
    i = 0
    while f"transformer_layes.{i}.ln_1.weight" in s:
        b = f"transformer_layes.{i}."
        h = F.layer_norm(x, (width,), s[b + "ln_1.weight"], s[b + "ln_1.bias"], 1e-5)
        q, k, v = F.linear(h, s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5, -1) @ split(v)
        att = att.transpose(1, 2).reshape(x.shape)
        x = x + F.linear(att, s[b + "attn.out_proj.weight"], s[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), s[b + "ln_2.weight"], s[b + "ln_2.bias"], 1e-5)
        h = F.linear(h, s[b + "mlp.c_fc.weight"], s[b + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), s[b + "mlp.c_proj.weight"], s[b + "mlp.c_proj.bias"])
        i += 1
    return F.layer_norm(x[:, -tokens:], (width,), s["ln_post.weight"], s["ln_post.bias"], 1e-5) @ s["proj"]


def _cond(width=32, tokens=77, seed=0):
    return [[torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed)), {"strength": 1.0}]]


def test_clip_vision_and_style_loaders_report_their_stages(files):
    from nodes.vision.clip_vision import CLIP_VISION_STAGES
    from nodes.vision.style_model import STYLE_MODEL_STAGES

    ctx = FakeContext(services=_services(), files={"clip_name": files["transformers"],
                                                   "style_model_name": files["style"]})
    CLIPVisionLoader().run(ctx, clip_name="cv.safetensors")
    StyleModelLoader().run(ctx, style_model_name="style.safetensors")
    assert ctx.stages == [(i, 2, name) for stages in (CLIP_VISION_STAGES, STYLE_MODEL_STAGES)
                          for i, name in enumerate(stages)]


def test_style_model_appends_the_published_tokens(files):
    ctx = FakeContext(services=_services(), files={"clip_name": files["transformers"],
                                                   "style_model_name": files["style"]})
    cv = CLIPVisionLoader().run(ctx, clip_name="cv.safetensors")[0]
    sm = StyleModelLoader().run(ctx, style_model_name="style.safetensors")[0]
    out = CLIPVisionEncode().run(ctx, clip_vision=cv, image=_image(32, 32, batch=2), crop="center")[0]
    cond = _cond()
    got = StyleModelApply().run(ctx, conditioning=cond, style_model=sm, clip_vision_output=out, strength=0.5,
                                strength_type="multiply")[0]
    want = _style_reference(files["style_state"], out.last_hidden_state)  # [2, 4, 32]
    assert got[0][0].shape == (1, 77 + 8, 32)
    assert torch.equal(got[0][0][:, :77], cond[0][0])
    assert torch.allclose(got[0][0][:, 77:], 0.5 * want.reshape(1, 8, 32), atol=1e-5)
    assert got[0][1] == {"strength": 1.0} and got[0][1] is not cond[0][1]
    same = StyleModelApply().run(ctx, conditioning=cond, style_model=sm, clip_vision_output=out, strength=1.0,
                                 strength_type="attn_bias")[0]
    assert torch.allclose(same[0][0][:, 77:], want.reshape(1, 8, 32), atol=1e-5)
    assert "attention_bias" not in same[0][1]  # strength 1: no bias (log 1 = 0)
    biased = StyleModelApply().run(ctx, conditioning=cond, style_model=sm, clip_vision_output=out, strength=0.5,
                                   strength_type="attn_bias")[0]
    assert torch.equal(biased[0][0], same[0][0])  # the tokens unscaled; the strength is a logit bias
    assert torch.allclose(biased[0][1]["attention_bias"], torch.tensor([0.0] * 77 + [math.log(0.5)] * 8))
    off = StyleModelApply().run(ctx, conditioning=cond, style_model=sm, clip_vision_output=out, strength=0.0,
                                strength_type="attn_bias")[0]
    assert torch.equal(off[0][0], cond[0][0])  # log 0 = -inf: the tokens get no attention at all
    with pytest.raises(ValueError, match="StyleModelApply: input 'conditioning' is 48 wide"):
        StyleModelApply().run(ctx, conditioning=_cond(48), style_model=sm, clip_vision_output=out, strength=1.0,
                              strength_type="multiply")


def test_style_model_refuses_features_of_another_width(files, tmp_path):
    wide = tv.build_clip_vision(width=48, heads=4, seed=4)
    path = tv.write_clip_vision(tmp_path / "wide.safetensors", wide)
    ctx = FakeContext(services=_services(), files={"clip_name": path, "style_model_name": files["style"]})
    cv = CLIPVisionLoader().run(ctx, clip_name="wide.safetensors")[0]
    sm = StyleModelLoader().run(ctx, style_model_name="style.safetensors")[0]
    out = CLIPVisionEncode().run(ctx, clip_vision=cv, image=_image(32, 32), crop="center")[0]
    with pytest.raises(ValueError, match="clip_vision_output.*48 wide"):
        StyleModelApply().run(ctx, conditioning=_cond(), style_model=sm, clip_vision_output=out, strength=1.0,
                              strength_type="multiply")


# -- unCLIP conditioning ------------------------------------------------------------------------------------------

def test_unclip_conditioning_records_each_image_and_leaves_the_input_alone(files):
    ctx = FakeContext(services=_services(), files={"clip_name": files["transformers"]})
    cv = CLIPVisionLoader().run(ctx, clip_name="cv.safetensors")[0]
    out = CLIPVisionEncode().run(ctx, clip_vision=cv, image=_image(32, 32), crop="center")[0]
    cond = _cond()
    one = unCLIPConditioning().run(ctx, conditioning=cond, clip_vision_output=out, strength=0.7,
                                   noise_augmentation=0.1)[0]
    two = unCLIPConditioning().run(ctx, conditioning=one, clip_vision_output=out, strength=1.0,
                                   noise_augmentation=0.0)[0]
    assert "unclip_conditioning" not in cond[0][1]
    assert [(u["strength"], u["noise_augmentation"]) for u in one[0][1]["unclip_conditioning"]] == [(0.7, 0.1)]
    assert [u["strength"] for u in two[0][1]["unclip_conditioning"]] == [0.7, 1.0]
    assert unCLIPConditioning().run(ctx, conditioning=cond, clip_vision_output=out, strength=0.0,
                                    noise_augmentation=0.0)[0] is cond
    with pytest.raises(ValueError, match="unCLIPConditioning: input 'clip_vision_output'"):
        unCLIPConditioning().run(ctx, conditioning=cond, clip_vision_output=cond, strength=1.0,
                                 noise_augmentation=0.0)


# -- interface ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", NODES)
def test_nodes_match_comfyui(type_name):
    from graph.registry import NodeRegistry

    ref = json.loads(MORE.read_text())[type_name]
    cls = NodeRegistry.discover().get(type_name)
    assert [i.name for i in cls.inputs] == ref["input_order"]["required"]
    assert [o.type for o in cls.outputs] == ref["output"]
    assert cls.category == ref["category"] and cls.display_name == ref["display_name"]
    for spec in cls.inputs:
        kind, *rest = ref["input"]["required"][spec.name]
        if isinstance(kind, list):
            assert spec.resolve_choices(None) == kind and spec.default == kind[0]
        elif kind in ("FLOAT", "INT"):
            opts = rest[0]
            assert (spec.default, spec.min, spec.max, spec.step) == (opts["default"], opts["min"], opts["max"],
                                                                     opts["step"])
        elif kind.startswith("<file names"):
            assert spec.files
        else:
            assert spec.type == kind


# -- through the engine: ComfyUI API-format graphs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory, files):
    import shutil

    from PIL import Image

    r = tmp_path_factory.mktemp("visionroot")
    for folder, name, src in (("checkpoints", "sd1.safetensors", tiny_file("sd1")),
                              ("checkpoints", "sdxl.safetensors", tiny_file("sdxl")),
                              ("clip_vision", "clip_vision_g.safetensors", None),
                              ("clip_vision", "not-a-clip-vision.safetensors", tiny_file("sd1")),
                              ("clip_vision", "cv.safetensors", files["transformers"]),
                              ("style_models", "t2iadapter_style.safetensors", files["style"])):
        (r / "models" / folder).mkdir(parents=True, exist_ok=True)
        if src is None:  # a bigG-like encoder for the tiny SDXL: projection as wide as its pooled embedding (48)
            tv.write_clip_vision(r / "models" / folder / name, tv.build_clip_vision(projection=48, seed=6))
        else:
            shutil.copy(src, r / "models" / folder / name)
    (r / "input").mkdir()
    Image.fromarray((_image(48, 40, seed=9)[0].numpy() * 255).round().astype("uint8")).save(r / "input" / "ref.png")
    return r


def _graph(ckpt: str, image_nodes: dict, positive: list) -> dict:
    """txt2img at 64x64 for 2 steps, the positive conditioning taken from ``positive`` (a link)."""
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
            "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "20": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
            **image_nodes,
            "3": {"class_type": "KSampler", "inputs": {
                "model": ["4", 0], "seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                "positive": positive, "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "vision"}}}


def test_sdxl_revision_and_style_model_graphs_run_and_use_the_image(root):
    from sd_fixtures import make_engine

    eng, _ = make_engine(root)
    revision = {"21": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_g.safetensors"}},
                "22": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["21", 0], "image": ["20", 0],
                                                                    "crop": "center"}},
                "23": {"class_type": "unCLIPConditioning", "inputs": {
                    "conditioning": ["6", 0], "clip_vision_output": ["22", 0], "strength": 1.0,
                    "noise_augmentation": 0.1}}}
    style = {"21": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "cv.safetensors"}},
             "22": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["21", 0], "image": ["20", 0],
                                                                 "crop": "none"}},
             "24": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "t2iadapter_style.safetensors"}},
             "23": {"class_type": "StyleModelApply", "inputs": {
                 "conditioning": ["6", 0], "style_model": ["24", 0], "clip_vision_output": ["22", 0],
                 "strength": 1.0, "strength_type": "multiply"}}}
    for ckpt, nodes in (("sdxl.safetensors", revision), ("sd1.safetensors", style)):
        res = eng.run(_graph(ckpt, nodes, ["23", 0]))
        assert res.status == "success", [e.message for e in res.errors]
        assert (root / "output" / res.outputs["9"]["images"][0]["filename"]).is_file()
        with_image = eng.run(_graph(ckpt, nodes, ["23", 0]), outputs=["8"]).values["8"][0]
        text_only = eng.run(_graph(ckpt, nodes, ["6", 0]), outputs=["8"]).values["8"][0]
        assert (with_image - text_only).abs().max() > 1e-3


def test_a_checkpoint_given_as_clip_vision_fails_with_the_node_and_what_the_file_is(root):
    from sd_fixtures import make_engine

    eng, _ = make_engine(root)
    nodes = {"21": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "not-a-clip-vision.safetensors"}},
             "22": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["21", 0], "image": ["20", 0],
                                                                 "crop": "center"}},
             "23": {"class_type": "unCLIPConditioning", "inputs": {
                 "conditioning": ["6", 0], "clip_vision_output": ["22", 0], "strength": 1.0,
                 "noise_augmentation": 0.0}}}
    res = eng.run(_graph("sdxl.safetensors", nodes, ["23", 0]))
    err = next(e for e in res.errors if e.node_type == "CLIPVisionLoader")
    assert "Stable Diffusion checkpoint without an image encoder" in err.message
    nodes["21"]["inputs"]["clip_name"] = "missing.safetensors"
    _, errors = eng.validate(_graph("sdxl.safetensors", nodes, ["23", 0]))
    assert any(e.node_id == "21" and e.input == "clip_name" for e in errors)

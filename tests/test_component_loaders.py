"""UNETLoader, CLIPLoader and DualCLIPLoader on components split out of the tiny checkpoints (a UNet in the
original layout without its prefix; text encoders in the transformers layout, as ComfyUI saves them): every weight
comes back, and the MODEL/CLIP they give compute exactly what the whole checkpoint's do."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_same_weights, tiny_file, tiny_model

from nodes.library.loaders import CheckpointLoaderSimple, CLIPLoader, DualCLIPLoader, UNETLoader
from nodes.loading import errors as E
from nodes.loading.components import TEXT_FILE_STAGES, UNET_FILE_STAGES
from nodes.loading.weights import read_header


def _unet_file(tmp_path, family):
    src = tiny_file(family, "fp32")
    _, _, meta = read_header(src)
    sd = {k[len("model.diffusion_model."):]: v for k, v in load_file(str(src)).items()
          if k.startswith("model.diffusion_model.")}
    path = tmp_path / f"{family}-unet.safetensors"
    save_file(sd, str(path), metadata={"chisel.unet": meta["chisel.unet"]})
    return path


def _te_file(tmp_path, module, name, meta_key=None, family="sdxl"):
    path = tmp_path / f"{name}.safetensors"
    sd = {k if k.startswith("text_model.") or k == "text_projection.weight" else "text_model." + k: v.contiguous()
          for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    _, _, meta = read_header(tiny_file(family, "fp32"))
    save_file(sd, str(path), metadata={"chisel.text": meta[meta_key]} if meta_key else None)
    return path


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unet_loader_gives_the_checkpoints_unet(tmp_path, family):
    path = _unet_file(tmp_path, family)
    model = UNETLoader().run(FakeContext(files={"unet_name": path}), path.name, "default")[0]
    assert model.family == family
    assert_same_weights(tiny_model(family).unet, model.unet.module, torch.float32)
    whole = CheckpointLoaderSimple().run(FakeContext(files={"ckpt_name": tiny_file(family, "fp32")}), "x")[0]
    assert model.config == whole.config
    assert torch.equal(model.model_sampling.sigmas, whole.model_sampling.sigmas)
    assert model.latent_format == whole.latent_format


def test_dual_clip_loader_encodes_like_the_sdxl_checkpoint(tmp_path):
    m = tiny_model("sdxl")
    l_path = _te_file(tmp_path, m.text_encoder, "clip_l", "chisel.text_encoder")
    g_path = _te_file(tmp_path, m.text_encoder_2, "clip_g", "chisel.text_encoder_2")
    clip = DualCLIPLoader().run(FakeContext(files={"clip_name1": g_path, "clip_name2": l_path}), "g", "l", "sdxl",
                                "default")[0]
    whole = CheckpointLoaderSimple().run(FakeContext(files={"ckpt_name": tiny_file("sdxl", "fp32")}), "x")[1]
    a, b = clip.encode("a red square"), whole.encode("a red square")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="one CLIP-L and one OpenCLIP-bigG"):
        DualCLIPLoader().run(FakeContext(files={"clip_name1": l_path, "clip_name2": l_path}), "l", "l", "sdxl",
                             "default")


def test_clip_loader_gives_an_sd1_clip(tmp_path):
    path = _te_file(tmp_path, tiny_model("sd1").text_encoder, "sd1_clip", "chisel.text_encoder", family="sd1")
    clip = CLIPLoader().run(FakeContext(files={"clip_name": path}), path.name, "stable_diffusion", None)[0]
    whole = CheckpointLoaderSimple().run(FakeContext(files={"ckpt_name": tiny_file("sd1", "fp32")}), "x")[1]
    assert clip.family == "sd1" and torch.equal(clip.encode("a cat")[0], whole.encode("a cat")[0])


def _staged(stages):
    return [(i, len(stages), name) for i, name in enumerate(stages)]


def test_component_loaders_report_their_stages(tmp_path):
    """Each stage is reported as it starts (value = stages done); DualCLIPLoader's two files in a row, each stage
    named with its file."""
    ctx = FakeContext(files={"unet_name": _unet_file(tmp_path, "sd1")})
    UNETLoader().run(ctx, "x", "default")
    assert ctx.stages == _staged(UNET_FILE_STAGES)
    m = tiny_model("sdxl")
    l_path = _te_file(tmp_path, m.text_encoder, "clip_l", "chisel.text_encoder")
    g_path = _te_file(tmp_path, m.text_encoder_2, "clip_g", "chisel.text_encoder_2")
    ctx = FakeContext(files={"clip_name1": g_path, "clip_name2": l_path})
    DualCLIPLoader().run(ctx, "g", "l", "sdxl", "default")
    n = len(TEXT_FILE_STAGES)
    assert ctx.stages == [(i, 2 * n, f"{TEXT_FILE_STAGES[i % n]} ({(g_path, l_path)[i // n].name})")
                          for i in range(2 * n)]
    ctx = FakeContext(files={"clip_name": l_path})
    CLIPLoader().run(ctx, "l", "stable_diffusion", None)  # an SDXL CLIP-L alone: an SD1 CLIP
    assert ctx.stages == _staged(TEXT_FILE_STAGES)


def test_wrong_files_are_named(tmp_path):
    with pytest.raises(E.WrongFileKind, match="full checkpoint"):
        UNETLoader().run(FakeContext(files={"unet_name": tiny_file("sd1")}), "x", "default")
    with pytest.raises(E.UnrecognisedArchitecture, match="not a CLIP text encoder"):
        CLIPLoader().run(FakeContext(files={"clip_name": _unet_file(tmp_path, "sd1")}), "x", "stable_diffusion", None)
    with pytest.raises(E.UnrecognisedArchitecture, match="not a Stable Diffusion UNet"):
        p = tmp_path / "other.safetensors"
        save_file({"w": torch.zeros(2)}, str(p))
        UNETLoader().run(FakeContext(files={"unet_name": p}), "x", "default")


def test_malformed_unet_and_text_encoder_files_are_loader_errors_naming_the_file(tmp_path):
    """The family and widths are read from the shapes: a tensor of too few dimensions, an SDXL UNet without
    cross-attention or metadata of the wrong type is a loader error naming the file (raw IndexError,
    StopIteration or ValueError before)."""
    from nodes.loading.components import load_text_encoder_file, load_unet_file

    sd = load_file(str(_unet_file(tmp_path, "sdxl")))
    cases = {
        "flat_label": ({**sd, "label_emb.0.0.weight": sd["label_emb.0.0.weight"].flatten().contiguous()}, None,
                       "label_emb.0.0.weight has shape"),
        "no_cross": ({k: v for k, v in sd.items() if "attn2" not in k}, None, "no cross-attention"),
        "bad_meta": (sd, {"chisel.unet": '{"addition_time_embed_dim": "wide"}'}, "not a whole number"),
    }
    for name, (tensors, meta, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(E.CheckpointError, match=match) as exc:
            load_unet_file(path)
        assert str(path) in str(exc.value)
    g_path = _te_file(tmp_path, tiny_model("sdxl").text_encoder_2, "clip_g", "chisel.text_encoder_2")
    te = load_file(str(g_path))
    te["text_projection.weight"] = torch.zeros(())
    path = tmp_path / "scalar_projection.safetensors"
    save_file(te, str(path))
    with pytest.raises(E.UnrecognisedArchitecture, match="text_projection.weight has shape") as exc:
        load_text_encoder_file(path)
    assert str(path) in str(exc.value)

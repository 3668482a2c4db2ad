"""LoRA: parity with diffusers' load_lora_weights on the same tiny SD1 weights (diffusers/PEFT and kohya files),
SDXL kohya files in the LDM layout, the streamed-module (hook) path, restoring after failures, chaining, and files
Chisel refuses."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, tiny_file, tiny_lora_layers, write_lora

from nodes.library.loaders import LoraLoader, LoraLoaderModelOnly
from nodes.memory.manager import ModelManager
from nodes.patches.lora import LoraError, patched
from nodes.text.tokens import tokenize


def _apply(bundle, path: Path, sm=1.0, sc=1.0, model=None, clip=None):
    ctx = FakeContext(files={"lora_name": path})
    return LoraLoader().run(ctx, model or bundle.model, clip or bundle.clip, path.name, sm, sc)


def test_lora_loaders_report_their_stages(tmp_path):
    from nodes.library.loaders import LORA_STAGES

    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1"))
    path = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1"), "peft", alpha=2.0)
    ctx = FakeContext(files={"lora_name": path})
    LoraLoader().run(ctx, bundle.model, bundle.clip, path.name, 1.0, 1.0)
    assert ctx.stages == [(i, 3, name) for i, name in enumerate(LORA_STAGES)]
    ctx = FakeContext(files={"lora_name": path})
    LoraLoaderModelOnly().run(ctx, bundle.model, path.name, 1.0)
    assert ctx.stages == [(i, 2, name) for i, name in enumerate(LORA_STAGES[:2])]


def _unet_inputs(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        n_time = (unet.config.projection_class_embeddings_input_dim - 48) // unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 48, generator=g),
                                   "time_ids": torch.randn(2, n_time, generator=g)}
    return (x, torch.tensor([500.0, 120.0]), ctx), kw


@torch.no_grad()
def _unet_out(model, args, kw):
    with model.manager.use(model.unet), patched(model.unet, model.lora_for("unet")):
        return model.unet.module(*args, **kw).sample


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_parity_with_diffusers_load_lora_weights(tmp_path, fmt):
    """A tiny LoRA (attention, feed-forward, 1x1 projections, 3x3 resnet convs, time embedding; text-encoder
    attention and MLP; rank 4, alpha 2: scale 0.5) applied by Chisel to the tiny SD1 checkpoint, and by diffusers'
    ``StableDiffusionPipeline.load_lora_weights`` (PEFT layers) to the modules that file was written from.

    Tolerance: both evaluate the same float32 weights; Chisel adds ``0.5 * up @ down`` into each weight, PEFT adds
    ``0.5 * up(down(x))`` to each layer's output, so the only difference is float32 rounding in another order
    (~1e-7 relative per layer; measured ~1e-6 on outputs of magnitude ~1) against a LoRA effect of ~1 on the UNet
    and ~2 on the text features: 1e-4 catches any wrong scale, layer or layout."""
    import peft  # noqa: F401  (a declared test extra: diffusers' LoRA loading needs it; its absence is a failure)
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template
    from nodes.testing import tiny

    path = write_lora(tmp_path / f"tiny-{fmt}.safetensors", "sd1", tiny_lora_layers("sd1"), fmt, alpha=2.0)
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    model, clip = _apply(bundle, path)

    src = tiny.build("sd1")  # fresh modules: load_lora_weights changes them in place
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    pipe = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
                                   scheduler=EulerDiscreteScheduler.from_config(template("sd15", "scheduler")),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path))

    args, kw = _unet_inputs(src.unet)
    with torch.no_grad():
        ref = pipe.unet(*args, **kw).sample
    ours, plain = _unet_out(model, args, kw), _unet_out(bundle.model, args, kw)
    unet_diff = (ours - ref).abs().max().item()
    assert (ours - plain).abs().max() > 0.1  # the LoRA does something
    assert unet_diff < 1e-4, unet_diff

    prompt = "a photo of a red circle"
    with torch.no_grad():
        ref_t = pipe.text_encoder(torch.tensor(tokenize(prompt).ids)).last_hidden_state
    ours_t, _ = clip.encode(prompt)
    plain_t, _ = bundle.clip.encode(prompt)
    text_diff = (ours_t - ref_t).abs().max().item()
    assert (ours_t - plain_t).abs().max() > 0.1
    assert text_diff < 1e-4, text_diff
    print(f"LoRA parity ({fmt}): UNet max diff {unet_diff:.2e}, text encoder max diff {text_diff:.2e}")


def test_sdxl_kohya_file_in_the_ldm_layout_applies_like_the_diffusers_file(tmp_path):
    layers = tiny_lora_layers("sdxl", seed=2)
    kohya = write_lora(tmp_path / "k.safetensors", "sdxl", layers, "kohya", alpha=3.0)
    peft = write_lora(tmp_path / "p.safetensors", "sdxl", layers, "peft", alpha=3.0)
    from safetensors.torch import load_file

    assert any(k.startswith("lora_unet_input_blocks_") for k in load_file(str(kohya)))  # SGM/LDM block names
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sdxl", "fp32"))
    (mk, ck), (mp, cp) = _apply(bundle, kohya), _apply(bundle, peft)
    assert [t for t, _ in ck.options["lora"]] == ["text_encoder", "text_encoder_2"]
    args, kw = _unet_inputs(bundle.model.unet.module)
    a, b, plain = _unet_out(mk, args, kw), _unet_out(mp, args, kw), _unet_out(bundle.model, args, kw)
    assert (a - plain).abs().max() > 0.1 and torch.allclose(a, b, atol=1e-5)
    (ta, pa), (tb, pb), (t0, _) = ck.encode("a cat"), cp.encode("a cat"), bundle.clip.encode("a cat")
    assert (ta - t0).abs().max() > 0.1 and torch.allclose(ta, tb, atol=1e-5) and torch.allclose(pa, pb, atol=1e-5)


def test_streamed_modules_get_the_same_lora_through_hooks(tmp_path):
    """Low-VRAM streaming keeps weights off the device, so the LoRA is applied by forward hooks: same result."""
    path = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1", seed=5), "kohya", alpha=1.0)
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    model, _ = _apply(bundle, path, sm=0.7)
    args, kw = _unet_inputs(bundle.model.unet.module)
    merged = _unet_out(model, args, kw)
    streamed = SimpleNamespace(module=model.unet.module, sequential=True)
    before = {k: v.clone() for k, v in model.unet.module.state_dict().items()}
    with torch.no_grad(), patched(streamed, model.lora_for("unet")):
        hooked = model.unet.module(*args, **kw).sample
    assert torch.allclose(merged, hooked, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.unet.module.state_dict().items())
    assert not model.unet.module._forward_hooks and all(not m._forward_hooks for m in model.unet.module.modules())


def test_weights_are_restored_when_sampling_is_interrupted(tmp_path):
    from graph.node import Interrupted
    from nodes.library.conditioning import CLIPTextEncode
    from nodes.library.latent import EmptyLatentImage
    from nodes.library.sampling import KSampler

    path = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1"), "peft")
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1"))
    model, clip = _apply(bundle, path)
    unet = bundle.model.unet.module
    before = {k: v.clone() for k, v in unet.state_dict().items()}

    class Stop(FakeContext):
        def progress(self, value, total, preview=None):
            raise Interrupted()

    cond = CLIPTextEncode().run(None, text="x", clip=clip)[0]
    lat = EmptyLatentImage().run(None, 32, 32, 1)[0]
    with pytest.raises(Interrupted):
        KSampler().run(Stop(), model, 1, 4, 5.0, "euler", "normal", cond, cond, lat, 1.0)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_chained_loras_add_up_and_model_only_ignores_the_text_part(tmp_path):
    path = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1", seed=6), "kohya", alpha=4.0)
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    m3, c3 = _apply(bundle, path, 0.3, 0.3)
    m10, c10 = _apply(bundle, path, 0.7, 0.7, model=m3, clip=c3)
    one, c1 = _apply(bundle, path, 1.0, 1.0)
    assert len(m10.options["lora"]) == 2 and "lora" not in bundle.model.options  # the input is never changed
    args, kw = _unet_inputs(bundle.model.unet.module)
    assert torch.allclose(_unet_out(m10, args, kw), _unet_out(one, args, kw), atol=1e-4)
    assert torch.allclose(c10.encode("a dog")[0], c1.encode("a dog")[0], atol=1e-4)
    (only,) = LoraLoaderModelOnly().run(FakeContext(files={"lora_name": path}), bundle.model, path.name, 1.0)
    assert [t for t, _ in only.options["lora"]] == ["unet"]
    assert torch.allclose(_unet_out(only, args, kw), _unet_out(one, args, kw), atol=1e-5)
    (same,) = LoraLoaderModelOnly().run(FakeContext(files={"lora_name": path}), bundle.model, path.name, 0.0)
    assert same is bundle.model


def test_files_chisel_cannot_apply_are_refused_with_a_reason(tmp_path):
    from safetensors.torch import save_file

    from nodes.patches.lora import read_lora

    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.hada_w1_b": torch.zeros(2, 2)},
              str(tmp_path / "loha.safetensors"))
    with pytest.raises(LoraError, match="LoHa"):
        read_lora(tmp_path / "loha.safetensors")
    save_file({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(LoraError, match="not a LoRA file"):
        read_lora(tmp_path / "ckpt.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraError, match="no matching"):
        read_lora(tmp_path / "half.safetensors")
    # an SD2 LoRA on an SD1 model: names that exist with other shapes, and names that do not exist
    sd2 = write_lora(tmp_path / "sd2.safetensors", "sd2", tiny_lora_layers("sd2"), "kohya")
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sd1"))
    with pytest.raises(LoraError, match=r"does not fit this sd1 model .*have other shapes"):
        _apply(bundle, sd2)

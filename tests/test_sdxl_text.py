"""SDXL text nodes on the tiny SDXL checkpoint: CLIPTextEncodeSDXL encodes text_l with CLIP-L and text_g with
OpenCLIP-bigG (checked against the transformers modules the file was written from, run directly: penultimate hidden
states joined along the width, bigG's projected pooled output), pads the shorter prompt with empty-prompt chunks,
and carries the size conditioning that reaches the UNet's time ids; the refiner node carries the aesthetic score."""
from __future__ import annotations

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, tiny_file, tiny_model

from nodes.library.conditioning import CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from nodes.memory.manager import ModelManager
from nodes.text.tokens import tokenizer


@pytest.fixture(scope="module")
def sdxl():
    return ModelManager("cpu").load_checkpoint(tiny_file("sdxl", "fp32"))


@torch.no_grad()
def _reference(module, text: str, pad: int):
    ids = tokenizer()(text)["input_ids"]
    ids = ids + [pad] * (77 - len(ids))
    out = module(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-2], getattr(out, "text_embeds", None)


def test_each_encoder_gets_its_own_prompt(sdxl):
    m = tiny_model("sdxl")
    cond = CLIPTextEncodeSDXL().run(FakeContext(), sdxl.clip, 896, 640, 16, 8, 1024, 768, "a red square",
                                    "a blue circle")[0]
    emb, opts = cond[0]
    hl, _ = _reference(m.text_encoder, "a blue circle", 49407)
    hg, pooled = _reference(m.text_encoder_2, "a red square", 0)
    want = torch.cat([hl, hg], dim=-1)
    assert emb.shape == want.shape
    assert (emb - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    assert (opts["pooled_output"] - pooled).abs().max() <= 1e-5 * max(1.0, pooled.abs().max().item())
    assert {k: opts[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        {"width": 896, "height": 640, "crop_w": 16, "crop_h": 8, "target_width": 1024, "target_height": 768}
    # the same prompt twice is CLIPTextEncode's result
    same = CLIPTextEncodeSDXL().run(FakeContext(), sdxl.clip, 1024, 1024, 0, 0, 1024, 1024, "a cat", "a cat")[0]
    plain = CLIPTextEncode().run(FakeContext(), "a cat", sdxl.clip)[0]
    assert torch.equal(same[0][0], plain[0][0]) and torch.equal(same[0][1]["pooled_output"],
                                                               plain[0][1]["pooled_output"])


def test_the_shorter_prompt_is_padded_with_empty_chunks(sdxl):
    long_l = " ".join(["tree"] * 90)  # two chunks for CLIP-L, one for bigG
    emb, _ = CLIPTextEncodeSDXL().run(FakeContext(), sdxl.clip, 1024, 1024, 0, 0, 1024, 1024, "a cat",
                                      long_l)[0][0]
    width_l = tiny_model("sdxl").text_encoder.config.hidden_size
    assert emb.shape[1] == 154
    empty_g, _ = _reference(tiny_model("sdxl").text_encoder_2, "", 0)
    tail = emb[:, 77:, width_l:]
    assert (tail - empty_g).abs().max() <= 1e-5 * max(1.0, empty_g.abs().max().item())


def test_refiner_node_carries_the_aesthetic_score_and_other_families_are_refused(sdxl):
    emb, opts = CLIPTextEncodeSDXLRefiner().run(FakeContext(), 2.5, 768, 512, "blurry", sdxl.clip)[0][0]
    assert opts["aesthetic_score"] == 2.5 and (opts["width"], opts["height"]) == (768, 512)
    assert opts["pooled_output"] is not None
    sd1 = ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))
    with pytest.raises(ValueError, match="SDXL"):
        CLIPTextEncodeSDXL().run(FakeContext(), sd1.clip, 1024, 1024, 0, 0, 1024, 1024, "a", "b")


def test_size_conditioning_reaches_the_unets_time_ids(sdxl):
    """The guidance turns the options into SDXL's time ids: height, width, crop_h, crop_w, target h, target w."""
    cond = CLIPTextEncodeSDXL().run(FakeContext(), sdxl.clip, 896, 640, 16, 8, 1024, 768, "a", "a")[0]
    seen = []
    unet = sdxl.model.unet.module
    hook = unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(
        kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        from nodes.library.sampling import KSampler

        KSampler().run(FakeContext(), sdxl.model, 1, 1, 1.0, "euler", "normal", cond, cond,
                       {"samples": torch.zeros(1, 4, 8, 8)}, 1.0)
    finally:
        hook.remove()
    assert seen and seen[0][0].tolist() == [640.0, 896.0, 8.0, 16.0, 768.0, 1024.0]

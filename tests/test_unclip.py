"""unCLIP: image embeddings reach the UNet as published. On SDXL ("revision") the noise-augmented embedding replaces the
pooled text embedding (checked against the formula written out here, with the cosine schedule computed from its
definition); a model that takes no image embedding, or an embedding of the wrong width, fails before the first step
with an error naming the conditioning."""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import tiny_file

from nodes.library.clip_vision import unCLIPConditioning
from nodes.library.conditioning import CLIPTextEncode
from nodes.library.latent import EmptyLatentImage
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.sampling.guidance import Guider
from nodes.testing import vision as tv
from nodes.vision.clip_vision import ClipVisionOutput


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """DDPM's squaredcos_cap_v2 schedule from its definition (Nichol & Dhariwal): alpha_bar(t) = cos²((t + s) / (1 + s)
    · π/2) with s = 0.008, betas capped at 0.999."""
    def bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - bar((i + 1) / steps) / bar(i / steps), 0.999) for i in range(steps)],
                         dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def expected_pooled(embeds: torch.Tensor, level: int, seed: int) -> torch.Tensor:
    a = cosine_alphas_cumprod()[level].float()
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(seed - 10))
    return a.sqrt() * embeds + (1 - a).sqrt() * noise


@lru_cache(maxsize=None)
def _bundle(family: str):
    return ModelManager("cpu").load_checkpoint(tiny_file(family, "fp32"))


def _vision_output(width: int, batch: int = 1, seed: int = 0) -> ClipVisionOutput:
    tower = tv.build_clip_vision(width=32, projection=width, seed=seed)
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = tower(pixel_values=pixels, output_hidden_states=True)
    return ClipVisionOutput(out.last_hidden_state, out.hidden_states[-2], out.image_embeds)


def _entries(bundle, positive, negative, seed):
    lat = torch.zeros(1, 4, 8, 8)
    return Guider.cfg(bundle.model, positive, negative, 5.0).denoiser(lat, None, None, (64, 64), seed=seed).entries


def test_sdxl_revision_replaces_the_pooled_embedding_with_the_noised_image_embedding():
    bundle = _bundle("sdxl")
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    out = _vision_output(48)
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=out, strength=0.8,
                                    noise_augmentation=0.3)[0]
    seed = 1234
    want = expected_pooled(out.image_embeds, round(999 * 0.3), seed) * 0.8
    entries = _entries(bundle, cond, neg, seed)
    assert torch.allclose(entries[0].pooled, want, atol=1e-5)
    assert torch.equal(entries[1].pooled, neg[0][1]["pooled_output"])  # the negative keeps its text pooled

    # end to end: the same image as a conditioning that carries that pooled embedding itself
    lat = EmptyLatentImage().run(None, width=64, height=64, batch_size=1)[0]
    manual = [[pos[0][0], {**pos[0][1], "pooled_output": want}]]

    def run(p):
        return KSampler().run(None, model=bundle.model, seed=seed, steps=3, cfg=5.0, sampler_name="euler",
                              scheduler="normal", positive=p, negative=neg, latent_image=lat, denoise=1.0)[0]["samples"]
    got, ref, text_only = run(cond), run(manual), run(pos)
    assert torch.allclose(got, ref, atol=1e-5)
    assert (got - text_only).abs().max() > 1e-3


def test_several_images_are_summed_and_augmented_once_more():
    """Two images of one CLIP_VISION_OUTPUT and a second unCLIPConditioning: each embedding noised with the same
    seeded noise and weighted by its strength, summed, then noised at the merge level (0 for SDXL)."""
    bundle = _bundle("sdxl")
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    two, one = _vision_output(48, batch=2, seed=1), _vision_output(48, seed=2)
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=two, strength=0.5,
                                    noise_augmentation=0.1)[0]
    cond = unCLIPConditioning().run(None, conditioning=cond, clip_vision_output=one, strength=1.5,
                                    noise_augmentation=0.0)[0]
    seed = 7
    total = (expected_pooled(two.image_embeds[:1], 100, seed) * 0.5 + expected_pooled(two.image_embeds[1:], 100, seed)
             * 0.5 + expected_pooled(one.image_embeds, 0, seed) * 1.5)
    want = expected_pooled(total, 0, seed)
    assert torch.allclose(_entries(bundle, cond, pos, seed)[0].pooled, want, atol=1e-5)


def test_unclip_on_a_model_without_image_input_fails_before_sampling():
    bundle = _bundle("sd1")
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=_vision_output(24), strength=1.0,
                                    noise_augmentation=0.0)[0]
    with pytest.raises(ValueError, match="positive conditioning carries an unCLIP image.*unCLIPCheckpointLoader"):
        _entries(bundle, cond, pos, 0)


def test_sdxl_revision_with_an_embedding_of_another_width_names_the_encoder_to_use():
    bundle = _bundle("sdxl")
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=_vision_output(24), strength=1.0,
                                    noise_augmentation=0.0)[0]
    with pytest.raises(ValueError, match="negative conditioning's unCLIP image embedding is 24 wide.*clip_vision_g"):
        _entries(bundle, pos, cond, 0)

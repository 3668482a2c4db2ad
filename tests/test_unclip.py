"""unCLIP: image embeddings reach the UNet as published. An SD2.1-unCLIP checkpoint (class-input UNet, image encoder,
embedding statistics) samples as diffusers' StableUnCLIPImg2ImgPipeline does on the same tiny weights; on SDXL
("revision") the noise-augmented embedding replaces the pooled text embedding (checked against the formula written out
here, with the cosine schedule computed from its definition); a model that takes no image embedding, an embedding of
the wrong width, or a checkpoint without an image encoder fails with an error naming the node or conditioning."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

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


# -- SD2.1-unCLIP -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unclip_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("unclip")
    model = tv.TinyUnclip(seed=0)
    return {"model": model, "unclip": tv.write_unclip(d / "unclip.safetensors", model),
            "no_vision": tv.write_unclip(d / "unclip-novision.safetensors", model, with_vision=False)}


def _services():
    class Services:
        models = ModelManager("cpu")
        paths = None
    return Services()


def _load_unclip(path, node=None):
    from sd_fixtures import FakeContext

    from nodes.library.clip_vision import unCLIPCheckpointLoader

    ctx = FakeContext(services=_services(), files={"ckpt_name": path})
    return ctx, (node or unCLIPCheckpointLoader)().run(ctx, ckpt_name=Path(path).name)


def _unclip_pipeline(m):
    import warnings

    from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT, template

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    norm = StableUnCLIPImageNormalizer(embedding_dim=m.embed_dim)
    with torch.no_grad():
        norm.mean.copy_(m.mean)
        norm.std.copy_(m.std)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=processor, image_encoder=m.tower, image_normalizer=norm,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
        tokenizer=CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77),
        text_encoder=m.text_encoder, unet=m.unet, vae=m.vae,
        # 'linspace' spacing: the timesteps 999, 888, ... 0 of the 'normal' schedule at 10 steps
        scheduler=EulerDiscreteScheduler.from_config(template("sd2", "scheduler"), timestep_spacing="linspace"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_parity_with_diffusers_stable_unclip_pipeline(unclip_files):
    """The same tiny SD2.1-unCLIP weights read back from one fp32 file (UNet with a class input, image encoder under
    embedder.model.visual, embedding statistics), the same 32x32 image, noise level 250, 10 Euler steps, CFG 7.5.
    diffusers gets Chisel's prompt embeddings, the starting latents Chisel samples from, and a generator seeded with
    seed - 10 (its image-embedding noise is the first draw). Both sides run float32 through the same modules, so they
    differ by rounding only (~1e-6 measured); without the image the result moves by far more than the 1e-4 bound."""
    from PIL import Image

    from nodes.library.clip_vision import CLIPVisionEncode
    from nodes.library.latent import VAEDecode
    from nodes.sampling import calculate_sigmas, initial_noise

    m = unclip_files["model"]
    ctx, (model, clip, vae, vision) = _load_unclip(unclip_files["unclip"])
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    out = CLIPVisionEncode().run(ctx, clip_vision=vision, image=image, crop="center")[0]
    pos = CLIPTextEncode().run(None, text="a red circle", clip=clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=clip)[0]
    level, seed, steps, cfg = 250, 99, 10, 7.5
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=out, strength=1.0,
                                    noise_augmentation=level / 999)[0]
    lat = EmptyLatentImage().run(None, width=64, height=64, batch_size=1)[0]

    def ours(p):
        res = KSampler().run(None, model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                             scheduler="normal", positive=p, negative=neg, latent_image=lat, denoise=1.0)[0]
        return VAEDecode().run(None, samples=res, vae=vae)[0].numpy()

    s0 = float(calculate_sigmas(model.model_sampling, "normal", steps)[0])
    start = initial_noise((1, 4, 8, 8), seed) * (s0 ** 2 + 1) ** 0.5  # given latents are used as they are
    pil = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))
    ref = _unclip_pipeline(m)(image=pil, prompt_embeds=pos[0][0], negative_prompt_embeds=neg[0][0], height=64,
                              width=64, num_inference_steps=steps, guidance_scale=cfg, noise_level=level,
                              generator=torch.Generator().manual_seed(seed - 10), latents=start,
                              output_type="np").images
    got = ours(cond)
    assert abs(got - ref).max() <= 1e-4
    assert abs(ours(pos) - ref).max() > 1e-2


def test_unclip_checkpoint_carries_its_image_encoder_and_statistics(unclip_files):
    from nodes.library.clip_vision import ImageOnlyCheckpointLoader

    m = unclip_files["model"]
    ctx, (model, clip, vae, vision) = _load_unclip(unclip_files["unclip"])
    assert model.config["class_embed_type"] == "projection"
    assert torch.equal(model.noise_augmentor.mean, m.mean) and model.noise_augmentor.timestep_dim == m.embed_dim
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(vision.module.module(pixel_values=pixels).image_embeds,
                              m.tower(pixel_values=pixels).image_embeds, atol=1e-5)
    _, (model2, vision2, vae2) = _load_unclip(unclip_files["unclip"], ImageOnlyCheckpointLoader)
    assert model2.noise_augmentor is not None and vision2.has_projection and vae2 is not None


def test_checkpoints_without_an_image_encoder_are_refused_by_name(unclip_files):
    from nodes.library.clip_vision import ImageOnlyCheckpointLoader

    with pytest.raises(ValueError, match=r"unCLIPCheckpointLoader: input 'ckpt_name': .* Stable Diffusion 1\.x "
                                         r"checkpoint without an image encoder"):
        _load_unclip(tiny_file("sd1"))
    with pytest.raises(ValueError, match="ImageOnlyCheckpointLoader: input 'ckpt_name'.*clip_vision_g"):
        _load_unclip(tiny_file("sdxl"), ImageOnlyCheckpointLoader)
    with pytest.raises(ValueError, match="without an image encoder"):
        _load_unclip(unclip_files["no_vision"])
    from safetensors.torch import save_file

    video = Path(unclip_files["unclip"]).with_name("svd.safetensors")  # the layout marks of an img2vid UNet
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3),
               "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight": torch.zeros(4),
               "conditioner.embedders.0.open_clip.model.visual.class_embedding": torch.zeros(8)}, str(video))
    with pytest.raises(ValueError, match="ImageOnlyCheckpointLoader: input 'ckpt_name'.*image-to-video"):
        _load_unclip(video, ImageOnlyCheckpointLoader)


def test_an_unclip_file_loaded_as_a_plain_checkpoint_says_which_loader_to_use(unclip_files):
    bundle = ModelManager("cpu").load_checkpoint(unclip_files["unclip"])
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    cond = unCLIPConditioning().run(None, conditioning=pos, clip_vision_output=_vision_output(24), strength=1.0,
                                    noise_augmentation=0.0)[0]
    with pytest.raises(ValueError, match="positive conditioning.*load the checkpoint with unCLIPCheckpointLoader"):
        _entries(bundle, cond, pos, 0)
    assert _entries(bundle, pos, pos, 0)[0].labels.abs().max() == 0  # text alone: a zero class input

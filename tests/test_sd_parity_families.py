"""Parity with diffusers' own pipelines for the families beyond SD1: SDXL (two text encoders, pooled output and size
conditioning) with StableDiffusionXLPipeline, and SD2's v-prediction with StableDiffusionPipeline.

As in tests/test_sd_pipeline.py's SD1 parity test: Chisel reads the tiny weights back from the exported fp32 file,
diffusers runs the in-memory modules the file was written from; both start from the same initial noise and follow the
same Euler sigmas (Chisel's 'normal' schedule handed to diffusers' EulerDiscreteScheduler), in float32.

Tolerance: both sides evaluate the same diffusers UNet/VAE and transformers CLIP modules in float32, so they differ
only by rounding in a different order (the CFG batch, the timestep interpolation in float32 vs float64, guidance on
x0 rather than on the model output: algebraically identical). That is ~1e-7 relative per operation; through 10 Euler
steps, the VAE and 0..1 pixels it stays orders of magnitude below 1e-4, while one seed apart changes pixels by ~1e-1
(each test checks that control, so the bound is shown to be able to fail).
"""
from __future__ import annotations

import numpy as np
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import tiny_file, tiny_model

from nodes.library.conditioning import CLIPTextEncode
from nodes.library.latent import EmptyLatentImage, VAEDecode
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager

STEPS, CFG, SEED, SIZE = 10, 6.0, 4321, 64
PROMPT, NEGATIVE = "a photo of a red circle", "blurry"
TOLERANCE = 1e-4  # on 0..1 pixels; see the module docstring


def _chisel(family: str, seed: int):
    bundle = ModelManager("cpu").load_checkpoint(tiny_file(family, "fp32"))
    pos = CLIPTextEncode().run(None, text=PROMPT, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text=NEGATIVE, clip=bundle.clip)[0]
    lat = EmptyLatentImage().run(None, width=SIZE, height=SIZE, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=seed, steps=STEPS, cfg=CFG, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    image = VAEDecode().run(None, samples=out, vae=bundle.vae)[0]
    return bundle, image.numpy()


def _start_and_sigmas(bundle, scheduler):
    from nodes.sampling import calculate_sigmas, initial_noise

    sigmas = calculate_sigmas(bundle.model.model_sampling, "normal", STEPS)
    noise = initial_noise((1, 4, SIZE // 8, SIZE // 8), SEED)
    # Chisel starts at noise * sqrt(1 + sigma_max^2) (ComfyUI's full-denoise scaling); diffusers multiplies the
    # latents it is given by its scheduler's init_noise_sigma (sigma_max, or sqrt(1 + sigma_max^2) with SDXL's
    # "leading" timestep spacing)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    return noise * float((sigmas[0] ** 2 + 1) ** 0.5) / float(scheduler.init_noise_sigma), sigmas


def _tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    from nodes.loading.configs import CONFIG_ROOT

    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77, **extra)


def _penultimate_normed(text_encoder, text: str) -> torch.Tensor:
    """The penultimate hidden state through the final layer norm, 77 tokens padded with "!" (token 0)."""
    ids = _tokenizer(pad_token="!")(text, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


def _compare(ours: np.ndarray, ref: np.ndarray, other: np.ndarray) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = float(np.abs(ours - ref).max())
    assert diff < TOLERANCE, diff
    assert float(np.abs(other - ref).max()) > 1e-2  # control: one seed apart is far outside the tolerance


def test_parity_with_diffusers_stable_diffusion_xl_pipeline():
    """SDXL: CLIP-L and OpenCLIP-G penultimate hidden states concatenated, G's pooled projection and the six size
    ids (original 64x64, crop 0,0, target 64x64: what Chisel derives from the latent) as the added conditioning.
    diffusers replaces an empty negative prompt by zeros (force_zeros_for_empty_prompt); the negative here is not
    empty, and the pipeline is built with that option off so both sides encode the same texts."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from nodes.loading.configs import template

    bundle, ours = _chisel("sdxl", SEED)
    assert bundle.model.adm == "sdxl"
    src = tiny_model("sdxl")
    pipe = StableDiffusionXLPipeline(
        vae=src.vae, text_encoder=src.text_encoder, text_encoder_2=src.text_encoder_2,
        tokenizer=_tokenizer(), tokenizer_2=_tokenizer(pad_token="!"),  # OpenCLIP pads with token 0 ("!")
        unet=src.unet, scheduler=EulerDiscreteScheduler.from_config(template("sdxl", "scheduler")),
        force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    start, sigmas = _start_and_sigmas(bundle, pipe.scheduler)
    ref = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, guidance_scale=CFG,
               sigmas=sigmas.tolist(), latents=start, output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas.numpy(), sigmas.numpy(), rtol=1e-6)
    _, other = _chisel("sdxl", SEED + 1)
    _compare(ours[0], ref, other[0])


def test_parity_with_diffusers_for_sd2_v_prediction():
    """SD2-v: the model predicts v; x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1). The text condition is
    OpenCLIP's penultimate layer through the final layer norm, padded with token 0 (the released SD2 text encoder
    simply has its last layer removed; for the tiny one the embeddings are computed here, as diffusers' ``clip_skip=1``
    does, and handed to the pipeline)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from nodes.loading.configs import template

    bundle, ours = _chisel("sd2_v", SEED)
    assert bundle.model.model_sampling.prediction_type == "v_prediction"
    src = tiny_model("sd2_v")
    sched = EulerDiscreteScheduler.from_config(template("sd2_v", "scheduler"))
    assert sched.config.prediction_type == "v_prediction"
    pipe = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=_tokenizer(pad_token="!"),
                                   unet=src.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    start, sigmas = _start_and_sigmas(bundle, pipe.scheduler)
    texts = {"prompt_embeds": _penultimate_normed(src.text_encoder, PROMPT),
             "negative_prompt_embeds": _penultimate_normed(src.text_encoder, NEGATIVE)}
    ref = pipe(**texts, height=SIZE, width=SIZE, guidance_scale=CFG, sigmas=sigmas.tolist(), latents=start,
               output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas.numpy(), sigmas.numpy(), rtol=1e-6)
    _, other = _chisel("sd2_v", SEED + 1)
    _compare(ours[0], ref, other[0])
    # and the prediction type matters: the same weights read as epsilon give a different image
    eps = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=_tokenizer(pad_token="!"),
                                  unet=src.unet, scheduler=EulerDiscreteScheduler.from_config(
                                      template("sd2_v", "scheduler"), prediction_type="epsilon"),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    eps.set_progress_bar_config(disable=True)
    as_eps = eps(**texts, height=SIZE, width=SIZE, guidance_scale=CFG, sigmas=sigmas.tolist(), latents=start,
                 output_type="np").images[0]
    assert float(np.abs(as_eps - ref).max()) > 1e-2

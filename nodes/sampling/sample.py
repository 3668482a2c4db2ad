"""KSampler's core: sample a LATENT with a MODEL — schedule, starting noise (the noise contract), LoRA patches for the
run, the guided denoiser (:mod:`nodes.sampling.guidance`), the sampler, progress (:mod:`nodes.sampling.preview`).

Sigmas stay Python floats on the host: samplers read them once, so the per-step path never reads a device tensor.
"""
from __future__ import annotations

import torch

from nodes.memory.handles import ModelHandle
from nodes.patches.lora import patched
from nodes.sampling.guidance import CFGDenoiser
from nodes.sampling.preview import Previewer

# The stochastic samplers' noise stream is seeded with seed + this odd constant (mod 2^64), never with the seed of
# the starting noise: with the same seed its first draw would *be* the starting noise, so the first ancestral step
# would re-add the very noise it is removing. The golden-ratio offset keeps it away from nearby seeds (seed + 1 would
# replay the starting noise of the next seed in a sweep).
NOISE_STREAM_OFFSET = 0x9E3779B97F4A7C15


def noise_stream_seed(seed: int) -> int:
    """The seed of a stochastic sampler's per-step noise for a run whose starting noise uses ``seed``."""
    return (int(seed) + NOISE_STREAM_OFFSET) % (1 << 64)


def prepare_noise(latent: dict, seed: int) -> torch.Tensor:
    """Initial noise per the noise contract; with ``batch_index`` each latent gets the noise of its batch position."""
    from nodes.sampling import initial_noise

    samples = latent["samples"]
    idx = latent.get("batch_index")
    if idx is None:
        return initial_noise(samples.shape, seed)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    shape = (1,) + tuple(samples.shape[1:])
    draws = {}
    for i in range(max(idx) + 1):
        n = torch.randn(shape, generator=gen, dtype=torch.float32, device="cpu")
        if i in idx:
            draws[i] = n
    return torch.cat([draws[i] for i in idx], 0)


def sample(model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
           positive: list, negative: list, latent: dict, denoise: float = 1.0, ctx=None, *, add_noise: bool = True,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
           sigmas: torch.Tensor | None = None) -> dict:
    """Sample a LATENT with a MODEL. Returns a new LATENT dict (VAE latent space, float32, CPU)."""
    from nodes.sampling import (
        SAMPLER_ALIASES,
        SAMPLERS,
        STOCHASTIC_SAMPLERS,
        calculate_sigmas,
        make_noise_sampler,
    )

    sampler_name, sampler_options = SAMPLER_ALIASES.get(sampler_name, (sampler_name, {}))
    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler {sampler_name!r} is not available in Chisel; available: "
                         f"{', '.join(list(SAMPLERS) + list(SAMPLER_ALIASES))}")
    ms = model.model_sampling
    if sigmas is None:
        sigmas = calculate_sigmas(ms, scheduler, steps, denoise)
    if start_step is not None and last_step is not None and start_step > last_step:
        raise ValueError(f"start_at_step {start_step} is after end_at_step {last_step}: nothing to sample "
                         "(the start must not come after the end)")
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1]
        if force_full_denoise:
            sigmas = sigmas.clone()
            sigmas[-1] = 0.0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return dict(latent)
        sigmas = sigmas[start_step:]
    out = dict(latent)
    if len(sigmas) < 2:
        return out
    samples = latent["samples"]
    if samples.shape[1] != model.latent_format.channels:
        raise ValueError(f"the latent has {samples.shape[1]} channels; this model works on "
                         f"{model.latent_format.channels}")
    noise = prepare_noise(latent, seed) if add_noise else torch.zeros(samples.shape, dtype=torch.float32)
    manager = model.manager
    # LoRAs are added to the shared weights for this run only (restored on exit, also on errors and interrupts)
    with manager.use(model.unet), patched(model.unet, model.lora_for("unet")), torch.inference_mode():
        dev = model.unet.device
        lat = model.latent_format.process_in(samples.to(dev, torch.float32))
        noise_d = noise.to(dev)
        s0 = float(sigmas[0])
        x = ms.noise_scaling(torch.tensor(s0), noise_d, lat, max_denoise=s0 >= ms.sigma_max * (1 - 1e-5))
        mask = latent.get("noise_mask")
        image_size = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        den = CFGDenoiser(model, positive, negative, cfg, lat, noise_d, mask, image_size)
        total = len(sigmas) - 1
        callback = Previewer(ctx, model, total)
        noise_sampler = (make_noise_sampler(x, noise_stream_seed(seed)) if sampler_name in STOCHASTIC_SAMPLERS
                         else None)
        # sigmas stay on the host: samplers read them once as Python floats (no per-step device reads)
        result = SAMPLERS[sampler_name](den, x, sigmas, extra_args={}, callback=callback,
                                        noise_sampler=noise_sampler, **sampler_options)
        result = ms.inverse_noise_scaling(sigmas[-1], result)
        result = model.latent_format.process_out(result).float().cpu()
    out["samples"] = result
    return out

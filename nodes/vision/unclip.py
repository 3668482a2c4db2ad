"""unCLIP: image embeddings as the UNet's extra ("ADM") input, with noise augmentation.

A conditioning entry carries ``"unclip_conditioning"``: a list of ``{"clip_vision_output", "strength",
"noise_augmentation"}`` (unCLIPConditioning appends one per node). Before sampling, each image embedding (one per
image of each CLIP_VISION_OUTPUT) is noise-augmented as Stable unCLIP was trained (diffusers'
``StableUnCLIPImageNormalizer`` + ``noise_image_embeddings``):

1. normalise with the checkpoint's embedding statistics, ``(x - mean) / std`` (``noise_augmentor.data_mean`` and
   ``data_std`` in an SD2.1-unCLIP file; identity for SDXL);
2. noise it to level ``round(999 * noise_augmentation)`` of a 1000-step DDPM ``squaredcos_cap_v2`` schedule:
   ``sqrt(a) x + sqrt(1 - a) n``, the noise ``n`` drawn on the CPU from a generator seeded with the sampler's seed
   minus 10 (ComfyUI's rule, so its workflows give the same image);
3. undo the normalisation and append the sinusoidal embedding of the noise level (cos half first, as diffusers'
   ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)``), as wide as the embedding.

The result, times ``strength``, is the ADM vector. Several embeddings (several unCLIPConditioning nodes, or a batch
of images) are summed, and the sum's embedding part is augmented once more at ``merge_level`` (0.05 for
SD2.1-unCLIP, 0 for SDXL) — ComfyUI's behaviour.

- SD2.1-unCLIP UNets take the ADM vector as diffusers' ``class_labels`` (``class_embed_type="projection"``); an entry
  without unCLIP conditioning (e.g. the negative prompt) gets zeros, as in diffusers' StableUnCLIPImg2ImgPipeline.
- SDXL ("revision"): the embedding part (the first ``pooled`` columns) replaces the entry's pooled text embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

MAX_NOISE_LEVEL = 1000
SEED_OFFSET = -10
SD21_MERGE_LEVEL = 0.05
SDXL_MERGE_LEVEL = 0.0


@lru_cache(maxsize=1)
def _alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=MAX_NOISE_LEVEL, beta_schedule="squaredcos_cap_v2")
    return sched.alphas_cumprod.to(torch.float32)


def timestep_embedding(level: int, dim: int) -> torch.Tensor:
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(torch.tensor([level]), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


def noise_level(noise_augmentation: float) -> int:
    return round((MAX_NOISE_LEVEL - 1) * float(noise_augmentation))


@dataclass
class NoiseAugmentor:
    """Embedding statistics (None: identity) and the width of the noise-level embedding."""

    timestep_dim: int
    mean: torch.Tensor | None = None  # [1, D]
    std: torch.Tensor | None = None

    def augment(self, embeds: torch.Tensor, level: int, seed: int) -> torch.Tensor:
        """``[1, D]`` -> ``[1, D + timestep_dim]`` (float32, CPU)."""
        x = embeds.float().cpu().reshape(1, -1)
        mean = self.mean.float().reshape(1, -1) if self.mean is not None else torch.zeros(1)
        std = self.std.float().reshape(1, -1) if self.std is not None else torch.ones(1)
        if self.mean is not None and self.mean.numel() != x.shape[-1]:
            raise ValueError(f"the image embedding is {x.shape[-1]} wide but this unCLIP model's embedding statistics "
                             f"are {self.mean.numel()} wide: use the CLIP vision model that came with the checkpoint")
        noise = torch.randn(x.shape, generator=torch.Generator("cpu").manual_seed(int(seed)))
        a = _alphas_cumprod()[level]
        scaled = (x - mean) / std
        noised = a.sqrt() * scaled + (1 - a).sqrt() * noise
        return torch.cat([noised * std + mean, timestep_embedding(level, self.timestep_dim)], dim=1)


def adm_vector(unclip: list[dict], augmentor: NoiseAugmentor, seed: int, merge_level: float) -> torch.Tensor:
    """The ADM vector ``[1, D + timestep_dim]`` of a conditioning entry's unCLIP conditioning (see the module
    docstring)."""
    seed = int(seed) + SEED_OFFSET
    parts = []
    for item in unclip:
        out = item["clip_vision_output"]
        embeds = getattr(out, "image_embeds", None)
        if embeds is None:
            raise ValueError("the CLIP vision output has no image embedding (its model has no projection): unCLIP "
                             "needs a CLIP vision model with a visual projection")
        level = noise_level(item.get("noise_augmentation", 0.0))
        for row in embeds.reshape(-1, embeds.shape[-1]):
            parts.append(augmentor.augment(row[None], level, seed) * float(item.get("strength", 1.0)))
    if not parts:
        raise ValueError("the unCLIP conditioning holds no image embedding")
    if len(parts) == 1:
        return parts[0]
    total = torch.stack(parts).sum(0)
    width = total.shape[-1] - augmentor.timestep_dim
    return augmentor.augment(total[:, :width], noise_level(merge_level), seed)


STATS_KEYS = ("noise_augmentor.data_mean", "noise_augmentor.data_std")


def read_noise_augmentor(source, class_dim: int) -> NoiseAugmentor:
    """The embedding statistics of an unCLIP checkpoint (an open :class:`nodes.loading.weights.WeightFile`); the
    noise-level embedding takes the rest of the UNet's ``class_dim`` input."""
    if not all(k in source.shapes for k in STATS_KEYS):
        raise ValueError(f"{Path(source.path).name} has a class input but no noise_augmentor.data_mean/data_std: not "
                         "an unCLIP checkpoint Chisel reads")
    mean, std = (source.get(k).float().reshape(1, -1) for k in STATS_KEYS)
    if class_dim <= mean.shape[-1]:
        raise ValueError(f"{Path(source.path).name}: the UNet's class input ({class_dim}) leaves no room for the "
                         f"noise-level embedding beside a {mean.shape[-1]}-wide image embedding")
    return NoiseAugmentor(timestep_dim=class_dim - mean.shape[-1], mean=mean, std=std)

"""The MODEL, CLIP and VAE values that travel along a workflow's links.

Each wraps modules owned by the :class:`~nodes.memory.manager.ModelManager` and reports ``__chisel_nbytes__() == {}``
so the result cache does not count model memory the manager already accounts for. Handles are cheap to ``clone``
(options are copied, modules shared), which is how nodes such as CLIPSetLastLayer and the LoRA loaders derive a
variant. LoRAs travel in ``options["lora"]`` as ``(target, AppliedLora)`` pairs (target: ``"unet"`` or a text
encoder's component name) and are added to the shared weights only while a node computes with them
(:func:`nodes.patches.lora.patched`): the modules the manager caches are never left modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from nodes.loading import latent_formats

if TYPE_CHECKING:
    from nodes.memory.manager import ManagedModule, ModelManager
from nodes.patches.lora import AppliedLora, patched_many
from nodes.text.tokens import EOS as EOS_ID, TokenChunks, empty_chunk, tokenize

FAMILY_CLIP_DEFAULTS = {
    # family: (default layer index, apply the final layer norm to the chosen hidden state)
    "sd1": (-1, True),
    "sd2": (-2, True),
    "sdxl": (-2, False),
    "sdxl_refiner": (-2, False),
}


class _Handle:
    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}

    def clone(self):
        other = copy.copy(self)
        other.options = dict(getattr(self, "options", {}))
        return other

    def lora_for(self, target: str) -> list[AppliedLora]:
        """The LoRAs to add to one module (``"unet"``, ``"text_encoder"``, ``"text_encoder_2"``)."""
        return [a for t, a in self.options.get("lora", ()) if t == target]

    def with_lora(self, pairs) -> "_Handle":
        """A clone with more ``(target, AppliedLora)`` pairs; this handle is left as it was."""
        other = self.clone()
        other.options["lora"] = tuple(self.options.get("lora", ())) + tuple(pairs)
        return other

    def _lora_repr(self) -> str:
        loras = self.options.get("lora", ())
        shown = {id(p) for p in self.options.get("guidance", ())}  # described once, by the guidance part
        return "".join(f" +{a.name}@{a.strength:g}({t})" for t, a in loras if id(a) not in shown)


@dataclass(eq=False)
class ModelHandle(_Handle):
    """MODEL: a denoising UNet with its noise schedule."""

    manager: ModelManager
    unet: ManagedModule
    family: str
    model_sampling: Any  # nodes.sampling.ModelSampling
    latent_format: latent_formats.LatentFormat
    config: dict
    source: str
    options: dict = field(default_factory=dict)
    noise_augmentor: Any = None  # unCLIP models: their image-embedding statistics (nodes.vision.unclip)

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 4))

    @property
    def is_inpaint(self) -> bool:
        return self.in_channels == 9

    @property
    def adm(self) -> str | None:
        """SDXL's extra conditioning: 'sdxl' (size + crop + target size), 'refiner' (size + crop + aesthetic
        score) or None."""
        if self.config.get("addition_embed_type") != "text_time":
            return None
        return "refiner" if self.family == "sdxl_refiner" else "sdxl"

    def with_guidance(self, patch) -> "ModelHandle":
        """A clone that samples with one more guidance patch (:mod:`nodes.sampling.guidance_patches`)."""
        other = self.clone()
        other.options["guidance"] = tuple(self.options.get("guidance", ())) + (patch,)
        return other

    def __repr__(self) -> str:
        from nodes.sampling.guidance_patches import describe

        guidance = "".join(f" +{describe(p)}" for p in self.options.get("guidance", ()))
        return f"<MODEL {self.family} {self.source}{self._lora_repr()}{guidance}>"


@dataclass
class EncoderSlot:
    name: str  # text_encoder | text_encoder_2
    module: ManagedModule
    kind: str  # clip_l | open_clip
    pad_id: int
    num_layers: int
    with_projection: bool


@dataclass(eq=False)
class ClipHandle(_Handle):
    """CLIP: the text encoder(s) of a checkpoint with the tokenizer, and which hidden layer to use."""

    manager: ModelManager
    family: str
    encoders: list[EncoderSlot]
    source: str
    layer_idx: int | None = None  # None: the family's default
    options: dict = field(default_factory=dict)

    def set_last_layer(self, layer: int) -> "ClipHandle":
        other = self.clone()
        other.layer_idx = int(layer)
        return other

    def __repr__(self) -> str:
        return f"<CLIP {self.family} {self.source} layer={self.layer_idx}{self._lora_repr()}>"

    @torch.no_grad()
    def encode(self, text: str, embeddings=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(cond [1, 77*k, D], pooled [1, P] or None)``, float32 on the CPU. ``embeddings``: a
        :class:`nodes.text.embeddings.EmbeddingLookup` for ``embedding:name`` words (None: they are text)."""
        default_layer, final_norm = FAMILY_CLIP_DEFAULTS[self.family]
        layer = self.layer_idx if self.layer_idx is not None else default_layer
        outs, pooled = [], None
        # tokenize first: a missing or misfit embedding fails before any module moves
        all_chunks = []
        for enc in self.encoders:
            lookup = None
            if embeddings is not None:
                width = int(enc.module.module.config.hidden_size)
                lookup = (lambda name, enc=enc, width=width: embeddings.vectors(name, enc.kind, width, self.family))
            all_chunks.append(tokenize(text, pad_id=enc.pad_id, embedding=lookup))
        mods = [e.module for e in self.encoders]
        with self.manager.use(*mods), patched_many((e.module, self.lora_for(e.name)) for e in self.encoders):
            for enc, chunks in zip(self.encoders, all_chunks):
                hidden, pool = _encode_chunks(enc, chunks, layer, final_norm)
                outs.append(hidden)
                if enc.with_projection:
                    pooled = pool
        cond = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return cond, pooled

    @torch.no_grad()
    def encode_pooled_unprojected(self, text: str) -> torch.Tensor:
        """The text's pooled output before any text projection (ComfyUI's ``return_pooled="unprojected"``), from the
        last encoder (the only one of SD1.x/SD2.x): its final-layer-normed last hidden state at the end token of the
        first 77-token chunk, ``[1, width]`` float32 on the CPU. The CLIP layer setting does not apply to it."""
        enc = self.encoders[-1]
        ids = tokenize(text, pad_id=enc.pad_id).ids[0]
        end = ids.index(EOS_ID)
        with self.manager.use(enc.module), patched_many([(enc.module, self.lora_for(enc.name))]):
            out = enc.module.module(input_ids=torch.tensor([ids], device=enc.module.device))
            return out.last_hidden_state[:, end].float().cpu()


def _encode_chunks(enc: EncoderSlot, chunks: TokenChunks, layer: int, final_norm: bool):
    module = enc.module.module
    device = enc.module.device
    rows = list(chunks.ids)
    weighted = chunks.weighted
    if weighted:
        rows.append(empty_chunk(enc.pad_id))
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    text_model = getattr(module, "text_model", module)
    hook = None
    if chunks.embeds:
        # textual inversion: the embedding vectors replace the token embeddings at their positions (a forward hook
        # for this call only; the shared module is not changed)
        width = text_model.embeddings.token_embedding.weight.shape[1]
        rep = torch.zeros(len(rows), len(rows[0]), width)
        where = torch.zeros(len(rows), len(rows[0]), 1, dtype=torch.bool)
        for (c, pos), vec in chunks.embeds.items():
            rep[c, pos] = vec
            where[c, pos] = True

        def replace(mod, args, out):
            return torch.where(where.to(out.device), rep.to(out.device, out.dtype), out)

        hook = text_model.embeddings.token_embedding.register_forward_hook(replace)
    try:
        out = module(input_ids=ids, output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()
    n = enc.num_layers
    idx = max(-(n + 1), min(layer, -1))
    hidden = out.hidden_states[idx]
    if final_norm:
        hidden = text_model.final_layer_norm(hidden)
    hidden = hidden.float()
    if weighted:
        empty = hidden[-1:]
        hidden = hidden[:-1]
        w = torch.tensor(chunks.weights, dtype=hidden.dtype, device=hidden.device)[..., None]
        hidden = empty + (hidden - empty) * w
    pooled = None
    if enc.with_projection:
        pooled = out.text_embeds[:1].float().cpu()
    cond = hidden.reshape(1, -1, hidden.shape[-1]).cpu()
    return cond, pooled


@dataclass(eq=False)
class VaeHandle(_Handle):
    """VAE: encode images to (scaled) latents and decode them back."""

    manager: ModelManager
    module: ManagedModule
    config: dict
    source: str
    family: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.get("block_out_channels", (0, 0, 0, 0))) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.config.get("latent_channels", 4))

    def __repr__(self) -> str:
        return f"<VAE {self.source}>"

    def _batch(self, h: int, w: int, decode: bool) -> int:
        dev = self.module.device
        if dev.type != "cuda":
            return 4
        free, _ = torch.cuda.mem_get_info(dev)
        elsize = torch.finfo(self.module.dtype).bits // 8
        # rough activation peaks per image: decode scales with latent cells, encode with pixels
        per = 2200 * h * w * 64 * elsize if decode else 1800 * h * w * elsize
        return max(1, int(free * 0.8 // max(per, 1)))

    @torch.no_grad()
    def decode(self, samples: torch.Tensor, compiled: bool = True) -> torch.Tensor:
        """[B, C, h, w] VAE latents -> IMAGE [B, H, W, 3] float32 in 0..1 on the CPU. The decoder runs compiled
        where the manager compiles (:mod:`nodes.memory.compile`) unless ``compiled`` is False (tiles: each tile
        size would be another specialisation)."""
        with self.manager.use(self.module):
            decode = self.module.runner("vae_decode") if compiled else self.module.part("vae_decode")
            dev, dt = self.module.device, self.module.dtype
            b = self._batch(samples.shape[-2], samples.shape[-1], True)
            images = []
            for i in range(0, samples.shape[0], b):
                x = decode(samples[i:i + b].to(dev, dt))
                images.append(((x.float() + 1.0) * 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(images, 0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, compiled: bool = True) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> [B, C, H/8, W/8] VAE latents, float32 on the CPU. The image is
        center-cropped to a multiple of the VAE's downscale factor; the latent distribution's mean is used. The
        encoder runs compiled where the manager compiles unless ``compiled`` is False (tiles)."""
        f = self.downscale
        h, w = pixels.shape[1] // f * f, pixels.shape[2] // f * f
        if h == 0 or w == 0:
            raise ValueError(f"an image of {pixels.shape[2]}x{pixels.shape[1]} is smaller than the VAE's {f}x{f} "
                             "downscale")
        y0, x0 = (pixels.shape[1] - h) // 2, (pixels.shape[2] - w) // 2
        pixels = pixels[:, y0:y0 + h, x0:x0 + w, :3]
        with self.manager.use(self.module):
            encode = self.module.runner("vae_encode") if compiled else self.module.part("vae_encode")
            dev, dt = self.module.device, self.module.dtype
            b = self._batch(h, w, False)
            out = []
            for i in range(0, pixels.shape[0], b):
                x = pixels[i:i + b].to(dev, dt).permute(0, 3, 1, 2) * 2.0 - 1.0
                out.append(encode(x).float().cpu())
        return torch.cat(out, 0)


def make_model_sampling(scheduler_cfg: dict):
    from nodes.sampling import ModelSampling

    return ModelSampling(beta_schedule=scheduler_cfg.get("beta_schedule", "scaled_linear"),
                         linear_start=float(scheduler_cfg.get("beta_start", 0.00085)),
                         linear_end=float(scheduler_cfg.get("beta_end", 0.012)),
                         timesteps=int(scheduler_cfg.get("num_train_timesteps", 1000)),
                         prediction_type=scheduler_cfg.get("prediction_type") or "epsilon")


@dataclass
class LoadedBundle:
    """What one checkpoint file gives: the node-facing handles, plus the load report."""

    model: Any
    clip: Any
    vae: Any
    report: Any


def make_vae_handle(manager: ModelManager, vae_module, cfg: dict, source: str, family_hint: str | None) -> VaeHandle:
    # SDXL's VAE overflows in fp16 (its config says force_upcast); SD1's is fine in fp16.
    dt = manager.compute_dtype("vae", force_upcast=bool(cfg.get("force_upcast", False)) and
                               family_hint in ("sdxl", "sdxl_refiner", None))
    mm = manager.register("vae", vae_module, source, dt)
    return VaeHandle(manager, mm, dict(cfg), source, family_hint)


def make_bundle(manager: ModelManager, loaded) -> LoadedBundle:
    """Register a :class:`~nodes.loading.checkpoint.LoadedCheckpoint`'s modules and wrap them in handles."""
    src = str(loaded.path)
    fam = loaded.family
    cfgs = loaded.configs
    unet_dt = manager.compute_dtype("unet")
    unet = manager.register("unet", loaded.unet, src, unet_dt)
    vcfg = cfgs["vae"]
    lf = latent_formats.for_family(fam, vcfg.get("scaling_factor"), vcfg.get("shift_factor"),
                                   int(vcfg.get("latent_channels", 4)))
    model = ModelHandle(manager, unet, fam, make_model_sampling(cfgs.get("scheduler", {})), lf, dict(cfgs["unet"]),
                        src)
    slots = []
    for spec in loaded.detection.text_encoders:
        mod = loaded.text_encoders[spec.name]
        mm = manager.register(spec.name, mod, src, manager.compute_dtype("text"))
        pad = 49407 if spec.kind == "clip_l" else 0
        slots.append(EncoderSlot(spec.name, mm, spec.kind, pad, int(mod.config.num_hidden_layers),
                                 spec.with_projection))
    clip = ClipHandle(manager, fam, slots, src)
    vae = make_vae_handle(manager, loaded.vae, dict(cfgs["vae"]), src, fam)
    return LoadedBundle(model, clip, vae, loaded.report)



def make_unet_handle(manager: ModelManager, loaded, source: str) -> ModelHandle:
    """A MODEL from a UNet loaded on its own (:class:`nodes.loading.components.LoadedUnet`)."""
    unet = manager.register("unet", loaded.module, source, manager.compute_dtype("unet"))
    return ModelHandle(manager, unet, loaded.family, make_model_sampling(loaded.scheduler),
                       latent_formats.for_family(loaded.family), dict(loaded.config), source)


def make_clip_handle(manager: ModelManager, family: str, encoders: list, source: str) -> ClipHandle:
    """A CLIP from text encoders loaded on their own: ``[(component name, LoadedTextEncoder)]``."""
    slots = []
    for name, enc in encoders:
        mm = manager.register(name, enc.module, source, manager.compute_dtype("text"))
        slots.append(EncoderSlot(name, mm, enc.kind, 49407 if enc.kind == "clip_l" else 0,
                                 int(enc.module.config.num_hidden_layers), enc.with_projection))
    return ClipHandle(manager, family, slots, source)

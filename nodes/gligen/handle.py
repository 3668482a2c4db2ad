"""GLIGEN: a loaded GLIGEN model under the model manager, and whether it fits a MODEL.

A GLIGEN model is trained for one UNet architecture: one fuser per transformer block, each as wide as its block, and
grounding tokens as wide as the model's cross-attention (768 for SD1.x). :func:`fusers_for` pairs each fuser with the
diffusers transformer block it belongs to in a MODEL's UNet and says what differs when they do not fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nodes.gligen.load import GligenModules, load_gligen
from nodes.loading import keymaps as km
from nodes.memory.manager import ManagedModule, ModelManager

MODEL_FAMILY = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}


@dataclass(eq=False)
class GligenHandle:
    manager: ModelManager
    module: ManagedModule  # its .module is a GligenModules
    source: str
    layout: str
    options: dict = field(default_factory=dict)

    @property
    def modules(self) -> GligenModules:
        return self.module.module

    @property
    def name(self) -> str:
        return Path(self.source).name

    @property
    def phrase_width(self) -> int:
        return self.modules.phrase_width

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}  # the manager accounts for model memory

    def __repr__(self) -> str:
        return f"<GLIGEN {self.source}>"


def load(manager: ModelManager, path: str | Path, progress=None) -> GligenHandle:
    """The GLIGEN model in a file, loaded once per file identity; ``progress`` hears the load's stages."""
    path = Path(path)

    def factory() -> GligenHandle:
        loaded = load_gligen(path, allow_pickle=manager.allow_pickle, progress=progress)
        mm = manager.register("gligen", loaded.module, str(path), manager.compute_dtype("unet"))
        return GligenHandle(manager, mm, str(path), loaded.layout)

    return manager.load_once(("gligen", str(manager.compute_dtype("unet"))), path, factory)


def _diffusers_address(address: str, rules) -> str | None:
    """An LDM transformer-block address (``input_blocks.1.1.transformer_blocks.0``) in diffusers' naming."""
    for dst, src, is_resnet in rules:
        if not is_resnet and ".attentions." in dst and address.startswith(src):
            return dst + address[len(src):]
    return None


def transformer_blocks(unet) -> dict[str, object]:
    """The UNet's transformer blocks (diffusers' ``BasicTransformerBlock``) by module path."""
    from diffusers.models.attention import BasicTransformerBlock

    return {n: m for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}


def fusers_for(gligen: GligenHandle, model, what: str) -> list[tuple[object, object]]:
    """``[(transformer block, fuser)]`` for ``model``'s UNet; ``ValueError`` naming ``what`` (the conditioning input)
    when the GLIGEN model was made for another architecture."""
    mods = gligen.modules
    blocks = transformer_blocks(model.unet.module)
    if mods.layout == "ldm":
        rules = km.unet_prefix_map(model.config)
        paths = [_diffusers_address(a, rules) for a in mods.addresses]
    else:
        paths = list(mods.addresses)
    diffs = []
    ctx = model.config.get("cross_attention_dim")
    ctx = ctx[0] if isinstance(ctx, (list, tuple)) else ctx
    if ctx and int(ctx) != mods.token_width:
        diffs.append(f"its grounding tokens are {mods.token_width} wide but the model's cross-attention is {ctx}")
    unplaced = [a for a, p in zip(mods.addresses, paths) if p not in blocks]
    if unplaced:
        diffs.append(f"{len(unplaced)} of its fusers sit where this UNet has no transformer block "
                     f"({', '.join(unplaced[:2])})")
    bare = sorted(set(blocks) - set(paths))
    if bare:
        diffs.append(f"{len(bare)} of the UNet's transformer blocks have no fuser ({', '.join(bare[:2])})")
    if not diffs:
        for a, p, fuser in zip(mods.addresses, paths, mods.fusers):
            width = int(blocks[p].attn1.to_q.in_features)
            if int(fuser.linear.out_features) != width:
                diffs.append(f"the fuser of {a} is {fuser.linear.out_features} wide; the block is {width}")
                break
    if diffs:
        fam = MODEL_FAMILY.get(getattr(model, "family", ""), "this")
        raise ValueError(f"{what}: the GLIGEN model {gligen.name} does not fit this {fam} model "
                         f"({Path(model.source).name}): {'; '.join(diffs[:3])}. Use a GLIGEN made for {fam} "
                         "models.")
    return [(blocks[p], fuser) for p, fuser in zip(paths, mods.fusers)]

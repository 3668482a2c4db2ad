"""CONTROL_NET: a loaded ControlNet (or T2I-Adapter) under the model manager, and whether a ControlNet fits a MODEL
(a T2I-Adapter's fit: :mod:`nodes.controlnet.t2i_apply`).

A ControlNet mirrors the encoder half of the UNet it was trained beside: its residuals are added to that UNet's skip
connections, so it fits a model only when the block widths, layers, attention placement, cross-attention width and
SDXL's size embedding all match. :func:`check_fits` says which of those differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nodes.controlnet.load import FAMILY_NAMES, KIND_NAMES, LoadedControlNet, load_controlnet
from nodes.memory.manager import ManagedModule, ModelManager

MODEL_FAMILY = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
FIT_FIELDS = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim")


@dataclass(eq=False)
class ControlNetHandle:
    manager: ModelManager
    module: ManagedModule
    config: dict
    family: str
    source: str
    layout: str
    options: dict = field(default_factory=dict)
    kind: str = "controlnet"  # controlnet | t2i_adapter

    @property
    def name(self) -> str:
        return Path(self.source).name

    @property
    def description(self) -> str:
        return f"{FAMILY_NAMES[self.family]} {KIND_NAMES[self.kind]}"

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}  # the manager accounts for model memory

    def __repr__(self) -> str:
        return f"<CONTROL_NET {self.family} {self.kind} {self.source}>"


def load(manager: ModelManager, path: str | Path, model=None, progress=None) -> ControlNetHandle:
    """The ControlNet in a file or diffusers folder, loaded once per file identity (and base model, for difference
    files, which the loader adds to that model's UNet weights); ``progress`` (the node's ``ctx.progress``) hears the
    load's stages."""
    path = Path(path)
    kind = ("controlnet", str(manager.compute_dtype("unet")), model.source if model is not None else None)

    def factory() -> ControlNetHandle:
        unet = model.unet.module if model is not None else None
        loaded: LoadedControlNet = load_controlnet(path, unet=unet, unet_config=model.config if model else None,
                                                   allow_pickle=manager.allow_pickle, progress=progress)
        mm = manager.register(loaded.kind, loaded.module, str(path), manager.compute_dtype("unet"))
        return ControlNetHandle(manager, mm, loaded.config, loaded.family, str(path), loaded.layout,
                                kind=loaded.kind)

    return manager.load_once(kind, path, factory)


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _attention_depths(config) -> list[int]:
    """Transformer depth of each cross-attention level, then of the middle block (diffusers takes it from the last
    entry); levels without attention have none, whatever the config lists for them."""
    types = list(config.get("down_block_types") or ())
    depth = config.get("transformer_layers_per_block", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(types)
    return [int(d) for d, t in zip(depth, types) if "CrossAttn" in t] + [int(depth[-1])] if types else []


def check_fits(control: ControlNetHandle, model, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (the conditioning input) when ``control`` cannot steer ``model``."""
    mc, cc = model.config, control.config
    diffs = []
    for f in FIT_FIELDS:
        a, b = _norm(cc.get(f)), _norm(mc.get(f))
        if a != b:
            diffs.append(f"{f} {a} vs the model's {b}")
    if not diffs and _attention_depths(cc) != _attention_depths(mc):
        diffs.append(f"transformer depths {_attention_depths(cc)} vs the model's {_attention_depths(mc)}")
    if (cc.get("addition_embed_type") == "text_time") != (mc.get("addition_embed_type") == "text_time"):
        diffs.append("SDXL size conditioning " + ("present" if cc.get("addition_embed_type") else "absent") +
                     " vs " + ("present" if mc.get("addition_embed_type") else "absent") + " in the model")
    if diffs:
        fam = MODEL_FAMILY.get(getattr(model, "family", ""), "this")
        raise ValueError(f"{what}: the ControlNet {control.name} ({control.description}) does not fit this {fam} model "
                         f"({Path(model.source).name}): {'; '.join(diffs[:3])}. Use a ControlNet made for "
                         f"{fam} models.")

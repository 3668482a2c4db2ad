"""LoRA: reading LoRA files, matching them onto a loaded model, and applying them only while the model is in use.

Formats read (``.safetensors``; ``.pt``/``.bin`` through torch's safe ``weights_only`` loader):

- kohya / A1111 (``lora_unet_<module>``, ``lora_te_<module>``, SDXL ``lora_te1_``/``lora_te2_``, each with
  ``.lora_down.weight``, ``.lora_up.weight`` and an optional ``.alpha``); UNet module names in the diffusers layout
  (SD1/SD2 kohya files) or the original LDM/SGM layout (SDXL kohya files, ComfyUI's ``diffusion_model.`` keys).
- diffusers / PEFT (``unet.<module>.lora_A.weight`` / ``.lora_B.weight``, ``text_encoder.<module>``,
  ``text_encoder_2.<module>``; older ``.lora.down/.lora.up`` and attention-processor ``to_q_lora.down`` keys);
  the alpha comes from diffusers' ``lora_adapter_metadata`` (``<prefix>.lora_alpha``) when the file has it, else
  alpha = rank (scale 1), as diffusers loads such files.

LyCORIS files with LoHa, LoKr or (IA)³ layers (kohya key names; :mod:`nodes.patches.lycoris` has their math) are
read the same way and may mix with plain LoRA layers.

A LoRA layer adds ``strength * alpha / rank * up @ down`` to one weight (linear, or convolution with any kernel: the
down projection carries the kernel, the up projection is 1x1).

How it is applied: a LoRA node never changes the model it is given. It returns a *clone* of the MODEL/CLIP handle
whose ``options["lora"]`` lists what to add (:class:`AppliedLora`: the matched layers and a strength). The modules
stay the single copy the :class:`~nodes.memory.manager.ModelManager` loaded; :func:`patched` adds the deltas into
the weights when a node is about to run the module (after it is placed on the device, so the arithmetic happens
there) and restores the exact original values from a backup when the node is done, also on errors and interrupts.
So changing a strength or removing the LoRA node never reloads the checkpoint, and between uses the cached base
model is always pristine. A module streamed layer by layer (low-VRAM mode) cannot be patched in place: it gets the
same deltas through forward hooks instead.

A LoRA that does not fit the model (another family: keys with no place in it, or other shapes) is refused with an
error naming what did not fit.
"""
from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodes.patches import lycoris

# -- reading files ---------------------------------------------------------------------------------------------


class LoraError(ValueError):
    """A LoRA file that cannot be read or does not fit the model it is applied to."""


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One low-rank delta: ``alpha / rank * up @ down`` (down [r, in, *kernel], up [out, r, (1, 1)])."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    def describe(self) -> str:
        kernel = "x".join(str(d) for d in self.down.shape[2:])
        return f"{self.in_features}->{self.out_features}" + (f" (kernel {kernel})" if kernel else "")

    def fits(self, shape: torch.Size) -> bool:
        """Same out/in features and kernel size (a 1x1 convolution and a linear layer are interchangeable)."""
        return (len(shape) >= 2 and self.out_features == int(shape[0]) and self.in_features == int(shape[1])
                and _prod(self.down.shape[2:]) == _prod(shape[2:]))

    def tensors(self) -> list[torch.Tensor]:
        return [self.down, self.up]

    def delta(self, shape: torch.Size, device: torch.device, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The full-size float32 delta for a weight of ``shape`` on ``device`` (scale included, strength not)."""
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down).mul_(self.scale).reshape(shape)


@dataclass(eq=False)
class LoraFile:
    """The layers of one LoRA file, by the key they had there (format-specific prefix kept)."""

    path: str
    layers: dict[str, LoraLayer]
    metadata: dict[str, str] = field(default_factory=dict)

    def __chisel_nbytes__(self) -> dict[str, int]:
        n = sum(t.numel() * t.element_size() for layer in self.layers.values() for t in layer.tensors())
        return {"ram": n}


# Suffixes of the two halves of a layer, per format: (down, up).
_PAIRS = (
    (".lora_down.weight", ".lora_up.weight"),  # kohya
    (".lora_A.weight", ".lora_B.weight"),  # PEFT
    (".lora.down.weight", ".lora.up.weight"),  # diffusers (LoRACompatible layers)
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),  # diffusers attention processors: to_q_lora.down.weight
)
_UNSUPPORTED = {".lora_mid.weight": "LoCon with a Tucker mid weight", ".oft_blocks": "OFT"}
_UNSUPPORTED_SUFFIXES = {".diff": "full weight difference", ".diff_b": "full weight difference"}


def _read_tensors(path: Path, allow_pickle: bool | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from nodes.loading.errors import CheckpointError
    from nodes.loading.weights import read_tensors

    try:
        return read_tensors(path, allow_pickle)
    except CheckpointError as exc:
        raise LoraError(str(exc)) from None


def _peft_alpha(metadata: Mapping[str, str]) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata``: ``{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {...}}``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _alpha_from_metadata(info: Mapping[str, Any], key: str) -> float | None:
    prefix = key.split(".", 1)[0]
    module = key.split(".", 1)[1] if "." in key else key
    pattern = info.get(f"{prefix}.alpha_pattern") or {}
    if isinstance(pattern, dict):
        for pat, value in pattern.items():
            if module == pat or module.endswith("." + pat) or re.fullmatch(rf"(.*\.)?{pat}", module):
                return float(value)
    alpha = info.get(f"{prefix}.lora_alpha")
    return float(alpha) if alpha is not None else None


_cache: "dict[tuple, LoraFile]" = {}
_cache_lock = threading.Lock()
_CACHE_FILES = 8


def load_lora(path: str | Path, allow_pickle: bool | None = None) -> LoraFile:
    """:func:`read_lora`, remembered per file identity (path, size, mtime) for the last few files, so changing a
    strength does not read the file again."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, allow_pickle)
    with _cache_lock:
        hit = _cache.pop(key, None)
        if hit is not None:
            _cache[key] = hit
            return hit
    lora = read_lora(p, allow_pickle)
    with _cache_lock:
        _cache[key] = lora
        while len(_cache) > _CACHE_FILES:
            _cache.pop(next(iter(_cache)))
    return lora


def read_lora(path: str | Path, allow_pickle: bool | None = None) -> LoraFile:
    """Parse a LoRA file into layers (see the module docstring for the formats); pickles per
    :mod:`nodes.loading.weights`."""
    path = Path(path)
    tensors, metadata = _read_tensors(path, allow_pickle)
    for key in tensors:
        for marker, kind in list(_UNSUPPORTED.items()) + list(_UNSUPPORTED_SUFFIXES.items()):
            if (key.endswith(marker) if marker in _UNSUPPORTED_SUFFIXES else marker in key):
                raise LoraError(f"{path.name} is a {kind} file (key {key!r}); Chisel applies LoRA "
                                "(down/up pairs), LoHa, LoKr and (IA)3 only")
    peft_meta = _peft_alpha(metadata)
    used: set[str] = set()
    try:
        layers: dict[str, Any] = dict(lycoris.read_layers(tensors, used))
    except ValueError as exc:
        raise LoraError(f"{path.name}: {exc}") from None
    for key in sorted(tensors):
        for down_sfx, up_sfx in _PAIRS:
            if not key.endswith(down_sfx):
                continue
            base = key[: -len(down_sfx)]
            up_key = base + up_sfx
            if up_key not in tensors:
                raise LoraError(f"{path.name}: {key!r} has no matching {up_key!r}")
            down, up = tensors[key], tensors[up_key]
            if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0]:
                raise LoraError(f"{path.name}: {base!r} has inconsistent shapes down {tuple(down.shape)}, "
                                f"up {tuple(up.shape)}")
            alpha_t = tensors.get(base + ".alpha")
            alpha = float(alpha_t.float().item()) if alpha_t is not None else None
            if alpha_t is not None:
                used.add(base + ".alpha")
            if down_sfx == "_lora.down.weight":  # attention processor keys: <attn>.processor.to_q_lora
                base = base.replace(".processor.", ".")
                base = base[:-len("to_out")] + "to_out.0" if base.endswith("to_out") else base
            elif down_sfx == ".lora_A.weight" and alpha is None and peft_meta:
                alpha = _alpha_from_metadata(peft_meta, base)
            layers[base] = LoraLayer(down, up, alpha)
            used.update((key, up_key))
            break
    leftovers = [k for k in tensors if k not in used and not k.endswith(".alpha")]
    if not layers:
        sample = ", ".join(sorted(tensors)[:4]) or "(no tensors)"
        raise LoraError(f"{path.name} is not a LoRA file Chisel can read: no down/up (lora_down/lora_up or "
                        f"lora_A/lora_B) pairs and no LoHa, LoKr or (IA)3 layers; its keys look like {sample}")
    if leftovers:
        raise LoraError(f"{path.name}: tensors that belong to no LoRA layer, e.g. {', '.join(leftovers[:4])}")
    return LoraFile(str(path), layers, metadata)


# -- matching a file onto a model ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AppliedLora:
    """A LoRA matched onto one module: ``{parameter name: layer}`` and a strength."""

    name: str
    layers: Mapping[str, LoraLayer]
    strength: float


def _linear_like(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d))


def unet_lookup(unet: torch.nn.Module, config: Mapping[str, Any]) -> dict[str, str]:
    """``{lora key base: module name}`` for every linear/conv layer of a diffusers UNet, under each naming."""
    from nodes.loading.keymaps import unet_key_map

    names = [n for n, m in unet.named_modules() if n and _linear_like(m)]
    try:
        ldm = unet_key_map(config, [n + ".weight" for n in names])
    except (KeyError, ValueError):
        ldm = {}
    out: dict[str, str] = {}
    for n in names:
        keys = [f"lora_unet_{n.replace('.', '_')}", f"unet.{n}", n]
        l_name = ldm.get(n + ".weight")
        if l_name:
            l_mod = l_name[: -len(".weight")]
            keys += [f"lora_unet_{l_mod.replace('.', '_')}", f"diffusion_model.{l_mod}"]
        for k in keys:
            out.setdefault(k, n)
    return out


def text_encoder_lookup(module: torch.nn.Module, slot: str, index: int, count: int) -> dict[str, str]:
    """``{lora key base: module name}`` for the linear layers of one text encoder (``slot``: its diffusers
    component name; ``index`` of ``count`` encoders, for kohya's lora_te1_/lora_te2_)."""
    kohya = ["lora_te_"] if count == 1 else [f"lora_te{index + 1}_"]
    if count == 1 and slot == "text_encoder_2":
        kohya.append("lora_te2_")
    out: dict[str, str] = {}
    for n, m in module.named_modules():
        if not n or not _linear_like(m):
            continue
        flat = n[len("text_model."):] if n.startswith("text_model.") else n
        underscored = flat.replace(".", "_")
        for p in kohya:
            out.setdefault(f"{p}text_model_{underscored}", n)
            out.setdefault(f"{p}{underscored}", n)
        out.setdefault(f"{slot}.text_model.{flat}", n)
        out.setdefault(f"{slot}.{flat}", n)
    return out


def _family_hint(lora: LoraFile) -> str:
    """A guess at the family a LoRA was made for, from its cross-attention key/value input width."""
    widths = {getattr(layer, "in_features", None) for k, layer in lora.layers.items()
              if re.search(r"attn2[._]to_[kv]$", k)}
    guess = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "the SDXL refiner"}
    found = [guess[w] for w in sorted(widths) if w in guess]
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in lora.layers):
        found.append("SDXL")
    return f" It looks made for {', '.join(dict.fromkeys(found))}." if found else ""


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def match(lora: LoraFile, name: str, targets: list[tuple[str, torch.nn.Module, dict[str, str]]],
          model_desc: str, ignore: Iterable[str] = ()) -> dict[str, dict[str, LoraLayer]]:
    """Assign every layer of ``lora`` to a parameter of one of ``targets`` (``(target id, module, lookup)``).

    Layers whose key starts with one of ``ignore`` (e.g. the text-encoder keys for LoraLoaderModelOnly) are skipped.
    Anything else that has no place, or has another shape, makes this a :class:`LoraError` naming what did not fit.
    """
    ignore = tuple(ignore)
    out: dict[str, dict[str, LoraLayer]] = {tid: {} for tid, _, _ in targets}
    missing: list[str] = []
    wrong: list[str] = []
    considered = 0
    for key, layer in lora.layers.items():
        if ignore and key.startswith(ignore):
            continue
        considered += 1
        for tid, module, lookup in targets:
            mod_name = lookup.get(key)
            if mod_name is None:
                continue
            weight = module.get_parameter(mod_name + ".weight")
            if not layer.fits(weight.shape):
                wrong.append(f"{key} ({layer.describe()}, the model's {mod_name} is "
                             f"{'x'.join(str(d) for d in weight.shape)})")
            else:
                out[tid][mod_name + ".weight"] = layer
            break
        else:
            missing.append(key)
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {considered} layers have no place in it (e.g. "
                         f"{', '.join(missing[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} have other shapes (e.g. {'; '.join(wrong[:3])})")
        raise LoraError(f"LoRA {name!r} does not fit {model_desc}: {'; '.join(parts)}.{_family_hint(lora)}")
    return out


# -- applying on use -------------------------------------------------------------------------------------------

_locks: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _lock_for(module: torch.nn.Module) -> threading.RLock:
    with _locks_guard:
        lock = _locks.get(module)
        if lock is None:
            lock = _locks[module] = threading.RLock()
        return lock


def _combined(applied: Iterable[AppliedLora]) -> dict[str, list[tuple[LoraLayer, float]]]:
    per_param: dict[str, list[tuple[LoraLayer, float]]] = {}
    for a in applied:
        if a.strength == 0.0:
            continue
        for pname, layer in a.layers.items():
            per_param.setdefault(pname, []).append((layer, float(a.strength)))
    return per_param


def _backup(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cuda":
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)  # same stream as the patch and the restore: ordered without a host sync
        return buf
    return t.detach().clone()


@contextmanager
def patched(mm, applied: Iterable[Any] = ()):
    """While the block runs, ``mm.module`` (a placed :class:`~nodes.memory.manager.ManagedModule`) computes with
    ``applied`` LoRAs added and any module patches (objects with an ``attach(module)`` context manager, e.g.
    :class:`nodes.patches.freeu.FreeUPatch`) attached; afterwards its weights and hooks are restored exactly.
    Serialised per module, so a concurrent user never sees another's LoRA or patch."""
    applied = list(applied)
    hooks = [a for a in applied if hasattr(a, "attach")]
    loras = [a for a in applied if not hasattr(a, "attach")]
    with _lock_for(mm.module), ExitStack() as stack:
        stack.enter_context(_with_loras(mm, loras))
        if hooks:
            stack.enter_context(_eager(mm))
        for patch in hooks:
            stack.enter_context(patch.attach(mm.module))
        yield


@contextmanager
def _eager(mm):
    """Have the module run eagerly while hooks are attached (a compiled graph would silently skip them)."""
    mm.hooked = getattr(mm, "hooked", 0) + 1
    try:
        yield
    finally:
        mm.hooked -= 1


@contextmanager
def _with_loras(mm, applied: Iterable[AppliedLora]):
    module = mm.module
    per_param = _combined(applied)
    if not per_param:
        yield
        return
    if getattr(mm, "sequential", False) or getattr(mm, "storage_dtype", None) is not None:
        # streamed weights cannot be patched in place; fp8-stored ones would round the delta to fp8
        with _hooked(module, per_param):
            yield
        return
    backups: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for pname, items in per_param.items():
                p = module.get_parameter(pname)
                backups[pname] = (p, _backup(p.data))
                base = p.data.float()  # (IA)3 scales the unpatched weight
                acc = base.clone()
                for layer, strength in items:
                    acc.add_(layer.delta(p.shape, p.device, base), alpha=strength)
                p.data.copy_(acc)
        yield
    finally:
        with torch.no_grad():
            for p, saved in backups.values():
                p.data.copy_(saved, non_blocking=saved.is_pinned())


@contextmanager
def _hooked(module: torch.nn.Module, per_param: dict[str, list[tuple[LoraLayer, float]]]):
    """The same deltas as forward hooks (for modules whose weights are streamed and cannot be patched)."""
    import torch.nn.functional as F

    handles = []

    def make_hook(sub: torch.nn.Module, items):
        def hook(mod, args, output):
            x = args[0]
            extra = 0
            for layer, strength in items:
                if not isinstance(layer, LoraLayer):  # LyCORIS: its whole delta, as a layer of its own
                    base = mod.weight if mod.weight.element_size() > 1 else mod.weight.to(x.dtype)  # fp8: upcast
                    d = layer.delta(mod.weight.shape, x.device, base).to(x.dtype)
                    if isinstance(mod, torch.nn.Linear):
                        h = F.linear(x, d)
                    else:
                        conv = F.conv2d if isinstance(mod, torch.nn.Conv2d) else F.conv1d
                        h = conv(x, d, None, mod.stride, mod.padding, mod.dilation, mod.groups)
                    extra = extra + h * strength
                    continue
                down = layer.down.to(x.device, x.dtype)
                up = layer.up.to(x.device, x.dtype)
                if isinstance(mod, torch.nn.Linear):
                    h = F.linear(F.linear(x, down.flatten(1)), up.flatten(1))
                else:
                    conv = F.conv2d if isinstance(mod, torch.nn.Conv2d) else F.conv1d
                    h = conv(x, down.reshape(down.shape[0], *mod.weight.shape[1:]), None, mod.stride, mod.padding,
                             mod.dilation, mod.groups)
                    h = conv(h, up.reshape(up.shape[0], up.shape[1], *([1] * (x.ndim - 2))))
                extra = extra + h * (strength * layer.scale)
            return output + extra

        return hook

    try:
        for pname, items in per_param.items():
            sub = module.get_submodule(pname.rsplit(".", 1)[0])
            handles.append(sub.register_forward_hook(make_hook(sub, items)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patched_many(pairs: Iterable[tuple[Any, Iterable[AppliedLora]]]):
    with ExitStack() as stack:
        for mm, applied in pairs:
            stack.enter_context(patched(mm, applied))
        yield

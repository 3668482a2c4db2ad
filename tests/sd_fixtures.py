"""Shared helpers for the Stable Diffusion tests (tests/test_sd_*.py): tiny checkpoints in the real layouts, written
once per test session, plus a socket guard and a fake node context.

Test modules use ``from sd_fixtures import *``; the files are cached per process, so several modules share them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

_ROOT = Path(tempfile.mkdtemp(prefix="chisel-sd-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)  # tiny checkpoints are rebuilt by the next process


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """``actual`` equals ``expected`` up to float32 rounding, measured against the tensors' own scale.

    Two float32 computations of the same result that differ only in kernel choice (batch size, thread count,
    BLAS path) disagree by a few ulp per accumulated operation, relative to the magnitudes involved, not in
    absolute terms: random tiny weights drive latents to ~1e2 after a few steps. A UNet pass accumulates on the
    order of 1e3 products, so ``rel = 1e-4`` (about 1e3 x float32's 1.2e-7 epsilon) of the largest magnitude
    bounds the disagreement while staying far below a real difference (another seed changes values by O(1)).
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(actual.abs().max().item(), expected.abs().max().item(), 1.0)
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale, f"max |diff| {diff:.3g} exceeds {rel:g} x scale {scale:.3g}"


@lru_cache(maxsize=None)
def tiny_file(family: str, dtype: str = "fp16", seed: int = 0) -> Path:
    """A tiny checkpoint of ``family`` (nodes.testing.tiny.FAMILIES), written once per process."""
    from nodes.testing import tiny

    path = _ROOT / f"tiny-{family}-{dtype}-{seed}.safetensors"
    tiny.write(family, path, seed=seed, dtype={"fp16": torch.float16, "fp32": torch.float32,
                                               "bf16": torch.bfloat16}[dtype])
    return path


@lru_cache(maxsize=None)
def tiny_model(family: str, seed: int = 0):
    """The in-memory modules the tiny file of (family, seed) was written from (same seed, same weights)."""
    from nodes.testing import tiny

    return tiny.build(family, seed)


def models_root(tmp_path: Path, *files: tuple[str, Path]) -> Path:
    """A Chisel root with models/checkpoints holding the given (name, source file) pairs."""
    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    for name, src in files:
        shutil.copy(src, ck / name)
    return tmp_path


def make_engine(root: Path, device: str = "cpu"):
    from graph.engine import Engine
    from graph.paths import ModelPaths
    from nodes.services import create_services

    paths = ModelPaths(root=root)
    services = create_services(paths, device=device)
    return Engine(_registry(), services=services, paths=paths), services


@lru_cache(maxsize=1)
def _registry():
    from graph.registry import NodeRegistry

    return NodeRegistry.discover()


@lru_cache(maxsize=None)
def cpu_services():
    """One CPU Services per test process (its model manager loads each tiny file once)."""
    from graph.paths import ModelPaths
    from nodes.services import create_services

    return create_services(ModelPaths(root=_ROOT), device="cpu")


class FakeContext:
    """What a node's ``run`` gets, without the engine: services, file paths, progress records."""

    def __init__(self, services=None, files: dict | None = None, workflow=None):
        self.services = services if services is not None else cpu_services()
        self.node_id = self.run_id = "test"
        self.registry = None
        self._files = files or {}
        self.events: list[tuple] = []
        self.stages: list[tuple] = []  # (value, total, stage) of a loader's "loading" progress
        self.workflow = workflow
        self.extra: dict = {}

    def progress(self, value, total, preview=None, *, activity=None, stage=None):
        self.events.append((value, total, preview))
        if stage is not None:
            self.stages.append((value, total, stage))

    def check_interrupted(self):
        pass

    def file_path(self, name):
        return Path(self._files[name])


@pytest.fixture
def no_network(monkeypatch):
    """HF offline mode plus a guard that fails any attempt to open a network connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network was attempted: {attempts}"


def assert_same_weights(src_module, loaded_module, dtype=torch.float16):
    """Every parameter of ``loaded_module`` equals the source's, rounded through the file's dtype."""
    a = {k: v for k, v in src_module.state_dict().items() if not k.endswith("position_ids")}
    b = {k: v for k, v in loaded_module.state_dict().items() if not k.endswith("position_ids")}
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        want = a[k].to(dtype).float() if a[k].is_floating_point() else a[k]
        got = b[k].float() if b[k].is_floating_point() else b[k]
        assert torch.equal(want, got), k


# -- tiny LoRAs and embeddings ------------------------------------------------------------------------------------

LORA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                     "conv1", "time_emb_proj")
LORA_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _lora_pair(module, rank, gen, scale):
    w = module.weight
    kernel = tuple(w.shape[2:])
    down = torch.randn(rank, w.shape[1], *kernel, generator=gen) * scale
    up = torch.randn(w.shape[0], rank, *((1,) * len(kernel)), generator=gen) * scale
    return down, up


def tiny_lora_layers(family: str, rank: int = 4, seed: int = 0, scale: float = 0.2, text: bool = True):
    """Random LoRA layers for the tiny ``family`` model: ``{(component, module name): (down, up)}``, components
    "unet", "text_encoder", "text_encoder_2" (diffusers module names; text names without ``text_model.``)."""
    m = tiny_model(family)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, mod in m.unet.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and n.endswith(LORA_UNET_TARGETS):
            out[("unet", n)] = _lora_pair(mod, rank, gen, scale)
    if text:
        for comp in ("text_encoder", "text_encoder_2"):
            te = getattr(m, comp)
            if te is None:
                continue
            for n, mod in te.named_modules():
                if isinstance(mod, torch.nn.Linear) and n.endswith(LORA_TEXT_TARGETS):
                    flat = n[len("text_model."):] if n.startswith("text_model.") else n
                    out[(comp, flat)] = _lora_pair(mod, rank, gen, scale)
    return out


def write_lora(path: Path, family: str, layers: dict, fmt: str = "peft", alpha: float | None = None) -> Path:
    """Write LoRA layers in ``fmt``: "peft" (diffusers' file: unet./text_encoder. keys, alpha in its
    lora_adapter_metadata) or "kohya" (lora_unet_/lora_te_ keys with .alpha; SDXL UNet names in the LDM layout)."""
    import json

    from safetensors.torch import save_file

    from nodes.loading.keymaps import unet_key_map

    sd, meta = {}, {"format": "pt"}
    two = family in ("sdxl",)
    if fmt == "peft":
        info = {}
        for (comp, n), (down, up) in layers.items():
            key = f"{comp}.{n}" if comp == "unet" else f"{comp}.text_model.{n}"
            sd[key + ".lora_A.weight"], sd[key + ".lora_B.weight"] = down, up
            rank = down.shape[0]
            info[f"{comp}.r"] = rank
            info[f"{comp}.lora_alpha"] = alpha if alpha is not None else rank
            info.setdefault(f"{comp}.target_modules", set()).add(n)
        if alpha is not None:
            meta["lora_adapter_metadata"] = json.dumps(
                {k: sorted(v) if isinstance(v, set) else v for k, v in info.items()}, sort_keys=True)
    elif fmt == "kohya":
        ldm = {}
        if two:
            unet = tiny_model(family).unet
            names = [n + ".weight" for (c, n) in layers if c == "unet"]
            ldm = unet_key_map(unet.config, names)
        for (comp, n), (down, up) in layers.items():
            if comp == "unet":
                name = ldm[n + ".weight"][: -len(".weight")] if two else n
                base = "lora_unet_" + name.replace(".", "_")
            else:
                prefix = ("lora_te1_" if comp == "text_encoder" else "lora_te2_") if two else "lora_te_"
                base = prefix + "text_model_" + n.replace(".", "_")
            sd[base + ".lora_down.weight"], sd[base + ".lora_up.weight"] = down, up
            sd[base + ".alpha"] = torch.tensor(float(alpha if alpha is not None else down.shape[0]))
    else:
        raise ValueError(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["tiny_file", "tiny_model", "models_root", "make_engine", "FakeContext", "no_network",
           "assert_same_weights", "tiny_lora_layers", "write_lora"]

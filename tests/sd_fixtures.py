"""Shared helpers for the Stable Diffusion tests (tests/test_sd_*.py): tiny checkpoints in the real layouts, written
once per test session, plus a socket guard and a fake node context.

Test modules use ``from sd_fixtures import *``; the files are cached per process, so several modules share them.
"""
from __future__ import annotations

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


@lru_cache(maxsize=None)
def tiny_file(family: str, dtype: str = "fp16", seed: int = 0) -> Path:
    """A tiny checkpoint of ``family`` (nodes.models.tiny.FAMILIES), written once per process."""
    from nodes.models import tiny

    path = _ROOT / f"tiny-{family}-{dtype}-{seed}.safetensors"
    tiny.write(family, path, seed=seed, dtype={"fp16": torch.float16, "fp32": torch.float32,
                                               "bf16": torch.bfloat16}[dtype])
    return path


@lru_cache(maxsize=None)
def tiny_model(family: str, seed: int = 0):
    """The in-memory modules the tiny file of (family, seed) was written from (same seed, same weights)."""
    from nodes.models import tiny

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
    from graph.registry import NodeRegistry

    from nodes.services import create_services

    paths = ModelPaths(root=root)
    services = create_services(paths, device=device)
    return Engine(_registry(), services=services, paths=paths), services


@lru_cache(maxsize=1)
def _registry():
    from graph.registry import NodeRegistry

    return NodeRegistry.discover()


class FakeContext:
    """What a node's ``run`` gets, without the engine: services, file paths, progress records."""

    def __init__(self, services=None, files: dict | None = None, workflow=None, prompt_api=None):
        self.services = services
        self.node_id = "test"
        self._files = files or {}
        self.events: list[tuple] = []
        self.workflow = workflow
        self.prompt_api = prompt_api

    def progress(self, value, total, preview=None):
        self.events.append((value, total, preview))

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


os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["tiny_file", "tiny_model", "models_root", "make_engine", "FakeContext", "no_network",
           "assert_same_weights"]

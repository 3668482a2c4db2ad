"""Shared fixtures. Engine tests use the toy nodes in toy_nodes.py; no torch needed for them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# nothing is downloaded at test time, whichever test module happens to run first
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# torch's idle threads sleep instead of spinning, as under `chisel` (server.cli): on a busy machine spinning threads
# take the CPU from the thread they wait for (read when torch loads: before any test module imports it)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph.engine import Engine  # noqa: E402
from graph.paths import ModelPaths  # noqa: E402
from graph.registry import NodeRegistry  # noqa: E402

import toy_nodes  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_rng_from_a_fixed_seed():
    """Each test starts from the same torch RNG state whatever ran before it (random order: pytest-randomly reseeds
    Python's and NumPy's generators per test, not torch's). Torch is not imported for tests that do not use it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    yield


@pytest.fixture
def toy_registry() -> NodeRegistry:
    return NodeRegistry(toy_nodes.NODES)


@pytest.fixture
def toy_paths(tmp_path) -> ModelPaths:
    return ModelPaths(root=tmp_path)


@pytest.fixture
def toy_engine(toy_registry, toy_paths) -> Engine:
    toy_nodes.CALLS.clear()
    return Engine(toy_registry, paths=toy_paths)


@pytest.fixture
def one_torch_thread():
    """Tests of small tensors run faster on one intra-op thread, much faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, config):
    """The random-order seed, also under ``-q`` (whose header hides pytest-randomly's line): a failure that depends
    on the order is reproduced with ``-p randomly --randomly-seed=N``."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: pytest-randomly, reproduce with --randomly-seed={seed}")

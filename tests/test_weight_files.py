"""The one weight-file reader (nodes.loading.weights) and its policy, on real tiny files: pickles load weights-only by
default for checkpoints, VAEs, LoRAs and embeddings; a pickle that asks for more than tensors is refused naming what
it asked for, before it runs anything; --no-pickle refuses them all; a corrupt safetensors file is named with what
is wrong; a checkpoint whose architecture needs metadata it lacks is a loader error naming the file."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_same_weights, tiny_file, tiny_lora_layers, tiny_model, write_lora

from nodes.loading import errors as E
from nodes.loading.checkpoint import load_checkpoint
from nodes.loading.vae_file import load_vae_file
from nodes.loading.weights import WeightFile, read_header, read_tensors


class _Trap:
    """Unpickling this creates a file: the proof that a refused pickle ran nothing."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def plain_ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    # a pickle carries no metadata: the tiny model whose non-shape hyperparameters are SD1.5's
    torch.save({"state_dict": load_file(str(tiny_file("sd1_plain", "fp32"))), "global_step": 1, "epoch": 3},
               str(path))
    return path


def test_pickled_checkpoint_loads_weights_only_by_default(plain_ckpt, monkeypatch):
    monkeypatch.delenv("CHISEL_NO_PICKLE", raising=False)
    lc = load_checkpoint(plain_ckpt)
    assert lc.family == "sd1" and not lc.report.metadata_used
    assert_same_weights(tiny_model("sd1_plain").unet, lc.unet, torch.float32)
    assert_same_weights(tiny_model("sd1_plain").text_encoder, lc.text_encoders["text_encoder"], torch.float32)


def test_no_pickle_refuses_every_pickle(plain_ckpt, tmp_path, monkeypatch):
    with pytest.raises(E.UnsafeCheckpoint, match="--no-pickle") as exc:
        load_checkpoint(plain_ckpt, allow_pickle=False)
    assert str(plain_ckpt) in str(exc.value)
    monkeypatch.setenv("CHISEL_NO_PICKLE", "1")  # the environment setting is the default policy
    with pytest.raises(E.UnsafeCheckpoint):
        load_checkpoint(plain_ckpt)
    from nodes.services import create_services

    assert create_services().allow_pickle is False


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_asks_for_code_is_refused_naming_it_and_runs_nothing(tmp_path, zipped):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": _Trap(marker)}, str(path),
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(E.UnsafeCheckpoint) as exc:
        WeightFile(path, allow_pickle=True)
    msg = str(exc.value)
    assert "open" in msg and str(path) in msg and ".safetensors" in msg and "Convert" in msg
    assert not marker.exists()


def test_a_numpy_scalar_in_a_pickle_is_refused_with_its_class(tmp_path):
    path = tmp_path / "np.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_loss": np.float64(0.1)}, str(path))
    with pytest.raises(E.UnsafeCheckpoint, match=r"numpy\.\S*scalar"):
        load_checkpoint(path)


def test_lora_pickle_applies_like_its_safetensors_twin(tmp_path):
    from nodes.patches.lora import LoraError, read_lora

    st = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1"), fmt="kohya")
    pt = tmp_path / "l.pt"
    torch.save(load_file(str(st)), str(pt))
    a, b = read_lora(st), read_lora(pt)
    assert a.layers.keys() == b.layers.keys() and len(a.layers) > 4
    for k in a.layers:
        assert torch.equal(a.layers[k].down, b.layers[k].down) and torch.equal(a.layers[k].up, b.layers[k].up)
    with pytest.raises(LoraError, match="--no-pickle"):
        read_lora(pt, allow_pickle=False)


def test_lora_loader_node_follows_the_services_policy(tmp_path):
    from types import SimpleNamespace

    from nodes.library.loaders import LoraLoaderModelOnly
    from nodes.patches.lora import LoraError

    pt = tmp_path / "l.pt"
    torch.save(load_file(str(write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1")))), str(pt))
    ctx = FakeContext(services=SimpleNamespace(allow_pickle=False), files={"lora_name": pt})
    with pytest.raises(LoraError, match="pickles are turned off"):
        LoraLoaderModelOnly().run(ctx, None, "l.pt", 1.0)


def test_a1111_embedding_pickle_loads_and_a_refused_one_says_why(tmp_path):
    from nodes.text.embeddings import EmbeddingError, parse

    vec = torch.randn(2, 32)
    path = tmp_path / "style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vec)}, "name": "style",
                "step": 500, "sd_checkpoint_name": "v1-5"}, str(path))
    emb = parse("style", path)
    assert torch.equal(emb.parts[""], vec)
    with pytest.raises(EmbeddingError, match="turned off"):
        parse("style", path, allow_pickle=False)
    bad = tmp_path / "bad.pt"
    torch.save({"string_to_param": {"*": vec}, "extra": _Trap(tmp_path / "ran")}, str(bad))
    with pytest.raises(EmbeddingError, match="open"):
        parse("bad", bad)
    assert not (tmp_path / "ran").exists()


def test_vae_pickle_loads_completely(tmp_path):
    vae = {k[len("first_stage_model."):]: v for k, v in load_file(str(tiny_file("sd1_plain", "fp32"))).items()
           if k.startswith("first_stage_model.")}
    path = tmp_path / "vae.pt"
    torch.save({"state_dict": vae}, str(path))
    model, cfg = load_vae_file(path)
    assert_same_weights(tiny_model("sd1_plain").vae, model, torch.float32)
    with pytest.raises(E.UnsafeCheckpoint):
        load_vae_file(path, allow_pickle=False)


# -- corrupt safetensors ----------------------------------------------------------------------------------------

def _header(entries: dict) -> bytes:
    import json

    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize("case, match", [
    ("truncated", "truncated"),
    ("offsets", "does not fit its shape"),
    ("entry", "malformed"),
    ("header_size", "header claims"),
    ("not_json", "unreadable safetensors header"),
])
def test_corrupt_safetensors_names_the_file_and_the_fault(tmp_path, case, match):
    path = tmp_path / f"{case}.safetensors"
    if case == "truncated":
        data = tiny_file("sd1").read_bytes()
        path.write_bytes(data[: int(len(data) * 0.9)])
    elif case == "offsets":
        path.write_bytes(_header({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}) + b"\0" * 64)
    elif case == "entry":
        path.write_bytes(_header({"w": {"dtype": "F32", "shape": "four"}}) + b"\0" * 64)
    elif case == "header_size":
        path.write_bytes(struct.pack("<Q", 10**9) + b"{" + b"\0" * 32)
    else:
        path.write_bytes(struct.pack("<Q", 9) + b"{nonsense" + b"\0" * 32)
    for reader in (load_checkpoint, load_vae_file, lambda p: read_tensors(p)):
        with pytest.raises(E.CorruptCheckpoint, match=match) as exc:
            reader(path)
        assert str(path) in str(exc.value)


def test_a_corrupt_lora_or_embedding_is_named_too(tmp_path):
    from nodes.patches.lora import LoraError, read_lora
    from nodes.text.embeddings import EmbeddingError, parse

    data = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1")).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(LoraError, match="truncated") as exc:
        read_lora(cut)
    assert "cut.safetensors" in str(exc.value)
    with pytest.raises(EmbeddingError, match="truncated"):
        parse("cut", cut)


def test_a_checkpoint_lacking_the_metadata_its_architecture_needs_is_a_loader_error(tmp_path):
    """The tiny SD1 VAE uses 4 norm groups, which shapes cannot tell; stripped of its metadata the loader assumes
    SD's 32 and cannot build it: the error names the file and what is missing, not GroupNorm's."""
    _, _, meta = read_header(tiny_file("sd1"))
    assert "chisel.vae" in meta
    path = tmp_path / "stripped.safetensors"
    save_file(load_file(str(tiny_file("sd1"))), str(path))
    with pytest.raises(E.UnrecognisedArchitecture) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert str(path) in msg and "vae" in msg and "no metadata" in msg and "norm_num_groups=32" in msg


def test_no_pickle_flag_reaches_the_services():
    from server.cli import build_parser, build_runtime

    for cmd in (["run", "w.json"], ["serve"]):
        args = build_parser().parse_args([*cmd, "--no-pickle", "--device", "cpu"])
        assert build_runtime(args)[1].allow_pickle is False
    args = build_parser().parse_args(["run", "w.json", "--device", "cpu"])
    assert build_runtime(args)[1].allow_pickle is True

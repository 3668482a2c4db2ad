"""Tiled VAE decoding/encoding and the fallback to tiles when the device runs out of memory.

The blending is checked on operators whose tiled error can be stated: a pointwise one (tiling must be exact), and a
local one of radius r (a tile is wrong only within r cells of an inner edge, where its ramp weight is at most
q = r·p/(o·p+1) for an overlap of o cells and p output pixels per cell; so the error is at most
2·max|x|·(1 − (1 − q)²) in two dimensions). On the tiny VAE (whose group norms and attention see the whole tile, so
no such bound exists) a tile covering the image gives the untiled result, and overlap shrinks the seams.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, tiny_file

from nodes.imaging.tiled_vae import decode_tiled, encode_tiled, tiled_apply
from nodes.library.latent import VAEDecode, VAEEncode
from nodes.library.latent_tiled import VAEDecodeTiled, VAEEncodeTiled
from nodes.memory.manager import ModelManager


def _x(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("tile, overlap", [(5, 0), (7, 3), (16, 4), (64, 8)])
def test_a_pointwise_operator_tiles_exactly(tile, overlap):
    def fn(t):
        return F.interpolate(torch.tanh(t[:, :2] * 3), scale_factor=4, mode="nearest")

    x = _x(2, 3, 19, 23)
    assert torch.allclose(tiled_apply(fn, x, 1, tile, overlap, 4, 2), fn(x), atol=1e-6)


def test_a_local_operator_stays_within_the_bound_its_overlap_gives():
    r, p = 2, 4

    def fn(t):
        for _ in range(r):
            t = F.avg_pool2d(t, 3, 1, 1, count_include_pad=True)
        return F.interpolate(t, scale_factor=p, mode="nearest")

    x = _x(1, 3, 40, 36, seed=1)
    full, m = fn(x), x.abs().max().item()
    errors = []
    for overlap in (0, 2, 4, 8):
        err = (tiled_apply(fn, x, 1, 16, overlap, p, 3) - full).abs().max().item()
        q = r * p / (overlap * p + 1)
        assert err <= 2 * m * (1 - (1 - min(q, 1)) ** 2), (overlap, err)
        errors.append(err)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 3


@pytest.fixture(scope="module")
def vae():
    return ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32")).vae


def test_tiled_vae_nodes_equal_the_untiled_result_when_a_tile_covers_the_image(vae):
    z = _x(1, 4, 8, 10, seed=2)
    whole = vae.decode(z)
    tiled = VAEDecodeTiled().run(FakeContext(), {"samples": z}, vae, 128, 32, 64, 8)[0]
    assert (tiled - whole).abs().max() < 1e-5
    img = whole
    lat = VAEEncodeTiled().run(FakeContext(), img, vae, 128, 32, 64, 8)[0]["samples"]
    assert (lat - vae.encode(img)).abs().max() < 1e-5


def _seam_jump(img: torch.Tensor, col: int) -> float:
    """Mean jump across column ``col`` relative to the mean jump between neighbouring columns elsewhere."""
    d = (img[:, :, 1:] - img[:, :, :-1]).abs().mean(dim=(0, 1, 3))
    return (d[col - 1] / d.mean()).item()


def test_overlap_blends_the_seams_of_the_tiny_vae(vae):
    z = _x(1, 4, 8, 12, seed=3)  # 96 px wide: 64 px tiles at columns 0 and 32
    whole = vae.decode(z)
    hard = decode_tiled(vae, z, 64, 0)
    soft = decode_tiled(vae, z, 64, 32)  # 32 px overlap of 64 px tiles: capped to a quarter, 16 px
    e_hard, e_soft = (hard - whole).abs().mean().item(), (soft - whole).abs().mean().item()
    print(f"tiny VAE decode, mean |tiled - whole|: hard seams {e_hard:.4f}, 16 px blend {e_soft:.4f}")
    assert e_soft < e_hard
    assert _seam_jump(soft, 64) < _seam_jump(hard, 64)
    enc_hard = (encode_tiled(vae, whole, 64, 0) - vae.encode(whole)).abs().mean().item()
    enc_soft = (encode_tiled(vae, whole, 64, 32) - vae.encode(whole)).abs().mean().item()
    assert enc_soft < enc_hard


def _oom_above(module: torch.nn.Module, monkeypatch, cells: int):
    """Make ``module`` raise CUDA's out-of-memory error for inputs larger than ``cells`` x ``cells``."""
    original = module.forward
    calls = []

    def forward(x, *args, **kwargs):
        calls.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > cells * cells:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return original(x, *args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    return calls


def test_plain_vae_nodes_fall_back_to_tiles_when_memory_runs_out(vae, monkeypatch):
    z = _x(1, 4, 12, 12, seed=4)
    expected = decode_tiled(vae, z, 64, 64)
    img = vae.decode(z)
    expected_lat = encode_tiled(vae, img, 64, 64)
    decoder = vae.module.module.decoder
    calls = _oom_above(decoder, monkeypatch, 8)
    got = VAEDecode().run(FakeContext(), {"samples": z}, vae)[0]
    assert calls[0] == (12, 12) and all(h * w <= 64 for h, w in calls[1:]) and len(calls) > 2
    assert torch.equal(got, expected)
    monkeypatch.undo()
    _oom_above(vae.module.module.encoder, monkeypatch, 64)
    assert torch.equal(VAEEncode().run(FakeContext(), img, vae)[0]["samples"], expected_lat)


def test_when_even_the_smallest_tile_does_not_fit_the_error_says_so(vae, monkeypatch):
    _oom_above(vae.module.module.decoder, monkeypatch, 2)
    with pytest.raises(torch.OutOfMemoryError, match="even in tiles of 64 px"):
        VAEDecode().run(FakeContext(), {"samples": _x(1, 4, 12, 12)}, vae)

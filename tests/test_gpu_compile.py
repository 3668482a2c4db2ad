"""On CUDA only: the compiled path (inductor, and CUDA graphs with --compile max) gives the eager image for each
sampler, batch sizes 1 and 3, with and without a LoRA, across a change of shape.

Tolerance: both sides compute in fp16 (unit roundoff 2**-11 ≈ 4.9e-4) and differ only in kernel choice and fusion
order; through a tiny UNet (≈ 20 fp16 operations deep) and 4 sampler steps the rounding differences stay within
≈ 100 roundoffs of the latent's scale, so the check is max |diff| ≤ 0.05 x max(|latent|, 1)."""
from __future__ import annotations

import pytest
import torch
from sd_fixtures import FakeContext, tiny_file, tiny_lora_layers, write_lora

from nodes.library.conditioning import CLIPTextEncode
from nodes.library.latent import EmptyLatentImage
from nodes.library.loaders import LoraLoader
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.sampling import SAMPLERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REL = 0.05


def _run(mgr, sampler, batch, size, lora=None):
    bundle = mgr.load_checkpoint(tiny_file("sd1"))
    model, clip = bundle.model, bundle.clip
    if lora is not None:
        model, clip = LoraLoader().run(FakeContext(files={"lora_name": lora}), model, clip, lora.name, 1.0, 1.0)
    pos = CLIPTextEncode().run(None, text="a red circle", clip=clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=clip)[0]
    lat = EmptyLatentImage().run(None, width=size, height=size, batch_size=batch)[0]
    out = KSampler().run(None, model=model, seed=11, steps=4, cfg=5.0, sampler_name=sampler, scheduler="karras",
                         positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]["samples"]
    return out.float().cpu()


@pytest.mark.parametrize("mode", ["on", "max"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_compiled_matches_eager(mode, sampler, tmp_path):
    lora = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1"), "peft", alpha=2.0)
    eager, compiled = ModelManager("cuda", compile="off"), ModelManager("cuda", compile=mode)
    for batch, size, with_lora in ((1, 64, False), (3, 64, False), (1, 64, True), (1, 96, False)):
        want = _run(eager, sampler, batch, size, lora if with_lora else None)
        got = _run(compiled, sampler, batch, size, lora if with_lora else None)
        scale = max(want.abs().max().item(), 1.0)
        assert (got - want).abs().max().item() <= REL * scale, (sampler, batch, size, with_lora)


@pytest.mark.parametrize("mode", ["on", "max"])
def test_compiled_vae_decoder_matches_eager_and_tiles_stay_eager(mode):
    """The decoder compiled for whole images (batch and size changes re-specialise) gives the eager image within
    fp16 rounding (pixels in 0..1: REL of 1); tiled decoding never goes through the compiled decoder."""
    from nodes.imaging.tiled_vae import decode_tiled

    eager = ModelManager("cuda", compile="off").load_checkpoint(tiny_file("sd1")).vae
    compiled = ModelManager("cuda", compile=mode).load_checkpoint(tiny_file("sd1")).vae
    for batch, cells in ((1, 8), (3, 8), (1, 12)):
        z = torch.randn(batch, 4, cells, cells, generator=torch.Generator().manual_seed(batch + cells))
        assert (compiled.decode(z) - eager.decode(z)).abs().max().item() <= REL
    part = compiled.module._compiled_parts["vae_decode"]
    assert not part.failed
    z = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(7))
    assert (decode_tiled(compiled, z, 64, 16) - decode_tiled(eager, z, 64, 16)).abs().max().item() <= REL


@pytest.mark.parametrize("mode", ["on", "max"])
def test_compiled_vae_encoder_matches_eager_and_tiles_stay_eager(mode):
    """The encoder compiled for whole images gives the eager latents within fp16 rounding, relative to the largest
    latent value; tiled encoding never goes through the compiled encoder."""
    from nodes.imaging.tiled_vae import encode_tiled

    eager = ModelManager("cuda", compile="off").load_checkpoint(tiny_file("sd1")).vae
    compiled = ModelManager("cuda", compile=mode).load_checkpoint(tiny_file("sd1")).vae
    for batch, size in ((1, 64), (3, 64), (1, 96)):
        pixels = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(batch + size))
        want = eager.encode(pixels)
        assert (compiled.encode(pixels) - want).abs().max().item() <= REL * max(want.abs().max().item(), 1.0)
    part = compiled.module._compiled_parts["vae_encode"]
    assert not part.failed
    seen = dict(compiled.module._compiled_parts)
    encode_tiled(compiled, torch.rand(1, 96, 96, 3), 64, 16)
    assert compiled.module._compiled_parts == seen

"""The compiled denoiser path (nodes.memory.compile). On the CPU, dynamo traces the real tiny UNet with its
``eager`` backend: the same guards and re-specialisation as on CUDA, without inductor's minutes of C++ compiling.
The CUDA checks (inductor, CUDA graphs, fp16) live in tests/test_gpu_compile.py and run only on a GPU."""
from __future__ import annotations

import pytest
import torch
from sd_fixtures import tiny_file

from nodes.library.conditioning import CLIPTextEncode
from nodes.library.latent import EmptyLatentImage
from nodes.library.sampling import KSampler
from nodes.memory.compile import CompiledModule, resolve_mode
from nodes.memory.manager import ModelManager


def test_modes_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu) == "off" and resolve_mode("max", cpu) == "off"
    assert resolve_mode("auto", cuda) == "on" and resolve_mode(None, cuda) == "on"
    assert resolve_mode("max", cuda) == "max" and resolve_mode("off", cuda) == "off"
    with pytest.raises(ValueError, match="not one of"):
        resolve_mode("fast", cuda)


def test_the_cpu_never_compiles_by_default():
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1"))
    with mgr.use(bundle.model.unet):
        assert bundle.model.unet.runner() is bundle.model.unet.module


def _sample(mgr, sampler, batch, size, seed=3):
    bundle = mgr.load_checkpoint(tiny_file("sd1"))
    pos = CLIPTextEncode().run(None, text="a red circle", clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    lat = EmptyLatentImage().run(None, width=size, height=size, batch_size=batch)[0]
    return KSampler().run(None, model=bundle.model, seed=seed, steps=3, cfg=5.0, sampler_name=sampler,
                          scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]["samples"]


def test_compiled_path_gives_the_eager_latents_across_shape_changes():
    eager = ModelManager("cpu")
    traced = ModelManager("cpu", compile="on", compile_backend="eager")
    # batch 1, then batch 3 and another size: each a new specialisation, never a stale graph
    for sampler, batch, size in (("euler", 1, 64), ("dpmpp_2m", 3, 48)):
        want = _sample(eager, sampler, batch, size)
        got = _sample(traced, sampler, batch, size)
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-5 * max(scale, 1.0), (sampler, batch, size)
    runner = traced.load_checkpoint(tiny_file("sd1")).model.unet
    assert runner._compiled is not None and not runner._compiled.failed


def test_a_module_that_cannot_compile_runs_eagerly():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return x + 1

    def broken(graph_module, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    compiled = CompiledModule(Odd(), "on", backend=broken)
    assert torch.equal(compiled(torch.zeros(2)), torch.ones(2)) and compiled.failed
    assert torch.equal(compiled(torch.zeros(2)), torch.ones(2))


class _Recorder:
    """A dynamo backend that runs the captured graphs eagerly and keeps them (what was traced, and how often)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward


def _decoder_convs(graph) -> int:
    return sum(1 for n in graph.graph.nodes if "conv" in str(n.target) or "decoder" in str(n.target))


def test_the_vae_decoder_is_compiled_for_whole_images_and_tiles_run_eagerly():
    from nodes.imaging.tiled_vae import decode_tiled

    eager = ModelManager("cpu").load_checkpoint(tiny_file("sd1")).vae
    assert eager.module.runner("vae_decode") is eager.module.part("vae_decode")  # compile off on the CPU
    recorder = _Recorder()
    traced = ModelManager("cpu", compile="on", compile_backend=recorder).load_checkpoint(tiny_file("sd1")).vae
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want, got = eager.decode(z), traced.decode(z)
    assert (got - want).abs().max().item() <= 1e-5
    compiled = traced.module._compiled_parts["vae_decode"]
    assert not compiled.failed and len(recorder.graphs) >= 1
    assert sum(_decoder_convs(g) for g in recorder.graphs) > 5  # the decoder's convolutions were traced
    assert traced.module._compiled is None  # the VAE's forward (encode + decode) is not what got compiled
    seen = len(recorder.graphs)
    tiled = decode_tiled(traced, torch.randn(1, 4, 12, 12), 64, 16)  # 8-cell tiles, edge tiles of other sizes
    assert tiled.shape == (1, 96, 96, 3) and len(recorder.graphs) == seen  # no specialisation per tile size


def test_the_vae_encoder_is_compiled_for_whole_images_and_tiles_run_eagerly():
    from nodes.imaging.tiled_vae import encode_tiled

    eager = ModelManager("cpu").load_checkpoint(tiny_file("sd1")).vae
    recorder = _Recorder()
    traced = ModelManager("cpu", compile="on", compile_backend=recorder).load_checkpoint(tiny_file("sd1")).vae
    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    want, got = eager.encode(pixels), traced.encode(pixels)
    assert (got - want).abs().max().item() <= 1e-5 * max(want.abs().max().item(), 1.0)
    compiled = traced.module._compiled_parts["vae_encode"]
    assert not compiled.failed and len(recorder.graphs) >= 1
    assert "vae_decode" not in traced.module._compiled_parts and traced.module._compiled is None
    seen = len(recorder.graphs)
    tiled = encode_tiled(traced, torch.rand(1, 96, 96, 3), 64, 16)
    assert tiled.shape == (1, 4, 12, 12) and len(recorder.graphs) == seen  # no specialisation per tile size


def test_a_streamed_or_hooked_vae_decodes_eagerly():
    vae = ModelManager("cpu", compile="on", compile_backend="eager").load_checkpoint(tiny_file("sd1")).vae
    mm = vae.module
    with mm.manager.use(mm):
        assert mm.runner("vae_decode") is not mm.part("vae_decode")  # compiled when nothing forbids it
        mm.sequential = True
        try:
            assert mm.runner("vae_decode") is mm.part("vae_decode")
        finally:
            mm.sequential = False
        mm.hooked += 1
        try:
            assert mm.runner("vae_decode") is mm.part("vae_decode")
        finally:
            mm.hooked -= 1


def test_running_out_of_memory_is_not_a_compile_failure():
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    compiled = CompiledModule(Hungry(), "on", backend="eager")
    with pytest.raises(torch.OutOfMemoryError):
        compiled(torch.zeros(2))
    assert not compiled.failed  # the caller falls back (tiles) and the next call is compiled again

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

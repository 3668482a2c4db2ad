"""On CUDA only: the per-step noise rules of the noise contract (README, "Noise and schedules") on an accelerator,
each checked against torch's generator or torchsde called directly (the CPU rules are in
test_sampling_comfy_contract.py):

- ancestral samplers draw from a generator on the latent's device seeded with the seed itself (the CPU's + 1 is
  only for the CPU, where the starting noise's generator would otherwise repeat);
- the SDE samplers' Brownian tree is built on the CPU for the ``brownian`` kind and on the latent's device for
  ``brownian_device``, entropy = seed, its increments returned on the latent's device.

Both sides draw the same numbers from the same generator, so they are compared exactly (ancestral) or to float32
rounding of one division (the tree's increment over sqrt of the step)."""
from __future__ import annotations

import math

import pytest
import torch

from nodes.sampling import SAMPLERS, ModelSampling, calculate_sigmas, step_noise_sampler

import torchsde  # noqa: E402  (the test extra; absence is a failure)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s.noise == "seeded"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ancestral_step_noise_on_cuda_is_a_cuda_generator_seeded_with_the_seed(name, dtype):
    x = torch.zeros(2, 4, 5, 7, device="cuda", dtype=dtype)
    ns = step_noise_sampler(SAMPLERS[name].noise, x, None, 123)
    gen = torch.Generator(device="cuda").manual_seed(123)
    for _ in range(3):
        got = ns(1.0, 0.5)
        assert got.device.type == "cuda" and got.dtype == dtype
        assert torch.equal(got, torch.randn(x.shape, generator=gen, device="cuda", dtype=dtype))


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s.noise.startswith("brownian")))
def test_sde_step_noise_on_cuda_is_torchsdes_tree_where_the_rule_builds_it(name):
    on_cpu = SAMPLERS[name].noise == "brownian"
    where = "cpu" if on_cpu else "cuda"
    sigmas = calculate_sigmas(ModelSampling(), "karras", 6)
    x = torch.zeros(1, 4, 3, 5, device="cuda")
    ns = step_noise_sampler(SAMPLERS[name].noise, x, sigmas, 77)
    s = sigmas.tolist()
    tree = torchsde.BrownianTree(torch.tensor(s[-2], device=where), torch.zeros(x.shape, device=where),
                                 torch.tensor(s[0], device=where), entropy=77)
    for a, b in zip(s[:-2], s[1:-1]):
        want = (-tree(torch.tensor(b, device=where), torch.tensor(a, device=where)) / math.sqrt(a - b)).to("cuda")
        got = ns(a, b)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

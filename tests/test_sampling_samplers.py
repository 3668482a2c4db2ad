"""Sampler contracts: no host synchronisation, seeded reproducibility, the callback/model interface, dtypes,
and the LMS weights."""

import json
from pathlib import Path

import pytest
import torch

from nodes.sampling import (
    SAMPLERS,
    SCHEDULERS,
    STOCHASTIC_SAMPLERS,
    ModelSampling,
    initial_noise,
    make_noise_sampler,
)
from nodes.sampling.samplers import dpm_fast_orders, lms_coefficient
from nodes.testing.analytic import GaussianDenoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MS = ModelSampling()
ALL = list(SAMPLERS)
# DPM-Solver-fast and -adaptive make their own steps between the schedule's first and last positive sigma
OWN_STEPS = {"dpm_fast", "dpm_adaptive"}


REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui"


def _comfy_choices(node: str, name: str, file: str = "comfyui-core-nodes.json") -> list[str]:
    ref = json.loads((REFERENCE / file).read_text())[node]["input"]["required"][name]
    return ref[0]


def test_every_registered_sampler_is_offered_in_comfyuis_order():
    """One registry: KSampler's and KSamplerAdvanced's choices are exactly the registered samplers, each a ComfyUI
    sampler name, in ComfyUI's order (the interface facts in tests/reference)."""
    from nodes.library.sampling import KSampler, KSamplerAdvanced

    comfy = _comfy_choices("KSampler", "sampler_name")
    assert set(ALL) <= set(comfy), sorted(set(ALL) - set(comfy))
    assert ALL == [n for n in comfy if n in SAMPLERS], "not in ComfyUI's order"
    for node in (KSampler, KSamplerAdvanced):
        (spec,) = [i for i in node.inputs if i.name == "sampler_name"]
        assert list(spec.resolve_choices(None)) == ALL
    assert {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "uni_pc", "lcm", "ddim"} <= set(ALL)
    # every ComfyUI sampler but heunpp2 (an unpublished method: no formula to write it from)
    assert [n for n in comfy if n not in SAMPLERS] == ["heunpp2"]


def test_stochastic_flag_and_noise_kinds_come_from_the_registry():
    assert STOCHASTIC_SAMPLERS == {n for n, s in SAMPLERS.items() if s.noise != "none"}
    assert {n for n, s in SAMPLERS.items() if s.noise == "seeded"} == {
        "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "lcm", "ddpm", "res_multistep_ancestral",
        "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "res_multistep_ancestral_cfg_pp", "er_sde",
        "sa_solver", "sa_solver_pece"}
    assert {n for n, s in SAMPLERS.items() if s.noise.startswith("brownian")} == {
        n for n in ALL if ("_sde" in n and n != "er_sde") or n.startswith("seeds_")}  # ER-SDE: seeded noise
    assert {n for n, s in SAMPLERS.items() if s.discard_penultimate_sigma} == {
        "dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
    assert all(SAMPLERS[n].noise == "brownian_device" for n in ALL if n.endswith("_gpu"))


# -- no host synchronisation --------------------------------------------------------------------------------------


class HostSync(AssertionError):
    pass


_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__, torch.Tensor.__float__,
    torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.__array__, torch.Tensor.__format__,
    torch.Tensor.__repr__, torch.Tensor.cpu, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.any, torch.any,
    torch.Tensor.all, torch.all, torch.Tensor.equal, torch.equal, torch.Tensor.allclose, torch.allclose,
    torch.Tensor.unique, torch.unique, torch.masked_select, torch.Tensor.masked_select,
}


class DeviceTensor(torch.Tensor):
    """Stands in for a tensor living on an accelerator: any operation that would copy its values to the host (or
    make Python branch on them) raises. Everything computed from it is a DeviceTensor too, so the trap follows x
    through the whole sampler, including through ``.to(...)``: the fake device *is* the CPU, so a copy "to the
    CPU" cannot be told from a no-op move, but its result is still trapped and reading it raises. (``.cpu()``,
    any/all/nonzero/unique are blocked outright: they are only useful followed by a host read, and
    nonzero/unique sync on CUDA by themselves.)"""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS:
            raise HostSync(f"host read of a device tensor: {getattr(func, '__name__', func)}")
        return super().__torch_function__(func, types, args, kwargs)


def _trap(t):
    return t.as_subclass(DeviceTensor)


class TrappedModel:
    """The exact Gaussian denoiser, run the way KSampler's model wrapper will run a UNet: VP-scaled input and
    timestep from ModelSampling, an epsilon 'network', then calculate_denoised. Checks that sigma is a per-sample
    tensor created on x's device."""

    def __init__(self):
        self.data = GaussianDenoiser(0.2, 0.9)
        self.calls = 0

    def __call__(self, x, sigma, **extra):
        assert isinstance(x, DeviceTensor), "x left the device"
        assert isinstance(sigma, DeviceTensor), "sigma_batch must be built on x's device (x.new_full), not the CPU"
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        x_in = MS.calculate_input(sigma, x)
        t = MS.timestep(sigma)  # what a UNet gets
        assert isinstance(t, DeviceTensor)
        sv = sigma.reshape(-1, 1, 1, 1)
        eps = (x_in * (sv * sv + 1) ** 0.5 - self.data(x, sigma)) / sv  # the ideal epsilon network
        return MS.calculate_denoised(sigma, eps, x)


@pytest.mark.parametrize("name", [n for n in ALL if n != "dpm_adaptive"])
def test_samplers_never_read_device_values_on_the_host(name):
    sigmas = SCHEDULERS["karras"](MS, 6)  # a CPU schedule: reading it once is allowed
    x = initial_noise((2, 4, 4, 4), 0) * sigmas[0]
    model = TrappedModel()
    seen = []
    out = SAMPLERS[name](model, _trap(x.clone()), sigmas, extra_args={}, callback=seen.append,
                         noise_sampler=make_noise_sampler(x, 1))
    steps = len(dpm_fast_orders(6)) if name == "dpm_fast" else 6
    assert isinstance(out, DeviceTensor) and model.calls >= 6 and len(seen) == steps
    # and the trap did not change the arithmetic
    plain = SAMPLERS[name](lambda x, s: model(_trap(x), _trap(s)).as_subclass(torch.Tensor), x.clone(), sigmas,
                           noise_sampler=make_noise_sampler(x, 1))
    torch.testing.assert_close(out.as_subclass(torch.Tensor), plain, rtol=0, atol=0)


def test_dpm_adaptive_reads_one_number_per_step_attempt():
    """The adaptive step-size control must decide on the host: that is the only read (the error norm), caught by
    the trap; everything else runs on the device."""
    sigmas = SCHEDULERS["karras"](MS, 6)
    x = initial_noise((1, 4, 4, 4), 0) * sigmas[0]
    with pytest.raises(HostSync, match="__float__"):
        SAMPLERS["dpm_adaptive"](TrappedModel(), _trap(x), sigmas)


def test_the_trap_catches_syncing_code():
    """Positive controls: samplers that branch on or read device values are caught."""
    sigmas = SCHEDULERS["normal"](MS, 4)
    x = _trap(initial_noise((1, 4, 4, 4), 0) * sigmas[0])

    def branching_sampler(model, x, sigmas, **kw):
        for s in sigmas.tolist()[:-1]:
            denoised = model(x, x.new_full((1,), s))
            if (x - denoised).abs().max() > 1e-3:  # Python branch on a device value
                x = denoised
        return x

    def item_sampler(model, x, sigmas, **kw):
        d = model(x, x.new_full((1,), float(sigmas[0])))
        return x * (d.std().item() + 1)

    def cpu_sigma_sampler(model, x, sigmas, **kw):
        return model(x, sigmas[:1])  # a CPU sigma: the model would need a host-to-device copy per step

    def early_exit_sampler(model, x, sigmas, **kw):
        d = model(x, x.new_full((1,), float(sigmas[0])))
        return d if torch.isfinite(d).all() else x

    for bad in (branching_sampler, item_sampler, early_exit_sampler):
        with pytest.raises(HostSync):
            bad(TrappedModel(), x, sigmas)
    with pytest.raises(AssertionError, match="sigma_batch"):
        cpu_sigma_sampler(TrappedModel(), x, sigmas)
    with pytest.raises(HostSync):
        x.cpu()
    with pytest.raises(HostSync):
        x.to("cpu").sum().item()  # a trapped value stays trapped through .to()


# -- seeded reproducibility ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_reproduce_from_a_seed(name):
    model = GaussianDenoiser(0.0, 1.0)
    sigmas = SCHEDULERS["karras"](MS, 8)
    x = initial_noise((2, 4, 8, 8), 11) * sigmas[0]
    a = SAMPLERS[name](model, x, sigmas, noise_sampler=make_noise_sampler(x, 5))
    b = SAMPLERS[name](model, x, sigmas, noise_sampler=make_noise_sampler(x, 5))
    c = SAMPLERS[name](model, x, sigmas, noise_sampler=make_noise_sampler(x, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # each image of a batch gets its own noise
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("name", sorted(set(ALL) - STOCHASTIC_SAMPLERS))
def test_deterministic_samplers_draw_no_noise(name):
    def no_noise(*args):
        raise AssertionError("a deterministic sampler drew noise")

    model = GaussianDenoiser(0.0, 1.0)
    sigmas = SCHEDULERS["normal"](MS, 6)
    x = initial_noise((1, 4, 8, 8), 0) * sigmas[0]
    assert torch.equal(SAMPLERS[name](model, x, sigmas, noise_sampler=no_noise), SAMPLERS[name](model, x, sigmas))


def test_seed_reproduces_across_dtypes():
    """The noise is drawn in float32 on the CPU whatever x is, so float32 and float64 runs see the same noise."""
    model = GaussianDenoiser(0.0, 1.0)
    sigmas = SCHEDULERS["karras"](MS, 8)
    x = initial_noise((1, 4, 8, 8), 2) * sigmas[0]
    a = SAMPLERS["euler_ancestral"](model, x, sigmas, noise_sampler=make_noise_sampler(x, 9))
    x64 = x.double()
    b = SAMPLERS["euler_ancestral"](model, x64, sigmas, noise_sampler=make_noise_sampler(x64, 9))
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


# -- interface --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_callback_model_and_dtype_contract(name):
    sigmas = SCHEDULERS["karras"](MS, 5)
    data = GaussianDenoiser(0.1, 0.7)
    calls = []

    def model(x, sigma, **extra):
        assert extra == {"cond": 1, "uncond": 2}
        assert sigma.shape == (x.shape[0],) and sigma.device == x.device
        assert sigma.dtype == torch.float32  # not bfloat16 like x: sigma keeps float32 precision
        assert torch.all(sigma == sigma[0])
        calls.append(sigma[0].item())
        return data(x, sigma)

    seen = []
    x = (initial_noise((3, 4, 4, 4), 0) * sigmas[0]).to(torch.bfloat16)
    out = SAMPLERS[name](model, x, sigmas, extra_args={"cond": 1, "uncond": 2}, callback=seen.append,
                         noise_sampler=make_noise_sampler(x, 0))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert all(c["x"].shape == x.shape and c["denoised"].shape == x.shape for c in seen)
    assert calls[0] == pytest.approx(sigmas[0].item(), rel=1e-2)  # the first evaluation is at sigma_max
    assert all(0 < s <= sigmas[0].item() * 1.01 for s in calls)
    ends = sigmas.tolist()
    if name in OWN_STEPS:  # their own steps, chained from the first sigma to the last positive one
        assert seen[0]["sigma"] == pytest.approx(ends[0], rel=1e-6)
        assert seen[-1]["sigma_next"] == pytest.approx(ends[-2], rel=1e-6)
        assert all(a["sigma_next"] == b["sigma"] for a, b in zip(seen, seen[1:]))
        assert [c["i"] for c in seen] == sorted(c["i"] for c in seen) and {c["total"] for c in seen} <= {5, len(seen)}
        return
    assert [c["i"] for c in seen] == list(range(5)) and {c["total"] for c in seen} == {5}
    if name.startswith("uni_pc"):
        ends[-1] = 0.001  # UniPC integrates to sigma = 0.001 where the schedule says 0 (as ComfyUI)
    assert [(c["sigma"], c["sigma_next"]) for c in seen] == list(zip(ends[:-1], ends[1:]))


@pytest.mark.parametrize("name", ALL)
def test_img2img_style_partial_schedule_and_sigma_min_end(name):
    """Schedules that start mid-way (denoise < 1) or end above 0 run and return finite latents."""
    data = GaussianDenoiser(0.0, 1.0)
    sigmas = SCHEDULERS["karras"](MS, 12)[6:]
    x = initial_noise((1, 4, 4, 4), 3) * sigmas[0]
    out = SAMPLERS[name](data, x, sigmas, noise_sampler=make_noise_sampler(x, 0))
    assert torch.isfinite(out).all()
    out = SAMPLERS[name](data, x, sigmas[:-1], noise_sampler=make_noise_sampler(x, 0))  # ends at sigma_min
    assert torch.isfinite(out).all()


# -- LMS weights ----------------------------------------------------------------------------------------------


def _lagrange_integral_numeric(order, s, i, j, n=20000):
    """Composite Simpson quadrature of the Lagrange basis polynomial (an independent route to the LMS weight)."""
    a, b = s[i], s[i + 1]
    h = (b - a) / n

    def basis(tau):
        out = 1.0
        for k in range(order):
            if k != j:
                out *= (tau - s[i - k]) / (s[i - j] - s[i - k])
        return out

    total = basis(a) + basis(b)
    for m in range(1, n):
        total += (4 if m % 2 else 2) * basis(a + m * h)
    return total * h / 3


def test_lms_weights_integrate_the_interpolant():
    s = SCHEDULERS["karras"](MS, 10).double().tolist()
    for i in range(10):
        order = min(i + 1, 4)
        weights = [lms_coefficient(order, s, i, j) for j in range(order)]
        assert sum(weights) == pytest.approx(s[i + 1] - s[i], rel=1e-12)  # integrates constants exactly
        for j in range(order):
            assert weights[j] == pytest.approx(_lagrange_integral_numeric(order, s, i, j), rel=1e-9, abs=1e-12)


def test_lms_is_exact_for_cubic_derivatives():
    """x' = polynomial of degree 3 in sigma is integrated exactly by 4th-order LMS once warmed up."""
    s = [10.0, 7.0, 5.0, 3.5, 2.0, 1.2, 0.5]

    def f(t):
        return 0.3 * t**3 - t**2 + 2 * t - 1

    def F(t):
        return 0.3 * t**4 / 4 - t**3 / 3 + t**2 - t

    for i in range(3, len(s) - 1):
        step = sum(lms_coefficient(4, s, i, j) * f(s[i - j]) for j in range(4))
        assert step == pytest.approx(F(s[i + 1]) - F(s[i]), rel=1e-12)

"""UNETLoader's fp8 weight_dtype choices: the UNet's layer weights are stored in torch's float8 dtypes and each layer
computes in the working dtype (fp32 here).

The fp8 UNet computes exactly what a float32 UNet computes whose stored weights were rounded to fp8 once (fp8 values
are exact in fp32): checked against such a UNet built independently (state dict rounded by ``.to(fp8).to(fp32)``) to
float32 rounding. Against the full-precision UNet the difference follows from fp8's unit roundoff
u = 2^-(mantissa bits + 1) (e4m3: 1/16, e5m2: 1/8): every weight is off by at most u relative (more only for the
rare subnormal weights), so the output's relative RMS error stays below u while being clearly non-zero. The stored
weights take 1 byte where fp32 takes 4: about a quarter of the full UNet, the fp32 norm layers aside. A LoRA on the
fp8 UNet is applied in the working dtype (hooks, not merged into fp8) and leaves the stored weights untouched.
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_close_to_scale, tiny_file, tiny_lora_layers, write_lora

from nodes.library.loaders import LoraLoaderModelOnly, UNETLoader
from nodes.loading.weights import read_header
from nodes.patches.lora import patched

UNIT_ROUNDOFF = {torch.float8_e4m3fn: 2.0**-4, torch.float8_e5m2: 2.0**-3}
CASES = [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e4m3fn_fast", torch.float8_e4m3fn),
         ("fp8_e5m2", torch.float8_e5m2)]


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory):
    src = tiny_file("sd1", "fp32")
    _, _, meta = read_header(src)
    sd = {k[len("model.diffusion_model."):]: v for k, v in load_file(str(src)).items()
          if k.startswith("model.diffusion_model.")}
    path = tmp_path_factory.mktemp("fp8") / "sd1-unet.safetensors"
    save_file(sd, str(path), metadata={"chisel.unet": meta["chisel.unet"]})
    return path


def _load(path, weight_dtype):
    return UNETLoader().run(FakeContext(files={"unet_name": path}), path.name, weight_dtype)[0]


def _inputs(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 120.0]),
            torch.randn(2, 77, unet.config.cross_attention_dim, generator=g))


@torch.no_grad()
def _out(model, args, applied=()):
    with model.manager.use(model.unet), patched(model.unet, applied):
        return model.unet.runner()(*args).sample


def _rounded_reference(full_module, fp8_module, storage):
    """A float32 copy of the full UNet whose parameters stored in fp8 by ``fp8_module`` are rounded to fp8."""
    ref = copy.deepcopy(full_module)
    stored = {n for n, p in fp8_module.named_parameters() if p.dtype == storage}
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in stored:
                p.copy_(p.to(storage).float())
    return ref, stored


def _rel_rms(a, b):
    return ((a - b).double().pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("weight_dtype,storage", CASES)
def test_fp8_unet_stores_a_quarter_and_computes_like_rounded_weights(unet_file, weight_dtype, storage):
    full, fp8 = _load(unet_file, "default"), _load(unet_file, weight_dtype)
    assert fp8.unet.module is not full.unet.module and fp8.unet.storage_dtype == storage
    assert fp8.unet.dtype == torch.float32  # the working dtype on the CPU
    ref, stored = _rounded_reference(full.unet.module, fp8.unet.module, storage)
    params = dict(fp8.unet.module.named_parameters())
    # every convolution and linear layer outside diffusers' skip list (norms, top-level proj_in/out) is stored in fp8
    for name, mod in fp8.unet.module.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and "norm" not in name:
            assert mod.weight.dtype == storage, name
    assert all(params[n].dtype == torch.float32 for n in params if "norm" in n)
    # memory: 1 byte per stored element, 4 for the rest; about a quarter of the fp32 UNet
    want = sum(p.numel() * (1 if n in stored else 4) for n, p in params.items())
    want += sum(b.numel() * b.element_size() for b in fp8.unet.module.buffers())
    assert fp8.unet.nbytes == want
    ratio = fp8.unet.nbytes / full.unet.nbytes
    print(f"{weight_dtype}: stored weights {fp8.unet.nbytes} B = {ratio:.3f} of fp32 ({full.unet.nbytes} B)")
    assert 0.25 <= ratio < 0.27
    rows = [r for r in fp8.manager.stats()["models"] if r["bytes"] == fp8.unet.nbytes and r["name"] == "unet"]
    assert rows and all(r["weights_dtype"].startswith("float8") and r["dtype"] == "float32" for r in rows)

    args = _inputs(full.unet.module)
    got, exact, rounded = _out(fp8, args), _out(full, args), ref(*args).sample
    assert_close_to_scale(got, rounded, rel=1e-5)  # the same arithmetic, float32 rounding apart
    assert all(p.dtype == storage for n, p in fp8.unet.module.named_parameters() if n in stored)  # cast back down
    # end to end, the layers' independent rounding errors add up in quadrature: at most sqrt(layers) * u
    layers = sum(1 for m in fp8.unet.module.modules() if getattr(m, "weight", None) is not None
                 and m.weight.dtype == storage)
    err = _rel_rms(got, exact)
    print(f"{weight_dtype}: relative RMS difference to the fp32 UNet {err:.4f} over {layers} fp8 layers "
          f"(unit roundoff {UNIT_ROUNDOFF[storage]})")
    assert UNIT_ROUNDOFF[storage] / 100 < err < layers**0.5 * UNIT_ROUNDOFF[storage]


@pytest.mark.parametrize("storage", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_each_fp8_layer_stays_within_the_rounding_bound(unet_file, storage):
    """Per layer, on the same input x: |y_fp8 - y| <= op(|x|, u |W| + s/2) + u |b| + s/2 elementwise, where u is the
    unit roundoff and s the smallest subnormal of the fp8 format (each stored weight is off by at most
    max(u |w|, s/2)) -- a rigorous bound, float32 rounding of the sums apart."""
    import torch.nn.functional as F

    name = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}[storage]
    full, fp8 = _load(unet_file, "default"), _load(unet_file, name)
    u, s = UNIT_ROUNDOFF[storage], torch.finfo(storage).smallest_normal * torch.finfo(storage).eps
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0].detach().clone()))
             for n, m in full.unet.module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    try:
        _out(full, _inputs(full.unet.module))
    finally:
        for h in hooks:
            h.remove()
    mods = dict(fp8.unet.module.named_modules())
    checked = 0
    with torch.no_grad():
        for n, m in full.unet.module.named_modules():
            q = mods[n]
            if n not in seen or q.weight.dtype != storage:
                continue
            x = seen[n]
            y, yq = m(x), q(x)

            def op(w, b):  # the layer's own operation with other weights and bias
                if isinstance(m, torch.nn.Linear):
                    return F.linear(x.abs(), w, b)
                return F.conv2d(x.abs(), w, b, m.stride, m.padding, m.dilation, m.groups)

            bias = m.bias if m.bias is not None else torch.zeros(m.weight.shape[0])
            bound = op(u * m.weight.abs() + s / 2, u * bias.abs() + s / 2)
            slack = 1e-5 * op(m.weight.abs(), bias.abs())  # float32 rounding of the sums
            assert ((yq - y).abs() <= bound + slack).all(), n
            assert (yq - y).abs().max() > 0, n  # really rounded
            checked += 1
    assert checked >= 20


def test_lora_on_an_fp8_unet_is_added_in_the_working_dtype(unet_file, tmp_path):
    path = write_lora(tmp_path / "l.safetensors", "sd1", tiny_lora_layers("sd1", seed=5), "peft")
    full, fp8 = _load(unet_file, "default"), _load(unet_file, "fp8_e4m3fn")
    ctx = FakeContext(files={"lora_name": path})
    lora_full = LoraLoaderModelOnly().run(ctx, full, path.name, 0.8)[0]
    lora_fp8 = LoraLoaderModelOnly().run(ctx, fp8, path.name, 0.8)[0]
    ref, _ = _rounded_reference(full.unet.module, fp8.unet.module, torch.float8_e4m3fn)
    before = {k: v.clone() for k, v in fp8.unet.module.state_dict().items()}
    args = _inputs(full.unet.module, seed=2)
    got = _out(lora_fp8, args, lora_fp8.lora_for("unet"))
    # the reference: the LoRA merged in fp32 into the fp8-rounded weights (the full UNet's deltas, moved over)
    with torch.no_grad():
        delta = {}
        with patched(lora_full.unet, lora_full.lora_for("unet")):
            for n, p in lora_full.unet.module.named_parameters():
                delta[n] = p.detach().clone()
        plain = dict(full.unet.module.named_parameters())
        for n, p in ref.named_parameters():
            p.add_(delta[n] - plain[n])
        want = ref(*args).sample
    assert_close_to_scale(got, want, rel=1e-5)
    assert (got - _out(fp8, args)).abs().max() > 1e-3  # the LoRA does change the output
    after = fp8.unet.module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k].float(), v.float()) for k, v in before.items())
    assert not any(m._forward_hooks for m in fp8.unet.module.modules())


def test_fp8_unet_samples_through_ksampler(unet_file):
    from nodes.library.sampling import KSampler

    fp8 = _load(unet_file, "fp8_e5m2")
    cond = [[torch.randn(1, 77, fp8.config["cross_attention_dim"], generator=torch.Generator().manual_seed(0)), {}]]
    out = KSampler().run(FakeContext(), fp8, 1, 2, 3.0, "euler", "normal", cond, cond,
                         {"samples": torch.zeros(1, 4, 8, 8)}, 1.0)[0]["samples"]
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()

"""LyCORIS layers (LoHa, LoKr, (IA)³) merged as PEFT merges the same factors: PEFT is the independent reference.
Each case: a small model with a linear and a convolution, PEFT's adapter with random factors, the same factors
written as a LyCORIS (kohya-style) file, read by Chisel and patched in; the weights must equal PEFT's merged weights.
Tolerance: float32 products of a few small factors, ~1e-7 relative; 1e-5 x max(|W|, 1) leaves room, catches any
wrong scale, layout or order."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from nodes.patches.lora import AppliedLora, LoraError, match, patched, read_lora


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 8)
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)


def _base(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def _peft_merged(config, randomize):
    import peft

    model = peft.get_peft_model(_base(), config)
    g = torch.Generator().manual_seed(1)
    factors = {}
    for name, p in model.named_parameters():
        if ".default" in name and any(t in name for t in ("hada_", "lokr_", "ia3_")):
            with torch.no_grad():
                p.copy_(randomize(name, p, g))
            module = name.split("base_model.model.")[1].split(".")[0]
            factors[(module, name.rsplit(".", 2)[-2])] = p.detach().clone()
    merged = model.merge_and_unload()
    return {n: merged.get_submodule(n).weight.detach().clone() for n in ("fc", "conv")}, factors


def _chisel_merged(tmp_path, tensors, strength=1.0):
    path = tmp_path / "lyco.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    lora = read_lora(path)
    model = _base()
    layers = match(lora, "lyco", [("m", model, {"lora_unet_fc": "fc", "lora_unet_conv": "conv"})], "the test model")
    with patched(SimpleNamespace(module=model, sequential=False), [AppliedLora("lyco", layers["m"], strength)]):
        return {n: model.get_submodule(n).weight.detach().clone() for n in ("fc", "conv")}


def _same(ours, theirs):
    for name in ("fc", "conv"):
        scale = max(theirs[name].abs().max().item(), 1.0)
        assert (ours[name] - theirs[name]).abs().max().item() <= 1e-5 * scale, name
        assert not torch.equal(theirs[name], _base().get_submodule(name).weight), "the adapter changed nothing"


def _normal(name, p, g):
    return torch.randn(p.shape, generator=g) * 0.3


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_matches_peft(tmp_path, tucker):
    import peft

    cfg = peft.LoHaConfig(r=3, alpha=6, target_modules=["fc", "conv"], use_effective_conv2d=tucker)
    theirs, f = _peft_merged(cfg, _normal)
    tensors = {}
    for mod in ("fc", "conv"):
        for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"):
            if (mod, part) in f:
                tensors[f"lora_unet_{mod}.{part}"] = f[(mod, part)]
        tensors[f"lora_unet_{mod}.alpha"] = torch.tensor(6.0)
    if tucker:
        assert "lora_unet_conv.hada_t1" in tensors
    _same(_chisel_merged(tmp_path, tensors), theirs)


def test_lokr_matches_peft(tmp_path):
    import peft

    cfg = peft.LoKrConfig(r=2, alpha=5, target_modules=["fc", "conv"], decompose_factor=2)
    theirs, f = _peft_merged(cfg, _normal)
    tensors = {f"lora_unet_{mod}.{part}": t for (mod, part), t in f.items()}
    for mod in ("fc", "conv"):
        tensors[f"lora_unet_{mod}.alpha"] = torch.tensor(5.0)
        if f"lora_unet_{mod}.lokr_w2_b" not in tensors and f"lora_unet_{mod}.lokr_w1_b" not in tensors:
            # Both factors whole: PEFT still scales by alpha / r, a LyCORIS file carries no scale (1): bake it in.
            tensors[f"lora_unet_{mod}.lokr_w2"] = tensors[f"lora_unet_{mod}.lokr_w2"] * (5.0 / 2)
    assert "lora_unet_fc.lokr_w2_b" in tensors  # one decomposed layer at least
    _same(_chisel_merged(tmp_path, tensors), theirs)


def test_ia3_matches_peft(tmp_path):
    import peft

    cfg = peft.IA3Config(target_modules=["fc", "conv"], feedforward_modules=["fc"])  # fc scales its inputs
    theirs, f = _peft_merged(cfg, lambda name, p, g: 1.0 + torch.randn(p.shape, generator=g) * 0.3)
    tensors = {}
    for mod, on_input in (("fc", True), ("conv", False)):
        tensors[f"lora_unet_{mod}.weight"] = f[(mod, "ia3_l")].flatten() - 1.0  # LyCORIS stores W' = W (1 + w)
        tensors[f"lora_unet_{mod}.on_input"] = torch.tensor(on_input)
    _same(_chisel_merged(tmp_path, tensors), theirs)


def test_strength_scales_the_delta_and_weights_come_back(tmp_path):
    g = torch.Generator().manual_seed(3)
    shapes = {"hada_w1_a": (8, 2), "hada_w1_b": (2, 12), "hada_w2_a": (8, 2), "hada_w2_b": (2, 12)}
    tensors = {f"lora_unet_fc.{k}": torch.randn(s, generator=g) for k, s in shapes.items()}
    path = tmp_path / "h.safetensors"
    save_file(tensors, str(path))
    layers = match(read_lora(path), "h", [("m", model := _base(), {"lora_unet_fc": "fc"})], "the test model")["m"]
    before = model.fc.weight.detach().clone()
    full = (tensors["lora_unet_fc.hada_w1_a"] @ tensors["lora_unet_fc.hada_w1_b"]) * \
        (tensors["lora_unet_fc.hada_w2_a"] @ tensors["lora_unet_fc.hada_w2_b"])
    with patched(SimpleNamespace(module=model, sequential=False), [AppliedLora("h", layers, 0.5)]):
        assert torch.allclose(model.fc.weight, before + 0.5 * full, atol=1e-5)
    assert torch.equal(model.fc.weight, before)


def test_broken_and_misfit_lycoris_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"lora_unet_fc.hada_w1_a": torch.zeros(8, 2)}, str(bad))
    with pytest.raises(LoraError, match="LoHa layer 'lora_unet_fc' lacks"):
        read_lora(bad)
    misfit = tmp_path / "misfit.safetensors"
    save_file({"lora_unet_fc.weight": torch.zeros(5), "lora_unet_fc.on_input": torch.tensor(False)}, str(misfit))
    with pytest.raises(LoraError, match="other shapes"):
        match(read_lora(misfit), "misfit", [("m", _base(), {"lora_unet_fc": "fc"})], "the test model")

"""Custom sampling nodes (ComfyUI's sampling/custom_sampling): their interface against ComfyUI's, each schedule and
sigma tool against its formula, and KSampler against the equivalent SamplerCustomAdvanced graph on a tiny
checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from graph.registry import NodeRegistry
from graph.types import COMBO

REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-more-nodes.json"
CUSTOM = ("SamplerCustom SamplerCustomAdvanced KSamplerSelect BasicScheduler KarrasScheduler ExponentialScheduler "
          "PolyexponentialScheduler SDTurboScheduler BetaSamplingScheduler SplitSigmas SplitSigmasDenoise FlipSigmas "
          "RandomNoise DisableNoise BasicGuider CFGGuider DualCFGGuider SamplerEulerAncestral SamplerDPMPP_SDE "
          "SamplerDPMPP_2M_SDE SamplerLMS").split()
SUBSET_COMBOS = {"sampler_name", "scheduler"}  # ComfyUI's lists include samplers/schedulers Chisel lacks


def test_every_custom_sampling_node_has_comfyuis_interface():
    reference = json.loads(REFERENCE.read_text())
    registry = NodeRegistry.discover()
    problems = []
    for name in CUSTOM:
        cls, ref = registry.get(name), reference[name]
        ref_inputs = {**ref["input"].get("required", {}), **ref["input"].get("optional", {})}
        order = ref["input_order"].get("required", []) + ref["input_order"].get("optional", [])
        if [i.name for i in cls.inputs] != order:
            problems.append(f"{name}: inputs {[i.name for i in cls.inputs]} != {order}")
            continue
        if [o.type for o in cls.outputs] != ref["output"] or [o.name for o in cls.outputs] != ref["output_name"]:
            problems.append(f"{name}: outputs {[(o.name, o.type) for o in cls.outputs]} differ")
        if cls.category != ref["category"]:
            problems.append(f"{name}: category {cls.category} != {ref['category']}")
        for spec in cls.inputs:
            kind, *rest = ref_inputs[spec.name]
            opts = rest[0] if rest else {}
            if isinstance(kind, list):
                choices = spec.resolve_choices(None)
                ok = set(choices) <= set(kind) and choices == [c for c in kind if c in choices] \
                    if spec.name in SUBSET_COMBOS else choices == kind
                if spec.type != COMBO or not ok:
                    problems.append(f"{name}.{spec.name}: choices {choices} vs {kind}")
                if spec.has_default and spec.default != kind[0]:
                    problems.append(f"{name}.{spec.name}: default {spec.default} is not ComfyUI's first choice")
                continue
            if spec.type != kind:
                problems.append(f"{name}.{spec.name}: type {spec.type} != {kind}")
            for key in ("default", "min", "max", "step"):
                if key in opts:
                    ours = spec.default if key == "default" else getattr(spec, key)
                    if ours != opts[key]:
                        problems.append(f"{name}.{spec.name}: {key} {ours!r} != {opts[key]!r}")
            if opts.get("round") not in (None, False) and spec.round != opts["round"]:
                problems.append(f"{name}.{spec.name}: round {spec.round!r} != {opts['round']!r}")
    assert not problems, "\n".join(problems)


# -- schedules and sigma tools against their formulas ---------------------------------------------------------------


def _training_sigmas(n=1000):
    out, abar = [], 1.0
    for i in range(n):
        beta = (0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * i / (n - 1)) ** 2
        abar *= 1.0 - beta
        out.append(math.sqrt((1.0 - abar) / abar))
    return out


SIG = _training_sigmas()


class _Model:
    """A MODEL stand-in for the schedulers, which read only its noise schedule."""

    def __init__(self):
        from nodes.sampling import ModelSampling

        self.model_sampling = ModelSampling()


def _close(got, ref, rtol=2e-6):
    assert got.dtype == torch.float32 and got.ndim == 1
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), rtol=rtol, atol=0)


def test_model_free_schedulers_follow_their_formulas():
    from nodes.library.custom_sampling import ExponentialScheduler, KarrasScheduler, PolyexponentialScheduler

    n, hi, lo = 7, 14.614642, 0.0291675
    (k,) = KarrasScheduler().run(None, n, hi, lo, 5.0)
    _close(k, [(hi ** 0.2 + i / (n - 1) * (lo ** 0.2 - hi ** 0.2)) ** 5.0 for i in range(n)] + [0.0])
    (e,) = ExponentialScheduler().run(None, n, hi, lo)
    _close(e, [hi * (lo / hi) ** (i / (n - 1)) for i in range(n)] + [0.0])
    (p,) = PolyexponentialScheduler().run(None, n, hi, lo, 2.0)
    _close(p, [math.exp(math.log(lo) + (1 - i / (n - 1)) ** 2 * (math.log(hi) - math.log(lo))) for i in range(n)]
           + [0.0])
    (p1,) = PolyexponentialScheduler().run(None, n, hi, lo, 1.0)
    torch.testing.assert_close(p1, e, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="sigma_min"):
        KarrasScheduler().run(None, n, 1.0, 0.0, 7.0)


def test_sd_turbo_scheduler_takes_timesteps_999_899_and_so_on():
    from nodes.library.custom_sampling import SDTurboScheduler

    m = _Model()
    _close(SDTurboScheduler().run(None, m, 1, 1.0)[0], [SIG[999], 0.0])
    _close(SDTurboScheduler().run(None, m, 4, 1.0)[0], [SIG[999], SIG[899], SIG[799], SIG[699], 0.0])
    _close(SDTurboScheduler().run(None, m, 2, 0.5)[0], [SIG[499], SIG[399], 0.0])  # start at 10 - int(10 * 0.5)


def test_basic_and_beta_schedulers_are_ksamplers_schedules():
    from nodes.library.custom_sampling import BasicScheduler, BetaSamplingScheduler
    from nodes.sampling import calculate_sigmas

    m = _Model()
    (s,) = BasicScheduler().run(None, m, "karras", 10, 0.5)
    assert torch.equal(s, calculate_sigmas(m.model_sampling, "karras", 20)[-11:])
    (b,) = BetaSamplingScheduler().run(None, m, 12, 0.6, 0.6)
    assert torch.equal(b, calculate_sigmas(m.model_sampling, "beta", 12))


def test_sigma_tools():
    from nodes.library.custom_sampling import FlipSigmas, SplitSigmas, SplitSigmasDenoise

    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    hi, lo = SplitSigmas().run(None, s, 2)
    assert hi.tolist() == [10.0, 5.0, 2.0] and lo.tolist() == [2.0, 1.0, 0.5, 0.0]
    hi, lo = SplitSigmasDenoise().run(None, s, 0.4)  # round(5 * 0.4) = 2 steps low
    assert hi.tolist() == [10.0, 5.0, 2.0, 1.0] and lo.tolist() == [1.0, 0.5, 0.0]
    hi, lo = SplitSigmasDenoise().run(None, s, 1.0)
    assert hi.tolist() == [10.0] and torch.equal(lo, s)
    (f,) = FlipSigmas().run(None, s)
    assert torch.equal(f, torch.tensor([0.0001, 0.5, 1.0, 2.0, 5.0, 10.0]))
    assert FlipSigmas().run(None, torch.zeros(0))[0].numel() == 0


def test_sampler_nodes_carry_their_options():
    from nodes.library.custom_sampling import (
        KSamplerSelect, SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE, SamplerEulerAncestral, SamplerLMS)

    (s,) = KSamplerSelect().run(None, "uni_pc_bh2")
    assert s.name == "uni_pc_bh2" and s.options["variant"] == "bh2" and s.discard_penultimate_sigma
    (s,) = SamplerEulerAncestral().run(None, 0.5, 0.8)
    assert s.name == "euler_ancestral" and dict(s.options) == {"eta": 0.5, "s_noise": 0.8} and s.noise == "seeded"
    (s,) = SamplerDPMPP_SDE().run(None, 1.0, 1.0, 0.3, "cpu")
    assert s.name == "dpmpp_sde" and s.noise == "brownian" and s.options["r"] == 0.3
    (s,) = SamplerDPMPP_2M_SDE().run(None, "heun", 0.7, 1.0, "gpu")
    assert s.name == "dpmpp_2m_sde_gpu" and s.noise == "brownian_device" and s.options["solver_type"] == "heun"
    (s,) = SamplerLMS().run(None, 2)
    assert s.options["order"] == 2
    (eta0,) = SamplerEulerAncestral().run(None, 0.0, 1.0)
    assert not eta0.stochastic


# -- on the tiny checkpoints, through the engine --------------------------------------------------------------------


def _ksampler_graph(sampler, scheduler, steps, denoise=1.0, seed=11, cfg=4.0):
    base = {
        "1": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": {"node": "1", "output": "CLIP"}}},
        "3": {"type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": {"node": "1", "output": "CLIP"}}},
        "4": {"type": "EmptyLatentImage", "inputs": {"width": 40, "height": 56, "batch_size": 1}},
    }
    k = {"type": "KSampler", "inputs": {
        "model": {"node": "1", "output": "MODEL"}, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": {"node": "2", "output": "CONDITIONING"},
        "negative": {"node": "3", "output": "CONDITIONING"}, "latent_image": {"node": "4", "output": "LATENT"},
        "denoise": denoise}}
    custom = {
        "10": {"type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "11": {"type": "CFGGuider", "inputs": {"model": {"node": "1", "output": "MODEL"},
                                               "positive": {"node": "2", "output": "CONDITIONING"},
                                               "negative": {"node": "3", "output": "CONDITIONING"}, "cfg": cfg}},
        "12": {"type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "13": {"type": "BasicScheduler", "inputs": {"model": {"node": "1", "output": "MODEL"}, "scheduler": scheduler,
                                                    "steps": steps, "denoise": denoise}},
        "14": {"type": "SamplerCustomAdvanced", "inputs": {
            "noise": {"node": "10", "output": "NOISE"}, "guider": {"node": "11", "output": "GUIDER"},
            "sampler": {"node": "12", "output": "SAMPLER"}, "sigmas": {"node": "13", "output": "SIGMAS"},
            "latent_image": {"node": "4", "output": "LATENT"}}},
    }
    decode = lambda src, out: {"type": "VAEDecode", "inputs": {"samples": {"node": src, "output": out},  # noqa: E731
                                                               "vae": {"node": "1", "output": "VAE"}}}
    return {"format": "chisel-workflow", "version": 1,
            "nodes": {**base, "5": k, **custom, "6": decode("5", "LATENT"), "16": decode("14", "output")}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import shutil

    from sd_fixtures import make_engine, tiny_file

    root = tmp_path_factory.mktemp("custom")
    ck = root / "models" / "checkpoints"
    ck.mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), ck / "tiny.safetensors")
    shutil.copy(tiny_file("sdxl"), ck / "sd_xl_turbo_1.0_fp16.safetensors")
    return make_engine(root)[0], root


@pytest.mark.parametrize("sampler,scheduler,denoise", [
    ("euler", "normal", 1.0), ("euler_ancestral", "karras", 1.0), ("dpmpp_2m_sde", "exponential", 0.6)])
def test_ksampler_and_the_equivalent_sampler_custom_advanced_graph_give_the_same_image(engine, sampler, scheduler,
                                                                                       denoise):
    eng, _ = engine
    res = eng.run(_ksampler_graph(sampler, scheduler, 4, denoise), outputs=["5", "14", "6", "16"])
    assert res.status == "success", [e.message for e in res.errors]
    assert torch.equal(res.values["5"][0]["samples"], res.values["14"][0]["samples"])
    assert torch.equal(res.values["6"][0], res.values["16"][0])


def test_for_uni_pc_ksampler_equals_the_custom_graph_with_the_penultimate_sigma_dropped(engine):
    """KSampler computes steps + 1 sigmas for uni_pc and drops the penultimate one; BasicScheduler never does
    (ComfyUI's behaviour): the custom graph matches once given that schedule."""
    eng, _ = engine
    wf = _ksampler_graph("uni_pc", "karras", 4)
    res = eng.run(wf, outputs=["1", "4", "5", "10", "11", "12", "14"])
    assert res.status == "success", [e.message for e in res.errors]
    assert not torch.equal(res.values["5"][0]["samples"], res.values["14"][0]["samples"])
    from nodes.library.custom_sampling import BasicScheduler, SamplerCustomAdvanced

    model = res.values["1"][0]
    (sig,) = BasicScheduler().run(None, model, "karras", 5, 1.0)
    dropped = torch.cat([sig[:-2], sig[-1:]])  # the 5-step schedule without its penultimate sigma
    guider, noise, sampler, latent = (res.values[k][0] for k in ("11", "10", "12", "4"))
    out, _ = SamplerCustomAdvanced().run(None, noise, guider, sampler, dropped, latent)
    assert torch.equal(out["samples"], res.values["5"][0]["samples"])


def test_sdxl_turbo_custom_sampling_workflow_runs_on_tiny_files(engine):
    eng, root = engine
    wf = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "sdxl_turbo.json").read_text())
    wf["nodes"]["5"]["inputs"].update(width=64, height=64)
    plan, errors = eng.validate(wf)
    assert errors == [], [e.message for e in errors]
    res = eng.run(wf, outputs=["8", "22", "27"])
    assert res.status == "success", [e.message for e in res.errors]
    image = res.values["8"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    sigmas = res.values["22"][0]
    assert len(sigmas) == 2 and sigmas[-1] == 0
    assert (root / "output" / res.outputs["27"]["images"][0]["filename"]).is_file()
    # 2 steps and another seed give another image
    wf["nodes"]["22"]["inputs"]["steps"] = 2
    wf["nodes"]["13"]["inputs"]["noise_seed"] = 1
    other = eng.run(wf, outputs=["8"])
    assert other.status == "success" and not torch.equal(other.values["8"][0], image)

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

REFERENCE = Path(__file__).resolve().parent / "reference" / "comfyui-more-nodes.json"
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

"""Every node Chisel shares with ComfyUI (same type name) has ComfyUI's inputs: names in order, types,
defaults, ranges and combo values (ComfyUI's interface facts, kept in tests/data/comfyui: core nodes and more)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.registry import NodeRegistry
from graph.types import COMBO

REFERENCES = [Path(__file__).resolve().parent / "data" / "comfyui" / name
              for name in ("comfyui-core-nodes.json", "comfyui-more-nodes.json")]
# Combos whose ComfyUI list includes variants Chisel does not offer (yet): Chisel's must be a subset. By input name,
# or (node, input) where ComfyUI lists model families or kinds Chisel does not offer.
SUBSET_COMBOS = {"sampler_name", "scheduler", ("CLIPLoader", "type"), ("DualCLIPLoader", "type"),
                 ("ModelSamplingDiscrete", "sampling")}


@pytest.fixture(scope="module")
def reference():
    merged = {}
    for path in REFERENCES:  # part of the repository: a missing file is a failure, not a skip
        merged.update(json.loads(path.read_text()))
    return merged


@pytest.fixture(scope="module")
def registry():
    return NodeRegistry.discover()


def test_shared_nodes_match_comfyui(reference, registry):
    shared = sorted(set(registry) & set(reference))
    assert len(shared) >= 10, f"expected the core nodes to be registered, found {shared}"
    problems = []
    for name in shared:
        cls, ref = registry.get(name), reference[name]
        ref_inputs = {**ref["input"].get("required", {}), **ref["input"].get("optional", {})}
        order = ref["input_order"].get("required", []) + ref["input_order"].get("optional", [])
        ours = [i.name for i in cls.inputs]
        if ours != order:
            problems.append(f"{name}: inputs {ours} != ComfyUI's {order}")
            continue
        if [o.type for o in cls.outputs] != ref["output"]:
            problems.append(f"{name}: outputs {[o.type for o in cls.outputs]} != {ref['output']}")
        if bool(cls.output_node) != bool(ref["output_node"]):
            problems.append(f"{name}: output_node differs")
        for spec in cls.inputs:
            kind, *rest = ref_inputs[spec.name]
            opts = rest[0] if rest else {}
            if isinstance(kind, list):  # a combo with fixed choices
                choices = spec.resolve_choices(None) or []
                if spec.type != COMBO:
                    problems.append(f"{name}.{spec.name}: type {spec.type}, ComfyUI has a combo")
                elif spec.name in SUBSET_COMBOS or (name, spec.name) in SUBSET_COMBOS:
                    if not choices or not set(choices) <= set(kind):
                        problems.append(f"{name}.{spec.name}: {sorted(set(choices) - set(kind))} not in ComfyUI")
                elif choices != kind:
                    problems.append(f"{name}.{spec.name}: choices {choices} != {kind}")
                continue
            if kind.startswith("<file names"):
                if spec.type != COMBO or not spec.files:
                    problems.append(f"{name}.{spec.name}: should be a file combo")
                continue
            if spec.type != kind:
                problems.append(f"{name}.{spec.name}: type {spec.type} != {kind}")
            for key in ("default", "min", "max", "step"):
                if key in opts and key != "max" or (key == "max" and "max" in opts and opts["max"] < 2**53):
                    ours_v = getattr(spec, key) if key != "default" else (spec.default if spec.has_default else None)
                    if ours_v != opts[key]:
                        problems.append(f"{name}.{spec.name}: {key} {ours_v!r} != ComfyUI's {opts[key]!r}")
            if opts.get("multiline") and not spec.multiline:
                problems.append(f"{name}.{spec.name}: should be multiline")
    assert not problems, "\n".join(problems)

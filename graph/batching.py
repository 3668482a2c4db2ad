"""Batching across prompts: which prompts may be run as one batch.

Two prompts may share a batch when they are the same graph (node ids, types, links, requested outputs) with the same
literal inputs, except the inputs each node type declares in ``per_sample_inputs`` (KSampler's seed, CLIPTextEncode's
text, SaveImage's filename_prefix, ...). :func:`batch_signature` turns that rule into a string: equal signatures,
compatible prompts. A prompt whose graph has no node with a batched form (``Node.run_batch``) gets no signature: it
gains nothing from waiting for company.

The signature only decides what is worth running together. Correctness never rests on it: the fused run
(:func:`graph.fused.execute_fused`) runs each node once per distinct computation, and a node's batched form checks
its own calls and declines what it cannot batch.
"""
from __future__ import annotations

import json
from typing import Any

from .native import Workflow, is_link
from .node import Node

PER_SAMPLE = "<per-sample>"


def has_batched_form(cls: type[Node]) -> bool:
    """Whether a node type runs several prompts' calls as one computation."""
    return getattr(cls.run_batch, "__func__", None) is not Node.run_batch.__func__


def batch_signature(workflow: Workflow, registry: Any, outputs: list[str] | None = None) -> str | None:
    """Equal for two prompts exactly when they may share a batch; None when this prompt is not worth batching (no
    node with a batched form, or a node type the registry does not know: it will fail on its own)."""
    nodes: dict[str, Any] = {}
    worth = False
    for nid, spec in workflow.nodes.items():
        cls = registry.get(spec.type)
        if cls is None:
            return None
        worth = worth or has_batched_form(cls)
        inputs: dict[str, Any] = {}
        for name, value in spec.inputs.items():
            if is_link(value):
                inputs[name] = {"link": [value.node, value.output]}
            elif name in cls.per_sample_inputs:
                inputs[name] = PER_SAMPLE
            else:
                inputs[name] = {"value": value}
        nodes[nid] = [spec.type, inputs]
    if not worth:
        return None
    wanted = sorted(outputs) if outputs else None
    return json.dumps({"nodes": nodes, "outputs": wanted, "workflow_outputs": workflow.outputs}, sort_keys=True,
                      separators=(",", ":"), default=repr)

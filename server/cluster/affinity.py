"""Checkpoint affinity: which model files a prompt loads, and which idle worker should run it."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

NOT_MODELS = ("input", "output", "temp", "custom_nodes")


def model_keys(workflow: dict[str, Any], registry: Any) -> frozenset[str]:
    """``kind/name`` of every model file the workflow names through a ``files=`` input (checkpoints, LoRAs, VAEs …;
    not input images)."""
    keys = set()
    for spec in (workflow.get("nodes") or {}).values():
        cls = registry.get(spec.get("type")) if registry is not None else None
        if cls is None:
            continue
        values = spec.get("inputs") or {}
        for inp in cls.inputs:
            value = values.get(inp.name)
            if inp.files and inp.files not in NOT_MODELS and isinstance(value, str) and value:
                keys.add(f"{inp.files}/{value}")
    return frozenset(keys)


def choose(idle: Sequence[Any], wanted: frozenset[str], avoid: Iterable[int] = ()) -> Any:
    """The idle worker for a prompt: one holding the most of its models; among equals one not in ``avoid`` (the
    worker that just died under it), then the one holding the fewest models (least loaded, so it keeps others'
    models resident), then the lowest index. Workers have ``index`` and ``models`` (a set of keys)."""
    avoid = set(avoid)
    return min(idle, key=lambda w: (-len(wanted & w.models), w.index in avoid, len(w.models), w.index))

"""Batching across prompts in the server: after the worker claims the head of the queue, it also claims the queued
prompts that may share its batch (:func:`graph.batching.batch_signature`: the same graph, differing only in
per-sample inputs such as seeds and prompt texts), waiting up to a short window for more to arrive, and runs them as
one fused batch (``Engine.run_many``). Each prompt keeps its own history entry, events, files and errors.

``--max-batch 1`` turns it off; ``--batch-window-ms 0`` batches only what is already queued. A prompt whose graph
has no node with a batched form (no sampler) never waits.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from graph.batching import batch_signature
from graph.workflow import parse_workflow

log = logging.getLogger("chisel.server")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 8  # prompts in one batch; 1: no batching
    window: float = 0.02  # seconds the worker waits for compatible prompts after claiming one
    scan: int = 64  # queued prompts looked at for compatible ones (from the head of the queue)


def signature_of(item: dict[str, Any], registry: Any) -> str | None:
    """A queued prompt's batch signature; None when it is not worth batching or cannot be read."""
    try:
        return batch_signature(parse_workflow(item["workflow"], registry), registry, item.get("outputs"))
    except Exception:  # noqa: BLE001 - a prompt that does not parse fails on its own, unbatched
        return None


def gather(store: Any, first: dict[str, Any], registry: Any, policy: BatchPolicy, wake: threading.Event,
           stopping: threading.Event) -> list[dict[str, Any]]:
    """``first`` (claimed) and the queued prompts that may share its batch, claimed, in queue order; waits up to
    ``policy.window`` for more to be queued, never longer, and stops waiting once the batch is full."""
    if policy.max_batch <= 1:
        return [first]
    wanted = signature_of(first, registry)
    if wanted is None:
        return [first]
    known: dict[str, str | None] = {}

    def fits(row: dict[str, Any]) -> bool:
        pid = row["prompt_id"]
        if pid not in known:
            known[pid] = signature_of(row, registry)
        return known[pid] == wanted

    items = [first]
    deadline = time.monotonic() + policy.window
    while not stopping.is_set():
        wake.clear()
        try:
            items += store.claim_matching(fits, policy.max_batch - len(items), policy.scan)
        except Exception:  # noqa: BLE001 - run what was claimed
            log.exception("could not read the queue for a batch")
            break
        left = deadline - time.monotonic()
        if len(items) >= policy.max_batch or left <= 0:
            break
        wake.wait(left)
    return items

"""A fused run: several prompts of one graph (see :mod:`graph.batching`) executed node by node in lockstep.

For each node, the runs that need it are grouped by cache key:

- runs with the same key ask for the same computation (a shared checkpoint loader, a shared negative prompt): it
  runs once, and its result is each run's (a run alone would have found it in the cache);
- when several distinct computations remain and the node has a batched form (``Node.run_batch``, e.g. KSampler:
  one sampling of the concatenated batch), it runs once for all of them; if it declines or raises, each computation
  runs alone, so a failure is reported by the prompt it belongs to and no other;
- otherwise each computation runs alone, with its own run's context (events, ``extra``, file names).

Each run keeps its own events, errors, timings, interrupt and result, as if it ran alone. An interrupt of one run
stops a shared or batched call; the other runs then redo that node without it (still as one batch when several
remain, so an interrupt costs the others one restart of the node, not their batching).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .batching import has_batched_form
from .node import Interrupted

if TYPE_CHECKING:  # the engine imports this module when it runs a batch; nothing here imports it back
    from .engine import Engine, RunResult, _Run

log = logging.getLogger("chisel.graph")


class _State:
    """One run's progress through the fused execution."""

    def __init__(self, engine: "Engine", run: "_Run"):
        self.run = run
        self.result, self.keys, self.values, to_run = engine._begin(run)
        self.to_run = set(to_run)
        self.failed: set[str] = set()
        self.active = True

    def key(self, nid: str) -> str:
        return self.keys[nid][0]


def execute_fused(engine: "Engine", runs: list["_Run"]) -> list[RunResult]:
    """Run ``runs`` together; the engine's lock is held. Runs whose plans differ are run one after another."""
    order = runs[0].plan.order
    if any(r.plan.order != order or set(r.plan.nodes) != set(runs[0].plan.nodes) for r in runs[1:]):
        return [engine._execute(r) for r in runs]
    states = [_State(engine, r) for r in runs]
    for nid in order:
        ready = []
        for s in states:
            if not s.active or nid not in s.to_run:
                continue
            if any(src in s.failed for src, _ in s.run.plan.nodes[nid].links.values()):
                s.failed.add(nid)
                s.result.skipped.append(nid)
            elif s.run.interrupt.is_set():
                _stop(engine, s, nid, "interrupted before this node ran")
            else:
                ready.append(s)
        groups: dict[str, list[_State]] = {}
        for s in ready:
            groups.setdefault(s.key(nid), []).append(s)
        if groups:
            _run_node(engine, nid, list(groups.values()))
    return [engine._finish(s.run, s.result, s.keys, s.values, failed_any=len(s.failed) > len(s.result.skipped))
            for s in states]


def _stop(engine: "Engine", s: _State, nid: str, message: str, ui: dict | None = None) -> None:
    engine._record_interrupt(s.run, s.result, nid, message, ui)
    s.active = False


def _without_interrupted(engine: "Engine", nid: str, groups: list[list[_State]],
                         elapsed: float) -> list[list[_State]] | None:
    """After a batched call was interrupted: stop the runs whose interrupt is set and return the groups of the
    others (None when no run's interrupt is set)."""
    if not any(s.run.interrupt.is_set() for g in groups for s in g):
        return None
    for g in groups:
        for s in g:
            if s.run.interrupt.is_set():
                s.result.timings[nid] = elapsed
                _stop(engine, s, nid, "interrupted while running")
    return [kept for kept in ([s for s in g if s.active] for g in groups) if kept]


def _run_node(engine: "Engine", nid: str, groups: list[list[_State]]) -> None:
    cls = groups[0][0].run.plan.nodes[nid].cls
    announced: set[int] = set()
    while len(groups) > 1 and has_batched_form(cls):
        for g in groups:
            for s in g:
                if id(s) not in announced:
                    engine._announce(s.run, s.result, nid, s.keys[nid])
                    announced.add(id(s))
        started = time.perf_counter()
        outs = None
        try:
            ctxs = [engine._context(g[0].run, nid, tuple(s.run for s in g[1:])) for g in groups]
            calls = [engine._inputs(g[0].run, nid, g[0].values) for g in groups]
            outs = cls.run_batch(ctxs, calls)
            if outs is not None:
                if len(outs) != len(groups):
                    raise RuntimeError(f"{cls.type}.run_batch returned {len(outs)} results for {len(groups)} calls")
                outs = [engine._normalize(cls, out) for out in outs]
        except Interrupted as exc:
            rest = _without_interrupted(engine, nid, groups, time.perf_counter() - started)
            if rest is None:  # nobody's interrupt is set: run each alone, as after any other failure
                log.info("%s (node %s): the batch of %d failed (%s: %s); running each alone", cls.type, nid,
                         len(groups), type(exc).__name__, exc)
                break
            log.info("%s (node %s): interrupted in a batch of %d; the %d other calls go on", cls.type, nid,
                     len(groups), len(rest))
            groups = rest  # the batch again, without the interrupted runs
            continue
        except Exception as exc:  # noqa: BLE001 - each call is retried alone, where its error is its own
            log.info("%s (node %s): the batch of %d failed (%s: %s); running each alone", cls.type, nid, len(groups),
                     type(exc).__name__, exc)
            outs = None
        if outs is not None:
            elapsed = time.perf_counter() - started
            for g, (outputs, ui) in zip(groups, outs):
                for s in g:
                    engine._record_done(s.run, s.result, nid, s.keys[nid], s.values, outputs, ui, elapsed)
            return
        break
    pending = list(groups)
    while pending:
        group = pending.pop(0)
        for s in [s for s in group if s.run.interrupt.is_set()]:
            _stop(engine, s, nid, "interrupted while running" if id(s) in announced else
                  "interrupted before this node ran")
        group = [s for s in group if s.active]
        if not group:
            continue
        for s in group:
            if id(s) not in announced:
                engine._announce(s.run, s.result, nid, s.keys[nid])
                announced.add(id(s))
        lead, others = group[0], tuple(s.run for s in group[1:])
        started = time.perf_counter()
        try:
            outputs, ui = engine._call_node(lead.run, nid, lead.values, others)
        except Interrupted as exc:
            elapsed = time.perf_counter() - started
            stopped = [s for s in group if s.run.interrupt.is_set()] or group
            for s in stopped:
                s.result.timings[nid] = elapsed
                _stop(engine, s, nid, "interrupted while running", exc.ui)
            rest = [s for s in group if s.active]
            if rest:
                pending.append(rest)
            continue
        except Exception as exc:  # a node's failure fails its branch only, in each run that asked for it
            elapsed = time.perf_counter() - started
            for s in group:
                s.failed.add(nid)
                engine._record_failure(s.run, s.result, nid, exc, elapsed)
            continue
        elapsed = time.perf_counter() - started
        for s in group:
            engine._record_done(s.run, s.result, nid, s.keys[nid], s.values, outputs, ui, elapsed)


"""The executor: validate, plan, then run each needed node once, serving what it can from the cache.

``Engine.run`` is synchronous and thread-safe to call from a worker thread (the server does so while its
event loop stays free); events go to the ``on_event`` callback in that thread. A failing node fails only its
own downstream branch; an interrupt stops between nodes and inside progress callbacks.
"""
from __future__ import annotations

import random
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import errors as E
from . import events as ev
from .cache import ResultCache, compute_key
from .errors import ChiselError, WorkflowError
from .node import Interrupted, Node, NodeResult
from .paths import ModelPaths, file_identity
from .validate import Plan, validate
from .workflow import Workflow, parse_workflow


@dataclass
class RunResult:
    run_id: str
    status: str  # success | error | interrupted
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> ui (files written, text)
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[ChiselError] = field(default_factory=list)
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)  # values the engine chose (random seeds)
    explain: dict[str, str] = field(default_factory=dict)  # node id -> why it ran
    values: dict[str, tuple] = field(default_factory=dict)  # requested node id -> its output values
    skipped: list[str] = field(default_factory=list)  # nodes not run because an upstream node failed

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "executed": self.executed, "cached": self.cached,
                "outputs": self.outputs, "timings": self.timings, "errors": [e.to_dict() for e in self.errors],
                "resolved": self.resolved, "explain": self.explain, "skipped": self.skipped}


@dataclass
class _KeyContext:
    """The ``ctx`` a node's ``fingerprint`` receives: what it may look at, nothing it may do."""

    node_id: str
    services: Any
    paths: ModelPaths


class _Context:
    """The ``ctx`` a node's ``run`` receives. In a fused batch (:mod:`graph.fused`) one call may serve several runs
    that asked for the same computation (``also``): its progress goes to each, and an interrupt of any stops it."""

    def __init__(self, engine: "Engine", run: "_Run", node_id: str, files: dict[str, Path], also: tuple = ()):
        self._engine, self._run, self.node_id, self._files = engine, run, node_id, files
        self._runs = (run, *also)
        self.services = engine.services
        self.registry = engine.registry
        self.run_id = run.run_id

    def check_interrupted(self) -> None:
        if any(r.interrupt.is_set() for r in self._runs):
            raise Interrupted()

    def progress(self, value: float, total: float, preview: Any = None, *, activity: str | None = None,
                 stage: str | None = None) -> None:
        said = {k: v for k, v in (("activity", activity), ("stage", stage)) if v is not None}
        for r in self._runs:
            r.emit(ev.PROGRESS, self.node_id, value=value, max=total, preview=preview, **said)
        self.check_interrupted()

    def file_path(self, input_name: str) -> Path:
        return self._files[input_name]

    @property
    def workflow(self) -> dict[str, Any]:
        return self._run.workflow_dict

    @property
    def extra(self) -> dict[str, Any]:
        return self._run.extra


class _Run:
    def __init__(self, engine: "Engine", workflow: Workflow, plan: Plan, run_id: str, on_event, interrupt, extra):
        self.engine, self.workflow, self.plan, self.run_id = engine, workflow, plan, run_id
        self.on_event, self.interrupt, self.extra = on_event, interrupt, extra

    def emit(self, type_: str, node_id: str | None = None, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(ev.Event(type_, self.run_id, node_id, data))

    @cached_property
    def workflow_dict(self) -> dict[str, Any]:
        """The workflow as run: engine-chosen values (random seeds) written in."""
        data = self.workflow.to_dict()
        for nid, values in self.plan.resolved.items():
            data["nodes"][nid]["inputs"].update(values)
        return data


def _nodes_to_run(plan: Plan, hits: dict[str, Any]) -> list[str]:
    """The nodes to execute, in order: a node missing from the cache runs only if its value is wanted (it is
    requested, or a node that runs needs it)."""
    runs: set[str] = set()
    wanted = set(plan.outputs)
    for nid in reversed(plan.order):
        if hits[nid] is None and nid in wanted:
            runs.add(nid)
            wanted.update(src for src, _ in plan.nodes[nid].links.values())
    return [nid for nid in plan.order if nid in runs]


class Engine:
    def __init__(self, registry: Any, services: Any = None, paths: ModelPaths | None = None,
                 cache: ResultCache | None = None):
        self.registry = registry
        self.services = services
        self.paths = paths if paths is not None else getattr(services, "paths", None) or ModelPaths()
        self.cache = cache if cache is not None else ResultCache()
        self._last_components: dict[str, tuple[str, dict[str, str]]] = {}  # node id -> (type, components)
        self._lock = threading.Lock()
        self._current: list[_Run] = []
        self.rng = random.SystemRandom()

    # -- public API -------------------------------------------------------------------------------------
    def load(self, data: Any, source: str | None = None) -> Workflow:
        return parse_workflow(data, self.registry, source)

    def validate(self, workflow: Workflow | dict, outputs: list[str] | None = None) -> tuple[Plan | None, list[ChiselError]]:
        wf = workflow if isinstance(workflow, Workflow) else self.load(workflow)
        return validate(wf, self.registry, self.paths, outputs, rng=self.rng)

    def interrupt(self) -> bool:
        """Interrupt the run in progress (every run of a fused batch), if any."""
        runs = list(self._current)
        for run in runs:
            run.interrupt.set()
        return bool(runs)

    def run(self, workflow: Workflow | dict, outputs: list[str] | None = None, on_event: ev.EventCallback | None = None,
            interrupt: threading.Event | None = None, run_id: str | None = None,
            extra: dict[str, Any] | None = None) -> RunResult:
        return self.run_many([dict(workflow=workflow, outputs=outputs, on_event=on_event, interrupt=interrupt,
                                   run_id=run_id, extra=extra)])[0]

    def run_many(self, jobs: list[dict[str, Any]]) -> list[RunResult]:
        """Run several prompts as one batch (:mod:`graph.fused`): each job is ``run``'s keyword arguments, and each
        gets the result, events and errors it would get alone; a computation they share runs once, and a node with a
        batched form (``Node.run_batch``) runs once for all of them. A prompt that fails validation fails alone."""
        results: list[RunResult | None] = [None] * len(jobs)
        runs: list[tuple[int, _Run]] = []
        for i, job in enumerate(jobs):
            run_id = job.get("run_id") or uuid.uuid4().hex
            on_event, workflow = job.get("on_event"), job["workflow"]
            try:
                wf = workflow if isinstance(workflow, Workflow) else self.load(workflow)
            except WorkflowError as exc:
                results[i] = self._failed_early(run_id, exc.errors, on_event)
                continue
            plan, errors = validate(wf, self.registry, self.paths, job.get("outputs"), rng=self.rng)
            if plan is None:
                results[i] = self._failed_early(run_id, errors, on_event)
                continue
            runs.append((i, _Run(self, wf, plan, run_id, on_event, job.get("interrupt") or threading.Event(),
                                 job.get("extra") or {})))
        if runs:
            with self._lock:  # one run (or fused batch) at a time per engine: nodes share models and the cache
                self._current = [run for _, run in runs]
                try:
                    if len(runs) == 1:
                        done = [self._execute(runs[0][1])]
                    else:
                        from .fused import execute_fused
                        done = execute_fused(self, [run for _, run in runs])
                finally:
                    self._current = []
            for (i, _), result in zip(runs, done):
                results[i] = result
        return results  # type: ignore[return-value]

    # -- internals --------------------------------------------------------------------------------------
    def _failed_early(self, run_id: str, errors: list[ChiselError], on_event) -> RunResult:
        if on_event is not None:
            for e in errors:
                on_event(ev.Event(ev.ERROR, run_id, e.node_id, {"error": e.to_dict(), "phase": "validation"}))
            on_event(ev.Event(ev.FINISHED, run_id, None, {"status": "error"}))
        return RunResult(run_id, "error", errors=errors)

    def _keys(self, plan: Plan) -> dict[str, tuple[str, dict[str, str]]]:
        keys: dict[str, tuple[str, dict[str, str]]] = {}
        for nid in plan.order:
            pn = plan.nodes[nid]
            upstream = {name: (keys[src][0], idx) for name, (src, idx) in pn.links.items()}
            files = {name: file_identity(path) for name, path in pn.files.items()}
            custom = pn.cls.fingerprint.__func__ is not Node.fingerprint.__func__
            fp = pn.cls.fingerprint(_KeyContext(nid, self.services, self.paths), **pn.literals) if custom else None
            keys[nid] = compute_key(pn.cls.type, pn.cls.version, pn.literals, upstream, files, fp)
        return keys

    def _explain(self, plan: Plan, nid: str, key: str, components: dict[str, str]) -> str:
        if self.cache.was_evicted(key):
            return "evicted from the cache since it last ran"
        last = self._last_components.get(nid)
        if last is None or last[0] != plan.nodes[nid].cls.type:
            return "not cached before"
        _, before = last
        reasons = []
        for name in sorted(set(before) | set(components)):
            if before.get(name) == components.get(name):
                continue
            link = plan.nodes[nid].links.get(name)
            if link is not None:
                reasons.append(f"upstream node {link[0]} changed (input {name!r})")
            elif "|f:" in components.get(name, "") and before.get(name, "").split("|f:")[0] == components[name].split("|f:")[0]:
                reasons.append(f"file of input {name!r} changed")
            else:
                reasons.append(f"input {name!r} changed")
        return "; ".join(reasons) if reasons else "not cached before"

    def _begin(self, run: _Run) -> tuple[RunResult, dict, dict[str, tuple], list[str]]:
        """Start a run: its result, cache keys, the values the cache serves, and the nodes left to execute."""
        plan = run.plan
        result = RunResult(run.run_id, "success", resolved=plan.resolved)
        keys = self._keys(plan)
        run.emit(ev.STARTED, nodes=list(plan.order), outputs=list(plan.outputs), resolved=plan.resolved)
        hits = {nid: self.cache.get(keys[nid][0]) for nid in plan.order}
        values = self._serve_cached(run, result, hits)
        return result, keys, values, _nodes_to_run(plan, hits)

    def _execute(self, run: _Run) -> RunResult:
        plan = run.plan
        result, keys, values, to_run = self._begin(run)
        failed: set[str] = set()  # nodes that raised, and (below) the nodes downstream of them
        for nid in to_run:
            pn = plan.nodes[nid]
            if any(src in failed for src, _ in pn.links.values()):
                failed.add(nid)
                result.skipped.append(nid)
                continue
            if run.interrupt.is_set():
                self._record_interrupt(run, result, nid, "interrupted before this node ran")
                break
            self._announce(run, result, nid, keys[nid])
            started = time.perf_counter()
            try:
                outputs, ui = self._call_node(run, nid, values)
            except Interrupted as exc:
                result.timings[nid] = time.perf_counter() - started
                self._record_interrupt(run, result, nid, "interrupted while running", exc.ui)
                break
            except Exception as exc:  # a node's failure fails its branch only
                failed.add(nid)
                self._record_failure(run, result, nid, exc, time.perf_counter() - started)
                continue
            self._record_done(run, result, nid, keys[nid], values, outputs, ui, time.perf_counter() - started)
        return self._finish(run, result, keys, values, failed_any=len(failed) > len(result.skipped))

    def _announce(self, run: _Run, result: RunResult, nid: str, key: tuple[str, dict[str, str]]) -> None:
        """Say why ``nid`` runs, and that it starts."""
        reason = self._explain(run.plan, nid, key[0], key[1])
        result.explain[nid] = reason
        run.emit(ev.EXECUTING, nid, node_type=run.plan.nodes[nid].cls.type, reason=reason)

    def _record_done(self, run: _Run, result: RunResult, nid: str, key: tuple[str, dict[str, str]],
                     values: dict[str, tuple], outputs: tuple, ui: dict[str, Any], elapsed: float) -> None:
        result.timings[nid] = elapsed
        values[nid] = outputs
        self.cache.put(key[0], outputs, ui)
        self._last_components[nid] = (run.plan.nodes[nid].cls.type, key[1])
        result.executed.append(nid)
        if ui:
            result.outputs[nid] = ui
        run.emit(ev.EXECUTED, nid, ui=ui, cached=False, seconds=elapsed)

    @staticmethod
    def _record_failure(run: _Run, result: RunResult, nid: str, exc: BaseException, elapsed: float) -> None:
        """A node raised (call inside the ``except`` block, for the traceback): the error, on its run only."""
        result.timings[nid] = elapsed
        err = ChiselError(E.EXECUTION_FAILED, f"{type(exc).__name__}: {exc}", node_id=nid,
                          node_type=run.plan.nodes[nid].cls.type, details={"exception_type": type(exc).__name__,
                                                                          "traceback": traceback.format_exc(limit=8)})
        result.errors.append(err)
        run.emit(ev.ERROR, nid, error=err.to_dict())

    def _serve_cached(self, run: _Run, result: RunResult, hits: dict[str, Any]) -> dict[str, tuple]:
        """Take every cache hit's outputs; announce them. Returns node id -> output values so far."""
        values: dict[str, tuple] = {}
        for nid, entry in hits.items():
            if entry is not None:
                values[nid] = entry.outputs
                result.cached.append(nid)
                if entry.ui:
                    result.outputs[nid] = entry.ui
        if result.cached:
            run.emit(ev.CACHED, nodes=list(result.cached))
            for nid in result.cached:
                if nid in result.outputs:
                    run.emit(ev.EXECUTED, nid, ui=result.outputs[nid], cached=True, seconds=0.0)
        return values

    @staticmethod
    def _inputs(run: _Run, nid: str, values: dict[str, tuple]) -> dict[str, Any]:
        """A node's ``run`` keyword arguments: its literals and upstream values (an optional input left out: None)."""
        pn = run.plan.nodes[nid]
        kwargs: dict[str, Any] = {i.name: None for i in pn.cls.inputs}
        kwargs.update(pn.literals)
        for name, (src, idx) in pn.links.items():
            kwargs[name] = values[src][idx]
        return kwargs

    def _context(self, run: _Run, nid: str, also: tuple = ()) -> _Context:
        return _Context(self, run, nid, run.plan.nodes[nid].files, also)

    def _call_node(self, run: _Run, nid: str, values: dict[str, tuple], also: tuple = ()) -> tuple[tuple, dict[str, Any]]:
        """Run one node on its literals and upstream values; its outputs as a tuple of the declared length."""
        pn = run.plan.nodes[nid]
        out = pn.cls().run(self._context(run, nid, also), **self._inputs(run, nid, values))
        return self._normalize(pn.cls, out)

    @staticmethod
    def _normalize(cls: type[Node], out: Any) -> tuple[tuple, dict[str, Any]]:
        """A node's return value as (outputs tuple of the declared length, ui)."""
        outputs, ui = (out.outputs, out.ui) if isinstance(out, NodeResult) else (out, {})
        if outputs is None:
            outputs = ()
        if not isinstance(outputs, tuple):
            outputs = tuple(outputs) if isinstance(outputs, list) else (outputs,)
        if len(outputs) != len(cls.outputs):
            raise RuntimeError(f"{cls.type}.run returned {len(outputs)} values for {len(cls.outputs)} outputs")
        return outputs, ui

    @staticmethod
    def _record_interrupt(run: _Run, result: RunResult, nid: str, message: str,
                          ui: dict[str, Any] | None = None) -> None:
        """The run stops at ``nid``; ``ui``: what the node wrote before it stopped (kept among the outputs)."""
        result.status = "interrupted"
        result.errors.append(ChiselError(E.INTERRUPTED, message, node_id=nid, node_type=run.plan.nodes[nid].cls.type))
        if ui:
            result.outputs[nid] = ui
            run.emit(ev.INTERRUPTED, nid, ui=ui)
        else:
            run.emit(ev.INTERRUPTED, nid)

    def _finish(self, run: _Run, result: RunResult, keys: dict, values: dict[str, tuple], failed_any: bool) -> RunResult:
        plan = run.plan
        for nid in result.cached:
            self._last_components[nid] = (plan.nodes[nid].cls.type, keys[nid][1])
        if failed_any and result.status == "success":
            result.status = "error"
        for nid in plan.outputs:
            if nid in values:
                result.values[nid] = values[nid]
        run.emit(ev.FINISHED, status=result.status, executed=list(result.executed), cached=list(result.cached))
        return result


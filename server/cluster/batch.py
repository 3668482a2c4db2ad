"""``chisel run --cluster …``: several workflows or a sweep fanned out over the cluster's workers, gathered into one
report (in the order the runs were given). It is the server's machinery without HTTP: the runs are queued in a
throw-away SQLite queue and a :class:`.dispatcher.ClusterWorker` runs them, with the same affinity, fault handling
and unique file names."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from graph.engine import RunResult
from graph.errors import ChiselError
from graph.workflow import Workflow

from .. import store as S
from ..worker import FileWriter
from .options import ClusterOptions, ray_available
from .runtime import RuntimeSpec

_ERROR_FIELDS = {f.name for f in dataclasses.fields(ChiselError)}


def result_of(prompt_id: str, finished: dict[str, Any]) -> RunResult:
    """A finished notification's result as the engine's RunResult."""
    res = finished.get("result") or {}
    errors = [ChiselError(**{k: v for k, v in e.items() if k in _ERROR_FIELDS}) for e in res.get("errors", [])]
    return RunResult(prompt_id, finished["status"], executed=res.get("executed", []), cached=res.get("cached", []),
                     outputs=res.get("outputs", {}), timings=res.get("timings", {}), errors=errors,
                     resolved=res.get("resolved", {}), explain=res.get("explain", {}), skipped=res.get("skipped", []))


def run_on_cluster(args: argparse.Namespace, registry: Any, paths: Any, workflows: list[Workflow]) -> list[RunResult]:
    if not ray_available():
        raise SystemExit("chisel run: --cluster needs Ray: pip install 'chisel[ray]'")
    try:
        options = ClusterOptions.from_flag(args.cluster, args.cluster_workers, args.cluster_shared_output, args.device)
    except ValueError as exc:
        raise SystemExit(f"chisel run: {exc}") from None
    options.log_to_driver = False
    spec = RuntimeSpec.from_args(args, paths.root, allow_paths=True)
    return run_batch(options, spec, registry, paths, [w.to_dict() for w in workflows], quiet=bool(args.json))


def run_batch(options: ClusterOptions, spec: RuntimeSpec, registry: Any, paths: Any, workflows: list[dict],
              quiet: bool = True) -> list[RunResult]:
    from .dispatcher import ClusterWorker

    ids = [f"run-{i + 1}" for i in range(len(workflows))]
    finished: dict[str, dict] = {}
    done = threading.Condition()

    def notify(kind: str, payload: Any) -> None:
        if kind == "finished":
            with done:
                finished[payload["prompt_id"]] = payload
                done.notify_all()
        elif kind == "event" and not quiet and payload["type"] == "executing":
            print(f"[{payload['prompt_id']} node {payload['node_id']}] {payload['data'].get('node_type')}",
                  file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="chisel-batch-") as tmp:
        store = S.Store(Path(tmp) / "queue.sqlite3", max_queue=len(ids) + 1, max_history=len(ids) + 1)
        worker = ClusterWorker(options, spec, registry, paths, store, FileWriter(), notify)
        try:
            for pid, workflow in zip(ids, workflows):
                store.add(pid, workflow)
            worker.connect()
            worker.start()
            with done:
                done.wait_for(lambda: len(finished) == len(ids))
        finally:
            worker.stop()
            store.close()
    return [result_of(pid, finished[pid]) for pid in ids]

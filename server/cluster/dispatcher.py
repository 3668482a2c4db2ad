"""The server's side of a cluster: :class:`ClusterWorker` takes the single worker's place.

A scheduler thread claims the head of the durable queue whenever a worker is idle (so queue order per priority is
kept and no worker idles while prompts wait) and gives it to the idle worker holding the most of its model files,
else the least loaded one. Each worker has a thread on the server that streams its prompt's messages: events go to
the WebSocket hub, files to the server's writer (or, with a shared output folder, the worker staged them there under
temporary names and the server's writer takes them over), and the result is finished as for the single worker: once
the prompt's files are staged, its result and their names are journaled, then the files get their final names, then
the result is recorded. So a server killed at any point either re-runs the prompt with no file of it under a final
name, or finishes it at its next start without running it again.

Faults: Ray restarts a worker whose process dies (``max_restarts=-1``; a lost node's actor moves to another
node). The prompt it was running goes back to the head of the queue with the attempt counted and runs again,
preferably on another worker (the files its lost attempt staged are dropped); a prompt whose worker died ``max_attempts`` times is failed with the reason. A
prompt is recorded once, from the first (only) result that reaches the server.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graph import atomic_files
from graph import events as ev
from graph.engine import RunResult
from graph.errors import ChiselError

from .. import store as S
from ..worker import FileWriter, PendingWrite, Worker, _wait, claim_next
from .actor import FILE_KINDS, WorkerActor
from .affinity import choose, model_keys
from .names import NameBook, listing
from .options import ClusterOptions, ClusterUnavailable
from .runtime import RuntimeSpec

log = logging.getLogger("chisel.cluster")

STARTING, IDLE, BUSY = "starting", "idle", "busy"


@dataclass
class Slot:
    index: int
    actor: Any
    state: str = STARTING
    models: set[str] = field(default_factory=set)
    item: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def current(self) -> str | None:
        item = self.item
        return item["prompt_id"] if item is not None else None


class ClusterWorker(Worker):
    def __init__(self, options: ClusterOptions, spec: RuntimeSpec, registry: Any, paths: Any, store: S.Store,
                 writer: FileWriter, notify: Callable[..., None],
                 wants_preview: Callable[[str | None], bool] = lambda client: False, preview_max_size: int = 512):
        super().__init__(None, store, writer, notify, wants_preview=wants_preview, preview_max_size=preview_max_size)
        self.options, self.spec, self.registry, self.paths = options, spec, registry, paths
        self.slots: list[Slot] = []
        self.names: Any = None
        self._owns_ray = False
        self._actor_cls: Any = None
        self._avoid: dict[str, set[int]] = {}       # prompt id -> workers that died under it
        self._retries: dict[str, list[dict]] = {}   # prompt id -> what happened to its earlier attempts
        self._ran_on: dict[str, dict] = {}           # prompt id -> the worker that produced its result
        self._thread = threading.Thread(target=self._loop, name="chisel-cluster", daemon=True)

    # -- life cycle -------------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join or start Ray and start the workers (they become idle when their engines are built)."""
        import ray

        opts = self.options
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": opts.log_to_driver}
            if opts.address is None:  # a new instance even where a cluster runs already (that is `auto`)
                kw.update(address="local", num_cpus=max(os.cpu_count() or 1, opts.workers or 1))
            else:
                kw["address"] = opts.address
            try:
                ray.init(**kw)
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs the reason
                raise ClusterUnavailable(f"could not {'start' if opts.address is None else 'reach'} Ray"
                                         f"{'' if opts.address is None else ' at ' + opts.address}: {exc}") from exc
            self._owns_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if opts.use_gpus else 0
        count = opts.workers or max(gpus, 1)
        if gpus and count > gpus:
            log.warning("%d workers asked for, the cluster has %d GPUs: the rest wait for a GPU", count, gpus)
        seed = {kind: listing(self.paths.dir(kind)) for kind in FILE_KINDS}
        self._names_actor = f"chisel-names-{uuid.uuid4().hex}"
        self.names = ray.remote(num_cpus=0, max_restarts=-1)(NameBook).options(name=self._names_actor).remote(seed)
        placement = {"num_gpus": 1} if gpus else {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
        self._actor_cls = ray.remote(max_concurrency=8, max_restarts=-1, max_task_retries=0, **placement)(WorkerActor)
        self.slots = [Slot(i, self._new_actor(i)) for i in range(count)]
        log.info("cluster: %d %s worker(s) on Ray %s", count, "GPU" if gpus else "CPU",
                 opts.address or "(local instance)")

    def _new_actor(self, index: int) -> Any:
        return self._actor_cls.remote(self.spec.to_dict(), index, self._names_actor, self.options.shared_output,
                                      self.preview_max_size)

    def start(self) -> None:
        if not self.slots:
            self.connect()
        for slot in self.slots:
            slot.thread = threading.Thread(target=self._slot_loop, args=(slot,), name=f"chisel-cluster-{slot.index}",
                                           daemon=True)
            slot.thread.start()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt running prompts (they go back to the queue), stop the workers, drain the writer."""
        self._stopping.set()
        self._wake.set()
        for slot in self.slots:
            self._interrupt_slot(slot, None)
            slot.wake.set()
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(max(0.1, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._thread.join(max(0.1, deadline - time.monotonic()))
        try:
            import ray

            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
            if self.names is not None:
                ray.kill(self.names, no_restart=True)
            if self._owns_ray:
                ray.shutdown()
        except Exception:  # noqa: BLE001 - stopping anyway
            log.warning("could not stop the cluster's workers cleanly", exc_info=True)
        self.writer.shutdown()
        self._finisher.shutdown(wait=True)

    # -- control (any thread) ---------------------------------------------------------------------------------------
    def interrupt(self, prompt_id: str | None = None) -> str | None:
        done = None
        for slot in self.slots:
            if slot.current is not None and (prompt_id is None or slot.current == prompt_id):
                done = self._interrupt_slot(slot, slot.current) or done
        return done

    def _interrupt_slot(self, slot: Slot, prompt_id: str | None) -> str | None:
        if slot.current is None:
            return None
        try:
            slot.actor.interrupt.remote(prompt_id)
        except Exception:  # noqa: BLE001 - a dead worker's prompt is handled by its thread
            return None
        return slot.current

    def running(self) -> str | None:
        return next((s.current for s in self.slots if s.current is not None), None)

    def request_free(self, unload_models: bool, free_memory: bool) -> Future:
        """Every worker frees between prompts; the future completes when all have."""
        future: Future = Future()

        def work() -> None:
            import ray

            try:
                infos = ray.get([s.actor.free.remote(unload_models, free_memory) for s in self.slots], timeout=600)
            except Exception as exc:  # noqa: BLE001
                future.set_exception(exc)
                return
            for slot, info in zip(self.slots, infos):
                slot.info = info
                slot.models = set(info.get("models") or ())
            future.set_result({"unload_models": unload_models, "free_memory": free_memory})

        if unload_models or free_memory:
            threading.Thread(target=work, name="chisel-cluster-free", daemon=True).start()
        else:
            future.set_result({"unload_models": False, "free_memory": False})
        return future

    def describe(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Every worker: host, devices, memory, loaded models, current prompt (the last answer if one is slow)."""
        import ray

        refs = [s.actor.describe.remote() for s in self.slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ready = set(ready)
        out = []
        for slot, ref in zip(self.slots, refs):
            if ref in ready:
                try:
                    slot.info = ray.get(ref)
                except Exception:  # noqa: BLE001 - restarting
                    pass
            out.append({**slot.info, "index": slot.index, "state": slot.state, "current_prompt": slot.current,
                        "restarts": slot.restarts})
        return out

    # -- scheduling (the cluster thread) ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            idle = [s for s in self.slots if s.state == IDLE]
            if not idle:
                self._wake.wait(1.0)
                continue
            item = claim_next(self.store, self._wake, self._stopping)
            if item is None:
                continue
            slot = choose(idle, model_keys(item["workflow"], self.registry), self._avoid.get(item["prompt_id"], ()))
            slot.state, slot.item = BUSY, item
            slot.wake.set()
            self.notify("queue", None)

    # -- one worker (its own thread) --------------------------------------------------------------------------------
    def _slot_loop(self, slot: Slot) -> None:
        import ray

        while not self._stopping.is_set():
            if slot.state == STARTING:
                try:
                    slot.info = ray.get(slot.actor.ready.remote(), timeout=self.options.worker_start_timeout)
                except ray.exceptions.GetTimeoutError:
                    log.warning("cluster worker %d is not ready yet (no free GPU/CPU in the cluster?)", slot.index)
                    continue
                except ray.exceptions.ActorDiedError as exc:  # its constructor failed: try a new one, slowly
                    log.error("cluster worker %d could not start, retrying in 10 s: %s", slot.index,
                              str(exc).splitlines()[0][:500])
                    if not self._stopping.wait(10.0):
                        slot.actor = self._new_actor(slot.index)
                        slot.restarts += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - unavailable while Ray restarts it
                    log.warning("cluster worker %d is restarting: %s", slot.index, str(exc).splitlines()[0][:200])
                    self._stopping.wait(1.0)
                    continue
                slot.models = set(slot.info.get("models") or ())
                slot.state = IDLE
                log.info("cluster worker %d ready on %s (%s)", slot.index, slot.info.get("host"), slot.info.get("device"))
                self._wake.set()
            slot.wake.wait(1.0)
            slot.wake.clear()
            if slot.state == BUSY and slot.item is not None:
                try:
                    self._run_on(slot, slot.item)
                except Exception:  # the thread must survive anything
                    log.exception("cluster worker %d failed on prompt %s", slot.index, slot.current)
                if slot.state == BUSY:
                    slot.state = IDLE
                slot.item = None
                self._wake.set()
        if slot.item is not None:  # given a prompt as the server stopped: it goes back, no attempt used
            self.store.requeue(slot.item["prompt_id"])
            slot.item = None

    def _run_on(self, slot: Slot, item: dict[str, Any]) -> None:
        import ray

        pid = item["prompt_id"]
        writes: list[PendingWrite] = []
        result: RunResult | None = None
        died: BaseException | None = None
        try:
            ray.get(slot.actor.start.remote(item, bool(self.wants_preview(item.get("client_id")))))
            while result is None:
                for message in ray.get(slot.actor.poll.remote(pid, 1.0)):
                    kind = message["kind"]
                    if kind == "event":
                        payload = message["payload"]
                        if payload["type"] == ev.INTERRUPTED and not self._stopping.is_set():
                            self._journal_interrupt(pid, payload.get("node_id"))  # a kill now does not re-run it
                        self.notify("event", payload)
                    elif kind == "file":
                        writes.append(self._write(message))
                    elif kind == "written":
                        writes.append(self._written(message))
                    elif kind == "result":
                        result = message["result"]
                        slot.models = set(message.get("models") or ())
        except ray.exceptions.RayActorError as exc:
            died = exc
        except Exception as exc:  # noqa: BLE001 - e.g. an object lost with its node
            died = exc
        if result is None:
            self._worker_lost(slot, item, died, writes)
            return
        self._ran_on[pid] = {"worker": slot.index, "host": slot.info.get("host"), "device": slot.info.get("device")}
        self._avoid.pop(pid, None)
        if self._stopping.is_set() and result.status == "interrupted":
            for w in writes:  # dropped: its re-run writes its own
                _wait(w.future)
                self.writer.discard(w.path)
            self.store.requeue(pid)
            self.notify("queue", None)
            return
        self._finish_when_written(item, result, writes)

    def _target(self, message: dict[str, Any]) -> Path:
        kind, sub, name = message["file"]
        return self.paths.dir(kind) / sub / name

    def _write(self, message: dict[str, Any]) -> PendingWrite:
        path = self._target(message)
        data = message.get("data")
        if data is None:
            future: Future = Future()
            future.set_exception(OSError(message.get("error") or "the worker could not encode the file"))
        else:
            try:
                # held staged until the prompt's result is journaled (Worker._finish), as on one process
                future = self.writer.submit(path, lambda tmp, data=data: tmp.write_bytes(data), hold=True)
            except FileExistsError as exc:
                future = Future()
                future.set_exception(exc)
        return PendingWrite(path, message.get("node_id"), future)

    def _written(self, message: dict[str, Any]) -> PendingWrite:
        """A file the worker staged in the shared output folder: the server's writer takes it over, so it is
        journaled and published as the files the server writes itself."""
        path = self._target(message)
        future: Future = Future()
        staged = message.get("staged")
        if message.get("error"):
            future.set_exception(OSError(message["error"]))
        elif not staged:
            future.set_exception(OSError("the worker sent no staged file name"))
        else:
            tmp = path.parent / Path(staged).name  # always beside its final name, whatever the worker sent
            try:
                if not atomic_files.PART_RE.match(tmp.name):
                    raise OSError(f"the worker's staged name {tmp.name!r} is not a temporary file's")
                self.writer.adopt(path, tmp)
            except OSError as exc:
                atomic_files.discard(tmp)
                future.set_exception(exc)
            else:
                future.set_result(tmp)
        return PendingWrite(path, message.get("node_id"), future)

    def _worker_lost(self, slot: Slot, item: dict[str, Any], exc: BaseException | None,
                     writes: list[PendingWrite]) -> None:
        pid = item["prompt_id"]
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the worker's stream ended without a result"
        reason = reason.splitlines()[0][:500]
        slot.state, slot.models = STARTING, set()
        slot.restarts += 1
        for w in writes:  # the lost attempt's files are dropped (still staged): the re-run writes its own
            if _wait(w.future) is None:
                self.writer.discard(w.path)
        if self._stopping.is_set():
            self.store.requeue(pid)
            return
        record = {"worker": slot.index, "host": slot.info.get("host"), "reason": reason, "time": time.time()}
        self._retries.setdefault(pid, []).append(record)
        attempts = int(item.get("attempts") or 1)
        if attempts < self.options.max_attempts:
            log.warning("cluster worker %d died running prompt %s (%s): re-running it", slot.index, pid, reason)
            self._avoid.setdefault(pid, set()).add(slot.index)
            self.store.requeue(pid, count_attempt=True)
            self.notify("queue", None)
            return
        log.error("cluster worker %d died running prompt %s (%s): failed after %d attempts", slot.index, pid, reason,
                  attempts)
        self._avoid.pop(pid, None)
        error = ChiselError("worker_died", f"the worker running this prompt died {attempts} times; last: {reason}",
                            value=attempts)
        self._finish_when_written(item, RunResult(pid, "error", errors=[error]), [])

    def _annotate(self, prompt_id: str, payload: dict[str, Any]) -> None:
        ran = self._ran_on.pop(prompt_id, None)
        retries = self._retries.pop(prompt_id, [])
        if ran is not None or retries:
            payload["cluster"] = {**(ran or {}), "retries": retries}

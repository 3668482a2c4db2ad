"""One cluster worker: a Ray actor with its own engine, result cache and model manager.

``start`` runs a prompt's engine on a thread of the actor; the server long-polls (``poll``) its messages, which
come back in order through Ray's object store: engine events (``event``), files the prompt writes (``file``: bytes,
or ``written`` when the worker staged it in a shared output folder itself) and finally the ``result``. (Polling rather
than a streaming generator: Ray Client, ``ray://``, has no streaming actor methods.) The actor is threaded, so
``interrupt``, ``describe`` and ``free`` are answered while a prompt runs; prompts themselves run one at a time. This module imports Ray only inside the calls that need it; the dispatcher makes it an actor.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from graph import atomic_files
from graph import events as ev
from graph.engine import RunResult
from graph.errors import ChiselError
from graph.workflow import parse_workflow

from ..worker import event_payload
from .affinity import model_keys
from .runtime import RuntimeSpec

log = logging.getLogger("chisel.cluster")

FILE_KINDS = ("output", "temp")
_DONE = object()


class ReservingWriter:
    """The ``file_writer`` nodes see on a cluster worker. Each name is reserved with the cluster's name book first
    (``FileExistsError`` when taken, as with the server's own writer); then the file is either encoded here and sent
    to the server as bytes (default) or staged here in the shared output folder under a temporary name, which the
    server publishes once it has journaled the prompt's result (``shared``)."""

    def __init__(self, paths: Any, names: str, shared: bool):
        self.paths, self.names_actor, self.shared = paths, names, shared
        self._names: Any = None
        self._encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chisel-encode")
        self._known: dict[tuple[str, str], set[str]] = {}  # names learnt to be taken, per (kind, subfolder)
        self.sink: Callable[[Any], None] | None = None  # puts a message (or a Future of one) into the run's stream
        self.node_id: str | None = None

    def locate(self, path: Path) -> tuple[str, str, str] | None:
        """(kind, subfolder, name) of a path inside this worker's output or temp folder."""
        full = Path(os.path.abspath(path))
        for kind in FILE_KINDS:
            for base in self.paths.dirs(kind):
                base = Path(os.path.abspath(base))
                if full.parent == base or base in full.parents:
                    sub = full.parent.relative_to(base).as_posix()
                    return kind, "" if sub == "." else sub, full.name
        return None

    def submit(self, path: str | Path, write: Callable[[Path], Any]) -> Future:
        import ray

        path = Path(path)
        where = self.locate(path)
        if where is None:  # outside the output and temp folders: written here, as without a server
            if os.path.lexists(path):
                raise FileExistsError(str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            done: Future = Future()
            done.set_result(path)
            return done
        kind, sub, name = where
        known = self._known.setdefault((kind, sub), set())
        if name in known or os.path.lexists(path):
            known.add(name)
            raise FileExistsError(str(path))
        if self._names is None:  # looked up by name: a handle among the constructor's arguments would pin them
            self._names = ray.get_actor(self.names_actor)
        taken = ray.get(self._names.reserve.remote(kind, sub, name))
        if taken is not None:
            known.update(taken)
            raise FileExistsError(str(path))
        message: Future = Future()
        if self.sink is not None:
            self.sink(message)  # in stream order: the node's `executed` event follows its files
        if self.shared:
            self._encoder.submit(self._stage, path, write, kind, sub, name, self.node_id, message,
                                 self.sink is not None)
        else:
            self._encoder.submit(self._encode, write, kind, sub, name, self.node_id, message)
        return message

    @staticmethod
    def _stage(path: Path, write: Callable[[Path], Any], kind: str, sub: str, name: str, node_id: str | None,
               message: Future, held: bool) -> None:
        """Shared output: the file is written and fsynced under a temporary name beside ``path``; the server
        takes it over (journals, then publishes it). A write of no prompt (``held`` false) is published here."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic_files.stage(path, write)
            if not held:
                atomic_files.publish(tmp, path)
            message.set_result({"kind": "written", "file": [kind, sub, name], "node_id": node_id,
                                "staged": str(tmp), "error": None})
        except BaseException as exc:  # noqa: BLE001 - reported to the server as a write error
            message.set_result({"kind": "written", "file": [kind, sub, name], "node_id": node_id, "staged": None,
                                "error": f"{type(exc).__name__}: {exc}"})

    @staticmethod
    def _encode(write: Callable[[Path], Any], kind: str, sub: str, name: str, node_id: str | None,
                message: Future) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".chisel-", suffix="-" + name)
        os.close(fd)
        try:
            os.unlink(tmp)  # writers create the file themselves
            write(Path(tmp))
            data = Path(tmp).read_bytes()
            message.set_result({"kind": "file", "file": [kind, sub, name], "node_id": node_id, "data": data})
        except BaseException as exc:  # noqa: BLE001 - reported to the server as a write error
            message.set_result({"kind": "file", "file": [kind, sub, name], "node_id": node_id, "data": None,
                                "error": f"{type(exc).__name__}: {exc}"})
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass


class WorkerActor:
    def __init__(self, spec: dict[str, Any], index: int, names: str, shared_output: bool = False,
                 preview_max_size: int = 512):
        self.index = index
        self.spec = RuntimeSpec(**spec)
        self.registry, self.services, self.engine = self.spec.build()
        self.writer = ReservingWriter(self.engine.paths, names, shared_output)
        self.services.file_writer = self.writer
        self.preview_max_size = preview_max_size
        self.models: set[str] = set()  # model files loaded by the prompts run since the last free
        self._run_lock = threading.Lock()  # one prompt at a time; `free` waits for the running one
        self._lock = threading.Lock()
        self._current: tuple[str, threading.Event] | None = None
        self._streams: dict[str, queue.Queue] = {}  # prompt id -> its messages not yet polled
        self.started = time.time()
        self.prompts_run = 0
        if not self.spec.plain:  # the SD nodes run here: import their libraries before the first prompt needs them
            from ..runtime import import_model_libraries_in_background

            import_model_libraries_in_background(self.engine.paths)

    # -- control (answered while a prompt runs) -----------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        return self.describe()

    def interrupt(self, prompt_id: str | None = None) -> str | None:
        with self._lock:
            cur = self._current
            if cur is None or (prompt_id is not None and cur[0] != prompt_id):
                return None
            cur[1].set()
            return cur[0]

    def free(self, unload_models: bool, free_memory: bool) -> dict[str, Any]:
        from ..system import free

        with self._run_lock:
            free(self.engine, self.services, unload_models, free_memory)
            if unload_models:
                self.models.clear()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        from ..system import _meminfo, devices, model_manager

        import ray

        ram_total, ram_free = _meminfo()
        manager = model_manager(self.services)
        loaded = None
        if manager is not None:
            try:
                stats = manager.stats()
                loaded = stats.to_dict() if hasattr(stats, "to_dict") else stats
            except Exception as exc:  # noqa: BLE001 - a stats failure must not hide the worker
                loaded = {"error": f"{type(exc).__name__}: {exc}"}
        cur = self._current
        ctx = ray.get_runtime_context()
        return {"index": self.index, "host": socket.gethostname(), "node_id": ctx.get_node_id(), "pid": os.getpid(),
                "device": str(getattr(self.services, "device", "cpu")), "devices": devices(self.services),
                "memory": {"ram_total": ram_total, "ram_free": ram_free},
                "models": sorted(self.models), "model_manager": loaded,
                "cache": self.engine.cache.stats().to_dict(),
                "current_prompt": cur[0] if cur is not None else None,
                "prompts_run": self.prompts_run, "started": self.started}

    # -- running a prompt -----------------------------------------------------------------------------------------
    def start(self, item: dict[str, Any], want_preview: bool = False) -> None:
        """Begin running a prompt (after the previous one, and any ``free``, is done); ``poll`` its messages."""
        self._run_lock.acquire()  # released by the run's thread when it is over
        stream: queue.Queue = queue.Queue()
        interrupt = threading.Event()
        with self._lock:
            self._current = (item["prompt_id"], interrupt)
            self._streams[item["prompt_id"]] = stream
        threading.Thread(target=self._execute, args=(item, want_preview, interrupt, stream), name="chisel-run",
                         daemon=True).start()

    def poll(self, prompt_id: str, timeout: float = 1.0) -> list[dict[str, Any]]:
        """The prompt's next messages in order (``event``, ``file``/``written``, the last one ``result``): waits up
        to ``timeout`` for the first, then returns every one that is ready."""
        stream = self._streams.get(prompt_id)
        if stream is None:
            raise KeyError(f"prompt {prompt_id} is not running on this worker")
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = stream.get(timeout=max(0.0, deadline - time.monotonic())) if not out else stream.get_nowait()
            except queue.Empty:
                return out
            if isinstance(message, Future):
                message = message.result()
            if message is _DONE:
                with self._lock:
                    self._streams.pop(prompt_id, None)
                return out
            out.append(message)
            if len(out) >= 256:
                return out

    def _execute(self, item: dict[str, Any], want_preview: bool, interrupt: threading.Event,
                 stream: queue.Queue) -> None:
        pid, client = item["prompt_id"], item.get("client_id")
        workflow_dict = item["workflow"]
        node_types = {nid: spec.get("type") for nid, spec in (workflow_dict.get("nodes") or {}).items()}

        def on_event(event: ev.Event) -> None:
            if event.type == ev.FINISHED:
                return
            if event.type == ev.EXECUTING:
                self.writer.node_id = event.node_id
            payload = event_payload(event, pid, client, node_types, want_preview, self.preview_max_size)
            stream.put({"kind": "event", "payload": payload})

        self.writer.sink = stream.put
        self.writer.node_id = None
        try:
            workflow = parse_workflow(workflow_dict, self.registry)
            extra = dict(item.get("extra_data") or {})
            extra.update(prompt_id=pid, client_id=client)
            result = self.engine.run(workflow, outputs=item.get("outputs"), on_event=on_event, interrupt=interrupt,
                                     run_id=pid, extra=extra)
        except Exception as exc:  # a bug outside any node: recorded as the prompt's error
            log.exception("prompt %s failed outside its nodes", pid)
            result = RunResult(pid, "error", errors=[ChiselError(
                "internal_error", f"{type(exc).__name__}: {exc}",
                details={"exception_type": type(exc).__name__, "traceback": traceback.format_exc(limit=8)})])
        finally:
            self.writer.sink = None
        try:
            self.prompts_run += 1
            if result.status == "success":
                self.models |= model_keys(workflow_dict, self.registry)
        finally:
            with self._lock:
                self._current = None
            stream.put({"kind": "result", "result": result, "models": sorted(self.models)})
            stream.put(_DONE)
            self._run_lock.release()

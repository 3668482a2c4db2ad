"""The one worker that runs prompts, and the background file writer that keeps disk I/O off its path.

One thread (the *worker*) owns the GPU: it claims the head of the durable queue, calls ``Engine.run`` and goes
straight on to the next prompt. What a prompt still has to do after its last node (its image files reaching the
disk, its result being committed to SQLite, the ``finished`` event) happens elsewhere: files on the writer's
threads, then the record on a third thread, the *finisher*, as soon as that prompt's own files are written. So
neither PNG encoding nor fsync holds up the next prompt's sampling, and a prompt with nothing to write is not
kept waiting behind an earlier one's files.

Saving nodes take part through :class:`FileWriter`, offered to every node as ``ctx.services.file_writer``
(None outside the server: write inline then)::

    writer = ctx.services.file_writer
    writer.submit(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))

``submit`` reserves ``path`` at once (``FileExistsError`` if it exists or another write is pending for it: take
the next counter), then runs ``write(tmp)`` on a writer thread and fsyncs it: the file is *staged*. When all of a
prompt's files are staged, the finisher records its result together with the staged names in one transaction, then
links each to its final name (:meth:`FileWriter.publish`), then records the prompt as finished and sends
``finished`` (so its history entry turns ``success`` only when its files are in place). A SIGKILL before the journal
leaves no file under a final name (the prompt is re-run once and writes it once); one after it leaves the journal to
the next start, which publishes the files and records the result (:func:`finish_journaled`): a prompt never
completes twice. ``/view`` of a file not yet published waits for it.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graph import errors as E
from graph import events as ev
from graph import atomic_files
from graph.engine import RunResult
from graph.errors import ChiselError

from . import store as S
from .batching import BatchPolicy, gather

log = logging.getLogger("chisel.server")


class TooManyFiles(RuntimeError):
    """A prompt tried to write more files than the server allows."""


def claim_next(store: Any, wake: threading.Event, stopping: threading.Event) -> dict | None:
    """The head of the durable queue, claimed; None after a short wait when the queue is empty or unreadable, or
    when stopping (a prompt claimed meanwhile goes back to the queue)."""
    try:
        item = store.claim_next()
    except Exception:
        log.exception("could not read the queue")
        item = None
    if item is None:
        wake.wait(1.0)
        return None
    if stopping.is_set():
        store.requeue(item["prompt_id"])
        return None
    return item


@dataclass
class PendingWrite:
    path: Path
    node_id: str | None
    future: Future


class FileWriter:
    """Writes files on background threads; paths are reserved from submission until the file is published (or
    discarded). ``hold``: the files of a prompt (between :meth:`begin` and :meth:`end`) stay staged until
    :meth:`publish` (the server's worker records the prompt first); otherwise each is published once written. The
    future :meth:`submit` returns gives the staged (temporary) name."""

    def __init__(self, threads: int = 2, max_pending: int = 64, max_per_prompt: int | None = None,
                 hold: bool = False):
        self.max_per_prompt, self.hold = max_per_prompt, hold
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chisel-writer")
        self._pending: dict[str, Future] = {}  # reserved path -> published (or failed / discarded)
        self._staged: dict[str, Path] = {}  # reserved path -> its staged temporary file
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)  # back-pressure: RAM held by queued images is bounded
        self._batches: dict[str, list[PendingWrite]] | None = None  # prompt id -> its writes
        self.prompt_id: str | None = None  # the prompt whose node runs now (set by the worker): its writes
        self.node_id: str | None = None  # the node running now (set by the worker), to name it in a write error

    @staticmethod
    def _key(path: Path) -> str:
        return str(Path(os.path.abspath(path)))

    def submit(self, path: str | Path, write: Callable[[Path], Any], hold: bool | None = None) -> Future:
        """``hold``: keep this file staged until :meth:`publish` (True), or publish it once written (False);
        None: by the writer's rule above. (The cluster's writes belong to no :meth:`begin`; they say it here.)"""
        path = Path(path)
        key = self._key(path)
        batch = self._batches.get(self.prompt_id) if self._batches is not None else None
        if batch is not None and self.max_per_prompt is not None and len(batch) >= self.max_per_prompt:
            raise TooManyFiles(f"this prompt has written {len(batch)} files, the server's limit "
                               "(--max-images-per-prompt); no more are written")
        self._slots.acquire()
        try:
            with self._lock:
                if key in self._pending or os.path.lexists(path):
                    raise FileExistsError(str(path))
                self._pending[key] = Future()
        except BaseException:
            self._slots.release()
            raise
        future: Future = Future()
        if batch is not None:
            batch.append(PendingWrite(path, self.node_id, future))
        # a write of no prompt (outside begin/end) has nobody to publish it: published as soon as it is staged
        if hold is None:
            hold = batch is not None and self.hold
        self._pool.submit(self._write, path, key, write, future, not hold)
        return future

    def adopt(self, path: str | Path, tmp: str | Path) -> None:
        """Take over a file staged elsewhere (by a cluster worker, in the shared output folder) as if written here:
        ``path`` is reserved (``FileExistsError`` when it exists or is pending) and ``tmp`` waits for
        :meth:`publish` or :meth:`discard`."""
        path = Path(path)
        key = self._key(path)
        with self._lock:
            if key in self._pending or os.path.lexists(path):
                raise FileExistsError(str(path))
            self._pending[key] = Future()
            self._staged[key] = Path(tmp)

    def _write(self, path: Path, key: str, write: Callable[[Path], Any], future: Future, publish: bool) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic_files.stage(path, write)
            with self._lock:
                self._staged[key] = tmp
            if publish:
                self.publish(path)
        except BaseException as exc:
            self._release(key, exc)
            future.set_exception(exc)
        else:
            future.set_result(tmp)
        finally:
            self._slots.release()

    def staged(self, path: str | Path) -> Path | None:
        """The staged temporary file of ``path`` (None: not staged here, e.g. failed or written elsewhere)."""
        with self._lock:
            return self._staged.get(self._key(Path(path)))

    def publish(self, path: str | Path) -> None:
        """Link the staged file of ``path`` to ``path`` (nothing when it is not staged here); raises what linking
        raised (the staged file is gone either way)."""
        key = self._key(Path(path))
        with self._lock:
            tmp = self._staged.pop(key, None)
        if tmp is None:
            return
        try:
            atomic_files.publish(tmp, Path(path))
        except BaseException as exc:
            self._release(key, exc)
            raise
        self._release(key)

    def discard(self, path: str | Path) -> None:
        """Drop the staged file of ``path`` (a prompt that will run again writes its own)."""
        key = self._key(Path(path))
        with self._lock:
            tmp = self._staged.pop(key, None)
        if tmp is not None:
            atomic_files.discard(tmp)
            self._release(key, FileNotFoundError(str(path)))

    def _release(self, key: str, exc: BaseException | None = None) -> None:
        with self._lock:
            done = self._pending.pop(key, None)
        if done is not None:
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def pending(self, path: str | Path) -> Future | None:
        """A future that is done once ``path`` is published (or will not be): None when nothing is pending."""
        with self._lock:
            return self._pending.get(self._key(Path(path)))

    def begin(self, prompt_ids: list[str] | None = None) -> None:
        """Start collecting the writes of the prompts about to run (one, or a batch; worker thread). A write goes
        to the prompt named by :attr:`prompt_id` (the first one until the worker says otherwise)."""
        ids = list(prompt_ids) if prompt_ids else [""]
        self._batches = {pid: [] for pid in ids}
        self.prompt_id = ids[0]
        self.node_id = None

    def end(self) -> list[PendingWrite]:
        """The writes collected since :meth:`begin`, of every prompt (see :meth:`end_all` for them by prompt)."""
        return [w for writes in self.end_all().values() for w in writes]

    def end_all(self) -> dict[str, list[PendingWrite]]:
        batches, self._batches = self._batches or {}, None
        return batches

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def encode_preview(image: Any, max_size: int = 512) -> bytes | None:
    """A progress preview (a PIL image) as ComfyUI's binary frame: type 1 (preview), format 1 (JPEG), JPEG bytes."""
    try:
        img = image
        if max(img.size) > max_size:
            img = img.copy()
            img.thumbnail((max_size, max_size))
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        buf = io.BytesIO()
        buf.write((1).to_bytes(4, "big") + (1).to_bytes(4, "big"))
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    except Exception:  # a preview is never worth failing a prompt for
        log.debug("preview not encoded", exc_info=True)
        return None


def event_payload(event: ev.Event, prompt_id: str, client_id: str | None, node_types: dict[str, Any],
                  with_preview: bool = False, preview_max_size: int = 512) -> dict[str, Any]:
    """An engine event as the hub's ``event`` notification (a progress preview JPEG-encoded when wanted)."""
    data = {k: v for k, v in event.data.items() if k != "preview"}
    preview = None
    if event.type == ev.PROGRESS and with_preview and event.data.get("preview") is not None:
        preview = encode_preview(event.data["preview"], preview_max_size)
    elif event.type in (ev.INTERRUPTED, ev.ERROR) and event.node_id is not None:
        data.setdefault("node_type", node_types.get(event.node_id))
    return {"client_id": client_id, "prompt_id": prompt_id, "type": event.type, "node_id": event.node_id,
            "time": event.time, "data": data, "preview": preview}


@dataclass
class _Current:
    prompt_id: str
    client_id: str | None
    interrupt: threading.Event
    started: float = field(default_factory=time.time)


class Worker:
    """Runs queued prompts one at a time. ``notify`` receives (kind, payload) in the worker/finisher threads and
    must hand them to the event loop itself (the server passes a ``call_soon_threadsafe`` wrapper)."""

    def __init__(self, engine: Any, store: S.Store, writer: FileWriter, notify: Callable[..., None],
                 wants_preview: Callable[[str | None], bool] = lambda client: False, preview_max_size: int = 512,
                 on_free: Callable[[bool, bool], None] | None = None, batching: BatchPolicy | None = None):
        self.engine, self.store, self.writer = engine, store, writer
        self.notify, self.wants_preview, self.preview_max_size = notify, wants_preview, preview_max_size
        self.on_free = on_free
        self.batching = batching if batching is not None else BatchPolicy(max_batch=1, window=0.0)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.current: list[_Current] = []  # the prompts running now (several when batched)
        self._asked: set[str] = set()  # running prompts a client asked to interrupt (a graceful stop does not requeue)
        self._free_requests: list[tuple[bool, bool, Future]] = []
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chisel-finisher")
        self._thread = threading.Thread(target=self._loop, name="chisel-worker", daemon=True)

    # -- control (any thread) -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> str | None:
        """Interrupt the running prompt (only ``prompt_id`` when given; every prompt of a running batch when not);
        return the (first) id interrupted. The other prompts of a batch go on without an interrupted one."""
        with self._lock:
            hit = [c for c in self.current if prompt_id is None or c.prompt_id == prompt_id]
            for cur in hit:
                cur.interrupt.set()
                self._asked.add(cur.prompt_id)
            return hit[0].prompt_id if hit else None

    def running(self) -> str | None:
        cur = self.current
        return cur[0].prompt_id if cur else None

    def request_free(self, unload_models: bool, free_memory: bool) -> Future:
        """Free models/caches between prompts (never under a running one); the future completes when done."""
        future: Future = Future()
        with self._lock:
            self._free_requests.append((unload_models, free_memory, future))
        self._wake.set()
        return future

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: interrupt the running prompt (it goes back to the queue), drain the finisher and writer."""
        self._stopping.set()
        with self._lock:
            for cur in self.current:
                cur.interrupt.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the running node did not stop within %.0fs; its prompt will be re-run at next start", timeout)
        self.writer.shutdown()  # the last writes land, and hand their prompts to the finisher
        self._finisher.shutdown(wait=True)

    # -- the worker thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._apply_free()
            self._wake.clear()
            item = claim_next(self.store, self._wake, self._stopping)
            if item is None:
                continue
            items = [item]
            try:
                items = gather(self.store, item, self.engine.registry, self.batching, self._wake, self._stopping)
                self._run(items)
            except Exception:  # the worker must survive anything
                log.exception("worker failed on prompt %s", ", ".join(i["prompt_id"] for i in items))

    def _apply_free(self) -> None:
        with self._lock:
            requests, self._free_requests = self._free_requests, []
        if not requests:
            return
        unload = any(r[0] for r in requests)
        free = any(r[1] for r in requests)
        try:
            if self.on_free is not None:
                self.on_free(unload, free)
        except Exception as exc:
            for _, _, fut in requests:
                fut.set_exception(exc)
        else:
            for _, _, fut in requests:
                fut.set_result({"unload_models": unload, "free_memory": free})

    def _run(self, items: list[dict[str, Any]]) -> None:
        """Run one prompt, or a batch of compatible prompts as one fused run (server.batching)."""
        curs = [_Current(item["prompt_id"], item.get("client_id"), threading.Event()) for item in items]
        with self._lock:
            self.current = curs
            if self._stopping.is_set():
                for cur in curs:
                    cur.interrupt.set()
        self.notify("queue", None)
        jobs = []
        for item, cur in zip(items, curs):
            extra = dict(item.get("extra_data") or {})
            extra.update(prompt_id=cur.prompt_id, client_id=cur.client_id)
            jobs.append(dict(workflow=item["workflow"], outputs=item.get("outputs"), interrupt=cur.interrupt,
                             run_id=cur.prompt_id, extra=extra, on_event=self._event_sink(item)))
        self.writer.begin([cur.prompt_id for cur in curs])
        try:
            results = self.engine.run_many(jobs)
        except Exception as exc:  # a bug outside any node: record it, keep serving
            log.exception("prompts %s failed outside their nodes", ", ".join(c.prompt_id for c in curs))
            error = ChiselError("internal_error", f"{type(exc).__name__}: {exc}",
                                details={"exception_type": type(exc).__name__, "traceback": traceback.format_exc(limit=8)})
            results = [RunResult(cur.prompt_id, "error", errors=[error]) for cur in curs]
        writes = self.writer.end_all()
        with self._lock:
            self.current = []
        batch = [cur.prompt_id for cur in curs]
        for item, result in zip(items, results):
            pid = item["prompt_id"]
            asked = pid in self._asked
            self._asked.discard(pid)
            if self._stopping.is_set() and result.status == "interrupted" and not asked:
                for w in writes.get(pid, []):  # drop what it wrote (its re-run writes its own), then requeue it
                    _wait(w.future)
                    self.writer.discard(w.path)
                self.store.requeue(pid)
                self.notify("queue", None)
                continue
            if len(batch) > 1:
                item = dict(item, batch=batch)
            self._finish_when_written(item, result, writes.get(pid, []))

    def _event_sink(self, item: dict[str, Any]) -> Callable[[ev.Event], None]:
        """One prompt's engine events as hub notifications; its file writes are attributed to it."""
        pid, client = item["prompt_id"], item.get("client_id")
        node_types = {nid: spec.get("type") for nid, spec in (item["workflow"].get("nodes") or {}).items()}

        def on_event(event: ev.Event) -> None:
            if event.type == ev.FINISHED:
                return  # the finisher sends `finished` once the prompt's files and record are on disk
            if event.type == ev.INTERRUPTED and not self._stopping.is_set():
                self._journal_interrupt(pid, event.node_id)
            if event.type == ev.EXECUTING:
                self.writer.node_id = event.node_id
                self.writer.prompt_id = pid
            wants = event.type == ev.PROGRESS and self.wants_preview(client)
            self.notify("event", event_payload(event, pid, client, node_types, wants, self.preview_max_size))

        return on_event

    def _journal_interrupt(self, prompt_id: str, node_id: str | None) -> None:
        """An interrupt has stopped ``prompt_id`` (a prompt of a batch is recorded only when the batch is over):
        journal it as interrupted at once, so that a kill meanwhile does not run it again."""
        error = ChiselError(E.INTERRUPTED, "interrupted (the server stopped before the rest of the prompt's result "
                            "was recorded)", node_id=node_id)
        try:
            self.store.journal(prompt_id, S.INTERRUPTED, {"outputs": {}, "timings": {}, "errors": [error.to_dict()],
                                                          "resolved": {}, "executed": [], "cached": [],
                                                          "skipped": []}, [])
        except Exception:
            log.exception("could not journal the interrupt of prompt %s", prompt_id)

    def _finish_when_written(self, item: dict[str, Any], result: RunResult, writes: list[PendingWrite]) -> None:
        """Finish the prompt once its own files are written (prompts with nothing left to write finish at once,
        even while an earlier prompt's files are still being written)."""
        left = [len(writes)]
        lock = threading.Lock()

        def one_done(_: Future | None = None) -> None:
            with lock:
                left[0] -= 1
                ready = left[0] <= 0
            if ready:
                self._finisher.submit(self._finish, item, result, writes)

        if not writes:
            left[0] = 1
            one_done()
        for w in writes:
            w.future.add_done_callback(one_done)

    # -- the finisher thread --------------------------------------------------------------------------------
    def _finish(self, item: dict[str, Any], result: RunResult, writes: list[PendingWrite]) -> None:
        pid = item["prompt_id"]
        errors = [e.to_dict() for e in result.errors]
        staged: list[PendingWrite] = []
        for w in writes:
            exc = _wait(w.future)
            if exc is not None:
                errors.append(_write_error(w, exc))
            elif self.writer.staged(w.path) is not None:
                staged.append(w)
        status = result.status
        if status == "success" and len(errors) > len(result.errors):
            status = S.ERROR
        payload = {"outputs": result.outputs, "timings": result.timings, "errors": errors,
                   "resolved": result.resolved, "executed": result.executed, "cached": result.cached,
                   "skipped": result.skipped, "explain": result.explain}
        if item.get("batch"):
            payload["batch"] = item["batch"]  # the prompts it was sampled with (itself included), in order
        self._annotate(pid, payload)
        if staged:  # the result and the staged names first, then the files under their final names
            try:
                self.store.journal(pid, status, payload, [(str(self.writer.staged(w.path)), str(w.path))
                                                          for w in staged])
            except Exception:
                log.exception("could not journal the result of prompt %s", pid)
            failed = []
            for w in staged:
                try:
                    self.writer.publish(w.path)
                except Exception as exc:  # noqa: BLE001 - e.g. the folder went read-only since the file was written
                    failed.append(_write_error(w, exc))
            if failed:
                payload["errors"] = errors = errors + failed
                status = S.ERROR
        try:
            self.store.finish(pid, status, payload)
        except Exception:
            log.exception("could not record the result of prompt %s", pid)
        self.notify("finished", {"client_id": item.get("client_id"), "prompt_id": pid, "status": status,
                                 "result": payload, "time": time.time()})
        self.notify("queue", None)

    def _annotate(self, prompt_id: str, payload: dict[str, Any]) -> None:
        """Add to a prompt's recorded result (the cluster records which worker ran it and any retry)."""


def _write_error(w: PendingWrite, exc: BaseException) -> dict[str, Any]:
    return ChiselError("write_failed", f"could not write {w.path.name}: {type(exc).__name__}: {exc}",
                       node_id=w.node_id, value=str(w.path)).to_dict()


def finish_journaled(store: S.Store) -> list[str]:
    """At start, before the prompts left running are re-queued: the prompts a kill caught between their journal and
    their record get their staged files published (their final names are free: nothing has run since) and their
    result recorded; return their ids."""
    done = []
    for pid, status, result, staged in store.journaled():
        failed = []
        for tmp, path in staged:
            try:
                if os.path.exists(path) and os.path.exists(tmp) and os.path.samefile(tmp, path):
                    atomic_files.discard(Path(tmp))  # linked before the kill, the temporary name not yet removed
                elif os.path.exists(tmp):
                    atomic_files.publish(Path(tmp), Path(path))
                elif not os.path.exists(path):
                    raise FileNotFoundError(f"its staged file {Path(tmp).name} is gone")
            except OSError as exc:
                failed.append(ChiselError("write_failed", f"could not write {Path(path).name}: {type(exc).__name__}: "
                                          f"{exc}", value=path).to_dict())
        if failed:
            result = dict(result, errors=list(result.get("errors") or []) + failed)
            status = S.ERROR
        store.finish(pid, status, result)
        done.append(pid)
    return done


def _wait(future: Future) -> BaseException | None:
    try:
        future.result()
        return None
    except BaseException as exc:  # noqa: BLE001 - reported as a write error
        return exc

"""The server's core, shared by the native and the ComfyUI-compatible routes: configuration, the durable store,
the worker, the WebSocket hub, submission and the shapes of queue items and history entries."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from graph import overrides as graph_overrides
from graph.atomic_files import PART_RE
from graph.errors import WorkflowError
from graph.workflow import Workflow, parse_workflow

from . import store as S
from .errors import ApiError
from .files import ThumbCache
from .hub import Hub
from .batching import BatchPolicy
from .worker import FileWriter, Worker, finish_journaled

log = logging.getLogger("chisel.server")

REPO = Path(__file__).resolve().parent.parent
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass
class ServerConfig:
    token: str | None = None
    debug: bool = False
    host: str = "127.0.0.1"
    port: int = 8188
    db_path: Path | None = None  # default: <root>/.chisel/server.sqlite3
    max_json_bytes: int = 16 << 20
    max_upload_bytes: int = 64 << 20
    max_upload_pixels: int = 64 << 20
    max_queue: int = 1000
    max_history: int = 10_000
    max_prompt_nodes: int = 2000
    max_images_per_prompt: int = 1000
    history_max_age: float = 0.0  # seconds; 0 keeps every entry the count allows
    history_delete_files: bool = False
    temp_max_age: float = 24 * 3600.0  # seconds; 0: never by age
    temp_clean_on_start: bool = True
    allowed_origins: tuple[str, ...] = ()
    auth_max_failures: int = 10
    auth_lockout: float = 60.0
    web_dir: Path = field(default_factory=lambda: REPO / "web")
    workflows_dir: Path = field(default_factory=lambda: REPO / "workflows")
    writer_threads: int = 2
    max_batch: int = 8  # server.batching: prompts sampled together (1: off)
    batch_window: float = 0.02  # seconds the worker waits for compatible prompts
    preview_max_size: int = 512
    queue_throttle: float = 0.05
    preview_method: str = "none"  # ComfyUI's /ws: binary previews only when not "none" (the native WS always)
    frontend: str = "chisel"  # the page at /: Chisel's canvas or ComfyUI's frontend ("comfyui")
    cluster: Any = None          # cluster.ClusterOptions: run prompts on Ray workers (chisel serve --cluster)
    cluster_runtime: Any = None  # cluster.RuntimeSpec: how each worker builds its engine


class ChiselServer:
    def __init__(self, registry: Any, engine: Any, services: Any = None, config: ServerConfig | None = None):
        self.registry, self.engine, self.services = registry, engine, services
        self.config = config or ServerConfig()
        self.paths = engine.paths
        self.writer = FileWriter(self.config.writer_threads, max_per_prompt=self.config.max_images_per_prompt,
                                 hold=True)
        if services is not None:
            services.file_writer = self.writer
        self.hub = Hub(self.queue_snapshot, debug=self.config.debug, throttle=self.config.queue_throttle)
        self.thumbs = ThumbCache()
        self.store: S.Store | None = None
        self.worker: Worker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chisel-db")
        self.recovered: dict[str, list[str]] = {"requeued": [], "failed": []}
        self._housekeeping: asyncio.Task | None = None

    @property
    def db_path(self) -> Path:
        return Path(self.config.db_path) if self.config.db_path else self.paths.root / ".chisel" / "server.sqlite3"

    # -- life cycle (aiohttp signals) ---------------------------------------------------------------------------
    async def start(self, app: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.store = S.Store(self.db_path, max_queue=self.config.max_queue, max_history=self.config.max_history,
                             max_age=self.config.history_max_age,
                             on_drop=self.delete_files if self.config.history_delete_files else None)
        finished = await asyncio.to_thread(finish_journaled, self.store)  # before .part files are cleared
        if finished:
            log.warning("recorded %s: finished, their files being published, at an unclean stop", finished)
        self.recovered = self.store.recover()
        await asyncio.to_thread(self.clean_folders, True)
        await asyncio.to_thread(self.store.prune)
        self._housekeeping = asyncio.create_task(self._keep_house())
        if self.recovered["requeued"] or self.recovered["failed"]:
            log.warning("recovered after an unclean stop: re-queued %s, failed %s", self.recovered["requeued"],
                        self.recovered["failed"])
        from .system import free as do_free

        if self.config.cluster is not None:  # Ray is imported only here
            from .cluster.dispatcher import ClusterWorker

            self.worker = ClusterWorker(self.config.cluster, self.config.cluster_runtime, self.registry, self.paths,
                                        self.store, self.writer, self.notify, wants_preview=self.hub.wants_preview,
                                        preview_max_size=self.config.preview_max_size)
            await asyncio.to_thread(self.worker.connect)
            self.worker.start()
            return
        self.worker = Worker(self.engine, self.store, self.writer, self.notify, wants_preview=self.hub.wants_preview,
                             preview_max_size=self.config.preview_max_size,
                             on_free=partial(do_free, self.engine, self.services),
                             batching=BatchPolicy(self.config.max_batch, self.config.batch_window))
        self.worker.start()

    async def shutdown(self, app: Any = None) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self.hub.close_all()

    # -- housekeeping -------------------------------------------------------------------------------------------------
    def housekeeping_interval(self) -> float:
        ages = [a for a in (self.config.temp_max_age, self.config.history_max_age) if a > 0]
        return min(600.0, max(1.0, min(ages) / 4)) if ages else 600.0

    async def _keep_house(self) -> None:
        """Every few minutes (a quarter of the shortest age limit, 1 s to 10 min): old temp files and history
        entries go."""
        while True:
            await asyncio.sleep(self.housekeeping_interval())
            try:
                await asyncio.to_thread(self.clean_folders, False)
                if self.config.history_max_age > 0:
                    await self.db(self.store.prune)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("housekeeping failed", exc_info=True)

    def clean_folders(self, starting: bool) -> None:
        """Temp files older than ``temp_max_age`` (every one at start with ``temp_clean_on_start``), and at start the
        ``.NAME.XXXXXXXX.part`` files of writes a killed server never finished."""
        now = time.time()
        temp = self.paths.dir("temp")
        for path in sorted(temp.rglob("*"), reverse=True):  # files before the folders that hold them
            try:
                if path.is_symlink() or path.is_file():
                    old = self.config.temp_max_age > 0 and now - path.lstat().st_mtime > self.config.temp_max_age
                    if (starting and self.config.temp_clean_on_start) or old:
                        path.unlink()
                elif path.is_dir() and starting and self.config.temp_clean_on_start:
                    path.rmdir()
            except OSError:
                pass
        if starting:
            for kind in ("output", "input"):
                for part in self.paths.dir(kind).rglob(".*.part"):
                    if PART_RE.match(part.name):
                        part.unlink(missing_ok=True)

    def delete_files(self, results: list[dict[str, Any]]) -> None:
        """The output and temp files of history entries that retention dropped (``history_delete_files``)."""
        from .security import safe_join

        for result in results:
            for ui in (result.get("outputs") or {}).values():
                for item in (ui.get("images") or []) if isinstance(ui, dict) else []:
                    kind = item.get("type", "output") if isinstance(item, dict) else None
                    if kind not in ("output", "temp"):
                        continue
                    try:
                        safe_join(self.paths.dir(kind), item.get("subfolder", ""), item["filename"]).unlink(
                            missing_ok=True)
                    except (ApiError, OSError, KeyError, TypeError):
                        pass

    async def cleanup(self, app: Any = None) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        if self.store is not None:
            self.store.close()
        self._db_pool.shutdown(wait=True)

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def notify(self, kind: str, payload: Any) -> None:
        """From the worker and finisher threads: hand a notification to the event loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_notify, kind, payload)
        except RuntimeError:  # the loop is closing
            pass

    def _on_notify(self, kind: str, payload: Any) -> None:
        if kind == "event":
            self.hub.event(payload)
        elif kind == "finished":
            self.hub.finished(payload)
        elif kind == "queue":
            self.hub.queue_changed()

    async def db(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.store is None or self.store.closed:
            raise ApiError(503, "unavailable", "the server is starting or stopping")
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, partial(fn, *args, **kwargs))

    # -- submission -----------------------------------------------------------------------------------------------
    def prepare(self, data: Any, overrides: dict[str, Any] | None = None,
                outputs: list[str] | None = None) -> tuple[Workflow, list[str]]:
        """Parse, apply overrides and validate (raises WorkflowError with every problem)."""
        wf = parse_workflow(data, self.registry)
        if len(wf.nodes) > self.config.max_prompt_nodes:
            raise ApiError(413, "prompt_too_large", f"the workflow has {len(wf.nodes)} nodes; this server accepts "
                           f"at most {self.config.max_prompt_nodes} (--max-prompt-nodes)")
        if overrides:
            wf = apply_overrides(wf, overrides)
        plan, errors = self.engine.validate(wf, outputs)
        if plan is None:
            raise WorkflowError(errors)
        return wf, list(plan.outputs)

    async def submit(self, data: Any, *, overrides: dict[str, Any] | None = None, outputs: list[str] | None = None,
                     client_id: str | None = None, prompt_id: str | None = None, front: bool = False,
                     priority: float | None = None, prompt_api: dict | None = None,
                     extra_data: dict | None = None) -> tuple[str, int, Workflow]:
        """Validate and queue durably. Raises WorkflowError (invalid) or ApiError."""
        if prompt_id is not None and (not isinstance(prompt_id, str) or not ID_RE.match(prompt_id)):
            raise ApiError(400, "invalid_request", "prompt_id must be 1-128 letters, digits or ._:-")
        wf, wanted = await asyncio.to_thread(self.prepare, data, overrides, outputs)
        prompt_id = prompt_id or str(uuid.uuid4())
        try:
            number = await self.db(self.store.add, prompt_id, wf.to_dict(), client_id=client_id, prompt_api=prompt_api,
                                   extra_data=extra_data, outputs=wanted, front=front, priority=priority)
        except S.QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": "5"}) from None
        except S.Conflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        self.hub.queue_changed()
        if self.worker is not None:
            self.worker.wake()
        return prompt_id, number, wf

    def cluster_workers(self) -> list[dict[str, Any]] | None:
        """The cluster's workers (host, devices, memory, models, current prompt); None without a cluster."""
        describe = getattr(self.worker, "describe", None)
        return describe() if callable(describe) else None

    # -- shapes ---------------------------------------------------------------------------------------------------
    async def queue_snapshot(self, with_lists: bool = True) -> dict[str, Any]:
        running, pending = await self.db(self.store.queue)
        return {"running": [queue_item(r) for r in running] if with_lists else [],
                "pending": [queue_item(r) for r in pending] if with_lists else [],
                "remaining": len(running) + len(pending)}

    def clean_error(self, err: dict[str, Any]) -> dict[str, Any]:
        return self.hub.clean_error(err)

    def history_entry(self, row: dict[str, Any]) -> dict[str, Any]:
        result = row.get("result") or {}
        return {"prompt_id": row["prompt_id"], "number": row["number"], "status": row["status"],
                "client_id": row.get("client_id"), "workflow": row.get("workflow"),
                "outputs": result.get("outputs", {}), "timings": result.get("timings", {}),
                "errors": [self.clean_error(e) for e in result.get("errors", [])],
                "resolved": result.get("resolved", {}), "executed": result.get("executed", []),
                "cached": result.get("cached", []), "skipped": result.get("skipped", []),
                "created": row.get("created"), "started": row.get("started"), "finished": row.get("finished"),
                "attempts": row.get("attempts", 0), **({"cluster": result["cluster"]} if "cluster" in result else {}),
                **({"batch": result["batch"]} if "batch" in result else {})}

    def prompt_api(self, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("prompt_api") is not None:
            return row["prompt_api"]
        from graph.comfy_format import to_comfy_api

        try:
            return to_comfy_api(Workflow.model_validate(row["workflow"]), self.registry)
        except Exception:
            return {}


def queue_item(row: dict[str, Any]) -> dict[str, Any]:
    item = {"prompt_id": row["prompt_id"], "number": row["number"], "client_id": row.get("client_id"),
            "created": row.get("created")}
    if row.get("status") == S.RUNNING:
        item["started"] = row.get("started")
    return item


def apply_overrides(wf: Workflow, overrides: dict[str, Any]) -> Workflow:
    """``{"NODE.INPUT": value}`` written into the workflow's literal inputs (graph.overrides: split at the last dot)."""
    return graph_overrides.apply_overrides(wf, overrides)


def config_from_settings(settings: Any, **kw: Any) -> ServerConfig:
    """A :class:`ServerConfig` from :class:`server.settings.Settings` (``CHISEL_DB`` names the queue database)."""
    cfg = ServerConfig(**kw)
    if os.environ.get("CHISEL_DB"):
        cfg.db_path = Path(os.environ["CHISEL_DB"])
    cfg.max_json_bytes = int(settings.max_body_mb * (1 << 20))
    cfg.max_upload_bytes = int(settings.max_upload_mb * (1 << 20))
    cfg.max_upload_pixels = settings.max_upload_pixels
    cfg.max_queue = settings.max_queue
    cfg.max_history = settings.history_max_entries
    cfg.max_prompt_nodes = settings.max_prompt_nodes
    cfg.max_images_per_prompt = settings.max_images_per_prompt
    cfg.history_max_age = settings.history_max_age_days * 86400.0
    cfg.history_delete_files = settings.history_delete_files
    cfg.temp_max_age = settings.temp_max_age_hours * 3600.0
    cfg.temp_clean_on_start = settings.temp_clean_on_start
    cfg.allowed_origins = tuple(settings.allow_origin)
    cfg.auth_max_failures = settings.auth_max_failures
    cfg.auth_lockout = settings.auth_lockout_seconds
    cfg.max_batch = settings.max_batch
    cfg.batch_window = settings.batch_window_ms / 1000.0
    return cfg


__all__ = ["ChiselServer", "ServerConfig", "apply_overrides", "queue_item", "config_from_settings"]

"""The server's core, shared by the native and the ComfyUI-compatible routes: configuration, the durable store,
the worker, the WebSocket hub, submission and the shapes of queue items and history entries."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from graph import overrides as graph_overrides
from graph.errors import WorkflowError
from graph.workflow import Workflow, parse_workflow

from . import store as S
from .errors import ApiError
from .files import ThumbCache
from .hub import Hub
from .worker import FileWriter, Worker

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
    max_queue: int = 1000
    max_history: int = 10_000
    allowed_origins: tuple[str, ...] = ()
    web_dir: Path = field(default_factory=lambda: REPO / "web")
    workflows_dir: Path = field(default_factory=lambda: REPO / "workflows")
    writer_threads: int = 2
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
        self.writer = FileWriter(self.config.writer_threads)
        if services is not None:
            services.file_writer = self.writer
        self.hub = Hub(self.queue_snapshot, debug=self.config.debug, throttle=self.config.queue_throttle)
        self.thumbs = ThumbCache()
        self.store: S.Store | None = None
        self.worker: Worker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chisel-db")
        self.recovered: dict[str, list[str]] = {"requeued": [], "failed": []}

    @property
    def db_path(self) -> Path:
        return Path(self.config.db_path) if self.config.db_path else self.paths.root / ".chisel" / "server.sqlite3"

    # -- life cycle (aiohttp signals) ---------------------------------------------------------------------------
    async def start(self, app: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.store = S.Store(self.db_path, max_queue=self.config.max_queue, max_history=self.config.max_history)
        self.recovered = self.store.recover()
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
                             on_free=partial(do_free, self.engine, self.services))
        self.worker.start()

    async def shutdown(self, app: Any = None) -> None:
        await self.hub.close_all()

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
        return self.hub._clean_error(err)

    def history_entry(self, row: dict[str, Any]) -> dict[str, Any]:
        result = row.get("result") or {}
        return {"prompt_id": row["prompt_id"], "number": row["number"], "status": row["status"],
                "client_id": row.get("client_id"), "workflow": row.get("workflow"),
                "outputs": result.get("outputs", {}), "timings": result.get("timings", {}),
                "errors": [self.clean_error(e) for e in result.get("errors", [])],
                "resolved": result.get("resolved", {}), "executed": result.get("executed", []),
                "cached": result.get("cached", []), "skipped": result.get("skipped", []),
                "created": row.get("created"), "started": row.get("started"), "finished": row.get("finished"),
                "attempts": row.get("attempts", 0), **({"cluster": result["cluster"]} if "cluster" in result else {})}

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


def env_config(**kw: Any) -> ServerConfig:
    """Configuration from the environment (limits have no CLI flag): CHISEL_DB, CHISEL_MAX_UPLOAD_MB,
    CHISEL_MAX_JSON_MB, CHISEL_MAX_QUEUE, CHISEL_MAX_HISTORY, CHISEL_ALLOWED_ORIGINS (comma-separated)."""
    from .security import env_int

    cfg = ServerConfig(**kw)
    if os.environ.get("CHISEL_DB"):
        cfg.db_path = Path(os.environ["CHISEL_DB"])
    cfg.max_upload_bytes = env_int("CHISEL_MAX_UPLOAD_MB", cfg.max_upload_bytes >> 20) << 20
    cfg.max_json_bytes = env_int("CHISEL_MAX_JSON_MB", cfg.max_json_bytes >> 20) << 20
    cfg.max_queue = env_int("CHISEL_MAX_QUEUE", cfg.max_queue)
    cfg.max_history = env_int("CHISEL_MAX_HISTORY", cfg.max_history)
    origins = os.environ.get("CHISEL_ALLOWED_ORIGINS", "")
    cfg.allowed_origins = tuple(o.strip() for o in origins.split(",") if o.strip())
    return cfg


__all__ = ["ChiselServer", "ServerConfig", "apply_overrides", "queue_item", "env_config"]

"""The aiohttp application: ``create_app`` wires the routes, middlewares and life cycle; ``serve`` is
``chisel serve``."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web

from . import comfy_frontend, routes_comfy, routes_native, user_workflows
from .errors import error_middleware
from .routes_native import SERVER
from .runtime import build_runtime, import_model_libraries_in_background
from .logs import AccessLogger, ProtocolLogger
from .security import AuthThrottle, cors_middleware, is_loopback_host, security_middleware
from . import settings as S
from .service import ChiselServer, ServerConfig, config_from_settings
from .cluster.options import ClusterUnavailable
from .store import StoreLocked

log = logging.getLogger("chisel.server")


def create_app(registry: Any, engine: Any, services: Any = None, config: ServerConfig | None = None) -> web.Application:
    config = config or ServerConfig()
    server = ChiselServer(registry, engine, services, config)
    # Bodies are read by the handlers with their own limits (JSON vs. uploads); this is the outer bound.
    throttle = AuthThrottle(config.auth_max_failures, config.auth_lockout)
    app = web.Application(middlewares=[cors_middleware(config.allowed_origins), error_middleware(config.debug),
                                       security_middleware(config.token, config.allowed_origins, throttle)],
                          client_max_size=max(config.max_upload_bytes, config.max_json_bytes) + (1 << 20))
    app[SERVER] = server
    static = comfy_frontend.frontend_dir() if config.frontend == "comfyui" else None
    if static is not None:
        comfy_frontend.add_index(app, static)
    routes_native.add_routes(app)
    user_workflows.add_routes(app)
    routes_comfy.add_routes(app)
    if static is not None:
        comfy_frontend.add_static(app, static)
    app.on_startup.append(server.start)
    app.on_shutdown.append(server.shutdown)
    app.on_cleanup.append(server.cleanup)
    return app


def serve(args: argparse.Namespace) -> int:
    token = getattr(args, "token", None) or os.environ.get("CHISEL_TOKEN") or None
    host, port = args.host, args.port
    if not token and not is_loopback_host(host):
        print(f"chisel serve: refusing to listen on {host} without a token: anyone who can reach this address could "
              "run workflows and read your images. Pass --token TOKEN (or set CHISEL_TOKEN), or listen on 127.0.0.1.",
              file=sys.stderr)
        return 2
    try:
        settings = S.load(args)
    except S.SettingsError as exc:
        print(f"chisel serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token and getattr(args, "frontend", "chisel") == "comfyui":
        print("chisel serve: warning: ComfyUI's frontend sends no token; with --token its requests are refused",
              file=sys.stderr)
    cluster = None
    if getattr(args, "cluster", None):
        from .cluster import ClusterOptions, RuntimeSpec, ray_available

        try:
            cluster = ClusterOptions.from_flag(args.cluster, args.cluster_workers, args.cluster_shared_output,
                                               args.device)
        except ValueError as exc:
            print(f"chisel serve: {exc}", file=sys.stderr)
            return 2
        if not ray_available():
            print("chisel serve: --cluster needs Ray: pip install 'chisel[ray]'", file=sys.stderr)
            return 2
    registry, services, engine = build_runtime(args, allow_paths=False)
    config = config_from_settings(settings, token=token, debug=bool(args.debug), host=host, port=port,
                                  preview_method=getattr(args, "preview_method", "none"),
                                  frontend=getattr(args, "frontend", "chisel"))
    if cluster is not None:
        config.cluster = cluster
        config.cluster_runtime = RuntimeSpec.from_args(args, engine.paths.root)
    try:
        app = create_app(registry, engine, services, config)
    except comfy_frontend.FrontendMissing as exc:
        print(f"chisel serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(app, host, port, config))
    except (StoreLocked, ClusterUnavailable) as exc:
        print(f"chisel serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chisel serve: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _run(app: web.Application, host: str, port: int, config: ServerConfig) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger,
                           access_log=logging.getLogger("chisel.access") if config.debug else None,
                           shutdown_timeout=5.0, logger=ProtocolLogger())
    await runner.setup()  # runs on_startup: opens the store, recovers, starts the worker
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        server = app[SERVER]
        addresses = runner.addresses
        bound = addresses[0][1] if addresses else port
        shown = f"[{host}]" if ":" in host else host
        rec = server.recovered
        if rec["requeued"] or rec["failed"]:
            print(f"chisel: recovered from an unclean stop: re-queued {len(rec['requeued'])} prompt(s), "
                  f"failed {len(rec['failed'])}", flush=True)
        print(f"chisel: serving on http://{shown}:{bound} (queue: {server.db_path})"
              + (" with a token" if config.token else ""), flush=True)
        if config.cluster is None:  # prompts run here: have the model libraries imported before the first one
            import_model_libraries_in_background(server.paths)
        await stop.wait()
        print("chisel: stopping (the running prompt goes back to the queue)", flush=True)
    finally:
        await runner.cleanup()

"""The server on a real Ray cluster (``chisel serve --cluster``): one local Ray instance shared by the module, two CPU
workers per server (each its own process, engine and cache), real HTTP and WebSocket clients."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_server_support import (REPO, ServeProcess, build_app, chain, client, finished, make_root, run, submit, until,
                                 wait_history, wf)

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

TOY_LOADER = '''
from graph.node import Input, Node, Output
from graph.types import COMBO, INT


class ToyLoader(Node):
    """Names a checkpoint file (for affinity): outputs its size."""
    type = "ToyLoader"
    category = "testing"
    inputs = (Input("ckpt_name", COMBO, files="checkpoints", extensions=(".safetensors",)),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, ckpt_name):
        return (ctx.file_path("ckpt_name").stat().st_size,)
'''


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def root(tmp_path, ray_cluster) -> Path:
    root = make_root(tmp_path)
    (root / "custom_nodes" / "toy_loader.py").write_text(TOY_LOADER)
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "a.safetensors").write_bytes(b"a" * 10)
    (ckpts / "b.safetensors").write_bytes(b"b" * 20)
    return root


def cluster_app(root: Path, workers: int = 2, shared: bool = False, plain: bool = True):
    from server.cluster import ClusterOptions, RuntimeSpec

    spec = RuntimeSpec(root=str(root), device="cpu", plain=plain, plugin_folders=[str(root / "custom_nodes")],
                       entry_point_group="chisel.tests-none" if plain else None)
    return build_app(root, cluster=ClusterOptions(workers=workers, shared_output=shared, log_to_driver=False),
                     cluster_runtime=spec)


async def workers(c, count: int = 2, timeout: float = 120.0) -> list[dict]:
    """The cluster's workers once ``count`` of them are idle."""
    deadline = time.monotonic() + timeout
    while True:
        info = await (await c.get("/v1/system")).json()
        found = info.get("workers") or []
        if sum(w["state"] == "idle" for w in found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not ready: {found}")
        await asyncio.sleep(0.1)


def slow(value: int, seconds: float, save: str = "Show") -> dict:
    steps = max(1, int(seconds / 0.1))
    return chain(value, steps=steps, delay=0.1, save=save)


def loader_chain(ckpt: str, value: int) -> dict:
    return wf({"1": ("ToyLoader", {"ckpt_name": ckpt}), "2": ("Add", {"a": ("1", "INT"), "b": value}),
               "3": ("Show", {"value": ("2", "sum")})})


def test_two_workers_run_two_slow_prompts_at_once(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            found = await workers(c)
            assert len(found) == 2 and len({w["pid"] for w in found}) == 2 and os.getpid() not in {w["pid"] for w in found}
            ws = await c.ws_connect("/v1/ws?client_id=watcher")
            start = time.monotonic()
            a = await submit(c, slow(1, 2.0), client_id="watcher")
            b = await submit(c, slow(2, 2.0), client_id="watcher")
            frames = await until(ws, finished(a), timeout=60)
            if not any(f["type"] == "finished" and f["data"]["prompt_id"] == b for f in frames):
                frames += await until(ws, finished(b), timeout=60)
            wall = time.monotonic() - start
            ha, hb = await wait_history(c, a), await wait_history(c, b)
            assert ha["status"] == hb["status"] == "success"
            assert {ha["cluster"]["worker"], hb["cluster"]["worker"]} == {0, 1}
            # Progress from both workers reached the one WebSocket client.
            progress = {f["data"]["prompt_id"] for f in frames if f["type"] == "progress"}
            assert progress == {a, b}
            # They overlapped, and the pair took at most 0.6x what one worker needs (the sum of their run times).
            assert hb["started"] < ha["finished"] and ha["started"] < hb["finished"]
            one_worker = (ha["finished"] - ha["started"]) + (hb["finished"] - hb["started"])
            assert wall <= 0.6 * one_worker, (wall, one_worker)
            await ws.close()
    run(go(), timeout=240)

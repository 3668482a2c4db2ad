"""The ``threads`` setting (``chisel serve --threads N``, the settings file, ``chisel run --threads N``) reaches torch
in the process that runs nodes: a plug-in node reports ``torch.get_num_threads()`` from the thread that runs it, and
the native system route reports the counts."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from server import settings as S
from test_server_support import ServeProcess, submit, wait_history

HERE = Path(__file__).resolve().parent

THREADS_NODE = '''
import torch

from graph.node import Node, NodeResult


class TorchThreads(Node):
    """torch's intra-op thread count as the thread running this node sees it."""
    type = "TorchThreads"
    category = "test"
    output_node = True
    inputs = ()
    outputs = ()

    def run(self, ctx):
        count = str(torch.get_num_threads())
        folder = ctx.services.paths.dirs("output")[0]  # for `chisel run`, whose report lists files only
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "threads.txt").write_text(count)
        return NodeResult((), {"text": [count]})
'''

WORKFLOW = {"format": "chisel-workflow", "version": 1, "nodes": {"1": {"type": "TorchThreads", "inputs": {}}}}


def wanted() -> int:
    """A count torch never picks by itself here (its default is at most one per CPU)."""
    return (os.cpu_count() or 1) + 1


@pytest.fixture
def root(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "torch_threads.py").write_text(THREADS_NODE)
    (tmp_path / "workflow.json").write_text(json.dumps(WORKFLOW))
    return tmp_path


def settings_from(argv: list[str], environ: dict[str, str] | None = None) -> S.Settings:
    parser = argparse.ArgumentParser()
    S.add_flags(parser)
    return S.load(parser.parse_args(argv), environ or {})


def test_threads_setting_from_flag_and_file(tmp_path):
    assert settings_from([]).threads is None  # torch's own choice
    assert settings_from(["--threads", "3"]).threads == 3
    path = tmp_path / "settings.toml"
    path.write_text("threads = 2\n")
    assert settings_from(["--settings", str(path)]).threads == 2
    assert settings_from(["--settings", str(path), "--threads", "1"]).threads == 1
    with pytest.raises(S.SettingsError, match="threads"):
        settings_from(["--threads", "0"])
    path.write_text('threads = "many"\n')
    with pytest.raises(S.SettingsError, match="threads"):
        settings_from(["--settings", str(path)])


def test_serve_applies_the_threads_setting(root):
    n = wanted()
    (root / "settings.toml").write_text(f"threads = {n}\n")
    server = ServeProcess(root, "--settings", str(root / "settings.toml"))
    try:
        async def go():
            async with aiohttp.ClientSession(server.url) as s:
                pid = await submit(s, WORKFLOW)
                entry = await wait_history(s, pid, timeout=60)
                assert entry["status"] == "success", entry
                assert entry["outputs"]["1"]["text"] == [str(n)]  # in the worker thread that ran the node
                info = await (await s.get("/v1/system")).json()
                assert info["threads"] == {"intra_op": n, "inter_op": n}, info["threads"]

        asyncio.run(go())
    finally:
        server.stop()


def test_run_applies_threads_and_refuses_a_bad_count(root):
    n = wanted()
    base = [sys.executable, "-m", "server.cli", "run", str(root / "workflow.json"), "--root", str(root), "--json"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(base + ["--threads", str(n)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "success"
    assert (root / "output" / "threads.txt").read_text() == str(n)
    proc = subprocess.run(base + ["--threads", "0"], capture_output=True, text=True, timeout=120, cwd=HERE.parent)
    assert proc.returncode == 2 and "--threads" in proc.stderr and "at least 1" in proc.stderr


def test_cluster_workers_get_the_threads_setting():
    from server.cli import build_parser
    from server.cluster.runtime import RuntimeSpec

    assert RuntimeSpec.from_args(build_parser().parse_args(["serve", "--threads", "3"])).threads == 3
    assert RuntimeSpec.from_args(build_parser().parse_args(["serve"]), threads=2).threads == 2  # the settings file's
    assert RuntimeSpec.from_args(build_parser().parse_args(["serve"])).threads is None

"""A ``chisel serve`` process on a throw-away root holding the demo model, for the benchmarks that time a server
from outside (first_prompt.py, canvas_load.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def demo_checkpoint_name(repo: Path = REPO) -> str:
    """The checkpoint the shipped txt2img workflow loads (the demo model)."""
    wf = json.loads((repo / "workflows" / "txt2img.json").read_text())
    return next(n["inputs"]["ckpt_name"] for n in wf["nodes"].values() if n["type"] == "CheckpointLoaderSimple")


def provide_demo_model(root: Path, repo: Path = REPO) -> None:
    """The demo checkpoint of the Chisel checkout ``repo``, copied into ``root``'s models."""
    name = demo_checkpoint_name(repo)
    (root / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "models" / "checkpoints" / name, root / "models" / "checkpoints" / name)


def start(root: Path, repo: Path = REPO) -> tuple[subprocess.Popen, str]:
    """``chisel serve --port 0`` of the checkout ``repo`` on the CPU; returns the process and its base URL (reachable
    on 127.0.0.1), once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                             "--device", "cpu"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return proc, m.group(1).replace("[", "").replace("]", "").replace("0.0.0.0", "127.0.0.1")
    stop(proc)
    raise RuntimeError("chisel serve did not start")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()

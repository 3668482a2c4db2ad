"""What ``chisel serve --cluster …`` asked for (no Ray import here)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass


class ClusterUnavailable(RuntimeError):
    """Ray could not be started or reached."""


def ray_available() -> bool:
    """Whether Ray is installed (found without importing it)."""
    return importlib.util.find_spec("ray") is not None


def parse_cluster_target(text: str) -> str | None:
    """``ray`` -> None (start a local Ray instance); ``auto`` or ``ray://HOST:PORT`` -> that address."""
    text = (text or "").strip()
    if text == "ray":
        return None
    if text == "auto" or (text.startswith("ray://") and len(text) > len("ray://")):
        return text
    raise ValueError(f"--cluster expects ray, auto or ray://HOST:PORT, got {text!r}")


@dataclass
class ClusterOptions:
    address: str | None = None        # None: start a local Ray instance; "auto" or "ray://HOST:PORT": join one
    workers: int | None = None        # None: one worker per GPU (one CPU worker when the cluster has no GPU)
    shared_output: bool = False       # workers write files into the output folder themselves (shared storage)
    use_gpus: bool = True             # False (--device cpu): CPU workers even where GPUs exist
    max_attempts: int = 2             # a prompt whose worker died is run at most this many times
    worker_start_timeout: float = 300.0
    log_to_driver: bool = True

    @classmethod
    def from_flag(cls, target: str, workers: int | None = None, shared_output: bool = False,
                  device: str | None = None) -> "ClusterOptions":
        if workers is not None and workers < 1:
            raise ValueError("--cluster-workers must be at least 1")
        return cls(address=parse_cluster_target(target), workers=workers, shared_output=shared_output,
                   use_gpus=device != "cpu")

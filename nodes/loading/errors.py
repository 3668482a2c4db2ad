"""Errors a user can act on, raised by the checkpoint loader. Each message says what was found and what to do."""
from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """Base class: something is wrong with a model file."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(message)


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The file does not exist; the message says where the loader looked and which files exist there."""


class CorruptCheckpoint(CheckpointError):
    """The file cannot be read as what its name says (truncated download, not a safetensors file, bad header)."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle-based file (.ckpt/.pt/.bin) was given and pickles were not allowed."""


class WrongFileKind(CheckpointError):
    """A valid model file, but not a full checkpoint (a LoRA, a lone VAE, a ControlNet, an embedding ...)."""

    def __init__(self, message: str, path: str | Path | None = None, kind: str = ""):
        self.kind = kind
        super().__init__(message, path)


class UnrecognisedArchitecture(CheckpointError):
    """The tensors do not form an architecture Chisel knows (SD1.x, SD2.x, SDXL base/refiner, inpainting)."""


class IncompleteCheckpoint(CheckpointError):
    """Some model parameters are not in the file: loading would leave them random, so it fails instead."""

    def __init__(self, message: str, path: str | Path | None = None, missing: dict | None = None):
        self.missing = missing or {}
        super().__init__(message, path)


def check_parameters_match(own: dict, state: dict, path: Path, what: str, component: str, mismatch_hint: str = "") -> None:
    """Every parameter of the module (``own``: name -> tensor) comes from the file (``state``), no tensor of the file
    is left over, and every shape fits: else IncompleteCheckpoint / UnrecognisedArchitecture naming the file, the
    module (``what``, e.g. "ControlNet") and the first offending names. ``component`` keys ``missing``."""
    missing = sorted(set(own) - set(state))
    unused = sorted(set(state) - set(own))
    if missing:
        raise IncompleteCheckpoint(f"{path.name}: {len(missing)} {what} parameters are not in the file "
                                   f"({', '.join(missing[:4])}); refusing to leave them random.", path,
                                   missing={component: missing})
    if unused:
        raise UnrecognisedArchitecture(f"{path.name}: {len(unused)} tensors fit no {what} parameter "
                                       f"({', '.join(unused[:4])}); the layout is not one Chisel reads.", path)
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UnrecognisedArchitecture(f"{path.name}: tensor {k} is {list(v.shape)} in the file but the "
                                           f"{what}'s layout needs {list(own[k].shape)}{mismatch_hint}.", path)

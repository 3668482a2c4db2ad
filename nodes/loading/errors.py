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

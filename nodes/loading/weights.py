"""The one reader of weight files: checkpoints, standalone VAEs, LoRAs and textual-inversion embeddings all come
through here, under one policy.

- ``.safetensors`` (any name): the header is read and checked against the file size first, so a truncated or
  corrupt file fails with :class:`CorruptCheckpoint` naming the file and what is wrong, before any tensor is read.
- Pickles (``.ckpt``, ``.pt``, ``.pth``, ``.bin``; recognised by content, not by name): loaded with
  ``torch.load(weights_only=True)``, which rebuilds tensors, plain containers and numbers only and never imports or
  calls anything else. A pickle that asks for anything more (a class, a function, a NumPy scalar) is refused with
  :class:`UnsafeCheckpoint` naming what it asked for. For zip-format pickles the request is found by scanning the
  pickle's opcodes before anything is unpickled.
- ``allow_pickle=False`` (``chisel run/serve --no-pickle``, ``CHISEL_NO_PICKLE=1``, ``Services.allow_pickle``)
  refuses every pickle before it is opened.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nodes.loading.errors import CorruptCheckpoint, UnsafeCheckpoint

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 200_000_000
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def pickles_allowed_by_default() -> bool:
    """The default policy: pickles load (weights only) unless ``CHISEL_NO_PICKLE`` is set to a true value."""
    return os.environ.get("CHISEL_NO_PICKLE", "").strip().lower() in ("", "0", "false", "no")


def policy_of(ctx: Any) -> bool | None:
    """The pickle policy of a node's run context (``ctx.services.allow_pickle``; None: the default)."""
    return getattr(getattr(ctx, "services", None), "allow_pickle", None)


def file_kind(path: str | Path) -> str:
    """``"safetensors"``, ``"pickle"`` (zip-format or legacy torch pickle) or ``"unknown"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


# --------------------------------------------------------------------------------------------------- safetensors


def read_header(path: str | Path) -> tuple[dict[str, tuple], dict[str, str], dict[str, str]]:
    """``(shapes, dtypes, metadata)`` of a safetensors file, validated against the file size."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptCheckpoint(f"{path} is empty or truncated ({size} bytes): not a safetensors file.", path)
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise CorruptCheckpoint(
                    f"{path} is truncated or not a safetensors file: its header claims {n} bytes but the file has "
                    f"{size}. Download it again.", path)
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpoint(f"{path} has an unreadable safetensors header ({exc}); the file is corrupt.",
                                path) from None
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{path}: the safetensors header is not an object; the file is corrupt.", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpoint(f"{path}: the safetensors metadata is not an object; the file is corrupt.", path)
    shapes, dtypes = {}, {}
    end = 0
    for k, info in header.items():
        try:
            shape = tuple(int(d) for d in info["shape"])
            dtype = str(info["dtype"])
            start, stop = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise CorruptCheckpoint(f"{path}: tensor entry {k!r} in the header is malformed; the file is corrupt.",
                                    path) from None
        numel = 1
        for d in shape:
            numel *= d
        item = _DTYPE_SIZES.get(dtype)
        if min(shape, default=0) < 0 or stop < start or (item is not None and stop - start != numel * item):
            raise CorruptCheckpoint(
                f"{path}: tensor {k!r} ({dtype} {list(shape)}) claims bytes {start}..{stop} of the data, which does "
                "not fit its shape; the file is corrupt.", path)
        shapes[k], dtypes[k] = shape, dtype
        end = max(end, stop)
    if 8 + n + end > size:
        raise CorruptCheckpoint(
            f"{path} is truncated: its tensors need {8 + n + end} bytes but the file has {size} "
            f"({100 * size / (8 + n + end):.1f}% of it). Download it again.", path)
    return shapes, dtypes, {str(k): str(v) for k, v in metadata.items()}


# ------------------------------------------------------------------------------------------------------- pickles


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _requested_globals(path: Path) -> list[str]:
    """The non-tensor globals a zip-format torch pickle asks for, found without unpickling it (empty for legacy
    pickles, which torch's weights-only unpickler still guards)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a corrupt zip is reported by torch.load below
        return []


def _refuse_unsafe(path: Path, names: list[str]) -> UnsafeCheckpoint:
    shown = ", ".join(sorted(set(names))[:5])
    return UnsafeCheckpoint(
        f"{path} is a pickle that asks for {shown}, not only tensors. Loading it would run code from the file, so "
        "Chisel refuses it. Convert it to .safetensors with a tool you trust (e.g. load it once in a sandbox and "
        "save its state dict with safetensors.torch.save_file).", path)


def load_pickle(path: str | Path, allow_pickle: bool) -> Any:
    """The object a torch pickle holds, rebuilt from plain tensors, containers and numbers only."""
    path = Path(path)
    if not allow_pickle:
        raise UnsafeCheckpoint(
            f"{path} is a pickle-based file ({path.suffix or 'pickle'}) and pickles are turned off (--no-pickle or "
            "CHISEL_NO_PICKLE). Use a .safetensors version of it, or allow pickles: they load weights-only, never "
            "running code from the file.", path)
    unsafe = _requested_globals(path)
    if unsafe:
        raise _refuse_unsafe(path, unsafe)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        text = str(exc)
        asked = _GLOBAL_RE.findall(text)
        if asked or "weights_only" in text and "Unsupported" in text:
            raise _refuse_unsafe(path, asked or ["an object torch does not allow"]) from None
        raise CorruptCheckpoint(f"{path} could not be read as a torch pickle ({type(exc).__name__}: "
                                f"{text.splitlines()[0] if text else 'no detail'}); it may be truncated or corrupt.",
                                path) from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"


def tensors_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict inside a loaded pickle (under nested ``state_dict`` keys, as trainers
    save it, or an ``adapter`` key, as some T2I-Adapter files hold it)."""
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if (isinstance(obj, Mapping) and isinstance(obj.get("adapter"), Mapping)
            and not any(isinstance(v, torch.Tensor) for v in obj.values())):
        obj = obj["adapter"]
    if not isinstance(obj, Mapping):
        raise CorruptCheckpoint(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.", path)
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------------------------------------- one interface


class WeightFile:
    """A weight file opened for reading: names, shapes, dtypes and metadata up front, tensors on demand.

    Use as a context manager; ``get``/``many`` read tensors (memory-mapped for safetensors), ``all`` reads them all.
    """

    def __init__(self, path: str | Path, allow_pickle: bool | None = None):
        self.path = Path(path)
        if allow_pickle is None:
            allow_pickle = pickles_allowed_by_default()
        if not self.path.is_file():
            raise CorruptCheckpoint(f"{self.path} is not a file.", self.path)
        self.kind = file_kind(self.path)
        self._state: dict[str, torch.Tensor] | None = None
        self._handle = None
        self.raw: Any = None  # the unpickled object, for readers that need its structure (embeddings)
        if self.kind == "safetensors":
            self.shapes, self.dtypes, self.metadata = read_header(self.path)
        elif self.kind == "pickle":
            self.raw = load_pickle(self.path, allow_pickle)
            self._state = tensors_of(self.raw, self.path) if isinstance(self.raw, Mapping) else {}
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
            self.dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in self._state.items()}
            self.metadata = {}
        else:
            hint = (" It has a pickle's name but not a pickle's content." if self.path.suffix.lower()
                    in PICKLE_SUFFIXES else "")
            raise CorruptCheckpoint(
                f"{self.path} is not a safetensors file or a torch pickle (no valid header); it may be "
                f"truncated, an HTML error page saved by a failed download, or another format.{hint}", self.path)

    @classmethod
    def from_state(cls, path: str | Path, state: Mapping[str, torch.Tensor]) -> "WeightFile":
        """A reader over tensors already in memory (tests, converted files)."""
        self = cls.__new__(cls)
        self.path, self.kind, self.raw, self._handle = Path(path), "state", None, None
        self._state = dict(state)
        self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
        self.dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in self._state.items()}
        self.metadata = {}
        return self

    def __enter__(self) -> "WeightFile":
        if self.kind == "safetensors" and self._handle is None:
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise CorruptCheckpoint(f"{self.path} could not be opened as safetensors: {exc}", self.path) from None
        return self

    def __exit__(self, *exc) -> None:
        self._handle = None

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return self._state[key]
        if self._handle is None:
            self.__enter__()
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:  # noqa: BLE001
            raise CorruptCheckpoint(f"{self.path}: tensor {key!r} could not be read ({exc}); the file is corrupt.",
                                    self.path) from None

    def many(self, keys) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in keys}

    def all(self) -> dict[str, torch.Tensor]:
        return self.many(self.shapes)


def read_tensors(path: str | Path, allow_pickle: bool | None = None) -> tuple[dict[str, torch.Tensor],
                                                                              dict[str, str]]:
    """Every tensor of a weight file and its metadata (``{}`` for pickles)."""
    with WeightFile(path, allow_pickle) as wf:
        return wf.all(), dict(wf.metadata)

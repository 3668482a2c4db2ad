"""Textual-inversion embeddings: ``embedding:name`` in a prompt, files from ``models/embeddings``.

Layouts read (``.safetensors``; ``.pt``/``.bin``/``.pth`` through :mod:`nodes.loading.weights`, weights only):

- A1111 / ``.pt``: ``{"string_to_param": {"*": [n, D]}, ...}``;
- ``{"emb_params": [n, D]}`` (safetensors from A1111-style trainers);
- diffusers: ``{"<token>": [D] or [n, D]}`` (one tensor, any key);
- SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``: each text encoder takes its own part.

A name is looked up as given, then with each extension (``name``, ``name.safetensors``, ``name.pt``, ...). A missing
file, or vectors whose width is not the text encoder's, is an error that says which.

Caching: the prompt text does not change when an embedding file does, so :func:`fingerprint` gives the identity
(path, size, mtime) of every file a prompt's embedding names resolve to; CLIPTextEncode returns it from its
``fingerprint`` hook so it reaches the cache key.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EXTENSIONS = ("", ".safetensors", ".pt", ".bin", ".pth")
_KIND_KEYS = {"clip_l": ("clip_l",), "open_clip": ("clip_g", "clip_h")}


class EmbeddingError(ValueError):
    """An embedding that cannot be found, read, or used with this text encoder."""


@dataclass(frozen=True, eq=False)
class Embedding:
    name: str
    path: str
    parts: Mapping[str, torch.Tensor]  # "" (one tensor for any encoder) or "clip_l" / "clip_g": [n, D] float32


def _as_matrix(t: torch.Tensor, what: str) -> torch.Tensor:
    t = t.detach().float()
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise EmbeddingError(f"{what}: expected vectors [n, width], found a tensor of shape {tuple(t.shape)}")
    return t


def _read(path: Path, allow_pickle: bool | None) -> dict[str, Any]:
    from nodes.loading.errors import CheckpointError
    from nodes.loading.weights import WeightFile

    try:
        with WeightFile(path, allow_pickle) as wf:
            data = wf.all() if wf.kind == "safetensors" else wf.raw
    except CheckpointError as exc:
        raise EmbeddingError(str(exc)) from None
    if isinstance(data, torch.Tensor):
        return {"": data}
    if not isinstance(data, Mapping):
        raise EmbeddingError(f"{path.name} holds a {type(data).__name__}, not embedding vectors")
    return dict(data)


def parse(name: str, path: Path, allow_pickle: bool | None = None) -> Embedding:
    """The vectors of an embedding file (see the module docstring for the layouts)."""
    data = _read(path, allow_pickle)
    what = f"embedding {name!r} ({path.name})"
    if any(k in data for k in ("clip_l", "clip_g", "clip_h")):
        parts = {k: _as_matrix(v, what) for k, v in data.items() if k in ("clip_l", "clip_g", "clip_h")
                 and isinstance(v, torch.Tensor)}
        return Embedding(name, str(path), parts)
    if isinstance(data.get("string_to_param"), Mapping):
        params = [v for v in data["string_to_param"].values() if isinstance(v, torch.Tensor)]
        if len(params) != 1:
            raise EmbeddingError(f"{what}: string_to_param holds {len(params)} tensors; expected one")
        return Embedding(name, str(path), {"": _as_matrix(params[0], what)})
    if isinstance(data.get("emb_params"), torch.Tensor):
        return Embedding(name, str(path), {"": _as_matrix(data["emb_params"], what)})
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return Embedding(name, str(path), {"": _as_matrix(tensors[0], what)})
    keys = ", ".join(sorted(map(str, data))[:6])
    raise EmbeddingError(f"{what} is not a textual-inversion embedding Chisel knows (expected string_to_param, "
                         f"emb_params, clip_l/clip_g or a single tensor; found keys {keys})")


_cache: dict[tuple, Embedding] = {}
_cache_lock = threading.Lock()


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def load(name: str, path: Path, allow_pickle: bool | None = None) -> Embedding:
    key = (*_identity(path), allow_pickle)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    emb = parse(name, path, allow_pickle)
    with _cache_lock:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = emb
    return emb


def _candidates(name: str) -> list[str]:
    return [name + ext for ext in EXTENSIONS if ext or Path(name).suffix.lower() in EXTENSIONS[1:]]


def resolve(paths: Any, name: str) -> Path:
    """The file of an embedding name in the embeddings folder(s) (``paths``: :class:`graph.paths.ModelPaths`)."""
    from graph.paths import FileNotFoundInFolders

    if paths is None:
        raise EmbeddingError(f"embedding {name!r}: no embeddings folder is configured")
    for cand in _candidates(name):
        try:
            return paths.resolve("embeddings", cand)
        except FileNotFoundInFolders:
            continue
    dirs = ", ".join(str(d) for d in paths.dirs("embeddings")) or "(no folder configured)"
    have = paths.list("embeddings")
    shown = ", ".join(have[:20]) + (" ..." if len(have) > 20 else "") if have else "none"
    raise EmbeddingError(f"embedding {name!r} not found; looked in {dirs}; available: {shown}")


class EmbeddingLookup:
    """What :meth:`nodes.memory.handles.ClipHandle.encode` asks for ``embedding:name`` words."""

    def __init__(self, paths: Any, allow_pickle: bool | None = None):
        self.paths = paths
        self.allow_pickle = allow_pickle

    def get(self, name: str) -> Embedding:
        return load(name, resolve(self.paths, name), self.allow_pickle)

    def vectors(self, name: str, kind: str, width: int, family: str | None = None) -> torch.Tensor:
        """[n, width] vectors of ``name`` for a text encoder of ``kind`` (clip_l | open_clip) and ``width``."""
        emb = self.get(name)
        keys = _KIND_KEYS.get(kind, ())
        part = next((emb.parts[k] for k in keys if k in emb.parts), None)
        label = "clip_g" if kind == "open_clip" and family in ("sdxl", "sdxl_refiner") else kind
        if part is None:
            part = emb.parts.get("")
        if part is None:
            raise EmbeddingError(f"embedding {name!r} ({Path(emb.path).name}) has vectors for "
                                 f"{', '.join(sorted(emb.parts))} but none for this model's {label} text encoder")
        if part.shape[1] != width:
            raise EmbeddingError(
                f"embedding {name!r} ({Path(emb.path).name}) has {part.shape[1]}-wide vectors, but this model's "
                f"{label} text encoder takes {width}-wide ones: it was made for another model family")
        return part


def fingerprint(names: list[str], paths: Any = None) -> list | None:
    """The identities of the files ``names`` resolve to in the embeddings folders of ``paths``."""
    if not names:
        return None
    if paths is None:
        from graph.paths import ModelPaths

        paths = ModelPaths()
    folder_sets = [tuple(Path(d) for d in paths.dirs("embeddings"))]
    out = []
    for name in names:
        found = []
        for dirs in folder_sets:
            for base in dirs:
                for cand in _candidates(name):
                    p = (base / cand)
                    if p.is_file():
                        found.append(list(_identity(p.resolve())))
                        break
        out.append([name, sorted(found)])
    return out

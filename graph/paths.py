"""Where files live: the models folders (checkpoints, loras, vae, embeddings, ...), input, output and temp.

Every folder kind maps to one or more directories; a file is given by its name relative to one of them (``sd15.safetensors``,
``sub/model.safetensors``) or, where allowed, by a path. The root defaults to ``$CHISEL_HOME`` or the current
directory, so a fresh clone finds ``models/checkpoints`` beside the workflows.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FOLDERS: dict[str, str] = {
    "checkpoints": "models/checkpoints",
    "loras": "models/loras",
    "vae": "models/vae",
    "embeddings": "models/embeddings",
    "controlnet": "models/controlnet",
    "upscale_models": "models/upscale_models",
    "gligen": "models/gligen",
    "configs": "models/configs",
    "unet": "models/unet",
    "clip": "models/clip",
    "custom_nodes": "custom_nodes",
    "input": "input",
    "output": "output",
    "temp": "temp",
}

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
MODEL_KINDS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models", "gligen")


class FileNotFoundInFolders(FileNotFoundError):
    def __init__(self, kind: str, name: str, looked_in: list[Path], available: list[str]):
        self.kind, self.name, self.looked_in, self.available = kind, name, looked_in, available
        where = ", ".join(str(p) for p in looked_in) or "(no folder configured)"
        have = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "") if available else "none"
        super().__init__(f"{kind} file {name!r} not found; looked in {where}; available: {have}")


MAX_NAME_BYTES = 255  # per path component, as file systems allow
MAX_PATH_BYTES = 4096


class InvalidFileName(FileNotFoundInFolders):
    """A name no file can have (a NUL byte, a component over 255 bytes): refused before the file system sees it."""

    def __init__(self, kind: str, name: str, reason: str):
        FileNotFoundError.__init__(self, f"{kind} file name is not valid: {reason}")
        self.kind, self.name, self.looked_in, self.available = kind, name, [], []


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a file, or None."""
    if "\x00" in name:
        return "it contains a NUL byte"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode text"
    if not encoded:
        return "it is empty"
    if len(encoded) > MAX_PATH_BYTES:
        return f"it is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.replace(b"\\", b"/").split(b"/")):
        return f"a part of it is longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass
class ModelPaths:
    root: Path = field(default_factory=lambda: Path(os.environ.get("CHISEL_HOME") or Path.cwd()))
    folders: dict[str, list[Path]] = field(default_factory=dict)
    allow_paths: bool = True  # accept absolute/relative paths besides names (the CLI does; the server does not)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        merged: dict[str, list[Path]] = {k: [self.root / v] for k, v in DEFAULT_FOLDERS.items()}
        for kind, dirs in self.folders.items():
            merged[kind] = [Path(d) if Path(d).is_absolute() else self.root / d for d in dirs]
        self.folders = merged

    @classmethod
    def from_mapping(cls, root: Path | str | None = None, folders: Mapping[str, Iterable[str | Path]] | None = None,
                     allow_paths: bool = True) -> "ModelPaths":
        kw: dict = {"allow_paths": allow_paths, "folders": {k: list(v) for k, v in (folders or {}).items()}}
        if root is not None:
            kw["root"] = Path(root)
        return cls(**kw)

    def dirs(self, kind: str) -> list[Path]:
        return list(self.folders.get(kind, []))

    def dir(self, kind: str) -> Path:
        """The first (writable) directory of a kind, created if missing."""
        dirs = self.dirs(kind)
        if not dirs:
            raise KeyError(f"no folder configured for {kind!r}")
        dirs[0].mkdir(parents=True, exist_ok=True)
        return dirs[0]

    def list(self, kind: str, extensions: Iterable[str] = ()) -> list[str]:
        exts = tuple(e.lower() for e in extensions) or (MODEL_EXTENSIONS if kind in MODEL_KINDS else ())
        names: set[str] = set()
        for base in self.dirs(kind):
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                if path.is_file() and not path.name.startswith(".") and (not exts or path.suffix.lower() in exts):
                    names.add(path.relative_to(base).as_posix())
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """The file a name refers to. Names never escape their folder; paths are accepted only if allowed."""
        name = str(name)
        problem = name_problem(name)
        if problem is not None:
            raise InvalidFileName(kind, name, problem)
        for base in self.dirs(kind):
            candidate = (base / name).resolve()
            if _is_file(candidate) and _inside(candidate, base.resolve()):
                return candidate
        if self.allow_paths:
            try:
                path = Path(name).expanduser()
            except RuntimeError:  # "~someone" with no such user
                path = Path(name)
            if _is_file(path):
                return path.resolve()
        raise FileNotFoundInFolders(kind, name, self.dirs(kind), self.list(kind))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False


def file_identity(path: Path) -> dict:
    """What identifies a file's content for caching: its path, size and modification time."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

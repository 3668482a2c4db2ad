"""Files that appear under their final name only when complete: written to a temporary name beside the target
(``.NAME.XXXXXXXX.part``), fsynced, then linked to the final name (never replacing a file that is there) and the
folder fsynced. A write that fails, or a process killed mid-write, leaves no file under the final name — at most a
``.part`` file, which the server removes when it starts.

The two halves are apart too (:func:`stage`, :func:`publish`): the server stages a prompt's files, journals its
result together with the staged names, then publishes them, so a kill at any point leaves either a prompt to re-run
and no file under a final name, or a finished prompt whose staged files the next start publishes — never a file of
a prompt that is then run again.

One helper for every writer: the server's background file writer and the nodes that write in place (the CLI).
It lives in ``graph/`` because both ``nodes/`` and ``server/`` may import ``graph/`` (and ``nodes/`` never imports
``server/``).
"""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PART_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.part$")  # the temporary names written here (and by uploads)


def part_path(path: Path) -> Path:
    """A fresh temporary name for ``path``, in the same folder (so the rename stays on one filesystem)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` writes the file's content to ``tmp``; then it becomes ``path``. Raises ``FileExistsError``
    when ``path`` exists (nothing is replaced), or whatever ``write`` raised; either way the temporary file is gone
    and nothing is left under ``path``."""
    path = Path(path)
    publish(stage(path, write), path)
    return path


def stage(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """The first half of :func:`write_atomically`: ``write(tmp)``, fsynced, under a temporary name beside ``path``;
    returns that name (:func:`publish` or :func:`discard` it). Raises whatever ``write`` raised, leaving nothing."""
    tmp = part_path(Path(path))
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        discard(tmp)
        raise
    return tmp


def publish(tmp: Path, path: str | Path) -> None:
    """The second half: a staged file becomes ``path`` (``FileExistsError`` when ``path`` exists: nothing is
    replaced), durably; the temporary name is gone either way."""
    path = Path(path)
    try:
        _publish(tmp, path)
        fsync_dir(path.parent)
    finally:
        discard(tmp)


def discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _publish(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # never clobbers a file that appeared meanwhile
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

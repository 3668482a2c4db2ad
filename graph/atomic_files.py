"""Files that appear under their final name only when complete: written to a temporary name beside the target
(``.NAME.XXXXXXXX.part``), fsynced, then linked to the final name (never replacing a file that is there) and the
folder fsynced. A write that fails, or a process killed mid-write, leaves no file under the final name — at most a
``.part`` file, which the server removes when it starts.

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
    tmp = part_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path)
        fsync_dir(path.parent)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return path


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

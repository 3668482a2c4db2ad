"""Unique output file names across workers.

Saving nodes pick ``prefix_NNNNN_.png`` by listing their output folder and taking the next free counter; with many
workers two of them could pick the same name. Every name a worker means to write is reserved here first, in one Ray
actor that the server seeds with the files its folders hold already. A refused reservation answers with every name
known in that folder, so that a worker far from the server's disk learns them in one round trip.
"""
from __future__ import annotations

import os
from pathlib import Path


def listing(folder: Path) -> dict[str, list[str]]:
    """``{subfolder: [file names]}`` under ``folder`` (subfolder "" for the folder itself)."""
    out: dict[str, list[str]] = {}
    if not folder.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder).as_posix()
        out[rel if rel != "." else ""] = [f for f in filenames if not f.startswith(".")]
    return out


class NameBook:
    """The reservations: ``kind`` ("output", "temp") -> subfolder -> names taken (files or reserved)."""

    def __init__(self, seed: dict[str, dict[str, list[str]]] | None = None):
        self.taken: dict[str, dict[str, set[str]]] = {}
        for kind, folders in (seed or {}).items():
            for sub, names in folders.items():
                self.taken.setdefault(kind, {}).setdefault(sub, set()).update(names)

    def reserve(self, kind: str, subfolder: str, name: str) -> list[str] | None:
        """None when ``name`` was free and is now reserved; else the names taken in that folder."""
        names = self.taken.setdefault(kind, {}).setdefault(subfolder, set())
        if name in names:
            return sorted(names)
        names.add(name)
        return None

"""The result cache: node outputs keyed by content, bounded in bytes, least-recently-used out first.

A key is a hash of the node's type and version, its literal inputs, the identity of the files it reads, and
its upstream nodes' keys (never node ids), so the same computation is found again in any workflow. RAM and
device memory are budgeted apart. Sizes are measured by duck typing (``nbytes`` and ``device`` as tensors
and arrays have them, or ``__chisel_nbytes__()`` returning ``{"ram": n, "device": m}``), so the engine needs no
torch.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

RAM, DEVICE = "ram", "device"


_SCALARS = (bool, int, float, str, type(None))


def _literal_digest(value: Any) -> str:
    if type(value) in _SCALARS:
        return "v:" + type(value).__name__[0] + repr(value)
    return "j:" + json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def compute_key(type_name: str, version: int, literals: dict[str, Any], upstream: dict[str, tuple[str, int]],
                files: dict[str, dict], fingerprint: Any = None) -> tuple[str, dict[str, str]]:
    """The cache key, and per-input component digests (used to explain what changed)."""
    components: dict[str, str] = {name: _literal_digest(value) for name, value in literals.items()}
    for name, (key, idx) in upstream.items():
        components[name] = f"l:{key}:{idx}"
    for name, ident in files.items():
        components[name] = components.get(name, "") + "|f:" + json.dumps(ident, sort_keys=True)
    if fingerprint is not None:
        components["<fingerprint>"] = "x:" + json.dumps(fingerprint, sort_keys=True, default=repr)
    payload = "\x1e".join([type_name, str(version)] + [f"{k}\x1f{v}" for k, v in sorted(components.items())])
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest(), components


def estimate_nbytes(obj: Any, _depth: int = 0) -> dict[str, int]:
    """Bytes held by a value, split into RAM and device memory."""
    sizes = {RAM: 0, DEVICE: 0}
    if _depth > 6 or obj is None or isinstance(obj, (bool, int, float)):
        return sizes
    custom = getattr(obj, "__chisel_nbytes__", None)
    if callable(custom):
        for pool, n in custom().items():
            sizes[pool] = sizes.get(pool, 0) + int(n)
        return sizes
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(obj, (bytes, bytearray)):
        device = getattr(obj, "device", None)
        pool = DEVICE if device is not None and getattr(device, "type", "cpu") not in ("cpu", "meta") else RAM
        sizes[pool] += nbytes
        return sizes
    if isinstance(obj, (str, bytes, bytearray)):
        sizes[RAM] += len(obj)
        return sizes
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set, frozenset)) else None
    if items is None:
        sizes[RAM] += sys.getsizeof(obj)
        return sizes
    for item in items:
        for pool, n in estimate_nbytes(item, _depth + 1).items():
            sizes[pool] += n
    return sizes


@dataclass
class CacheEntry:
    outputs: tuple
    ui: dict[str, Any]
    sizes: dict[str, int]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {RAM: 0, DEVICE: 0})
    budgets: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": self.entries,
                "bytes": dict(self.bytes), "budgets": dict(self.budgets)}


class ResultCache:
    def __init__(self, ram_bytes: int = 8 << 30, device_bytes: int = 4 << 30):
        self.budgets = {RAM: int(ram_bytes), DEVICE: int(device_bytes)}
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._used = {RAM: 0, DEVICE: 0}
        self._stats = CacheStats()
        self._evicted: set[str] = set()
        self._lock = threading.RLock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return entry

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def was_evicted(self, key: str) -> bool:
        return key in self._evicted

    def put(self, key: str, outputs: tuple, ui: dict[str, Any] | None = None) -> None:
        sizes = estimate_nbytes(outputs)
        entry = CacheEntry(tuple(outputs), dict(ui or {}), sizes)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._account(old, -1)
            if any(sizes.get(p, 0) > self.budgets.get(p, 0) for p in sizes):
                return  # larger than the whole budget: never cached
            self._entries[key] = entry
            self._evicted.discard(key)
            self._account(entry, +1)
            self._evict()

    def _account(self, entry: CacheEntry, sign: int) -> None:
        for pool, n in entry.sizes.items():
            self._used[pool] = self._used.get(pool, 0) + sign * n

    def _evict(self) -> None:
        while any(self._used[p] > self.budgets[p] for p in self._used) and self._entries:
            key, entry = self._entries.popitem(last=False)
            self._account(entry, -1)
            self._remember_evicted(key)
            self._stats.evictions += 1

    def _remember_evicted(self, key: str) -> None:
        """Evicted keys are remembered (boundedly) only to explain a re-run."""
        if len(self._evicted) >= 50_000:
            self._evicted.clear()
        self._evicted.add(key)

    def clear(self) -> None:
        with self._lock:
            for key in self._entries:
                self._remember_evicted(key)
            self._entries.clear()
            self._used = {RAM: 0, DEVICE: 0}

    def stats(self) -> CacheStats:
        with self._lock:
            s = self._stats
            return CacheStats(s.hits, s.misses, s.evictions, len(self._entries), dict(self._used), dict(self.budgets))

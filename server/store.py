"""The durable queue and history: one SQLite table of prompts, written through before any reply.

Every prompt is one row from submission to deletion; its ``status`` moves
``queued -> running -> success | error | interrupted`` (or ``queued -> cancelled``). The queue is the ``queued``
rows ordered by ``priority`` then ``number``; the history is every row, newest first. Nothing about the queue
lives only in memory: the worker claims the next row in a transaction, and results are written when a prompt's
files are on disk.

Crash recovery (:meth:`Store.recover`, at start-up): a row still ``running`` belonged to a server that died
mid-prompt. It is put back at the head of the queue once; a prompt that was running at two crashes in a row is
marked ``error`` (kind ``server_crashed``) so that a prompt which kills the server cannot crash-loop it.

Durability: WAL journal with ``synchronous=FULL`` (each commit is on disk when it returns). One connection,
serialised by a lock, is shared by the event loop's helper thread, the worker and the finisher; a lock file
keeps a second server off the same database.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

SCHEMA_VERSION = 1
MAX_CRASH_ATTEMPTS = 2  # a prompt found running after this many starts is failed, not re-queued

QUEUED, RUNNING, SUCCESS, ERROR, INTERRUPTED, CANCELLED = "queued", "running", "success", "error", "interrupted", "cancelled"
FINISHED_STATES = (SUCCESS, ERROR, INTERRUPTED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    number      INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order, never reused
    prompt_id   TEXT NOT NULL UNIQUE,
    priority    REAL NOT NULL,                      -- queue order among queued rows (then number)
    status      TEXT NOT NULL,
    client_id   TEXT,
    workflow    TEXT NOT NULL,                      -- native workflow JSON, overrides applied
    prompt_api  TEXT,                               -- ComfyUI API form (as submitted, or converted)
    extra_data  TEXT,                               -- JSON object handed to the engine as `extra`
    outputs     TEXT,                               -- JSON list: the output node ids to compute
    created     REAL NOT NULL,
    started     REAL,
    finished    REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,         -- times a worker started it
    result      TEXT                                -- JSON: outputs, timings, errors, resolved, executed, ...
);
CREATE INDEX IF NOT EXISTS prompts_queue ON prompts(status, priority, number);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- prompts whose run is over and whose files are being published (see journal()): their result, then their files
CREATE TABLE IF NOT EXISTS finishing (prompt_id TEXT PRIMARY KEY, status TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS staged_files (prompt_id TEXT NOT NULL, tmp TEXT NOT NULL, path TEXT NOT NULL);
"""

_LIGHT = "number, prompt_id, priority, status, client_id, created, started, finished, attempts"
_JSON_COLUMNS = ("workflow", "prompt_api", "extra_data", "outputs", "result")


class StoreLocked(RuntimeError):
    """Another server process holds this database."""


class QueueFull(RuntimeError):
    pass


class NotFound(KeyError):
    pass


class Conflict(RuntimeError):
    """The prompt is not in a state that allows the operation (e.g. deleting a running prompt's history)."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


def _row(cur: sqlite3.Cursor, values: tuple) -> dict[str, Any]:
    out = {}
    for (name, *_), value in zip(cur.description, values):
        if name in _JSON_COLUMNS and value is not None:
            value = json.loads(value)
        out[name] = value
    return out


class Store:
    def __init__(self, path: str | Path, max_queue: int = 1000, max_history: int = 10_000, max_age: float = 0.0,
                 on_drop: Callable[[list[dict[str, Any]]], None] | None = None):
        """``max_history`` finished prompts are kept, none older than ``max_age`` seconds (0: no age limit);
        ``on_drop`` receives the results of entries retention removed (after their transaction commits)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_queue, self.max_history, self.max_age, self.on_drop = max_queue, max_history, max_age, on_drop
        self._lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLocked(f"{self.path} is in use by another Chisel server; stop it or use another --root") from None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(found[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer Chisel (schema {found[0]})")
        self.closed = False

    # -- plumbing -----------------------------------------------------------------------------------------
    def _tx(self):
        store = self

        class _Tx:
            def __enter__(self_inner):
                store._lock.acquire()
                store._db.execute("BEGIN IMMEDIATE")
                return store._db

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
                finally:
                    store._lock.release()
                return False

        return _Tx()

    def _query(self, sql: str, args: Iterable = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, tuple(args))
            return [_row(cur, r) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._db.close()
            os.close(self._lock_fd)

    # -- start-up -------------------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Handle prompts left ``running`` by a server that died; return {"requeued": [...], "failed": [...]}."""
        requeued, failed = [], []
        now = time.time()
        with self._tx() as db:
            for number, prompt_id, attempts in db.execute(
                    "SELECT number, prompt_id, attempts FROM prompts WHERE status=? ORDER BY number", (RUNNING,)).fetchall():
                if attempts < MAX_CRASH_ATTEMPTS:
                    db.execute("UPDATE prompts SET status=?, started=NULL WHERE number=?", (QUEUED, number))
                    requeued.append(prompt_id)
                else:
                    error = {"kind": "server_crashed", "value": attempts, "message":
                             f"the server stopped while running this prompt {attempts} times; it was not re-run again"}
                    result = {"outputs": {}, "timings": {}, "errors": [error], "resolved": {}, "executed": [],
                              "cached": [], "skipped": []}
                    db.execute("UPDATE prompts SET status=?, finished=?, result=? WHERE number=?",
                               (ERROR, now, json.dumps(result), number))
                    failed.append(prompt_id)
        return {"requeued": requeued, "failed": failed}

    # -- the queue ------------------------------------------------------------------------------------------
    def add(self, prompt_id: str, workflow: dict, *, client_id: str | None = None, prompt_api: dict | None = None,
            extra_data: dict | None = None, outputs: list[str] | None = None, front: bool = False,
            priority: float | None = None) -> int:
        """Queue a prompt durably; return its number. Raises QueueFull or Conflict (prompt id taken)."""
        now = time.time()
        with self._tx() as db:
            (pending,) = db.execute("SELECT COUNT(*) FROM prompts WHERE status=?", (QUEUED,)).fetchone()
            if pending >= self.max_queue:
                raise QueueFull(f"the queue is full ({pending} prompts waiting; the limit is {self.max_queue})")
            if db.execute("SELECT 1 FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone():
                raise Conflict(f"prompt id {prompt_id!r} is already taken", "exists")
            cur = db.execute(
                "INSERT INTO prompts (prompt_id, priority, status, client_id, workflow, prompt_api, extra_data, outputs, "
                "created) VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, QUEUED, client_id, json.dumps(workflow), _dump(prompt_api), _dump(extra_data),
                 _dump(outputs), now))
            number = cur.lastrowid
            if front:
                (low,) = db.execute("SELECT MIN(priority) FROM prompts WHERE status=?", (QUEUED,)).fetchone()
                priority = min(low if low is not None else number, number) - 1
            elif priority is None:
                priority = number
            db.execute("UPDATE prompts SET priority=? WHERE number=?", (priority, number))
        return number

    def claim_next(self) -> dict[str, Any] | None:
        """Mark the head of the queue running and return its full row (None when the queue is empty)."""
        with self._tx() as db:
            cur = db.execute("SELECT * FROM prompts WHERE status=? ORDER BY priority, number LIMIT 1", (QUEUED,))
            found = cur.fetchone()
            if found is None:
                return None
            row = _row(cur, found)
            row["status"], row["started"], row["attempts"] = RUNNING, time.time(), row["attempts"] + 1
            db.execute("UPDATE prompts SET status=?, started=?, attempts=? WHERE number=?",
                       (RUNNING, row["started"], row["attempts"], row["number"]))
            return row

    def claim_matching(self, fits: Callable[[dict[str, Any]], bool], limit: int, scan: int = 64) -> list[dict[str, Any]]:
        """Mark running, and return, up to ``limit`` queued prompts for which ``fits(row)`` holds, looking at the
        first ``scan`` of the queue, in queue order (the prompts that join a batch: server.batching)."""
        if limit <= 0:
            return []
        claimed = []
        with self._tx() as db:
            cur = db.execute("SELECT * FROM prompts WHERE status=? ORDER BY priority, number LIMIT ?", (QUEUED, scan))
            for found in cur.fetchall():
                row = _row(cur, found)
                if not fits(row):
                    continue
                row["status"], row["started"], row["attempts"] = RUNNING, time.time(), row["attempts"] + 1
                db.execute("UPDATE prompts SET status=?, started=?, attempts=? WHERE number=?",
                           (RUNNING, row["started"], row["attempts"], row["number"]))
                claimed.append(row)
                if len(claimed) >= limit:
                    break
        return claimed

    def requeue(self, prompt_id: str, count_attempt: bool = False) -> None:
        """Put a running prompt back at its place in the queue. A graceful stop interrupted it: no attempt used;
        ``count_attempt``: the worker running it died (a cluster re-runs it), the attempt counts."""
        used = "attempts" if count_attempt else "MAX(attempts-1, 0)"
        with self._tx() as db:
            db.execute(f"UPDATE prompts SET status=?, started=NULL, attempts={used} "
                       "WHERE prompt_id=? AND status=?", (QUEUED, prompt_id, RUNNING))
            db.execute("DELETE FROM finishing WHERE prompt_id=?", (prompt_id,))
            db.execute("DELETE FROM staged_files WHERE prompt_id=?", (prompt_id,))

    def finish(self, prompt_id: str, status: str, result: dict[str, Any]) -> None:
        """Record a prompt's result (and forget its :meth:`journal`)."""
        with self._tx() as db:
            db.execute("UPDATE prompts SET status=?, finished=?, result=? WHERE prompt_id=?",
                       (status, time.time(), json.dumps(result, default=repr), prompt_id))
            db.execute("DELETE FROM finishing WHERE prompt_id=?", (prompt_id,))
            db.execute("DELETE FROM staged_files WHERE prompt_id=?", (prompt_id,))
            dropped = self._prune(db)
        self._dropped(dropped)

    def journal(self, prompt_id: str, status: str, result: dict[str, Any], staged: list[tuple[str, str]]) -> None:
        """Before a finished prompt's files go under their final names: its result and its files as (temporary
        name, final name), in one transaction. The prompt stays ``running`` until :meth:`finish`; a server killed in
        between publishes the files and records the result at its next start (:meth:`journaled`) instead of
        running the prompt again."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO finishing (prompt_id, status, result) VALUES (?, ?, ?)",
                       (prompt_id, status, json.dumps(result, default=repr)))
            db.execute("DELETE FROM staged_files WHERE prompt_id=?", (prompt_id,))
            db.executemany("INSERT INTO staged_files (prompt_id, tmp, path) VALUES (?, ?, ?)",
                           [(prompt_id, tmp, path) for tmp, path in staged])

    def journaled(self) -> list[tuple[str, str, dict[str, Any], list[tuple[str, str]]]]:
        """(prompt id, status, result, staged files) of every prompt :meth:`journal` left unfinished."""
        with self._tx() as db:
            rows = db.execute("SELECT prompt_id, status, result FROM finishing ORDER BY rowid").fetchall()
            files: dict[str, list[tuple[str, str]]] = {}
            for pid, tmp, path in db.execute("SELECT prompt_id, tmp, path FROM staged_files ORDER BY rowid"):
                files.setdefault(pid, []).append((tmp, path))
        return [(pid, status, json.loads(result), files.get(pid, [])) for pid, status, result in rows]

    def prune(self) -> int:
        """Apply the retention limits now (entries age while nothing finishes); return how many were dropped."""
        with self._tx() as db:
            dropped = self._prune(db)
        self._dropped(dropped)
        return len(dropped)

    def _prune(self, db: sqlite3.Connection) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(FINISHED_STATES))
        numbers: list[int] = []
        if self.max_age > 0:
            numbers += [r[0] for r in db.execute(f"SELECT number FROM prompts WHERE status IN ({marks}) AND "
                                                 "finished < ?", (*FINISHED_STATES, time.time() - self.max_age))]
        (done,) = db.execute(f"SELECT COUNT(*) FROM prompts WHERE status IN ({marks})", FINISHED_STATES).fetchone()
        excess = done - len(numbers) - self.max_history
        if excess > 0:
            aged = set(numbers)
            oldest = db.execute(f"SELECT number FROM prompts WHERE status IN ({marks}) ORDER BY number LIMIT ?",
                                (*FINISHED_STATES, excess + len(aged)))
            numbers += [n for (n,) in oldest if n not in aged][:excess]
        dropped = []
        for number in numbers:
            (result,) = db.execute("SELECT result FROM prompts WHERE number=?", (number,)).fetchone()
            dropped.append(json.loads(result) if result else {})
            db.execute("DELETE FROM prompts WHERE number=?", (number,))
        return dropped

    def _dropped(self, results: list[dict[str, Any]]) -> None:
        if results and self.on_drop is not None:
            self.on_drop(results)

    def cancel(self, prompt_ids: Iterable[str] | None = None) -> list[str]:
        """Cancel queued prompts (all of them when ``prompt_ids`` is None); return the ids cancelled."""
        now = time.time()
        with self._tx() as db:
            if prompt_ids is None:
                ids = [r[0] for r in db.execute("SELECT prompt_id FROM prompts WHERE status=?", (QUEUED,))]
            else:
                ids = [pid for pid in prompt_ids
                       if db.execute("SELECT 1 FROM prompts WHERE prompt_id=? AND status=?", (pid, QUEUED)).fetchone()]
            result = json.dumps({"outputs": {}, "timings": {}, "errors": [], "resolved": {}, "executed": [],
                                 "cached": [], "skipped": []})
            for pid in ids:
                db.execute("UPDATE prompts SET status=?, finished=?, result=? WHERE prompt_id=?",
                           (CANCELLED, now, result, pid))
            dropped = self._prune(db)
        self._dropped(dropped)
        return ids

    def move(self, prompt_id: str, position: int) -> None:
        """Move a queued prompt to ``position`` (0 = next to run; clamped to the queue's length)."""
        with self._tx() as db:
            rows = db.execute("SELECT prompt_id, priority FROM prompts WHERE status=? ORDER BY priority, number",
                              (QUEUED,)).fetchall()
            ids = [r[0] for r in rows]
            if prompt_id not in ids:
                status = db.execute("SELECT status FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone()
                if status is None:
                    raise NotFound(prompt_id)
                raise Conflict(f"prompt {prompt_id} is {status[0]}, not queued", status[0])
            ids.remove(prompt_id)
            position = max(0, min(int(position), len(ids)))
            ids.insert(position, prompt_id)
            base = min(r[1] for r in rows)
            # Renumber the queued rows within [base, base + 1): base is at most the number of a queued row, so
            # every later submission (a larger number) still queues behind them.
            for i, pid in enumerate(ids):
                db.execute("UPDATE prompts SET priority=? WHERE prompt_id=?", (base + i / len(ids), pid))

    # -- reading --------------------------------------------------------------------------------------------
    def queue(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(running, queued) rows, light columns, in run order."""
        running = self._query(f"SELECT {_LIGHT} FROM prompts WHERE status=? ORDER BY started, number", (RUNNING,))
        pending = self._query(f"SELECT {_LIGHT} FROM prompts WHERE status=? ORDER BY priority, number", (QUEUED,))
        return running, pending

    def queue_full(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Like :meth:`queue`, with every column (ComfyUI's queue lists the prompts themselves)."""
        running = self._query("SELECT * FROM prompts WHERE status=? ORDER BY started, number", (RUNNING,))
        pending = self._query("SELECT * FROM prompts WHERE status=? ORDER BY priority, number", (QUEUED,))
        return running, pending

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM prompts GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM prompts WHERE prompt_id=?", (prompt_id,))
        return rows[0] if rows else None

    def history(self, limit: int = 50, offset: int = 0, statuses: Iterable[str] | None = None,
                newest_first: bool = True) -> list[dict[str, Any]]:
        where, args = "", []
        if statuses is not None:
            statuses = list(statuses)
            where = "WHERE status IN (" + ",".join("?" * len(statuses)) + ")"
            args = statuses
        order = "DESC" if newest_first else "ASC"
        return self._query(f"SELECT * FROM prompts {where} ORDER BY number {order} LIMIT ? OFFSET ?",
                           (*args, int(limit), int(offset)))

    def delete(self, prompt_ids: Iterable[str] | None = None) -> list[str]:
        """Delete finished prompts from the history (all finished ones when ``prompt_ids`` is None)."""
        with self._tx() as db:
            marks = ",".join("?" * len(FINISHED_STATES))
            if prompt_ids is None:
                ids = [r[0] for r in db.execute(f"SELECT prompt_id FROM prompts WHERE status IN ({marks})",
                                                FINISHED_STATES)]
            else:
                ids = []
                for pid in prompt_ids:
                    found = db.execute("SELECT status FROM prompts WHERE prompt_id=?", (pid,)).fetchone()
                    if found is not None and found[0] in FINISHED_STATES:
                        ids.append(pid)
            for pid in ids:
                db.execute("DELETE FROM prompts WHERE prompt_id=?", (pid,))
        return ids


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)

"""The executor's event stream. The CLI, the server and the tests all consume these.

Event types, in the order a run emits them:
``started`` (run_id, nodes planned) → ``cached`` (node ids served from the cache) → for each node that runs:
``executing`` (node_id, reason) → ``progress`` (node_id, value, max, preview?, activity?, stage?) ... →
``executed`` (node_id, ui, seconds) or ``error`` (node_id, error) → finally ``interrupted`` (node_id, ui?: files a
node wrote before it stopped) and/or ``finished`` (status).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

STARTED = "started"
CACHED = "cached"
EXECUTING = "executing"
PROGRESS = "progress"
EXECUTED = "executed"
ERROR = "error"
INTERRUPTED = "interrupted"
FINISHED = "finished"

EVENT_TYPES = (STARTED, CACHED, EXECUTING, PROGRESS, EXECUTED, ERROR, INTERRUPTED, FINISHED)


@dataclass
class Event:
    type: str
    run_id: str | None = None
    node_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a progress preview, which may be an image object, is left out)."""
        data = {k: v for k, v in self.data.items() if k != "preview"}
        return {"type": self.type, "run_id": self.run_id, "node_id": self.node_id, "time": self.time, **data}


EventCallback = Callable[[Event], None]

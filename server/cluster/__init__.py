"""Scale-out on Ray: one durable queue and one API in front of many workers.

The server keeps the SQLite queue and history, the HTTP/WebSocket API, auth and the output folder; prompts run in
Ray actors (:mod:`.actor`), one per GPU or ``--cluster-workers`` CPU workers, each with its own engine, result
cache and model manager. :class:`.dispatcher.ClusterWorker` stands in for the single worker thread: it assigns
queued prompts to idle workers (checkpoint affinity first), streams their events to the WebSocket hub, writes their
files, re-runs a prompt once when its worker dies, and passes interrupts and ``/free`` on.

Importing this package does not import Ray; :mod:`.options` and :mod:`.runtime` never do. Ray is the optional
extra ``chisel[ray]``.
"""
from .options import ClusterOptions, ClusterUnavailable, parse_cluster_target, ray_available
from .runtime import RuntimeSpec

__all__ = ["ClusterOptions", "ClusterUnavailable", "RuntimeSpec", "parse_cluster_target", "ray_available"]

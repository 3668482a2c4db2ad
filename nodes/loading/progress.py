"""A loader's progress, reported stage by stage through the node's ``ctx.progress`` (so an interrupt stops a load
between stages, and clients show "loading" with the stage on the node, as they show sampling steps).

A loader names its stages up front; entering stage ``i`` of ``n`` reports ``progress(i, n, activity="loading",
stage=name)``: ``i`` stages are done and ``name`` is under way. Nothing is reported after the last stage starts: the
loader then finishes and hands its result to the model manager without a point where an interrupt could leave it
half-registered.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Report = Callable[..., Any]  # ctx.progress: (value, total, preview=None, *, activity=None, stage=None)

IMPORTING = "importing the model libraries"
READING = "reading the file"


def one_of(report: Report | None, index: int, count: int, label: str) -> Report | None:
    """``report`` for one of ``count`` loads made in a row (a DualCLIPLoader's two files): load ``index``'s stage
    ``i`` of ``n`` is reported as ``index * n + i`` of ``count * n``, its stage name followed by ``(label)``."""
    if report is None:
        return None

    def part(value, total, *args, stage=None, **kwargs):
        return report(index * total + value, count * total, *args,
                      stage=f"{stage} ({label})" if stage else stage, **kwargs)

    return part


class Stages:
    def __init__(self, names: Sequence[str], report: Report | None, activity: str = "loading"):
        self.names = tuple(names)
        self.report = report
        self.activity = activity

    def enter(self, name: str) -> None:
        """Stage ``name`` starts (raises ``Interrupted`` when the run was interrupted meanwhile)."""
        if self.report is not None:
            self.report(self.names.index(name), len(self.names), activity=self.activity, stage=name)

"""How a node is declared: typed inputs and outputs, metadata, and a ``run`` method.

    class AddInts(Node):
        type = "AddInts"
        category = "math"
        description = "a + b"
        inputs = (Input("a", INT, default=0), Input("b", INT, default=0, min=-10, max=10))
        outputs = (Output("sum", INT),)

        def run(self, ctx, a, b):
            return (a + b,)

``run`` receives the resolved inputs as keyword arguments (links replaced by upstream values, defaults filled
in) and returns a tuple with one value per output, or a :class:`NodeResult` when it also has something to show
(output nodes: files written, text). It reports progress and notices interrupts through ``ctx``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .types import BOOLEAN, COMBO, FLOAT, INT, STRING


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Input:
    """One input socket or widget of a node.

    ``choices`` is a static list or a callable taking the model paths (:class:`graph.paths.ModelPaths`) and
    returning the current list. ``files`` names a models folder kind ("checkpoints", "loras", "input", ...):
    the value is a file name looked up there (or a path), the choices are that folder's files, and the file's
    identity (path, size, mtime) becomes part of the node's cache key. ``seed`` marks a seed input: -1 means
    "pick one at random", resolved by the engine before caching and recorded with the outputs.
    """

    name: str
    type: str
    default: Any = NO_DEFAULT
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    choices: Sequence[str] | Callable[[Any], Sequence[str]] | None = None
    multiline: bool = False
    tooltip: str = ""
    optional: bool = False
    files: str | None = None
    seed: bool = False
    extensions: tuple[str, ...] = ()

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    @property
    def is_widget(self) -> bool:
        return self.type in (INT, FLOAT, STRING, BOOLEAN, COMBO)

    def resolve_choices(self, paths: Any) -> list[str] | None:
        if self.files is not None and self.choices is None:
            return list(paths.list(self.files, self.extensions)) if paths is not None else []
        if callable(self.choices):
            return list(self.choices(paths))
        return list(self.choices) if self.choices is not None else None

    def schema(self, paths: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.has_default:
            out["default"] = self.default
        for key in ("min", "max", "step", "round"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        choices = self.resolve_choices(paths)
        if choices is not None:
            out["choices"] = choices
        if self.multiline:
            out["multiline"] = True
        if self.tooltip:
            out["tooltip"] = self.tooltip
        if self.optional:
            out["optional"] = True
        if self.files:
            out["files"] = self.files
        if self.seed:
            out["seed"] = True
        return out


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    tooltip: str = ""

    def schema(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type}
        if self.tooltip:
            out["tooltip"] = self.tooltip
        return out


@dataclass
class NodeResult:
    """What a node returns when it has more than its outputs: ``ui`` is shown to the user (images written,
    text), in ComfyUI's shape, e.g. ``{"images": [{"filename": ..., "subfolder": ..., "type": "output"}]}``."""

    outputs: tuple = ()
    ui: dict[str, Any] = field(default_factory=dict)


class Interrupted(Exception):
    """Raised inside a node (by ``ctx.check_interrupted`` or ``ctx.progress``) when the run was interrupted. A node
    stopped part-way through writing files raises it with ``ui``: the files it did write, which the run's result
    still lists (so a history never misses a file that is on disk)."""

    def __init__(self, ui: dict[str, Any] | None = None):
        super().__init__("interrupted")
        self.ui = ui or {}


class RunContext(Protocol):
    """What a running node may use. Provided by the executor; nothing else is promised."""

    node_id: str
    run_id: str
    services: Any  # runtime services the caller gave the executor (device, model manager, folders, ...)
    registry: Any  # the node types this run resolves against (a graph.registry.NodeRegistry)

    @property
    def workflow(self) -> dict[str, Any]:
        """The workflow as run, in the native format, with the values the engine chose (random seeds) written in."""

    @property
    def extra(self) -> dict[str, Any]:
        """What the caller passed along with the run (the server: ``prompt_id``, ``client_id``, ComfyUI's
        ``extra_data``)."""

    def progress(self, value: float, total: float, preview: Any = None, *, activity: str | None = None,
                 stage: str | None = None) -> None:
        """Report progress (step ``value`` of ``total``); raises :class:`Interrupted` if interrupted. ``activity``
        says what the node does when it is not the default "running" (e.g. "loading", "saving"), ``stage`` what it
        does now ("building the UNet"); clients show both."""

    def check_interrupted(self) -> None:
        """Raise :class:`Interrupted` if the run was interrupted."""

    def file_path(self, input_name: str) -> Path:
        """The resolved path of a ``files`` input."""


class Node:
    """Base class of every node. Subclasses set the class attributes and implement :meth:`run`."""

    type: ClassVar[str]
    display_name: ClassVar[str | None] = None
    category: ClassVar[str] = "misc"
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    inputs: ClassVar[tuple[Input, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]] = ()
    output_node: ClassVar[bool] = False
    # Batching across prompts (see graph.batching): the literal inputs that may differ between prompts run as one
    # batch (a seed, a prompt text, a file name prefix). Prompts that differ elsewhere never share a batch.
    per_sample_inputs: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: RunContext, **inputs: Any) -> tuple | NodeResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def run_batch(cls, ctxs: list[RunContext], calls: list[dict[str, Any]]) -> list[tuple] | None:
        """Run several calls of this node (one per prompt of a batch, each with its own ``ctx`` and inputs) as one
        computation; return each call's outputs, in order, exactly as :meth:`run` would give them alone (up to the
        rounding of a batched computation). Return None to decline (the calls then run one by one); the default
        declines. An exception also makes each call run alone, so one prompt's failure stays its own."""
        return None

    @classmethod
    def fingerprint(cls, ctx: RunContext, **inputs: Any) -> Any:
        """Extra JSON-able state that should invalidate the cache (beyond inputs and declared files), given the
        literal inputs; ``ctx`` has ``node_id``, ``services`` and ``paths``. Return None when the inputs say it all."""
        return None

    @classmethod
    def input(cls, name: str) -> Input | None:
        for spec in cls.inputs:
            if spec.name == name:
                return spec
        return None

    @classmethod
    def output_index(cls, ref: str | int) -> int | None:
        """Index of an output given by name or by index; None if there is no such output."""
        if isinstance(ref, bool):
            return None
        if isinstance(ref, int):
            return ref if 0 <= ref < len(cls.outputs) else None
        for i, out in enumerate(cls.outputs):
            if out.name == ref:
                return i
        if isinstance(ref, str) and ref.isascii() and ref.isdigit() and len(ref) <= 6:  # not "²", not 5,000 digits
            return cls.output_index(int(ref))
        return None

    @classmethod
    def schema(cls, paths: Any = None) -> dict[str, Any]:
        return {
            "type": cls.type,
            "display_name": cls.display_name or cls.type,
            "category": cls.category,
            "description": cls.description,
            "version": cls.version,
            "output_node": cls.output_node,
            "inputs": [spec.schema(paths) for spec in cls.inputs],
            "outputs": [out.schema() for out in cls.outputs],
        }

"""The order of a node's ``widgets_values`` in ComfyUI's UI format, as its frontend lays the widgets out.

One slot per widget input (INT, FLOAT, STRING, BOOLEAN, a list of choices or files), required inputs first, then
optional ones, each in declaration order. Extra slots: right after each input that declares
``control_after_generate`` (Chisel: a seed input) comes its control value ("fixed", "randomize", ...; older files
hold a boolean or null there); after the required inputs of an image loader (an input of the ``input`` folder, which
``/object_info`` marks ``image_upload``) comes the upload button's value ("image"). A widget converted to an input
keeps its slot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDGET = "widget"
CONTROL = "control_after_generate"
UPLOAD = "upload"
DEFAULT_CONTROL = "fixed"
DEFAULT_UPLOAD = "image"


@dataclass(frozen=True)
class Slot:
    kind: str  # WIDGET, CONTROL or UPLOAD
    name: str | None = None  # the input a WIDGET or CONTROL slot belongs to


def is_widget_input(inp: Any) -> bool:
    return bool(inp.is_widget or inp.choices is not None or inp.files is not None)


def widget_slots(cls: Any) -> list[Slot]:
    slots: list[Slot] = []

    def add(inputs: list) -> None:
        for inp in inputs:
            if is_widget_input(inp):
                slots.append(Slot(WIDGET, inp.name))
                if inp.seed:
                    slots.append(Slot(CONTROL, inp.name))

    add([i for i in cls.inputs if not i.optional])
    if any(i.files == "input" for i in cls.inputs):
        slots.append(Slot(UPLOAD))
    add([i for i in cls.inputs if i.optional])
    return slots


def read_widgets(cls: Any, values: Any) -> dict[str, Any]:
    """Input values from a node's ``widgets_values`` (a list in slot order, or an object by input name). A null
    value counts as not given (the exporter writes null for an input with neither a value nor a default)."""
    if isinstance(values, dict):
        return {name: value for name, value in values.items() if cls.input(name) is not None and value is not None}
    if not isinstance(values, list):
        return {}
    return {slot.name: value for slot, value in zip(widget_slots(cls), values)
            if slot.kind == WIDGET and value is not None}


PLACEHOLDERS = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}


def _placeholder(inp: Any) -> Any:
    """A value of the widget's type for a slot whose input is linked (the link wins; the frontend wants a value)."""
    if inp.type in PLACEHOLDERS:
        return PLACEHOLDERS[inp.type]
    choices = inp.choices if isinstance(inp.choices, (list, tuple)) else ()
    return choices[0] if choices else ""


def write_widgets(cls: Any, values: dict[str, Any], linked: set[str] = frozenset()) -> list[Any]:
    """``widgets_values`` in slot order: the given values, else each input's default; a linked input without a
    default gets a placeholder of its type, any other input without one null."""
    out: list[Any] = []
    for slot in widget_slots(cls):
        if slot.kind == CONTROL:
            out.append(DEFAULT_CONTROL)
        elif slot.kind == UPLOAD:
            out.append(DEFAULT_UPLOAD)
        elif slot.name in values:
            out.append(values[slot.name])
        else:
            inp = cls.input(slot.name)
            out.append(inp.default if inp.has_default else _placeholder(inp) if slot.name in linked else None)
    return out

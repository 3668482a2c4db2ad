"""Socket and widget types, named as ComfyUI names them so shared node types stay interchangeable.

A type is a plain string. Widget types (INT, FLOAT, STRING, BOOLEAN, COMBO) may be given as literals in a
workflow; every other type only travels along links. ``*`` matches anything.
"""
from __future__ import annotations

MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
ANY = "*"

WIDGET_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})

# ComfyUI's largest seed (2**64 - 1); JSON Schema and JavaScript lose precision above 2**53, which is fine for seeds.
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


def types_compatible(output_type: str, input_type: str) -> bool:
    """Whether a link from an output of ``output_type`` may feed an input of ``input_type``.

    Comma-separated types (ComfyUI's convention, e.g. ``"IMAGE,MASK"``) accept any of their members.
    """
    if ANY in (output_type, input_type):
        return True
    if input_type == COMBO:
        return output_type in (STRING, COMBO)
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)

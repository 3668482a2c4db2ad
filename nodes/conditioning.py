"""Prompt encoding: CLIPTextEncode (chunked past 77 tokens, ``(word:1.3)`` emphasis, ``embedding:name`` textual
inversion from models/embeddings) and CLIPSetLastLayer."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import CLIP, CONDITIONING, INT, STRING

from .models import embeddings
from .models.text import embedding_names


def _paths(ctx):
    return getattr(getattr(ctx, "services", None), "paths", None)


class CLIPTextEncode(Node):
    type = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = ("Encode a prompt with the CLIP text encoder(s). Longer than 75 tokens: encoded in chunks of 77 "
                   "and concatenated. (word) weighs 1.1x, (word:1.3) 1.3x; \\( and \\) are literal parentheses. "
                   "embedding:name inserts a textual-inversion embedding from models/embeddings.")
    inputs = (
        Input("text", STRING, multiline=True, tooltip="The prompt."),
        Input("clip", CLIP, tooltip="The text encoder (from a checkpoint loader)."),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    @classmethod
    def fingerprint(cls, ctx, text=None, **_):
        """The identity of the embedding files the prompt names (the text alone does not change with them)."""
        if not isinstance(text, str):
            return None
        return embeddings.fingerprint(embedding_names(text), getattr(ctx, "paths", None) or _paths(ctx))

    def run(self, ctx, text, clip):
        cond, pooled = clip.encode(text, embeddings=embeddings.EmbeddingLookup(_paths(ctx)))
        opts = {}
        if pooled is not None:
            opts["pooled_output"] = pooled
        return ([[cond, opts]],)


class CLIPSetLastLayer(Node):
    type = "CLIPSetLastLayer"
    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    description = ("Use an earlier layer of the text encoder (-1 = the last, -2 = the one before, as 'CLIP skip 2'). "
                   "SD2 and SDXL use -2 by default.")
    inputs = (
        Input("clip", CLIP),
        Input("stop_at_clip_layer", INT, default=-1, min=-24, max=-1, step=1),
    )
    outputs = (Output("CLIP", CLIP),)

    def run(self, ctx, clip, stop_at_clip_layer):
        return (clip.set_last_layer(stop_at_clip_layer),)

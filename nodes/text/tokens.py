"""Prompt text -> CLIP token chunks with per-token weights.

- Emphasis: ``(words)`` multiplies the weight of its tokens by 1.1 (nesting multiplies again), ``(words:1.3)`` sets
  an explicit factor; ``\\(`` and ``\\)`` are literal parentheses. Unbalanced parentheses are kept as text.
- Chunking: prompts longer than 75 tokens are split into chunks of ``<start> + 75 tokens + <end>`` padded to 77;
  a word is not split across chunks when it fits in the next one. The encoder encodes all chunks in one batch and
  the conditioning is their concatenation along the token axis (77, 154, 231 ... tokens).
- Weights are applied to the encoder's output relative to the encoding of an empty prompt at the same position:
  ``z = z_empty + (z - z_empty) * w``, so a weight of 1 leaves a token unchanged and weights scale its difference
  from "nothing".
- Textual-inversion embeddings: a word ``embedding:name`` (trailing punctuation such as ``,`` stays text) is
  replaced by the embedding's vectors, one token position each, weighted like the words around it; an embedding is
  never split across chunks when it fits in the next one. The vectors come from an ``embedding(name)`` callable
  (:mod:`nodes.text.embeddings`); without one the word is ordinary text.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from nodes.loading.configs import CONFIG_ROOT

CHUNK = 75  # tokens per chunk between <start> and <end>
CONTEXT = CHUNK + 2
BOS, EOS = 49406, 49407
EMBEDDING_PREFIX = "embedding:"
EMBEDDING_PLACEHOLDER = 0  # the id written where an embedding vector goes (replaced before the first layer)
_TRAILING = ",.;:!?"

_lock = threading.Lock()


@lru_cache(maxsize=1)
def tokenizer(folder: str | None = None):
    """The CLIP BPE tokenizer shipped in nodes/configs/clip_tokenizer (built once per process, ~1 s)."""
    from transformers import CLIPTokenizer

    with _lock:
        return CLIPTokenizer.from_pretrained(str(Path(folder) if folder else CONFIG_ROOT / "clip_tokenizer"))


def _matching(text: str, start: int) -> int:
    """Index of the ')' closing the '(' at ``start``, or -1."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _top_level_weight(inner: str) -> tuple[str, float] | None:
    """``text:1.3`` at the top nesting level of a group -> (text, 1.3)."""
    depth = 0
    last_colon = -1
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == ":" and depth == 0:
            last_colon = i
        i += 1
    if last_colon < 0:
        return None
    tail = inner[last_colon + 1:].strip()
    try:
        w = float(tail)
    except ValueError:
        return None
    return inner[:last_colon], w


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` segments (adjacent equal weights merged)."""
    out: list[tuple[str, float]] = []
    buf: list[str] = []

    def flush():
        if buf:
            out.append(("".join(buf), weight))
            buf.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()\\":
            buf.append(text[i + 1])
            i += 2
            continue
        if c == "(":
            j = _matching(text, i)
            if j < 0:
                buf.append(c)
                i += 1
                continue
            flush()
            inner = text[i + 1:j]
            explicit = _top_level_weight(inner)
            if explicit is not None:
                out.extend(parse_weights(explicit[0], weight * explicit[1]))
            else:
                out.extend(parse_weights(inner, weight * 1.1))
            i = j + 1
            continue
        buf.append(c)
        i += 1
    flush()
    merged: list[tuple[str, float]] = []
    for seg, w in out:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + seg, w)
        elif seg:
            merged.append((seg, w))
    return merged


@dataclass
class TokenChunks:
    ids: list[list[int]]  # n_chunks x 77, padded with pad_id
    weights: list[list[float]]  # n_chunks x 77
    embeds: dict = field(default_factory=dict)  # (chunk, position) -> embedding vector [D] replacing that token

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for row in self.weights for w in row)


def split_embedding_word(word: str) -> tuple[str, str] | None:
    """``"embedding:name,"`` -> ``("name", ",")``; None if the word names no embedding."""
    if not word.startswith(EMBEDDING_PREFIX):
        return None
    name = word[len(EMBEDDING_PREFIX):]
    stripped = name.rstrip(_TRAILING)
    if not stripped:
        return None
    return stripped, name[len(stripped):]


def embedding_names(text: str) -> list[str]:
    """The embedding names a prompt refers to, in order of first use."""
    names: list[str] = []
    for seg, _ in parse_weights(text):
        for word in seg.split():
            hit = split_embedding_word(word)
            if hit is not None and hit[0] not in names:
                names.append(hit[0])
    return names


def tokenize(text: str, pad_id: int = EOS, embedding: Callable[[str], object] | None = None) -> TokenChunks:
    """Token chunks of a prompt (see the module docstring). ``embedding(name)`` returns the [n, D] vectors of a
    textual-inversion embedding (or raises)."""
    tok = tokenizer()
    words: list[tuple[str, float]] = []
    vectors: dict[int, object] = {}  # word index -> embedding vectors
    for seg, w in parse_weights(text):
        for word in seg.split():
            hit = split_embedding_word(word) if embedding is not None else None
            if hit is not None:
                vectors[len(words)] = embedding(hit[0])
                words.append(("", w))
                if hit[1]:
                    words.append((hit[1], w))
                continue
            words.append((word, w))
    encoded = tok([w for w, _ in words], add_special_tokens=False)["input_ids"] if words else []
    chunks: list[list[tuple[int, float]]] = [[]]
    for i, ((word, w), ids) in enumerate(zip(words, encoded)):
        if i in vectors:
            ids = list(vectors[i])  # one vector per token position
        if not len(ids):
            continue
        cur = chunks[-1]
        if len(cur) + len(ids) > CHUNK and len(ids) <= CHUNK // 2 and cur:
            chunks.append([])
            cur = chunks[-1]
        for t in ids:
            if len(cur) == CHUNK:
                chunks.append([])
                cur = chunks[-1]
            cur.append((t, w))
    ids_out, w_out, embeds = [], [], {}
    for c, ch in enumerate(chunks):
        row = [BOS]
        for pos, (t, _) in enumerate(ch, start=1):
            if isinstance(t, int):
                row.append(t)
            else:
                row.append(EMBEDDING_PLACEHOLDER)
                embeds[(c, pos)] = t
        row.append(EOS)
        wr = [1.0] + [w for _, w in ch] + [1.0]
        row += [pad_id] * (CONTEXT - len(row))
        wr += [1.0] * (CONTEXT - len(wr))
        ids_out.append(row)
        w_out.append(wr)
    return TokenChunks(ids_out, w_out, embeds)


def empty_chunk(pad_id: int = EOS) -> list[int]:
    return [BOS, EOS] + [pad_id] * (CONTEXT - 2)

"""SDXL's two prompts: CLIP-L encodes ``text_l`` and OpenCLIP-bigG encodes ``text_g``; the hidden states are joined
along the width, the pooled output is bigG's. When one prompt needs more 77-token chunks than the other, the shorter
one is padded with encodings of the empty prompt (as ComfyUI does), so both have the same length."""
from __future__ import annotations

import dataclasses

import torch


def _only(clip, slot):
    """A CLIP handle that runs just one of its encoders (same modules, layer choice and LoRAs)."""
    other = clip.clone()
    return dataclasses.replace(other, encoders=[slot], options=other.options)


def _pad_chunks(cond: torch.Tensor, empty: torch.Tensor, chunks: int) -> torch.Tensor:
    missing = chunks - cond.shape[1] // 77
    return torch.cat([cond] + [empty] * missing, dim=1) if missing > 0 else cond


def encode_pair(clip, text_g: str, text_l: str, embeddings=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(cond [1, 77·k, D_l + D_g], pooled)`` for an SDXL base CLIP; a CLIP with only bigG (the refiner) encodes
    ``text_g`` alone; other families are refused."""
    kinds = {slot.kind: slot for slot in clip.encoders}
    if "open_clip" not in kinds or not kinds["open_clip"].with_projection:
        raise ValueError(f"this CLIP is {clip.family}'s, not SDXL's: CLIPTextEncodeSDXL needs SDXL's text encoders "
                         "(use CLIPTextEncode)")
    g = _only(clip, kinds["open_clip"])
    cond_g, pooled = g.encode(text_g, embeddings=embeddings)
    if "clip_l" not in kinds:
        return cond_g, pooled
    l_clip = _only(clip, kinds["clip_l"])
    cond_l, _ = l_clip.encode(text_l, embeddings=embeddings)
    chunks = max(cond_g.shape[1], cond_l.shape[1]) // 77
    if cond_g.shape[1] != cond_l.shape[1]:
        cond_g = _pad_chunks(cond_g, g.encode("")[0], chunks)
        cond_l = _pad_chunks(cond_l, l_clip.encode("")[0], chunks)
    return torch.cat([cond_l, cond_g], dim=-1), pooled

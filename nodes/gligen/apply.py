"""GLIGEN boxes on conditioning, and grounding the UNet with them while that conditioning is sampled.

GLIGEN Textbox Apply puts a :class:`GligenBoxes` into each conditioning entry's ``gligen`` option: the GLIGEN model
and the boxes so far (each with its phrase's pooled CLIP embedding), so chained Apply nodes add boxes, up to
GLIGEN's 30. Box sizes and places are kept in latent cells, rounded down from pixels (ComfyUI's rule).

At sampling time the denoiser (:mod:`nodes.sampling.guidance`) binds the boxes once per run (:meth:`GligenBoxes.bind`:
the GLIGEN model must fit the MODEL and every box must overlap the image, checked before the first step) and runs the
rows of grounded entries in UNet calls of their own, inside :func:`grounding`: for the length of that call the fusers
are attached to the UNet's transformer blocks and the position net to the UNet (as plain attributes, not registered
submodules), and the UNet gets diffusers' ``cross_attention_kwargs={"gligen": {"boxes", "positive_embeddings",
"masks"}}``. Outside those calls — the negative prompt, other runs, other workflows — the UNet is untouched.

GLIGEN acts on every step (diffusers' ``gligen_scheduled_sampling_beta=1.0``), as in ComfyUI. Box coordinates are the
box's corners divided by the latent's size; a box reaching past the image's edge keeps coordinates above 1 (as in
ComfyUI), a box wholly outside it is an error.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nodes.gligen.handle import GligenHandle, fusers_for
from nodes.gligen.load import MAX_OBJECTS


@dataclass(frozen=True, eq=False)
class GligenBox:
    phrase: str
    embedding: torch.Tensor  # [W] the phrase's pooled (unprojected) CLIP embedding, float32, CPU
    height: int  # latent cells
    width: int
    y: int
    x: int

    def describe(self) -> str:
        return (f"the GLIGEN box {self.phrase!r} ({self.width * 8}x{self.height * 8} pixels at x={self.x * 8}, "
                f"y={self.y * 8})")


@dataclass(frozen=True, eq=False)
class GligenBoxes:
    gligen: GligenHandle
    boxes: tuple[GligenBox, ...]

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {"ram": sum(b.embedding.numel() * b.embedding.element_size() for b in self.boxes)}

    def bind(self, model, latent_shape: tuple[int, int, int], what: str) -> "BoundGligen":
        """Check the GLIGEN model against ``model`` and every box against the latent (batch, height, width); raise
        ``ValueError`` naming ``what`` (the conditioning input) when something does not fit."""
        _, h, w = latent_shape
        for box in self.boxes:
            if box.x >= w or box.y >= h:
                raise ValueError(f"{what}: {box.describe()} lies outside the {w * 8}x{h * 8} image; move it inside "
                                 "(x below the width, y below the height)")
        return BoundGligen(self, fusers_for(self.gligen, model, what), model, h, w)


class BoundGligen:
    """The per-run form of a conditioning's boxes: grounding tensors on the device and each fuser's block."""

    def __init__(self, boxes: GligenBoxes, pairs: list, model, h: int, w: int):
        self.gligen = boxes.gligen
        self.pairs = pairs
        self.unet = model.unet.module
        dev, dt = model.unet.device, model.unet.dtype
        coords = torch.zeros(1, MAX_OBJECTS, 4)
        emb = torch.zeros(1, MAX_OBJECTS, boxes.gligen.phrase_width)
        masks = torch.zeros(1, MAX_OBJECTS)
        for i, b in enumerate(boxes.boxes):
            coords[0, i] = torch.tensor([b.x / w, b.y / h, (b.x + b.width) / w, (b.y + b.height) / h])
            emb[0, i] = b.embedding.reshape(-1)
            masks[0, i] = 1.0
        self.coords, self.emb, self.masks = coords.to(dev, dt), emb.to(dev, dt), masks.to(dev, dt)

    @property
    def key(self) -> int:
        """Entries grounded by the same GLIGEN model share a UNet call (their boxes travel per row)."""
        return id(self.gligen)

    def rows(self, n: int) -> dict[str, torch.Tensor]:
        return {"boxes": self.coords.expand(n, -1, -1), "positive_embeddings": self.emb.expand(n, -1, -1),
                "masks": self.masks.expand(n, -1)}


@contextmanager
def grounding(bound: list, rows: int, kwargs: dict):
    """For one UNet call over entries (``bound``: each entry's :class:`BoundGligen` or None, ``rows`` rows each):
    when they are grounded, add the GLIGEN keyword arguments to ``kwargs`` and attach the fusers while the block
    runs. Entries of one call are all grounded by the same GLIGEN model or all not grounded (the denoiser groups
    them so)."""
    if not bound or bound[0] is None:
        yield
        return
    first = bound[0]
    parts = [b.rows(rows) for b in bound]
    kwargs["cross_attention_kwargs"] = {"gligen": {k: torch.cat([p[k] for p in parts]) for k in parts[0]}}
    gligen = first.gligen
    with gligen.manager.use(gligen.module):
        placed = [(first.unet, "position_net", gligen.modules.position_net)]
        placed += [(block, "fuser", fuser) for block, fuser in first.pairs]
        try:
            for owner, name, module in placed:
                owner.__dict__[name] = module  # an attribute for this call, not a registered submodule
            yield
        finally:
            for owner, name, _ in placed:
                owner.__dict__.pop(name, None)


def add_box(conditioning: list, gligen: GligenHandle, box: GligenBox, what: str = "gligen_textbox_model") -> list:
    """``conditioning`` with ``box`` added to every entry's GLIGEN boxes (ComfyUI's GLIGENTextBoxApply)."""
    out = []
    for emb, opts in conditioning:
        prev = opts.get("gligen")
        if prev is not None and prev.gligen is not gligen:
            raise ValueError(f"{what}: this conditioning already has boxes for the GLIGEN model {prev.gligen.name}; "
                             f"boxes of {gligen.name} cannot join them (use one GLIGEN model per conditioning)")
        boxes = prev.boxes if prev is not None else ()
        if len(boxes) >= MAX_OBJECTS:
            raise ValueError(f"{what}: GLIGEN grounds at most {MAX_OBJECTS} boxes per conditioning; this would be "
                             f"box {len(boxes) + 1}")
        out.append([emb, {**opts, "gligen": GligenBoxes(gligen, boxes + (box,))}])
    return out

"""LyCORIS layer types beside plain LoRA: LoHa, LoKr and (IA)³, read from kohya-style files and merged as their
published math says. Each layer offers what :mod:`nodes.patches.lora` needs of a layer: its in/out features and
kernel size (to check it fits), a description, its tensors (for memory figures) and ``delta(shape, device,
weight)``, the float32 change of a weight of ``shape`` (``weight``: the unpatched weight, which (IA)³ scales).

- LoHa (Hadamard product of two low-rank products): ``ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank``; with
  Tucker cores ``t1``/``t2`` (convolutions) each factor is ``einsum(t, b, a)`` over the kernel.
- LoKr (Kronecker product): ``ΔW = w1 ⊗ w2 · scale``, each of ``w1``/``w2`` stored whole or as ``a @ b``; ``scale`` is
  ``alpha / rank`` when a factor is decomposed (rank: its inner size), else 1.
- (IA)³ (learned rescaling): ``ΔW = W ⊙ w`` along the output features, or along the input features when the file
  marks the layer ``on_input``; so the patched weight is ``W · (1 + w)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_MARKERS = {".hada_w1_a": "loha", ".lokr_w1": "lokr", ".lokr_w1_a": "lokr"}


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _f32(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device, torch.float32)


def _factor(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``a @ b`` (flattened), or with a Tucker core ``t`` [r, r, *kernel]: [out, in, *kernel]."""
    a, b = _f32(a, device), _f32(b, device)
    if t is None:
        return a.flatten(1) @ b.flatten(1)
    return torch.einsum("ij...,jr,ip->pr...", _f32(t, device), b.flatten(1), a.flatten(1))


@dataclass(frozen=True, eq=False)
class LohaLayer:
    w1_a: torch.Tensor  # [out, rank], or [rank, out] with a Tucker core
    w1_b: torch.Tensor  # [rank, in * kernel], or [rank, in] with a Tucker core
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    t1: torch.Tensor | None = None  # [rank, rank, *kernel]
    t2: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0])

    def fits(self, shape: torch.Size) -> bool:
        if len(shape) < 2 or self.out_features != int(shape[0]):
            return False
        if self.t1 is not None:
            return int(self.w1_b.shape[1]) == int(shape[1]) and tuple(self.t1.shape[2:]) == tuple(shape[2:])
        return int(self.w1_b.shape[1]) == _prod(shape[1:])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b, self.t1, self.t2) if t is not None]

    def describe(self) -> str:
        return f"LoHa rank {self.rank} -> {self.out_features}"

    def delta(self, shape: torch.Size, device: torch.device, weight: torch.Tensor | None = None) -> torch.Tensor:
        d = _factor(self.w1_a, self.w1_b, self.t1, device) * _factor(self.w2_a, self.w2_b, self.t2, device)
        return d.mul_(self.scale).reshape(shape)


@dataclass(frozen=True, eq=False)
class LokrLayer:
    w1: torch.Tensor | None  # [a, b] whole, or w1_a [a, rank] @ w1_b [rank, b]
    w1_a: torch.Tensor | None
    w1_b: torch.Tensor | None
    w2: torch.Tensor | None  # [c, d, *kernel] whole, or w2_a [c, rank] @ w2_b [rank, d * kernel] (or a Tucker core)
    w2_a: torch.Tensor | None
    w2_b: torch.Tensor | None
    t2: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        for b in (self.w1_b, self.w2_b):
            if b is not None:
                return int(b.shape[0])
        return None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank if self.alpha is not None and self.rank else 1.0

    def _sizes(self) -> tuple[int, int, int, int]:
        """(rows of w1, columns of w1, rows of w2, flattened columns of w2)."""
        a, b = (self.w1.shape[:2] if self.w1 is not None else (self.w1_a.shape[0], self.w1_b.shape[1]))
        if self.w2 is not None:
            c, d = self.w2.shape[0], _prod(self.w2.shape[1:])
        elif self.t2 is not None:
            c, d = self.w2_a.shape[1], self.w2_b.shape[1] * _prod(self.t2.shape[2:])
        else:
            c, d = self.w2_a.shape[0], self.w2_b.shape[1]
        return int(a), int(b), int(c), int(d)

    @property
    def out_features(self) -> int:
        a, _, c, _ = self._sizes()
        return a * c

    def fits(self, shape: torch.Size) -> bool:
        _, b, _, d = self._sizes()
        return len(shape) >= 2 and self.out_features == int(shape[0]) and b * d == _prod(shape[1:])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w1, self.w1_a, self.w1_b, self.w2, self.w2_a, self.w2_b, self.t2) if t is not None]

    def describe(self) -> str:
        return f"LoKr -> {self.out_features}"

    def delta(self, shape: torch.Size, device: torch.device, weight: torch.Tensor | None = None) -> torch.Tensor:
        # The Kronecker product of the flattened factors is the flattened Kronecker product of a convolution's
        # [a, b, 1, 1] and [c, d, kh, kw] factors, so one formula serves linear and convolutional layers.
        w1 = _f32(self.w1, device) if self.w1 is not None else _factor(self.w1_a, self.w1_b, None, device)
        w2 = _f32(self.w2, device) if self.w2 is not None else _factor(self.w2_a, self.w2_b, self.t2, device)
        return torch.kron(w1.flatten(1), w2.flatten(1)).mul_(self.scale).reshape(shape)


@dataclass(frozen=True, eq=False)
class Ia3Layer:
    w: torch.Tensor  # one factor per output feature (or per input feature, on_input)
    on_input: bool = False

    @property
    def out_features(self) -> int | None:
        return None if self.on_input else int(self.w.numel())

    def fits(self, shape: torch.Size) -> bool:
        return len(shape) >= 2 and int(self.w.numel()) == int(shape[1] if self.on_input else shape[0])

    def tensors(self) -> list[torch.Tensor]:
        return [self.w]

    def describe(self) -> str:
        return f"(IA)3 over {self.w.numel()} {'input' if self.on_input else 'output'} features"

    def delta(self, shape: torch.Size, device: torch.device, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            raise ValueError("an (IA)3 layer scales the weight it patches: pass the weight")
        w = _f32(self.w, device).flatten()
        view = (1, -1, *([1] * (len(shape) - 2))) if self.on_input else (-1, *([1] * (len(shape) - 1)))
        return weight.to(device, torch.float32).reshape(shape) * w.reshape(view)


def read_layers(tensors: dict[str, torch.Tensor], used: set[str]) -> dict[str, object]:
    """Every LoHa, LoKr and (IA)³ layer in ``tensors`` (keyed by the base key, the suffix cut off); the keys they
    use are added to ``used``."""
    layers: dict[str, object] = {}
    bases = {k[: -len(m)]: kind for k in tensors for m, kind in _MARKERS.items() if k.endswith(m)}
    for base, kind in sorted(bases.items()):
        get = tensors.get
        alpha_t = get(base + ".alpha")
        alpha = float(alpha_t.float().item()) if alpha_t is not None else None
        if kind == "loha":
            names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
            parts = {n: get(f"{base}.{n}") for n in names}
            missing = [n for n in names[:4] if parts[n] is None]
            if missing:
                raise ValueError(f"LoHa layer {base!r} lacks {', '.join(missing)}")
            layer = LohaLayer(parts["hada_w1_a"], parts["hada_w1_b"], parts["hada_w2_a"], parts["hada_w2_b"],
                              parts["hada_t1"], parts["hada_t2"], alpha)
        else:
            names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
            parts = {n: get(f"{base}.{n}") for n in names}
            if parts["lokr_w1"] is None and (parts["lokr_w1_a"] is None or parts["lokr_w1_b"] is None):
                raise ValueError(f"LoKr layer {base!r} has no w1 (whole, or as w1_a and w1_b)")
            if parts["lokr_w2"] is None and (parts["lokr_w2_a"] is None or parts["lokr_w2_b"] is None):
                raise ValueError(f"LoKr layer {base!r} has no w2 (whole, or as w2_a and w2_b)")
            layer = LokrLayer(*(parts[n] for n in names), alpha=alpha)
        layers[base] = layer
        used.update(f"{base}.{n}" for n in names if get(f"{base}.{n}") is not None)
        used.add(base + ".alpha")
    for key, flag in tensors.items():  # (IA)³: "<base>.weight" beside "<base>.on_input"
        if key.endswith(".on_input") and key[: -len(".on_input")] + ".weight" in tensors:
            base = key[: -len(".on_input")]
            layers[base] = Ia3Layer(tensors[base + ".weight"], bool(flag.flatten()[0].item()))
            used.update((key, base + ".weight"))
    return layers

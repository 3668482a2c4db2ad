"""UNet weights stored in float8 and computed in the working dtype (UNETLoader's ``weight_dtype``).

diffusers' layerwise casting (``ModelMixin.enable_layerwise_casting``) keeps each convolution's and linear layer's
weights in the storage dtype and upcasts that one layer to the compute dtype just before it runs (back down right
after). Normalisation layers, and the UNet's top-level ``proj_in``/``proj_out``, stay in the compute dtype (diffusers'
default skip list: they are small and precision-critical). fp8 values are exactly representable in fp16, bf16 and
fp32, so the round trip loses nothing beyond the one rounding to fp8 at load time: the model computes exactly as a
full-precision model whose weights were rounded to fp8 once.

``fp8_e4m3fn_fast`` stores like ``fp8_e4m3fn``; Chisel has no fp8 matrix-multiply kernels, so it computes the same
way (in the working dtype).

A module so stored always runs eagerly (its casting hooks change the parameters around each layer's forward, which
torch.compile does not trace), and a LoRA reaches it through forward hooks instead of being merged into its
weights (a merge would round the LoRA's delta to fp8).
"""
from __future__ import annotations

import torch

__all__ = ["WEIGHT_DTYPES", "store_weights_in", "storage_dtype_of"]

# ComfyUI's weight_dtype choices -> the storage dtype (None: the working dtype, no casting)
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def store_weights_in(mm, storage_dtype: torch.dtype) -> None:
    """Keep ``mm``'s (a registered ManagedModule holding a diffusers model) layer weights in ``storage_dtype``,
    computing in ``mm.dtype``; its size in bytes is updated."""
    from nodes.memory.manager import module_nbytes

    if not hasattr(mm.module, "enable_layerwise_casting"):
        raise TypeError(f"{type(mm.module).__name__} cannot keep its weights in {storage_dtype}")
    mm.module.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=mm.dtype)
    mm.storage_dtype = storage_dtype
    mm.nbytes = module_nbytes(mm.module)


def storage_dtype_of(mm) -> torch.dtype | None:
    """The dtype ``mm`` keeps its layer weights in when that differs from its compute dtype, else None."""
    return getattr(mm, "storage_dtype", None)

"""Kohya's "Deep Shrink" (ComfyUI's PatchModelAddDownscale): while sigma lies in a window at the start of sampling,
the UNet's features are downscaled after one encoder block and scaled back up in the decoder, so a large image is
composed at the resolution the model was trained on.

Blocks are numbered as in the original UNet's ``input_blocks``: 0 is the first convolution, then each level's
resnet(+attention) layers and its downsampler. After block ``n`` the features are resized by ``1/factor``; with
``after_skip`` the skip connection kept for the decoder is the full-size one, else the downscaled one. In the
decoder, wherever the running features and the next skip differ in size, the features are resized to the skip's
size before they are joined (ComfyUI's rule). Outside the window nothing changes.

Applied with forward hooks on the diffusers UNet (:class:`DeepShrinkPatch`), attached for one run by
:func:`nodes.patches.lora.patched`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from nodes.imaging.resize import resize

SCALE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def input_blocks(unet: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """``(module whose output ends input block i, module that takes block i's output next)`` for each block."""
    producers = [unet.conv_in]
    for block in unet.down_blocks:
        attns = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            producers.append(attns[j] if attns is not None and len(attns) > j else resnet)
        if block.downsamplers:
            producers.append(block.downsamplers[0])
    consumers = []
    for block in unet.down_blocks:
        consumers.extend(block.resnets)
        if block.downsamplers:
            consumers.append(block.downsamplers[0])
    consumers.append(unet.mid_block)
    return list(zip(producers, consumers))


def _resized(x: torch.Tensor, h: int, w: int, method: str) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == (h, w) else resize(x, w, h, method)


def _replace_first(output: Any, fn) -> Any:
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    output.sample = fn(output.sample)  # a diffusers output object
    return output


@dataclass(frozen=True)
class DeepShrinkPatch:
    block_number: int
    factor: float
    sigma_start: float
    sigma_end: float
    after_skip: bool
    down_method: str
    up_method: str
    sampling: Any  # the MODEL's noise schedule: timestep -> sigma

    # shown in the MODEL's description beside LoRAs (name@strength)
    name = "DeepShrink"
    strength = 1.0

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        h, w = round(x.shape[-2] / self.factor), round(x.shape[-1] / self.factor)
        return _resized(x, max(1, h), max(1, w), self.down_method)

    @contextmanager
    def attach(self, unet: torch.nn.Module):
        blocks = input_blocks(unet)
        if not 0 <= self.block_number < len(blocks):
            raise ValueError(f"block_number {self.block_number} is outside this UNet's {len(blocks)} input blocks "
                             f"(0..{len(blocks) - 1})")
        state = {"active": False, "skips": ()}
        handles = []

        def read_sigma(mod, args, kwargs):
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            t = torch.as_tensor(t).reshape(-1)[:1].double().cpu()
            sigma = float(self.sampling.sigma(t)[0])
            state["active"] = self.sigma_end <= sigma <= self.sigma_start

        handles.append(unet.register_forward_pre_hook(read_sigma, with_kwargs=True))
        producer, consumer = blocks[self.block_number]
        if self.after_skip:
            def shrink_next(mod, args):
                return (self._down(args[0]), *args[1:]) if state["active"] else None
            handles.append(consumer.register_forward_pre_hook(shrink_next))
        else:
            def shrink_output(mod, args, output):
                return _replace_first(output, self._down) if state["active"] else None
            handles.append(producer.register_forward_hook(shrink_output))

        def fit(x: torch.Tensor, j: int) -> torch.Tensor:
            skips = state["skips"]
            if j >= len(skips):
                return x
            return _resized(x, *skips[-(j + 1)].shape[-2:], self.up_method)

        for block in unet.up_blocks:
            def enter(mod, args, kwargs):
                state["skips"] = kwargs.get("res_hidden_states_tuple", ())
                if state["active"] and "hidden_states" in kwargs:
                    kwargs = {**kwargs, "hidden_states": fit(kwargs["hidden_states"], 0)}
                    return args, kwargs
                return None

            handles.append(block.register_forward_pre_hook(enter, with_kwargs=True))
            attns = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets[:-1]):
                feeder = attns[j] if attns is not None and len(attns) > j else resnet

                def after(mod, args, output, j=j):
                    return _replace_first(output, lambda x: fit(x, j + 1)) if state["active"] else None

                handles.append(feeder.register_forward_hook(after))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

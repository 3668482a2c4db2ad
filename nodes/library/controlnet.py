"""ControlNet nodes: load a ControlNet or T2I-Adapter (models/controlnet) and apply it with a hint image to
conditioning.

Apply ControlNet adds the ControlNet to each conditioning entry (:mod:`nodes.controlnet.apply`); the sampler runs it
beside the UNet at every step and adds its residuals (a T2I-Adapter runs once per run and its features are added at
each step in range). Chain Apply nodes to stack ControlNets and adapters on one conditioning: their residuals add up.
Whether the ControlNet fits the model, and the image the latent, is checked when sampling starts, before the first
step; the error names the conditioning input.
"""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import COMBO, CONDITIONING, FLOAT, IMAGE, MODEL, VAE
from nodes.controlnet import handle
from nodes.controlnet.apply import chain_onto
from nodes.library.loaders import manager

CONTROL_NET = "CONTROL_NET"
CONTROLNET_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


def _name_input() -> Input:
    return Input("control_net_name", COMBO, files="controlnet", extensions=CONTROLNET_EXTENSIONS,
                 tooltip="A ControlNet or T2I-Adapter file (models/controlnet): the original single-file layout "
                         "(control_v11*, SD2, t2iadapter_*) or diffusers' (SDXL); in a diffusers folder, pick its "
                         "weights file.")


class ControlNetLoader(Node):
    type = "ControlNetLoader"
    display_name = "Load ControlNet Model"
    category = "loaders"
    description = "Load a ControlNet (SD1.x, SD2.x or SDXL) or a T2I-Adapter (SD1.x or SDXL) from models/controlnet."
    inputs = (_name_input(),)
    outputs = (Output(CONTROL_NET, CONTROL_NET),)

    def run(self, ctx, control_net_name):
        return (handle.load(manager(ctx), ctx.file_path("control_net_name"), progress=ctx.progress),)


class DiffControlNetLoader(Node):
    type = "DiffControlNetLoader"
    display_name = "Load ControlNet Model (diff)"
    category = "loaders"
    description = ("Load a ControlNet for a model: a 'difference' ControlNet stores offsets from its base model's "
                   "weights and is rebuilt on this model's UNet; an ordinary ControlNet loads as it is.")
    inputs = (Input("model", MODEL), _name_input())
    outputs = (Output(CONTROL_NET, CONTROL_NET),)

    def run(self, ctx, model, control_net_name):
        return (handle.load(manager(ctx), ctx.file_path("control_net_name"), model=model, progress=ctx.progress),)


def _strength(tooltip: str = "How strongly the ControlNet steers (its residuals are multiplied by this).") -> Input:
    return Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01, tooltip=tooltip)


class ControlNetApply(Node):
    type = "ControlNetApply"
    display_name = "Apply ControlNet (OLD)"
    category = "conditioning/controlnet"
    description = "Steer one conditioning with a ControlNet and its hint image over the whole schedule."
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("control_net", CONTROL_NET),
        Input("image", IMAGE, tooltip="The hint (edges, depth, pose ...), scaled to the latent's size."),
        _strength(),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        return (chain_onto(conditioning, control_net, image, strength, 0.0, 1.0),)


class ControlNetApplyAdvanced(Node):
    type = "ControlNetApplyAdvanced"
    display_name = "Apply ControlNet"
    category = "conditioning/controlnet"
    description = ("Steer the positive and negative conditioning with a ControlNet and its hint image, between "
                   "start_percent and end_percent of the schedule. Chain several to combine ControlNets.")
    inputs = (
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("control_net", CONTROL_NET),
        Input("image", IMAGE, tooltip="The hint (edges, depth, pose ...), scaled to the latent's size."),
        _strength(),
        Input("start_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001,
              tooltip="Where in the schedule the ControlNet starts acting (0: the first step)."),
        Input("end_percent", FLOAT, default=1.0, min=0.0, max=1.0, step=0.001,
              tooltip="Where it stops (1: the last step)."),
        Input("vae", VAE, optional=True,
              tooltip="For ControlNets that take a latent hint; SD1.x/SD2.x/SDXL ControlNets take pixels and do "
                      "not use it."),
    )
    outputs = (Output("positive", CONDITIONING), Output("negative", CONDITIONING))

    def run(self, ctx, positive, negative, control_net, image, strength, start_percent, end_percent, vae):
        if strength == 0:
            return (positive, negative)
        if start_percent > end_percent:
            raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}: the ControlNet "
                             "would never act")
        shared: dict = {}
        return (chain_onto(positive, control_net, image, strength, start_percent, end_percent, shared),
                chain_onto(negative, control_net, image, strength, start_percent, end_percent, shared))

"""GLIGEN nodes: load a GLIGEN text-box model (models/gligen) and ground phrases in boxes on conditioning.

GLIGEN Textbox Apply adds one box (a phrase, its size and place in pixels) to each conditioning entry; chain the node
to add more. While that conditioning is sampled, the GLIGEN model's layers join the UNet and steer the phrase into its
box (:mod:`nodes.gligen.apply`); conditioning without boxes (usually the negative) samples as it would without GLIGEN.
Whether the GLIGEN model fits the model, and each box the image, is checked when sampling starts, before the first
step; the error names the conditioning input.
"""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import CLIP, COMBO, CONDITIONING, INT, STRING
from nodes.gligen import handle
from nodes.gligen.apply import GligenBox, add_box
from nodes.library.loaders import manager

GLIGEN = "GLIGEN"
GLIGEN_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


class GLIGENLoader(Node):
    type = "GLIGENLoader"
    display_name = "GLIGENLoader"
    category = "loaders"
    description = ("Load a GLIGEN text-box model from models/gligen (e.g. gligen_sd14_textbox_pruned.safetensors, or "
                   "a diffusers GLIGEN UNet's weights, of which only the GLIGEN layers are used).")
    inputs = (Input("gligen_name", COMBO, files="gligen", extensions=GLIGEN_EXTENSIONS,
                    tooltip="A GLIGEN file (models/gligen)."),)
    outputs = (Output(GLIGEN, GLIGEN),)

    def run(self, ctx, gligen_name):
        return (handle.load(manager(ctx), ctx.file_path("gligen_name"), ctx.progress),)


def _box_input(name: str, default: int, low: int, tooltip: str) -> Input:
    return Input(name, INT, default=default, min=low, max=16384, step=8, tooltip=tooltip)


class GLIGENTextBoxApply(Node):
    type = "GLIGENTextBoxApply"
    display_name = "GLIGENTextBoxApply"
    category = "conditioning/gligen"
    description = ("Ground a phrase in a box: while this conditioning is sampled, GLIGEN steers what the phrase "
                   "describes into the box (width x height pixels at x, y from the top left). Chain the node to "
                   "place more phrases (up to 30).")
    inputs = (
        Input("conditioning_to", CONDITIONING, tooltip="The conditioning to ground (usually the positive prompt)."),
        Input("clip", CLIP, tooltip="Encodes the phrase (the model's own CLIP)."),
        Input("gligen_textbox_model", GLIGEN),
        Input("text", STRING, multiline=True, tooltip="The phrase: what belongs in the box."),
        _box_input("width", 64, 8, "The box's width in pixels."),
        _box_input("height", 64, 8, "The box's height in pixels."),
        _box_input("x", 0, 0, "The box's left edge, in pixels from the image's left."),
        _box_input("y", 0, 0, "The box's top edge, in pixels from the image's top."),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning_to, clip, gligen_textbox_model, text, width, height, x, y):
        need = gligen_textbox_model.phrase_width
        have = _phrase_width(clip)
        if have != need:
            raise ValueError(f"gligen_textbox_model: the GLIGEN model {gligen_textbox_model.name} reads "
                             f"{need}-wide phrase embeddings but this CLIP ({clip.family}) makes {have}-wide ones: "
                             "the GLIGEN model was made for another model family")
        pooled = clip.encode_pooled_unprojected(text)
        box = GligenBox(text, pooled.reshape(-1), int(height) // 8, int(width) // 8, int(y) // 8, int(x) // 8)
        return (add_box(conditioning_to, gligen_textbox_model, box),)


def _phrase_width(clip) -> int:
    return int(clip.encoders[-1].module.module.config.hidden_size)

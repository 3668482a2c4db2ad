"""Model patch nodes (ComfyUI categories "model_patches/unet", "advanced/model" and "_for_testing"): FreeU, FreeU_V2,
PatchModelAddDownscale (Kohya's Deep Shrink), ModelSamplingDiscrete, and the guidance patches RescaleCFG, PerpNeg
and SelfAttentionGuidance.

Each returns a clone of its MODEL: the checkpoint's modules are shared and never changed. FreeU and Deep Shrink
travel with the MODEL as module patches (:mod:`nodes.patches.freeu`, :mod:`nodes.patches.deep_shrink`) that are
attached only while a sampler runs that MODEL, like a LoRA; ModelSamplingDiscrete gives the clone another noise-schedule
object; the guidance patches travel in the clone's ``options["guidance"]`` and change how the sampler's guidance
combines predictions (:mod:`nodes.sampling.guidance_patches`). Their inputs (literals or links) enter the cache key
of every node downstream.
"""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import BOOLEAN, COMBO, CONDITIONING, FLOAT, INT, MODEL
from nodes.patches.deep_shrink import SCALE_METHODS, DeepShrinkPatch
from nodes.patches.freeu import FreeUPatch
from nodes.patches.perp_neg import PerpNegPatch
from nodes.patches.rescale_cfg import RescaleCFGPatch
from nodes.patches.self_attention_guidance import SelfAttentionGuidancePatch

# ComfyUI's sampling kinds -> the prediction type read from the network (lcm: epsilon, read as an LCM)
SAMPLING_KINDS = {"eps": "epsilon", "v_prediction": "v_prediction", "lcm": "epsilon", "x0": "sample"}


class FreeU(Node):
    type = "FreeU"
    display_name = "FreeU"
    category = "model_patches/unet"
    description = ("FreeU: in the UNet's decoder, scale the backbone features (b1 at 4x, b2 at 2x the base channels) "
                   "and damp the skip connections' low frequencies (s1, s2). Often sharper detail at no cost.")
    inputs = (
        Input("model", MODEL),
        Input("b1", FLOAT, default=1.1, min=0.0, max=10.0, step=0.01),
        Input("b2", FLOAT, default=1.2, min=0.0, max=10.0, step=0.01),
        Input("s1", FLOAT, default=0.9, min=0.0, max=10.0, step=0.01),
        Input("s2", FLOAT, default=0.2, min=0.0, max=10.0, step=0.01),
    )
    outputs = (Output("MODEL", MODEL),)
    v2 = False

    def run(self, ctx, model, b1, b2, s1, s2):
        return (model.with_lora([("unet", FreeUPatch(b1, b2, s1, s2, v2=self.v2))]),)


class FreeU_V2(FreeU):
    type = "FreeU_V2"
    display_name = "FreeU_V2"
    description = ("FreeU v2: like FreeU, but the backbone scale follows each position's mean activation (rescaled to "
                   "0..1), so strong features are boosted most.")
    inputs = (
        Input("model", MODEL),
        Input("b1", FLOAT, default=1.3, min=0.0, max=10.0, step=0.01),
        Input("b2", FLOAT, default=1.4, min=0.0, max=10.0, step=0.01),
        Input("s1", FLOAT, default=0.9, min=0.0, max=10.0, step=0.01),
        Input("s2", FLOAT, default=0.2, min=0.0, max=10.0, step=0.01),
    )
    v2 = True


class PatchModelAddDownscale(Node):
    type = "PatchModelAddDownscale"
    display_name = "PatchModelAddDownscale (Kohya Deep Shrink)"
    category = "model_patches/unet"
    description = ("Deep Shrink: between start_percent and end_percent of sampling, downscale the UNet's features by "
                   "`downscale_factor` after input block `block_number` and scale them back in the decoder, so large "
                   "images keep a coherent composition.")
    inputs = (
        Input("model", MODEL),
        Input("block_number", INT, default=3, min=1, max=32, step=1),
        Input("downscale_factor", FLOAT, default=2.0, min=0.1, max=9.0, step=0.001),
        Input("start_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        Input("end_percent", FLOAT, default=0.35, min=0.0, max=1.0, step=0.001),
        Input("downscale_after_skip", BOOLEAN, default=True),
        Input("downscale_method", COMBO, choices=SCALE_METHODS, default="bicubic"),
        Input("upscale_method", COMBO, choices=SCALE_METHODS, default="bicubic"),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, block_number, downscale_factor, start_percent, end_percent, downscale_after_skip,
            downscale_method, upscale_method):
        ms = model.model_sampling
        patch = DeepShrinkPatch(int(block_number), float(downscale_factor), ms.percent_to_sigma(start_percent),
                                ms.percent_to_sigma(end_percent), bool(downscale_after_skip), downscale_method,
                                upscale_method, ms)
        return (model.with_lora([("unet", patch)]),)


class ModelSamplingDiscrete(Node):
    type = "ModelSamplingDiscrete"
    display_name = "ModelSamplingDiscrete"
    category = "advanced/model"
    description = ("Read the model's output as noise (eps), velocity (v_prediction) or the clean latent (x0), or as a "
                   "Latent Consistency Model (lcm: eps with LCM's boundary condition, on its 50-timestep distilled "
                   "grid; for LCM and LCM-LoRA models, with the lcm sampler). zsnr rescales the schedule to zero "
                   "terminal SNR (for models trained so). ComfyUI's img_to_img kind is not offered.")
    inputs = (
        Input("model", MODEL),
        Input("sampling", COMBO, choices=list(SAMPLING_KINDS), default="eps"),
        Input("zsnr", BOOLEAN, default=False),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, sampling, zsnr):
        from nodes.sampling import ModelSampling
        from nodes.sampling.lcm_sampling import LCMModelSampling

        ms = model.model_sampling
        if bool(zsnr) == ms.zero_terminal_snr:
            new = ModelSampling(beta_schedule=ms.beta_schedule, prediction_type=SAMPLING_KINDS[sampling],
                                zero_terminal_snr=ms.zero_terminal_snr, betas=ms.betas)
        else:
            if ms.zero_terminal_snr:
                raise ValueError("this model's schedule is already rescaled to zero terminal SNR; it cannot be undone")
            new = ModelSampling(beta_schedule=ms.beta_schedule, prediction_type=SAMPLING_KINDS[sampling],
                                zero_terminal_snr=True, betas=ms.betas)
        if sampling == "lcm":
            new = LCMModelSampling(new)
        other = model.clone()
        other.model_sampling = new
        return (other,)


class RescaleCFG(Node):
    type = "RescaleCFG"
    display_name = "RescaleCFG"
    category = "advanced/model"
    description = ("Rescaled classifier-free guidance (Lin et al. 2023): scale the guided prediction's spread back to "
                   "the positive prediction's (in v space), blended by `multiplier`; tames the washed-out, "
                   "over-saturated look of high cfg, above all on zero-terminal-SNR v-prediction models.")
    inputs = (
        Input("model", MODEL),
        Input("multiplier", FLOAT, default=0.7, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, multiplier):
        return (model.with_guidance(RescaleCFGPatch(float(multiplier))),)


class PerpNeg(Node):
    type = "PerpNeg"
    display_name = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    category = "_for_testing"
    description = ("Perp-Neg (Armandpour et al. 2023): guide relative to the empty prompt and subtract only the part "
                   "of the negative prompt's direction perpendicular to the positive's, scaled by `neg_scale`, so a "
                   "negative that overlaps the positive does not cancel it. One more UNet row per step.")
    inputs = (
        Input("model", MODEL),
        Input("empty_conditioning", CONDITIONING),
        Input("neg_scale", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, empty_conditioning, neg_scale):
        if not empty_conditioning:
            raise ValueError("PerpNeg: input 'empty_conditioning' holds no conditioning (encode an empty prompt)")
        return (model.with_guidance(PerpNegPatch(empty_conditioning, float(neg_scale))),)


class SelfAttentionGuidance(Node):
    type = "SelfAttentionGuidance"
    display_name = "Self-Attention Guidance"
    category = "_for_testing"
    description = ("Self-attention guidance (Hong et al. 2023): blur the predicted image where the UNet's middle "
                   "block attends most (Gaussian, `blur_sigma` latent cells), predict it again and steer away from "
                   "the blurred result by `scale`. One more UNet pass per step; the negative pass always runs.")
    inputs = (
        Input("model", MODEL),
        Input("scale", FLOAT, default=0.5, min=-2.0, max=5.0, step=0.01),
        Input("blur_sigma", FLOAT, default=2.0, min=0.0, max=10.0, step=0.1),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, scale, blur_sigma):
        patch = SelfAttentionGuidancePatch(float(scale), float(blur_sigma))
        return (model.with_lora([("unet", patch)]).with_guidance(patch),)

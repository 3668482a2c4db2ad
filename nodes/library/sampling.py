"""KSampler and KSamplerAdvanced: denoise a latent with a model, a positive and a negative conditioning (ComfyUI's
inputs). Both run :func:`nodes.sampling.sample.sample`; the advanced one exposes the step window (start/end step),
whether noise is added, and whether the leftover noise is kept: the SDXL base -> refiner hand-off."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import COMBO, CONDITIONING, FLOAT, INT, LATENT, MAX_SEED, MODEL
from nodes.sampling import SAMPLER_NAMES, SCHEDULER_NAMES
from nodes.sampling.batch import sample_batch
from nodes.sampling.sample import sample

# ComfyUI's scheduler order, limited to what Chisel implements; the sampler choices are the registry's names (in
# ComfyUI's order), so an unknown sampler is a validation error up front, not a failure after the model has loaded.
SAMPLER_CHOICES = SAMPLER_NAMES
SCHEDULER_CHOICES = tuple(n for n in ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                                      "normal", "linear_quadratic", "kl_optimal") if n in SCHEDULER_NAMES)


class KSampler(Node):
    type = "KSampler"
    display_name = "KSampler"
    category = "sampling"
    description = ("Denoise a latent: starting from seeded noise (added to the input latent when denoise < 1), run "
                   "the sampler for `steps` steps with classifier-free guidance of strength `cfg`.")
    inputs = (
        Input("model", MODEL, tooltip="The model used for denoising."),
        Input("seed", INT, default=0, min=0, max=MAX_SEED, seed=True,
              tooltip="The noise seed; -1 picks one at random (recorded with the outputs)."),
        Input("steps", INT, default=20, min=1, max=10000, tooltip="Denoising steps."),
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="Classifier-free guidance scale; 1 disables the negative prompt (and its cost)."),
        Input("sampler_name", COMBO, default="euler", choices=SAMPLER_CHOICES),
        Input("scheduler", COMBO, default="simple", choices=SCHEDULER_CHOICES),
        Input("positive", CONDITIONING, tooltip="What the image should show."),
        Input("negative", CONDITIONING, tooltip="What the image should not show."),
        Input("latent_image", LATENT, tooltip="The latent to denoise (an empty latent for text-to-image)."),
        Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
              tooltip="How much of the schedule to run: below 1 keeps some of the input latent (img2img)."),
    )
    outputs = (Output("LATENT", LATENT),)
    per_sample_inputs = ("seed",)

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise):
        return (sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                       denoise, ctx),)

    @classmethod
    def run_batch(cls, ctxs, calls):
        out = sample_batch(ctxs, [dict(c, latent=c["latent_image"], add_noise=True, start_step=None, last_step=None,
                                       force_full_denoise=False) for c in calls])
        return None if out is None else [(latent,) for latent in out]


class KSamplerAdvanced(Node):
    type = "KSamplerAdvanced"
    display_name = "KSampler (Advanced)"
    category = "sampling"
    description = ("Run steps start_at_step..end_at_step of a `steps`-step schedule. add_noise=disable continues from a "
                   "latent that still holds noise; return_with_leftover_noise=enable stops without removing the rest, "
                   "so another sampler (an SDXL refiner) can finish with the same schedule.")
    inputs = (
        Input("model", MODEL, tooltip="The model used for denoising."),
        Input("add_noise", COMBO, default="enable", choices=("enable", "disable"),
              tooltip="disable: the latent already holds the noise of start_at_step (a hand-off)."),
        Input("noise_seed", INT, default=0, min=0, max=MAX_SEED, seed=True,
              tooltip="The noise seed; -1 picks one at random (recorded with the outputs)."),
        Input("steps", INT, default=20, min=1, max=10000, tooltip="Steps of the whole schedule."),
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="Classifier-free guidance scale; 1 disables the negative prompt (and its cost)."),
        Input("sampler_name", COMBO, default="euler", choices=SAMPLER_CHOICES),
        Input("scheduler", COMBO, default="simple", choices=SCHEDULER_CHOICES),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("latent_image", LATENT),
        Input("start_at_step", INT, default=0, min=0, max=10000,
              tooltip="First step to run (0 = from pure noise); at or past `steps` the latent passes unchanged."),
        Input("end_at_step", INT, default=10000, min=0, max=10000,
              tooltip="Step to stop at (values past `steps` run to the end); must not be before start_at_step."),
        Input("return_with_leftover_noise", COMBO, default="disable", choices=("disable", "enable"),
              tooltip="enable: return the latent at end_at_step's noise level instead of denoising it fully."),
    )
    outputs = (Output("LATENT", LATENT),)
    per_sample_inputs = ("noise_seed",)

    @classmethod
    def run_batch(cls, ctxs, calls):
        out = sample_batch(ctxs, [dict(c, seed=c["noise_seed"], latent=c["latent_image"], denoise=1.0,
                                       add_noise=c["add_noise"] != "disable", start_step=c["start_at_step"],
                                       last_step=c["end_at_step"],
                                       force_full_denoise=c["return_with_leftover_noise"] != "enable")
                                for c in calls])
        return None if out is None else [(latent,) for latent in out]

    def run(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        return (sample(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                       1.0, ctx, add_noise=add_noise != "disable", start_step=start_at_step, last_step=end_at_step,
                       force_full_denoise=return_with_leftover_noise != "enable"),)

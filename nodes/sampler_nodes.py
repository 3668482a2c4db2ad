"""KSampler: denoise a latent with a model, a positive and a negative conditioning (ComfyUI's inputs)."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import COMBO, CONDITIONING, FLOAT, INT, LATENT, MAX_SEED, MODEL

from .models.diffusion import sample

# ComfyUI's names, in ComfyUI's order, so its workflows validate unchanged; a name Chisel's sampler library does
# not implement yet fails at run time with the list of those it does.
SAMPLER_CHOICES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULER_CHOICES = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                     "linear_quadratic", "kl_optimal")


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

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        return (sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                       denoise, ctx),)

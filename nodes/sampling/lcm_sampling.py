"""The Latent Consistency Model view of a discrete schedule (Luo et al. 2023, "Latent Consistency Models").

An LCM (or an LCM-LoRA) is distilled from an epsilon-prediction model on a coarse grid of the training timesteps,
the paper's skipping-step schedule: the 50 timesteps ``k-1, 2k-1, ..., N-1`` with ``k = N // 50`` (diffusers'
LCMScheduler calls 50 ``original_inference_steps``). The network's output is read through the consistency model's
boundary condition

    f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0(x_t, t)
    c_skip(t) = sigma_data^2 / ((s t)^2 + sigma_data^2),   c_out(t) = s t / sqrt((s t)^2 + sigma_data^2)

with ``sigma_data = 0.5``, timestep scaling ``s = 10``, ``x_t`` the VP-scaled sample the network sees and ``x0`` the
epsilon parameterisation's clean-latent estimate. ``c_skip -> 1`` and ``c_out -> 0`` as ``t -> 0``, so ``f(x, 0) = x``.

The sigma table the samplers and schedulers see holds only the 50 distilled timesteps, so every scheduler picks its
sigmas on that grid (``simple`` with n steps gives exactly LCMScheduler's timesteps); the network still gets the
original training timestep (:meth:`LCMModelSampling.network_timestep`).
"""

from __future__ import annotations

import torch

from nodes.sampling.model_sampling import ModelSampling, _as_tensor, _view_for, rescale_zero_terminal_snr

__all__ = ["LCMModelSampling", "SIGMA_DATA", "TIMESTEP_SCALING", "ORIGINAL_STEPS", "boundary_scalings"]

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
ORIGINAL_STEPS = 50


def boundary_scalings(timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the LCM boundary condition at (training) ``timestep``."""
    st = timestep * TIMESTEP_SCALING
    denom = st * st + SIGMA_DATA**2
    return SIGMA_DATA**2 / denom, st / denom**0.5


class LCMModelSampling(ModelSampling):
    """An epsilon-prediction schedule read as a Latent Consistency Model, on the distilled timestep grid."""

    def __init__(self, base: ModelSampling, original_steps: int = ORIGINAL_STEPS):
        super().__init__(beta_schedule=base.beta_schedule, prediction_type="epsilon",
                         zero_terminal_snr=base.zero_terminal_snr, betas=base.betas)
        full = torch.cumprod(1.0 - self.betas, dim=0)
        if self.zero_terminal_snr:
            full = rescale_zero_terminal_snr(full)
        n = int(full.numel())
        self.skip = n // int(original_steps)
        if self.skip < 1:
            raise ValueError(f"a schedule of {n} timesteps has no {original_steps}-step distilled grid")
        self.train_timesteps = torch.arange(1, int(original_steps) + 1) * self.skip - 1
        self._set_alphas_cumprod(full[self.train_timesteps])

    def __repr__(self) -> str:
        return "LCM" + super().__repr__()

    @property
    def train_steps(self) -> int:
        return int(self.betas.numel())

    def training_sigma(self, t: float) -> float:
        """Sigma at training timestep ``t``: on the distilled grid, interpolated between its neighbouring points
        (grid point i is timestep (i + 1) k - 1; clamped to the grid's ends)."""
        position = min(max((float(t) - (self.skip - 1)) / self.skip, 0.0), self.num_timesteps - 1.0)
        return float(self.sigma(torch.tensor(position, dtype=torch.float64)))

    def network_timestep(self, sigma) -> torch.Tensor:
        """The training timestep of the nearest distilled grid point (index i -> (i + 1) * k - 1)."""
        return self.nearest_timestep(sigma) * self.skip + (self.skip - 1)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The boundary-conditioned estimate ``c_skip * x_vp + c_out * (x - sigma * eps)`` (x in sigma space)."""
        sigma = _as_tensor(sigma).to(x.device)
        s = _view_for(sigma, model_output)
        t = _view_for(self.network_timestep(sigma.reshape(-1)).reshape(sigma.shape), model_output)
        c_skip, c_out = boundary_scalings(t)
        return c_out * (x - model_output * s) + c_skip * (x / (s * s + 1.0) ** 0.5)

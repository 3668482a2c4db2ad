"""The discrete Stable Diffusion noise schedule, seen in sigma space (the k-diffusion view).

A DDPM-style model is trained on ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps`` for integer timesteps
``t = 0 .. N-1``. Dividing by ``sqrt(abar_t)`` gives the variance-exploding form ``x = x0 + sigma * eps`` with

    sigma_t = sqrt((1 - abar_t) / abar_t)

which is the space every sampler in :mod:`nodes.sampling.samplers` works in. The network itself still wants its
VP-scaled input ``x / sqrt(sigma^2 + 1)`` and an (interpolated) timestep; :meth:`ModelSampling.calculate_input`,
:meth:`ModelSampling.timestep` and :meth:`ModelSampling.calculate_denoised` convert between the two views.

All methods that take tensors are free of host/device synchronisation: lookup tables are copied once per
(device, dtype) and indexed on the device.
"""

from __future__ import annotations

import torch

__all__ = ["ModelSampling", "make_betas", "rescale_zero_terminal_snr"]

# abar for the last timestep after zero-terminal-SNR rescaling. Exactly 0 would make sigma_max infinite; this
# small positive value (the one ComfyUI uses, sigma_max ~= 4519) keeps every sigma finite.
ZSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' names; "sample" predicts x0
BETA_SCHEDULES = ("scaled_linear", "linear")


def make_betas(
    schedule: str = "scaled_linear",
    timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
) -> torch.Tensor:
    """The training betas, in float64.

    ``scaled_linear`` (Stable Diffusion): linear in sqrt(beta); ``linear``: linear in beta (DDPM).
    """
    if schedule == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1.

    sqrt(abar) is shifted so that its last value is 0 and scaled so that its first value is unchanged. The last
    value is then set to a tiny positive number so that sigma stays finite.
    """
    root = alphas_cumprod.to(torch.float64).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root**2
    out[-1] = ZSNR_LAST_ALPHA_CUMPROD
    return out


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value, dtype=torch.float64)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (ints, half precision) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _view_for(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape a per-sample sigma ([B], [] or [1]) so that it broadcasts against x ([B, C, ...])."""
    sigma = sigma.to(dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))


class ModelSampling:
    """The discrete DDPM schedule of an SD-style model, in sigma space.

    ``sigmas`` are the N training sigmas (float32, ascending: ``sigmas[t]`` belongs to timestep t).
    """

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
        prediction_type: str = "epsilon",
        zero_terminal_snr: bool = False,
        betas: torch.Tensor | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if betas is None:
            betas = make_betas(beta_schedule, timesteps, linear_start, linear_end)
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2:
            raise ValueError("a schedule needs at least two timesteps")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)

        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.betas = betas  # float64, the training schedule (before any zero-terminal-SNR rescaling)
        self._set_alphas_cumprod(alphas_cumprod)

    def _set_alphas_cumprod(self, alphas_cumprod: torch.Tensor) -> None:
        """The sigma table of the timesteps a sampler can use (float64 ``alphas_cumprod`` in, ascending t)."""
        self.num_timesteps = int(alphas_cumprod.numel())
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = (((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5).to(torch.float32)
        self.log_sigmas = self.sigmas.double().log()  # float64; cast per use
        self._tables: dict[tuple, torch.Tensor] = {}

    # -- scalars -------------------------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __repr__(self) -> str:
        return (
            f"ModelSampling({self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
            f"zero_terminal_snr={self.zero_terminal_snr}, sigma_min={self.sigma_min:.5g}, "
            f"sigma_max={self.sigma_max:.5g})"
        )

    def _log_sigmas(self, device, dtype) -> torch.Tensor:
        """log(sigmas) on a device/dtype, copied once and cached (no per-step transfer)."""
        key = (str(device), dtype)
        table = self._tables.get(key)
        if table is None:
            table = self.log_sigmas.to(dtype=dtype).to(device)
            self._tables[key] = table
        return table

    # -- timestep <-> sigma (interpolated in log sigma) -----------------------------------------------------
    def sigma(self, timestep) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep: linear interpolation of log(sigma) between the two
        neighbouring integer timesteps. Timesteps are clamped to [0, N-1]."""
        t = _as_tensor(timestep)
        dtype = _work_dtype(t)
        t = t.to(dtype).clamp(0, self.num_timesteps - 1)
        table = self._log_sigmas(t.device, dtype)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low.to(dtype)
        return ((1.0 - w) * table[low] + w * table[high]).exp()

    def timestep(self, sigma) -> torch.Tensor:
        """The (fractional) timestep of a sigma: the inverse of :meth:`sigma`; clamped to [0, N-1]."""
        s = _as_tensor(sigma)
        dtype = _work_dtype(s)
        table = self._log_sigmas(s.device, dtype)
        log_s = s.to(dtype).log()
        flat = log_s.reshape(-1)
        idx = torch.searchsorted(table, flat)  # first index with table[idx] >= log_s
        low = (idx - 1).clamp(0, self.num_timesteps - 2)
        high = low + 1
        w = ((flat - table[low]) / (table[high] - table[low])).clamp(0.0, 1.0)
        return (low.to(dtype) + w).reshape(log_s.shape)

    def nearest_timestep(self, sigma) -> torch.Tensor:
        """The integer training timestep whose log sigma is nearest to log(sigma) (the lower one on a tie), as a
        float tensor: the timestep the UNet gets (ComfyUI rounds where :meth:`timestep` interpolates)."""
        s = _as_tensor(sigma)
        dtype = _work_dtype(s)
        table = self._log_sigmas(s.device, dtype)
        log_s = s.to(dtype).log()
        flat = log_s.reshape(-1)
        low = (torch.searchsorted(table, flat) - 1).clamp(0, self.num_timesteps - 2)
        high = low + 1
        pick_high = (table[high] - flat).abs() < (flat - table[low]).abs()
        return torch.where(pick_high, high, low).to(dtype).reshape(log_s.shape)

    def network_timestep(self, sigma) -> torch.Tensor:
        """The timestep the network gets at ``sigma`` (float tensor): the nearest training timestep."""
        return self.nearest_timestep(sigma)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0.0 = start/most noise, 1.0 = end/no noise)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.training_sigma((1.0 - percent) * (self.train_steps - 1))

    @property
    def train_steps(self) -> int:
        """The number of training timesteps (the sigma table may hold fewer: a distilled grid)."""
        return self.num_timesteps

    def training_sigma(self, t: float) -> float:
        """Sigma at training timestep ``t`` (0 .. train_steps - 1; log-sigma interpolation between integers)."""
        return float(self.sigma(torch.tensor(float(t), dtype=torch.float64)))

    # -- the network's view -----------------------------------------------------------------------------------
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The VP-scaled input the network was trained on: x / sqrt(sigma^2 + 1)."""
        s = _view_for(_as_tensor(sigma).to(x.device), x)
        return x / (s * s + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The x0 prediction from the network output at (unscaled) x.

        epsilon: x0 = x - sigma * eps.
        v:       x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)
                 (v = alpha * eps - sigma_vp * x0 on the VP input, sigma_data = 1).
        sample:  x0 = the output (the network predicts the clean latent itself).
        """
        if self.prediction_type == "sample":
            return model_output
        s = _view_for(_as_tensor(sigma).to(x.device), model_output)
        if self.prediction_type == "epsilon":
            return x - model_output * s
        s2 = s * s + 1.0
        return x / s2 - model_output * (s / s2**0.5)

    def noise_scaling(
        self, sigma, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        """The noisy start for sampling from ``sigma``: latent + noise * sigma.

        With ``max_denoise`` (sampling from the top of the schedule) the noise is scaled by sqrt(1 + sigma^2),
        the exact standard deviation of x at sigma for unit-variance data, as ComfyUI's KSampler does.
        """
        s = _view_for(_as_tensor(sigma).to(noise.device), noise)
        scale = (s * s + 1.0) ** 0.5 if max_denoise else s
        return latent_image + noise * scale

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        """Undo the output scaling of the sampler (identity for these VE-space models)."""
        return latent

"""Exact denoisers for toy data distributions, for testing samplers (and anything built on them) without a
network.

For data x0 ~ p and x = x0 + sigma * n (n standard normal), the ideal denoiser is the posterior mean
D(x, sigma) = E[x0 | x]; the probability-flow ODE and the reverse SDE driven by it transport N(x0-marginal at
sigma_max) exactly to p. Both classes follow the sampler model interface ``model(x, sigma_batch) -> x0``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GaussianDenoiser", "MixtureDenoiser", "GuidedDenoiser"]


def _per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))


class GaussianDenoiser:
    """Data N(mean, std^2) in every coordinate: D(x, sigma) = mean + std^2 / (std^2 + sigma^2) (x - mean)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = float(mean), float(std)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        self.calls += 1
        s = _per_sample(sigma, x)
        var = self.std**2
        return self.mean + (x - self.mean) * (var / (var + s * s))

    def consistency(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        """The consistency function (the probability-flow ODE's map from sigma to 0), which a consistency/LCM
        model learns: mean + std / sqrt(std^2 + sigma^2) (x - mean)."""
        self.calls += 1
        s = _per_sample(sigma, x)
        return self.mean + (x - self.mean) * (self.std / (self.std**2 + s * s) ** 0.5)

    def sample_x_at(self, sigma: float, shape, generator=None, dtype=torch.float64) -> torch.Tensor:
        """Exact samples of x at noise level sigma: N(mean, std^2 + sigma^2)."""
        n = torch.randn(shape, generator=generator, dtype=dtype)
        return self.mean + n * (self.std**2 + sigma**2) ** 0.5


class MixtureDenoiser:
    """Data on a few points ``points`` with probabilities ``weights`` (each coordinate independently):
    D(x, sigma) = sum_k w_k N(x; p_k, sigma^2) p_k / sum_k w_k N(x; p_k, sigma^2)."""

    def __init__(self, points=(-1.0, 1.0), weights=(0.5, 0.5)):
        pairs = sorted(zip((float(p) for p in points), (float(w) for w in weights)))
        total = sum(w for _, w in pairs)
        self.points = [p for p, _ in pairs]
        self.weights = [w / total for _, w in pairs]
        self.calls = 0

    @property
    def mean(self) -> float:
        return sum(w * p for w, p in zip(self.weights, self.points))

    @property
    def std(self) -> float:
        m = self.mean
        return sum(w * (p - m) ** 2 for w, p in zip(self.weights, self.points)) ** 0.5

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        self.calls += 1
        s = _per_sample(sigma, x)
        inv_2var = 0.5 / (s * s)
        if len(self.points) == 2:  # closed form: a + (b - a) * P(b | x), P(b | x) = sigmoid(logit)
            (a, b), (wa, wb) = self.points, self.weights
            # logit = log(wb / wa) + ((x - a)^2 - (x - b)^2) / (2 sigma^2), affine in x:
            slope = (2.0 * (b - a)) * inv_2var
            logit = torch.addcmul(math.log(wb / wa) - (b * b - a * a) * inv_2var, x, slope)
            return torch.sigmoid(logit).mul_(b - a).add_(a)
        pts = torch.tensor(self.points, dtype=x.dtype, device=x.device)
        logw = torch.tensor(self.weights, dtype=x.dtype, device=x.device).log()
        logits = logw - (x.unsqueeze(-1) - pts) ** 2 * inv_2var.unsqueeze(-1)
        return (torch.softmax(logits, dim=-1) * pts).sum(-1)

    def consistency(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        """The consistency function: in one dimension the probability-flow ODE is monotone, so its map from
        sigma to 0 is the quantile map F_data^-1(F_sigma(x)), a step function onto the points."""
        self.calls += 1
        s = _per_sample(sigma, x)
        cdf = sum(w * torch.special.ndtr((x - p) / s) for w, p in zip(self.weights, self.points))
        out = torch.full_like(x, self.points[-1])
        cum, bounds = 0.0, []
        for w in self.weights[:-1]:
            cum += w
            bounds.append(cum)
        for bound, p in reversed(list(zip(bounds, self.points[:-1]))):
            out = torch.where(cdf < bound, torch.full_like(x, p), out)
        return out

    def sample_x_at(self, sigma: float, shape, generator=None, dtype=torch.float64) -> torch.Tensor:
        """Exact samples of x at noise level sigma: a point drawn by weight, plus sigma * noise."""
        n = int(torch.Size(shape).numel())
        idx = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), n, replacement=True,
                                generator=generator)
        x0 = torch.tensor(self.points, dtype=dtype)[idx].reshape(shape)
        return x0 + sigma * torch.randn(shape, generator=generator, dtype=dtype)


class GuidedDenoiser:
    """Classifier-free guidance over two exact denoisers, as a guider combines a UNet's conditional and
    unconditional predictions: D = U + cfg (C - U). ``denoise_with_uncond`` returns (D, U) (the interface the CFG++
    samplers use)."""

    def __init__(self, cond, uncond, cfg: float):
        self.cond, self.uncond, self.cfg = cond, uncond, float(cfg)

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor, **extra):
        u = self.uncond(x, sigma)
        return u + (self.cond(x, sigma) - u) * self.cfg, u

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        return self.denoise_with_uncond(x, sigma)[0]

"""The Gaussian diffusion process of DDPM (Ho et al. 2020; paper §3.2): schedule, q, posterior, loss.

Timesteps are 0-based here: index t = 0..T-1 stands for the paper's t = 1..T. Schedules are
float64 numpy arrays, turned into tensors by ``_extract`` only when used. The process sees the
network only as a callable ``model(x_t, t)`` that predicts ε.
"""
import math

import numpy as np
import torch

from .config import DiffusionConfig


def cosine_betas(timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal (2021) eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2)."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - f(t + 1) / f(t), max_beta) for t in range(timesteps)])


def linear_betas(timesteps):
    """Ho et al. (2020): β from 1e-4 to 0.02 over 1000 steps, rescaled for other T."""
    scale = 1000 / timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)


def _extract(array, t, ndim):
    """array[t] as a float32 tensor on t's device, shaped (N, 1, 1, 1, 1) for broadcasting."""
    out = torch.as_tensor(array, device=t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0) and the ε-prediction loss.

    ``timestep_map[t]`` is the model's timestep for index t: the identity for the full process,
    the kept timesteps for a re-spaced one (``respace``)."""

    def __init__(self, betas, timestep_map=None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(len(betas)) if timestep_map is None
                             else np.asarray(timestep_map))
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # eq. 6: β̃_t, and eq. 5: the two coefficients of the posterior mean
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (
            1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (
            1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (
            1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig):
        if cfg.schedule == "cosine":
            return cls(cosine_betas(cfg.timesteps))
        if cfg.schedule == "linear":
            return cls(linear_betas(cfg.timesteps))
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use cosine or linear")

    def respace(self, steps):
        """A process over ``steps`` evenly spaced timesteps with the same ᾱ there
        (Nichol & Dhariwal §4; the basis of DDIM with K < T steps)."""
        steps = int(steps)
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        keep = np.unique(np.round(np.linspace(0, self.num_timesteps - 1, steps)).astype(int))
        abar = self.alphas_cumprod[keep]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(betas, self.timestep_map[keep])

    def q_sample(self, x_start, t, noise):
        """Eq. 3: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Eqs. 5–6: mean and variance β̃_t of q(x_{t-1} | x_t, x_0)."""
        mean = (_extract(self.posterior_mean_coef1, t, x_t.ndim) * x_start
                + _extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return mean, _extract(self.posterior_variance, t, x_t.ndim)

    def predict_xstart_from_eps(self, x_t, t, eps):
        """Eq. 7: x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

    def predict_eps_from_xstart(self, x_t, t, x_start):
        return ((_extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x_start)
                / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

    def model_eps(self, model, x_t, t):
        """ε_θ(x_t, t) with t translated to the model's timesteps, in float32."""
        t_model = torch.as_tensor(self.timestep_map, device=t.device)[t]
        return model(x_t, t_model).float()

    def training_losses(self, model, x_start, t, noise):
        """Algorithm 1 / eq. 10: per-sample mean of (ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t))²."""
        x_t = self.q_sample(x_start, t, noise)
        eps = self.model_eps(model, x_t, t)
        return (noise - eps).pow(2).flatten(1).mean(1)

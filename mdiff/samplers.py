"""Samplers: plain functions of a denoiser ``denoise(x_t, t) -> (x̂_0, ε̂)`` and the
GaussianDiffusion whose schedule they walk. ``diffusion.denoiser(model)`` is the plain one (the
objective decides there how the network's output is read); ``mdiff.tiling`` wraps it to denoise
volumes larger than the network was trained on. No sampler knows what the network predicts or
how large the volume is.

Noise comes from one CPU ``torch.Generator`` per volume, so volume i of a seeded run is the
same whatever the batch size and device.

``SAMPLERS`` is the table that ``mdiff-sample --sampler`` and ``Generator`` read: a new sampler
is one function here and one ``register`` call (or a row added from outside, as the tests do).
"""
import math
from dataclasses import dataclass, field

import torch


def _noise(generators, shape, device):
    """(N, *shape) standard normal noise, one generator per volume."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
def ddpm_sample(denoise, diffusion, shape, generators, device="cpu", variance="beta_tilde",
                progress=None):
    """Algorithm 2 (ancestral sampling): x_T ~ N(0, I), then for t = T..1
    x_{t-1} = μ̃_θ(x_t, t) + σ_t z with σ_t² = β̃_t (eq. 6) or β_t, and z = 0 at the last step.

    Returns x_0 (N, *shape) in float32; ``progress(i, total)`` is called after each step."""
    x = _noise(generators, shape, device)
    total = diffusion.num_timesteps
    for i, step in enumerate(reversed(range(total))):
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x_start, _ = denoise(x, t)
        mean, var = diffusion.q_posterior_mean_variance(x_start, x, t)
        if variance == "beta":
            var = torch.full_like(var, float(diffusion.betas[step]))
        if step > 0:
            x = mean + var.sqrt() * _noise(generators, shape, device)
        else:
            x = mean
        if progress:
            progress(i + 1, total)
    return x


@torch.no_grad()
def ddim_sample(denoise, diffusion, shape, generators, device="cpu", eta=0.0, progress=None,
                x_t=None, start=None):
    """DDIM (Song et al. 2021, eq. 12) over the steps of ``diffusion`` (use ``respace(K)``):
    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 − ᾱ_{t-1} − σ_t²) ε_θ + σ_t z,
    σ_t = η √((1 − ᾱ_{t-1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t-1}). η = 0 is deterministic; η = 1
    with all T steps is the ancestral sampler with σ_t² = β̃_t.

    ``x_t`` and ``start`` begin the chain from a given x_t at step ``start`` of ``diffusion``
    instead of from noise at its last step (to denoise noised real volumes, as a check)."""
    x = _noise(generators, shape, device) if x_t is None else x_t.to(device)
    total = diffusion.num_timesteps if start is None else start + 1
    for i, step in enumerate(reversed(range(total))):
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x_start, eps = denoise(x, t)
        abar = float(diffusion.alphas_cumprod[step])
        abar_prev = float(diffusion.alphas_cumprod_prev[step])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev ** 0.5 * x_start + max(1 - abar_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if step > 0 and sigma > 0:
            x = x + sigma * _noise(generators, shape, device)
        if progress:
            progress(i + 1, total)
    return x


@torch.no_grad()
def dpmpp_2m_sample(denoise, diffusion, shape, generators, device="cpu", progress=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), the multistep second-order solver of the
    probability-flow ODE in its data-prediction form, over the steps of ``diffusion`` (use
    ``respace(K)``). With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t' − λ_t:

        x_t' = (σ_t'/σ_t) x_t − α_t' (e^{−h} − 1) D,   D = x̂_0 at the first step, else
        D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev),   r = h_prev / h.

    The last step goes to σ = 0 and returns the last x̂_0 (first order: λ is infinite there).
    Deterministic, like DDIM with η = 0, which is its first-order form."""
    x = _noise(generators, shape, device)
    total = diffusion.num_timesteps
    previous = None  # (x̂_0, h) of the step before
    for i, step in enumerate(reversed(range(total))):
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x_start, _ = denoise(x, t)
        abar = float(diffusion.alphas_cumprod[step])
        abar_next = float(diffusion.alphas_cumprod_prev[step])
        if abar_next >= 1.0:
            x = x_start
        else:
            lam = 0.5 * math.log(abar / (1 - abar))
            lam_next = 0.5 * math.log(abar_next / (1 - abar_next))
            h = lam_next - lam
            d = x_start
            if previous is not None:
                r = previous[1] / h
                d = (1 + 0.5 / r) * x_start - (0.5 / r) * previous[0]
            sigma_ratio = ((1 - abar_next) / (1 - abar)) ** 0.5
            x = sigma_ratio * x - abar_next ** 0.5 * math.expm1(-h) * d
            previous = (x_start, h)
        if progress:
            progress(i + 1, total)
    return x


@dataclass(frozen=True)
class Sampler:
    """A row of ``SAMPLERS``: the function, its default steps and the options it takes."""

    fn: object  # fn(denoise, diffusion, shape, generators, device, progress=..., **options)
    steps: dict  # default steps by model dims (3, 2); None: every step of the schedule
    options: tuple = field(default=())  # request fields passed on by name ("eta", "variance")
    help: str = ""

    def default_steps(self, dims):
        return None if self.steps is None else self.steps.get(dims, self.steps.get(3))


SAMPLERS = {}


def register(name, fn, steps, options=(), help=""):
    """Add a sampler to the table: ``steps`` an int (the default for every kind of model), a
    {dims: steps} dict, or None for a sampler that walks every step of the schedule."""
    steps = None if steps is None else ({3: int(steps)} if isinstance(steps, int)
                                        else dict(steps))
    SAMPLERS[name] = Sampler(fn, steps, tuple(options), help)
    return SAMPLERS[name]


# DPM-Solver++(2M) at 30 steps matched DDIM-50's fidelity figures within the noise of 16
# volumes (benchmarks/results/README.md, sampler steps); 2D models take DDIM-100 with eta 1
# (``mdiff.generation.KIND_DEFAULTS``)
register("dpm++", dpmpp_2m_sample, 30, help="DPM-Solver++(2M), deterministic")
register("ddim", ddim_sample, {3: 50, 2: 100}, ("eta",), help="DDIM, --eta 0 deterministic")
register("ddpm", ddpm_sample, None, ("variance",), help="ancestral, every step of the schedule")

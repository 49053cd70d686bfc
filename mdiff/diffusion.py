"""The Gaussian diffusion process of DDPM (Ho et al. 2020; paper §3.2): schedule, q, posterior, loss.

Timesteps are 0-based here: index t = 0..T-1 stands for the paper's t = 1..T. Schedules are
float64 numpy arrays, turned into tensors by ``_extract`` only when used. The process sees the
network only as a callable ``model(x_t, t)`` (``model(x_t, t, x_self)`` with self-conditioning).

What the network's output means is the *objective*, and ``GaussianDiffusion.predict`` is the one
place that turns it into the pair (x̂_0, ε̂) every sampler works with:
- ``eps``: the output is ε (the paper's Algorithm 1; loss ‖ε − ε_θ‖²);
- ``x0``: the output is n phase logits; x̂_0 = 2·softmax − 1 is the posterior mean of the one-hot
  encoding in [−1, 1] and the loss is the cross-entropy with the clean cube's phases (continuous
  diffusion for categorical data: Dieleman et al. 2022, Chen et al. 2022);
- ``v``: the output is v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import OBJECTIVES, DiffusionConfig


def cosine_betas(timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal (2021) eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2)."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - f(t + 1) / f(t), max_beta) for t in range(timesteps)])


def linear_betas(timesteps):
    """Ho et al. (2020): β from 1e-4 to 0.02 over 1000 steps, rescaled for other T."""
    scale = 1000 / timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)


def shift_betas(betas, shift):
    """Betas whose ᾱ has the signal-to-noise ratio ᾱ/(1 − ᾱ) of ``betas`` divided by shift²
    at every step (Hoogeboom et al. 2023, shifted schedules; Chen 2023's input scaling b = 1/shift
    up to a rescaling of x_t). shift > 1 spends more of the process at high noise, where the
    large-scale structure is decided."""
    abar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    abar = abar / (abar + shift ** 2 * (1.0 - abar))
    return np.clip(1.0 - abar / np.append(1.0, abar[:-1]), 0.0, 0.999)


def _extract(array, t, ndim):
    """array[t] as a float32 tensor on t's device, shaped (N, 1, 1, 1, 1) for broadcasting."""
    out = torch.as_tensor(array, device=t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the prediction (x̂_0, ε̂) for each
    objective and its training loss.

    ``timestep_map[t]`` is the model's timestep for index t: the identity for the full process,
    the kept timesteps for a re-spaced one (``respace``). ``snr_gamma`` > 0 weighs the eps and v
    losses by min(SNR, γ)/SNR and min(SNR, γ)/(SNR + 1) (min-SNR-γ, Hang et al. 2023).
    ``self_condition``: the model takes the previous x̂_0 as a third argument (Chen et al. 2022)."""

    def __init__(self, betas, timestep_map=None, objective="eps", snr_gamma=0.0,
                 self_condition=False, topology_weight=0.0, thin_weight=0.0, span_weight=0.0,
                 span_radius=0, throat_weight=0.0):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: use one of {OBJECTIVES}")
        self.objective = objective
        self.topology_weight = float(topology_weight)
        self.thin_weight = float(thin_weight)
        self.span_weight = float(span_weight)
        self.span_radius = int(span_radius)
        self.throat_weight = float(throat_weight)
        self.snr_gamma = float(snr_gamma)
        self.self_condition = bool(self_condition)
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
            betas = cosine_betas(cfg.timesteps)
        elif cfg.schedule == "linear":
            betas = linear_betas(cfg.timesteps)
        else:
            raise ValueError(f"unknown schedule {cfg.schedule!r}: use cosine or linear")
        if cfg.snr_shift != 1.0:
            betas = shift_betas(betas, cfg.snr_shift)
        return cls(betas, objective=cfg.objective, snr_gamma=cfg.snr_gamma,
                   self_condition=cfg.self_condition, topology_weight=cfg.topology_weight,
                   thin_weight=cfg.thin_weight, span_weight=cfg.span_weight,
                   span_radius=cfg.span_radius, throat_weight=cfg.throat_weight)

    def respace(self, steps):
        """A process over ``steps`` evenly spaced timesteps with the same ᾱ there
        (Nichol & Dhariwal §4; the basis of DDIM with K < T steps)."""
        steps = int(steps)
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        keep = np.unique(np.round(np.linspace(0, self.num_timesteps - 1, steps)).astype(int))
        return self.at_timesteps(keep)

    def at_timesteps(self, keep):
        """The process over the indices ``keep`` (ascending) of this one, with the same ᾱ
        there: its step 0 goes to x_0 (ᾱ_prev = 1), each other step to the kept index below.
        ``respace`` keeps evenly spaced indices from 0; a distilled student keeps its own."""
        keep = np.asarray(keep, dtype=int)
        if keep.ndim != 1 or len(keep) == 0 or np.any(np.diff(keep) <= 0) or keep[0] < 0 \
                or keep[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps must ascend within 0..{self.num_timesteps - 1}")
        abar = self.alphas_cumprod[keep]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(betas, self.timestep_map[keep], self.objective, self.snr_gamma,
                                 self.self_condition)

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

    def model_output(self, model, x_t, t, x_self=None):
        """The network's raw output in float32, t translated to the model's timesteps; with
        self-conditioning ``x_self`` is the previous x̂_0 (zeros when there is none)."""
        t_model = torch.as_tensor(self.timestep_map, device=t.device)[t]
        if not self.self_condition:
            return model(x_t, t_model).float()
        return model(x_t, t_model, torch.zeros_like(x_t) if x_self is None else x_self).float()

    def predict(self, model, x_t, t, x_self=None, clip_denoised=True):
        """(x̂_0, ε̂) of the network at (x_t, t): the one place where the objective decides how
        its output is read. ``clip_denoised`` clips x̂_0 to [−1, 1], the range of the one-hot
        encoding (the x0 objective's x̂_0 is inside by construction)."""
        out = self.model_output(model, x_t, t, x_self)
        if self.objective == "x0":
            x_start = 2.0 * torch.softmax(out, dim=1) - 1.0
            return x_start, self.predict_eps_from_xstart(x_t, t, x_start)
        if self.objective == "v":
            a = _extract(self.sqrt_alphas_cumprod, t, x_t.ndim)
            s = _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
            x_start, eps = a * x_t - s * out, s * x_t + a * out
        else:
            x_start, eps = self.predict_xstart_from_eps(x_t, t, out), out
        if clip_denoised:
            x_start = x_start.clamp(-1, 1)
            eps = self.predict_eps_from_xstart(x_t, t, x_start)
        return x_start, eps

    def denoiser(self, model, clip_denoised=True):
        """``denoise(x_t, t) -> (x̂_0, ε̂)`` for one sampling chain: what every sampler calls.
        With self-conditioning it feeds each call the x̂_0 of the call before, so make one
        denoiser per chain."""
        previous = [None]

        def denoise(x_t, t):
            x_start, eps = self.predict(model, x_t, t, previous[0], clip_denoised)
            if self.self_condition:
                previous[0] = x_start
            return x_start, eps

        return denoise

    def voxel_weights(self, x_start):
        """(N, voxels) weights of the x0 cross-entropy from the clean cubes: 1, plus
        ``thin_weight`` on each phase's thin parts (``thin_parts``), ``span_weight`` on the
        parts that join opposite faces of the cube (``spanning_parts``) and ``throat_weight``
        on the thin parts that join thick bodies (``throat_parts``); None when all are 0 (a
        plain mean). Weights that depend on x_0 tilt the learned posterior towards the
        structures they weigh: the levers of connectivity."""
        if self.thin_weight == 0 and self.span_weight == 0 and self.throat_weight == 0:
            return None
        weight = torch.ones_like(x_start[:, 0].flatten(1), dtype=torch.float32)
        if self.thin_weight > 0:
            weight = weight + self.thin_weight * thin_parts(x_start).flatten(1)
        if self.span_weight > 0:
            weight = weight + self.span_weight * spanning_parts(
                x_start, self.span_radius).flatten(1)
        if self.throat_weight > 0:
            weight = weight + self.throat_weight * throat_parts(x_start).flatten(1)
        return weight

    def training_losses(self, model, x_start, t, noise, coin=None):
        """Per-sample loss at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Algorithm 1):
        eps: mean (ε − ε_θ)² (eq. 10); v: mean (v − v_θ)²; both times the min-SNR-γ weight when
        ``snr_gamma`` > 0; x0: mean cross-entropy between the logits and the phases of x_0.

        With self-conditioning, half the samples get the model's own x̂_0 (no gradient) as the
        extra input and the others zeros, so it learns both the first step and the later ones:
        those whose ``coin`` (N uniforms; drawn here if not given) is below 1/2. (The guess
        is made for the whole batch, so that a model callable with per-sample inputs works.)"""
        x_t = self.q_sample(x_start, t, noise)
        x_self = None
        if self.self_condition:
            x_self = torch.zeros_like(x_start)
            if coin is None:
                coin = torch.rand(x_start.shape[0], device=x_start.device)
            use = coin < 0.5
            if bool(use.any()):
                # the whole batch, then the chosen rows: the model callable may carry
                # per-sample inputs (conditions, planes) that a sub-batch would not match
                with torch.no_grad():
                    guess, _ = self.predict(model, x_t, t)
                x_self[use] = guess[use].to(x_self.dtype)
        out = self.model_output(model, x_t, t, x_self)
        if self.objective == "x0":
            ce = F.cross_entropy(out, x_start.argmax(1), reduction="none").flatten(1)
            weight = self.voxel_weights(x_start)
            loss = ce.mean(1) if weight is None else (weight * ce).sum(1) / weight.sum(1)
            if self.topology_weight > 0:
                loss = loss + self.topology_weight * soft_cldice(
                    torch.softmax(out.float(), dim=1), (x_start.float() + 1) * 0.5)
            return loss
        a = _extract(self.sqrt_alphas_cumprod, t, x_start.ndim)
        s = _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim)
        target = noise if self.objective == "eps" else a * noise - s * x_start
        loss = (target - out).pow(2).flatten(1).mean(1)
        if self.snr_gamma > 0:
            snr = torch.as_tensor(self.alphas_cumprod / (1.0 - self.alphas_cumprod),
                                  device=t.device)[t].float()
            clipped = snr.clamp(max=self.snr_gamma)
            loss = loss * (clipped / snr if self.objective == "eps" else clipped / (snr + 1))
        return loss


# the opening radius of the x0 loss's thin-part weight (``thin_parts``): parts under ~5
# voxels thick, the throats of a sandstone's pore
THIN_RADIUS = 2
# how near two bodies of a phase a thin voxel lies to count as their throat
# (``throat_parts``): necks up to ~2·reach voxels long
THROAT_REACH = 4


def _along(p, axis, reduce, fill):
    """``reduce`` (torch.minimum or torch.maximum) of each voxel and its two neighbours along
    spatial ``axis``, the outside taken as ``fill``: shifted views, no pooling kernel."""
    dim = 2 + axis
    pad = [0, 0] * (p.ndim - 2)
    pad[2 * (p.ndim - 1 - dim)] = pad[2 * (p.ndim - 1 - dim) + 1] = 1
    x = F.pad(p, pad, value=fill)
    n = p.shape[dim]
    return reduce(reduce(x.narrow(dim, 0, n), x.narrow(dim, 1, n)), x.narrow(dim, 2, n))


def _soft_erode(p):
    """Soft erosion: the minimum over each voxel and its face neighbours along each axis, the
    least of the axes (Shit et al.'s min-pools), for (N, C, H, W) or (N, C, D, H, W)."""
    out = None
    for axis in range(p.ndim - 2):
        e = _along(p, axis, torch.minimum, 1.0)
        out = e if out is None else torch.minimum(out, e)
    return out


def _soft_dilate(p):
    """Soft dilation: the maximum over the 3 × 3 (× 3) neighbourhood, one axis at a time."""
    for axis in range(p.ndim - 2):
        p = _along(p, axis, torch.maximum, 0.0)
    return p


def thin_parts(x_start, radius=THIN_RADIUS):
    """(N, ...) float mask of the voxels of one-hot ``x_start`` (in [−1, 1], (N, C, ...)) that
    a morphological opening of their own phase by the face-neighbour cross, ``radius`` times
    over, removes: the parts of a phase under about 2·radius + 1 voxels thick, its throats
    and thin sheets. The window's outside neither erodes nor dilates."""
    m = (x_start.float() + 1) * 0.5
    return (m - opening(m, radius)).clamp_min(0).amax(1)


def opening(m, radius):
    """Morphological opening of (N, C, ...) masks by the face-neighbour cross, ``radius``
    times over; the window's outside neither erodes nor dilates."""
    opened = m
    for _ in range(radius):
        opened = _soft_erode(opened)
    for _ in range(radius):
        opened = 1.0 - _soft_erode(1.0 - opened)
    return opened


# cluster_faces' face bits of each axis, (z, y, x): a cluster with both spans the window
_FACE_PAIRS = (3, 12, 48)


def spanning_parts(x_start, radius=0):
    """(N, ...) float mask of the voxels of one-hot ``x_start`` (in [−1, 1], (N, C, ...)) whose
    6-connected cluster of their own phase joins two opposite faces of the window: the paths
    through the cube that carry a phase's transport. With ``radius`` > 0, the clusters of
    each phase's opening (``opening``): its channels at least ~2·radius + 1 voxels thick.
    Labelled on the CPU by the metrics' union-find kernel (``transport.cluster_faces``)."""
    from .phases import PhaseMap
    from .transport import cluster_faces

    m = (x_start.float() + 1) * 0.5
    if radius > 0:
        m = opening(m, radius)
    present = m > 0.5
    n_phases = m.shape[1]
    # each voxel's phase index, or n_phases (no phase) where an opening removed it
    index = torch.where(present.any(1), present.float().argmax(1),
                        torch.full_like(m[:, 0], n_phases, dtype=torch.long))
    index = index.to("cpu", torch.uint8).numpy()
    phase_map = PhaseMap(range(n_phases))
    pairs = _FACE_PAIRS if index.ndim == 4 else _FACE_PAIRS[1:]  # 2D: the y and x faces
    out = np.zeros(index.shape, dtype=bool)
    for i, cube in enumerate(index):
        cube = cube if cube.ndim == 3 else cube[None]
        for phase in range(n_phases):
            faces = cluster_faces(np.ascontiguousarray(cube), phase_map, phase)
            for pair in pairs:
                out[i] |= ((faces & pair) == pair).reshape(out[i].shape)
    return torch.from_numpy(out).to(x_start.device, torch.float32)


def _max_filter(x, reach):
    """The maximum over each voxel's (2·reach + 1)-cube (square in 2D) of (M, 1, ...) ``x``,
    one axis at a time; the outside counts as nothing."""
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    for axis in range(x.ndim - 2):
        size = [1] * (x.ndim - 2)
        size[axis] = 2 * reach + 1
        pad = [0] * (x.ndim - 2)
        pad[axis] = reach
        x = pool(x, tuple(size), 1, tuple(pad))
    return x


def throat_parts(x_start, radius=THIN_RADIUS, reach=THROAT_REACH):
    """(N, ...) float mask of the throats of one-hot ``x_start`` (in [−1, 1], (N, C, ...)):
    the voxels of each phase's thin parts (``thin_parts``: what its opening by ``radius``
    removes) that lie within ``reach`` voxels (a cube's half side) of two or more separate
    bodies of that opening — the necks where thick bodies join or nearly join, not the thin
    sheets, fins and fine grains far from them, nor a phase that is thin throughout. The
    bodies are labelled on the CPU by the metrics' union-find kernel
    (``transport.cluster_labels``); two bodies are near where the largest and the smallest
    body label within reach differ."""
    from .phases import PhaseMap
    from .transport import cluster_labels

    m = (x_start.float() + 1) * 0.5
    opened = opening(m, radius) > 0.5
    thin = (m > 0.5) & ~opened
    flat = opened.flatten(0, 1).to("cpu", torch.uint8).numpy()
    bodies = np.zeros(flat.shape, dtype=np.float32)
    none = np.float32(2 ** 24)  # above any label a float32 holds exactly (a window's count)
    present = PhaseMap([0, 1])
    for k, mask in enumerate(flat):
        labels, _ = cluster_labels(mask if mask.ndim == 3 else mask[None], present, 1)
        bodies[k] = np.where(labels > 0, labels, none).reshape(mask.shape)
    bodies = torch.from_numpy(bodies).unsqueeze(1)
    highest = _max_filter(torch.where(bodies < none, bodies, torch.zeros_like(bodies)), reach)
    lowest = -_max_filter(-bodies, reach)
    two = ((highest > 0) & (lowest < highest)).squeeze(1).view(thin.shape)
    return (thin & two.to(thin.device)).any(1).float()


def soft_skeleton(p, iterations=3):
    """The soft skeleton of probabilities p (Shit et al. 2021, clDice): what each of
    ``iterations`` soft erosions leaves that a soft opening would remove, accumulated."""
    skeleton = F.relu(p - _soft_dilate(_soft_erode(p)))
    for _ in range(iterations):
        p = _soft_erode(p)
        delta = F.relu(p - _soft_dilate(_soft_erode(p)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


def soft_cldice(p, target, iterations=3, eps=1e-6):
    """(N,) soft-clDice loss of predicted phase probabilities p against one-hot ``target``
    (both (N, C, ...)), averaged over the phases present: 1 − the harmonic mean of topology
    precision (the predicted skeleton's share inside the real phase) and sensitivity (the
    real skeleton's share inside the predicted phase)."""
    sp, st = soft_skeleton(p, iterations), soft_skeleton(target, iterations)
    axes = tuple(range(2, p.ndim))
    precision = ((sp * target).sum(axes) + eps) / (sp.sum(axes) + eps)
    sensitivity = ((st * p).sum(axes) + eps) / (st.sum(axes) + eps)
    dice = 2 * precision * sensitivity / (precision + sensitivity)
    present = (target.sum(axes) > 0).float()
    return ((1 - dice) * present).sum(1) / present.sum(1).clamp_min(1)

"""Denoising volumes larger than the training cube by overlapping windows (MultiDiffusion,
Bar-Tal et al. 2023): at every step, x̂_0 of every training-size window of x_t is predicted and
the predictions are fused with smooth weights into one x̂_0 of the whole volume; ε̂ follows from
it. The result is a denoiser like ``GaussianDiffusion.denoiser``'s, so every sampler works with
it unchanged.

Memory: x_t and the samplers' few volume-sized buffers, one fused x̂_0 buffer and its weight
sum, and the network on ``batch`` windows at a time: it does not grow with the volume beyond
those buffers. With ``periodic`` the windows wrap around the volume's faces, so the volume
tiles space: its opposite faces continue each other.
"""
import math

import torch


def window_starts(length, window, stride, periodic=False, factor=1):
    """Start indices of the windows along one axis of ``length`` voxels.

    Closed: 0, stride, 2·stride, ... and a last window flush with the end (one window of the
    whole axis when it is no longer than ``window``). Periodic: ⌈length/stride⌉ windows spread
    evenly round the axis (multiples of ``factor``), the last ones wrapping past the end;
    every voxel is covered the same number of times when ``stride`` divides ``length``."""
    if periodic:
        k = -(-length // stride)
        return sorted({round(i * length / k / factor) * factor % length for i in range(k)})
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def bump(window):
    """Fusion weights along one axis: sin² over the window, largest at its centre and small
    but positive at its faces, so a window's edge voxels (whose context is cut off) count least
    and the fused x̂_0 has no seams."""
    i = torch.arange(window, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / window).pow(2).float()


class Tiling:
    """The windows of one volume shape: ``starts`` per axis, ``corners()`` every window's first
    voxel, ``index(corner)`` its voxels, ``weights`` its fusion weights. ``window`` is the
    training cube side (a window is cut to an axis shorter than it); ``overlap`` the fraction
    of it shared by neighbouring windows (0 ≤ overlap < 1)."""

    def __init__(self, shape, window, overlap=0.5, periodic=False, factor=1):
        self.shape = tuple(int(s) for s in shape)
        self.periodic = periodic
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        stride = max(factor, int(round(window * (1 - overlap) / factor)) * factor)
        self.sides = [min(window, s) for s in self.shape]
        self.stride = stride
        self.starts = [window_starts(s, w, stride, periodic, factor)
                       for s, w in zip(self.shape, self.sides)]
        a, b, c = (bump(w) for w in self.sides)
        self.weights = a[:, None, None] * b[None, :, None] * c[None, None, :]  # of a window

    def __len__(self):
        return math.prod(len(s) for s in self.starts)

    def index(self, corner):
        """Linear indices (d·h·w,) into the flattened volume of the window at ``corner``."""
        axes = [(torch.arange(w) + c) % s for c, w, s in zip(corner, self.sides, self.shape)]
        d, h, w = self.shape
        return ((axes[0][:, None, None] * h + axes[1][None, :, None]) * w
                + axes[2][None, None, :]).reshape(-1)

    def corners(self):
        for a in self.starts[0]:
            for b in self.starts[1]:
                for c in self.starts[2]:
                    yield (a, b, c)

    def batches(self, per_call):
        """The windows' corners in the groups, and the order, in which ``tiled_denoiser`` sends
        them to the network, ``per_call`` a call (a model callable that conditions each window
        on its place follows this)."""
        corners = list(self.corners())
        return [corners[k:k + per_call] for k in range(0, len(corners), per_call)]


def tiled_denoiser(diffusion, model, shape, window, overlap=0.5, periodic=False, batch=8,
                   factor=1, clip_denoised=True, progress=None, share=None):
    """``denoise(x_t, t) -> (x̂_0, ε̂)`` for volumes of spatial ``shape``, from the network run
    on windows of side ``window`` (``batch`` windows a call) whose x̂_0 are fused with
    ``bump`` weights. With self-conditioning, each window is fed its crop of the previous fused
    x̂_0. ``progress(k, K)`` is called after each network call of a step, k of K windows done
    (a step over a large volume can take minutes).

    ``share`` = (rank, world, gather): the processes of a group share each step's window
    groups out, process r taking groups r, r + world, ...; ``gather`` (``distributed.gather``)
    hands every process the others' x̂_0, which each fuses in the one-process order, so every
    process holds the same x̂_0 as one process would, bit for bit where the network's outputs
    are. The model callable's ``for_group(k)`` (``conditioning.guided``) conditions group k."""
    tiling = Tiling(shape, window, overlap, periodic, factor)
    groups = tiling.batches(batch)  # window indices are made as needed: all of them at once
    count = sum(map(len, groups))   # would take 8 bytes × window voxels × windows
    rank, world, gather = share or (0, 1, None)
    previous = [None]
    norm = None

    def denoise(x_t, t):
        nonlocal norm
        n, c = x_t.shape[:2]
        flat = x_t.reshape(n, c, -1)
        weight = tiling.weights.to(x_t.device).reshape(-1)
        fused = torch.zeros_like(flat)
        if norm is None:
            norm = torch.zeros(flat.shape[-1], device=x_t.device)
            for corner in tiling.corners():
                norm.index_add_(0, tiling.index(corner).to(x_t.device), weight)
        side = tiling.sides
        before = None if previous[0] is None else previous[0].reshape(n, c, -1)
        done = 0

        def predict(k):
            """x̂_0 (len(group), n, c, window voxels) of group k, and its indices."""
            chunk = [tiling.index(corner).to(x_t.device) for corner in groups[k]]
            crop = torch.cat([flat[:, :, idx].reshape(n, c, *side) for idx in chunk])
            x_self = None if before is None else torch.cat(
                [before[:, :, idx].reshape(n, c, *side) for idx in chunk])
            call = model.for_group(k) if hasattr(model, "for_group") else model
            x_start, _ = diffusion.predict(call, crop, t.repeat(len(chunk)), x_self,
                                           clip_denoised)
            return x_start.reshape(len(chunk), n, c, -1), chunk

        for first in range(0, len(groups), world):
            if world == 1:
                made = [predict(first)]
            else:  # each process one group of the round; all fuse all of them, in order
                mine = first + rank
                x_start = torch.zeros(batch, n, c, math.prod(side), device=x_t.device)
                if mine < len(groups):
                    got, _ = predict(mine)
                    x_start[:len(got)] = got
                made = [(x_start[:len(groups[k])],
                         [tiling.index(corner).to(x_t.device) for corner in groups[k]])
                        for k, x_start in zip(range(first, min(first + world, len(groups))),
                                              gather(x_start))]
            for x_start, chunk in made:
                for j, idx in enumerate(chunk):
                    fused.index_add_(2, idx, x_start[j] * weight)
                done += len(chunk)
            if progress:
                progress(done, count)
        fused /= norm
        x_start = fused.reshape(x_t.shape)
        if diffusion.self_condition:
            previous[0] = x_start
        return x_start, diffusion.predict_eps_from_xstart(x_t, t, x_start)

    denoise.tiling = tiling
    return denoise

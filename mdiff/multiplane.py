"""3D volumes from a 2D model by multi-plane denoising (Micro3Diff, Lee & Yun 2024; MicroLad,
Lee & Ahmed 2025): at a step, the slices of x_t along an axis go through the 2D network as a
batch of images, and their x̂_0 stack back into a volume; the x̂_0 of the three axes are
averaged ("mean", three network passes over the volume a step) or the axis changes from one
step to the next ("cycle", one pass a step), or their phase probabilities are multiplied
("geo"); with the x0 objective the fused x̂_0 can be held to given phase fractions
(``match_fractions``: fused planes otherwise erode the minority phases). ε̂ follows from the
fused x̂_0, so the result is a
denoiser like ``GaussianDiffusion.denoiser``'s and every sampler works with it unchanged.

Slices along z are xy images (H, W), along y xz images (D, W), along x yz images (D, H): the
planes ``mdiff.data.volume_slices`` trains on. A model that tells planes apart is told which.

Memory: x_t, the samplers' few volume-sized buffers and one fused x̂_0, and the network on
``slices`` images at a time: it does not grow with the volume beyond those buffers.
"""
import torch

FUSIONS = ("mean", "cycle", "geo")


def match_fractions(x_start, fractions, rounds=3):
    """x̂_0 (N, C, D, H, W) of the x0 objective (2p − 1, p the phase probabilities) with each
    volume's mean p scaled to ``fractions`` ((C,) for all, or (N, C): each its own), every
    voxel renormalised after each scaling (iterative proportional fitting): fused planes
    disagree most on thin features, and the majority phase wins where they do, so the fused
    estimate is held to the training images' composition."""
    return 2 * hold_probabilities((x_start + 1) * 0.5, fractions, rounds) - 1


def hold_probabilities(p, fractions, rounds=3):
    """Phase probabilities p (N, C, ...) with each sample's mean scaled to ``fractions`` ((C,)
    or (N, C)), every voxel renormalised after each scaling (iterative proportional
    fitting)."""
    target = torch.as_tensor(fractions, dtype=p.dtype, device=p.device)
    target = target.reshape(len(target) if target.ndim == 2 else 1, -1, *[1] * (p.ndim - 2))
    for _ in range(rounds):
        mean = p.mean(dim=tuple(range(2, p.ndim)), keepdim=True).clamp_min(1e-8)
        p = p * (target / mean)
        p = p / p.sum(1, keepdim=True).clamp_min(1e-8)
    return p


def multiplane_denoiser(diffusion, model, fuse="mean", slices=64, planes=False,
                        clip_denoised=True, progress=None, fractions=None):
    """``denoise(x_t, t) -> (x̂_0, ε̂)`` for volumes x_t (N, C, D, H, W) from a 2D ``model``
    (a callable ``model(x, t)`` on (N, C, A, B) images; ``model(x, t, plane=k)`` with
    ``planes``), ``slices`` images a network call. With self-conditioning each slice is fed its
    slice of the previous fused x̂_0. ``progress(k, K)`` after each network call of a step.
    ``fractions`` (x0 objective): hold every step's fused x̂_0 to these phase fractions
    (``match_fractions``)."""
    if fuse not in FUSIONS:
        raise ValueError(f"fuse must be one of {FUSIONS}, got {fuse!r}")
    calls = [0]
    previous = [None]

    def along(x_t, t, axis, out, on_call):
        """Add the x̂_0 of every slice of x_t along spatial ``axis`` (0 z, 1 y, 2 x) to
        ``out``, ``on_call()`` after each network call."""
        n, c = x_t.shape[:2]
        dim = 2 + axis
        per_call = max(1, slices // n)
        fn = model
        if planes:
            def fn(x, t_model, *extra):
                return model(x, t_model, *extra, plane=axis)
        for k in range(0, x_t.shape[dim], per_call):
            b = min(per_call, x_t.shape[dim] - k)

            def images(v):  # (N, C, .., b, ..) → (N·b, C, A, B), slice-major per volume
                chunk = v.narrow(dim, k, b).movedim(dim, 1)
                return chunk.reshape(n * b, c, *chunk.shape[3:])

            x_self = None if previous[0] is None else images(previous[0])
            x_start, _ = diffusion.predict(fn, images(x_t), t.repeat_interleave(b), x_self,
                                           clip_denoised)
            if fuse == "geo":  # x̂_0 = 2p − 1 of the x0 objective: add log p
                x_start = torch.log(((x_start + 1) * 0.5).clamp_min(1e-6))
            out.narrow(dim, k, b).add_(x_start.reshape(n, b, c, *x_start.shape[2:])
                                       .movedim(1, dim))
            on_call()

    def denoise(x_t, t):
        axes = (calls[0] % 3,) if fuse == "cycle" else (0, 1, 2)
        calls[0] += 1
        per_call = max(1, slices // x_t.shape[0])
        total = sum(-(-x_t.shape[2 + a] // per_call) for a in axes)
        done = [0]

        def on_call():
            done[0] += 1
            if progress:
                progress(done[0], total)

        fused = torch.zeros_like(x_t)
        for axis in axes:
            along(x_t, t, axis, fused, on_call)
        fused /= len(axes)
        if fuse == "geo":  # the normalised geometric mean of the planes' probabilities
            fused = 2 * torch.softmax(fused, dim=1) - 1
        if fractions is not None:
            fused = match_fractions(fused, fractions)
        if diffusion.self_condition:
            previous[0] = fused
        return fused, diffusion.predict_eps_from_xstart(x_t, t, fused)

    return denoise

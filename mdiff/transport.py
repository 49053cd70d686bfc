"""Transport through one phase of a label volume: percolation, effective diffusivity and the
tortuosity factor (TauFactor's conventions).

Connectivity here is 6 (face neighbours): that is what a finite-volume diffusion problem on the
voxel grid conducts through. χ in ``mdiff.metrics`` counts the phase with 26-connectivity, so a
phase can be one object for χ and several clusters here.

Along an axis, a cluster *percolates* when it touches both window faces normal to it; a cluster
touching no face of the window at all is *isolated*. The steady-state diffusion problem is solved
on the percolating voxels only (the others carry no flux): unit concentration on the face at
−½ voxel before the first plane and zero at +½ voxel after the last one (conductance 2 from an end
voxel's centre to its face), conductance 1 between face neighbours of the phase, no flux
anywhere else. D_eff/D = F·L / (A·ΔC) with F the total flux, L the length along the axis and A the
window's cross-section; τ = φ·D/D_eff (TauFactor's definition: a full block gives τ = 1, nothing
percolating gives D_eff = 0, τ = ∞).

Non-cubic voxels (spacing h_z, h_y, h_x): the conductance between face neighbours along an axis
d is the shared face's area over the centres' distance, A_d / h_d. Divided by the flow axis's
(so the flow axis keeps conductance 1 and its end faces 2), the lateral axes' conductances are
(h_flow / h_d)²; F·L / (A·ΔC) in physical lengths is then the same voxel-count ratio as above
(TauFactor's AnisotropicSolver solves the same problem).

The linear system is symmetric positive definite on the percolating voxels. It is solved with
conjugate gradients preconditioned by the diagonal, matrix-free (six shifted adds a product) in
torch on the chosen device, from the linear profile a straight channel would have, until the
flux through every plane normal to the axis agrees to a relative spread ``tol`` (TauFactor's
convergence criterion; it also bounds the error of D_eff). Memory: five float32 volumes of the
problem's size and a few bytes of masks a voxel (≈ 24 bytes a voxel).
"""
import math
import time

import numpy as np

from . import runtime
from .errors import MdiffError, compiled_kernels
from .io import check_volume
from .phases import PhaseMap

_metrics = compiled_kernels()  # one line, not a traceback, when the extension is missing

AXES = "zyx"
IN_PHASE = 64
# the two face bits of each axis in _metrics.cluster_faces' output
FACES = {"z": (1, 2), "y": (4, 8), "x": (16, 32)}
ALL_FACES = 63
DEFAULT_TOL = 1e-3  # relative spread of the plane fluxes


def _check_labelling(volume):
    """One line for a volume whose flat indices overflow the kernels' int32 forest."""
    if volume.size >= 2**31:
        raise MdiffError(f"transport: {volume.size} voxels; cluster labelling handles at most "
                         "2^31 - 1 (crop the volume or measure sub-volumes)")


def _wrap_bits(wrap):
    """The kernels' bit mask (1 z, 2 y, 4 x) of the periodic axes named in ``wrap``."""
    return sum(1 << AXES.index(a) for a in set(wrap))


def cluster_faces(volume, phase_map, phase, wrap=()):
    """uint8 volume: for voxels of phase index ``phase``, 64 | the window faces their
    6-connected cluster touches (bits z0 1, z1 2, y0 4, y1 8, x0 16, x1 32); 0 elsewhere.
    ``wrap``: the periodic axes (e.g. "yx"), across whose ends clusters join."""
    _check_labelling(volume)
    out = np.empty(volume.shape, dtype=np.uint8)
    _metrics.cluster_faces(volume, phase_map.lut(volume.dtype), int(phase), out,
                           _wrap_bits(wrap))
    return out


def cluster_labels(volume, phase_map, phase, wrap=()):
    """(int32 labels, count): the 6-connected clusters of phase index ``phase`` numbered 1..count
    in the raster order of each cluster's first voxel (``scipy.ndimage.label``'s numbering), 0
    elsewhere; ``wrap`` as for ``cluster_faces``."""
    _check_labelling(volume)
    out = np.empty(volume.shape, dtype=np.int32)
    count = _metrics.cluster_labels(volume, phase_map.lut(volume.dtype), int(phase), out,
                                    _wrap_bits(wrap))
    return out, int(count)


def cluster_sizes(volume, phase_map, phase, wrap=()):
    """int64 voxel counts of the 6-connected clusters of phase index ``phase``, in the raster
    order of each cluster's first voxel (``scipy.ndimage.label``'s order); ``wrap`` as for
    ``cluster_faces``."""
    _check_labelling(volume)
    return _metrics.cluster_sizes(volume, phase_map.lut(volume.dtype), int(phase),
                                  _wrap_bits(wrap))


def cluster_summary(sizes):
    """A phase's cluster-size distribution from its ``cluster_sizes``: the number of
    clusters, the share of the phase in the largest, and ``shares``: the share of the phase's
    voxels in clusters of 1, 2–3, 4–7, ... voxels (bin k holds sizes in [2^k, 2^(k+1)))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return {"count": 0, "largest_fraction": 0.0, "shares": []}
    bins = np.floor(np.log2(sizes)).astype(int)
    shares = np.bincount(bins, weights=sizes) / total
    return {"count": int(len(sizes)), "largest_fraction": int(sizes.max()) / total,
            "shares": [float(x) for x in shares]}


def fractions(faces, axis, periodic=False):
    """(percolating fraction, isolated fraction) of a phase along ``axis`` from its
    ``cluster_faces``: shares of the phase's voxels in clusters touching both faces normal to
    the axis, and in clusters touching no face of the window — with ``periodic`` lateral
    axes, no face normal to ``axis`` (the others are not faces but joins). None, None for an
    absent phase."""
    lo, hi = FACES[axis]
    total = int(np.count_nonzero(faces))
    if total == 0:
        return None, None
    both = lo | hi
    through = int(np.count_nonzero((faces & both) == both))
    if periodic:
        isolated = int(np.count_nonzero((faces & both) == 0)) - (faces.size - total)
    else:
        isolated = int(np.count_nonzero(faces == IN_PHASE))
    return through / total, isolated / total


# the thick channels of a phase: what an opening by the face-neighbour cross, this many times
# over, keeps (parts at least ~2·radius + 1 voxels across); training's thin and throat weights
# call the rest thin (``diffusion.THIN_RADIUS``, the same radius)
THICK_RADIUS = 2


def _cross_step(mask, combine, periodic):
    """One erosion (``combine`` np.logical_and) or dilation (np.logical_or) of bool ``mask``
    by the face-neighbour cross: each voxel combined with its 6 face neighbours in ``mask``.
    Across the ends when ``periodic``; else the outside leaves the end planes as they are."""
    out = mask.copy()
    for axis in range(mask.ndim):
        if periodic:
            combine(out, np.roll(mask, 1, axis), out=out)
            combine(out, np.roll(mask, -1, axis), out=out)
            continue
        up = [slice(None)] * mask.ndim
        down = list(up)
        up[axis], down[axis] = slice(1, None), slice(0, mask.shape[axis] - 1)
        up, down = tuple(up), tuple(down)
        combine(out[up], mask[down], out=out[up])
        combine(out[down], mask[up], out=out[down])
    return out


def open_cross(mask, radius=THICK_RADIUS, periodic=False):
    """The morphological opening of bool ``mask`` by the face-neighbour cross, ``radius``
    erosions then as many dilations (``diffusion.opening``'s, on bool arrays: a few bytes a
    voxel, for volumes of any size). The window's outside neither erodes nor dilates; with
    ``periodic``, every axis wraps."""
    out = np.asarray(mask, dtype=bool)
    for combine in (np.logical_and,) * radius + (np.logical_or,) * radius:
        out = _cross_step(out, combine, periodic)
    return out


def thick_percolating_fraction(volume, phase_map, phase, periodic=False, spacing=None,
                               radius=THICK_RADIUS):
    """The percolating fraction (``percolating_fraction``'s, the mean over the three axes) of
    phase index ``phase`` opened by ``radius`` (``open_cross``): the share of the
    phase's thick channels that join opposite faces. A phase whose thick channels percolate
    connects through them; where the real ones do and generated ones do not, the joins between
    thick bodies are missing (``mdiff-evaluate``'s advice). 0 when nothing of the phase
    survives the opening. The radius is in voxels whatever the ``spacing``."""
    del spacing
    opened = open_cross(phase_map.lut(volume.dtype)[volume] == phase, radius, periodic)
    if not opened.any():
        return 0.0
    binary = opened.view(np.uint8)
    two = PhaseMap([0, 1])
    faces = None if periodic else cluster_faces(binary, two, 1)
    through = []
    for axis in AXES:
        if periodic:
            faces = cluster_faces(binary, two, 1, wrap=AXES.replace(axis, ""))
        through.append(fractions(faces, axis, periodic)[0])
    return float(np.mean(through))


def solve(active, tol=DEFAULT_TOL, max_iter=None, device="cpu", progress=None,
          periodic=False, conductances=(1.0, 1.0, 1.0)):
    """Steady diffusion through the voxels of ``active`` (bool, flow along axis 0); with
    ``periodic``, axes 1 and 2 wrap (the last plane is the first's neighbour) instead of
    closing the volume. ``conductances``: between face neighbours along each axis, relative
    to the flow axis's (whose own must be 1): (1, (h0/h1)², (h0/h2)²) for non-cubic voxels.

    Iterates until the flux through every plane normal to the axis (and into the inlet and out
    of the outlet) is the same to a relative spread ``tol`` (TauFactor's criterion is the same
    spread; its default is 1e-2), or ``max_iter``. Returns (D_eff/D from the mean flux,
    iterations, final flux spread, final relative residual ‖b − Ac‖/‖b‖); it also goes on
    while CG's relative residual is above ``tol`` (on random structures it is far below where
    the spread is met, so this costs nothing there). ``active`` should hold
    only voxels connected to both end planes (elsewhere the system is singular)."""
    import torch

    length, height, width = active.shape
    device = torch.device(device)
    mask = torch.from_numpy(np.ascontiguousarray(active)).to(device)
    if not bool(mask.any()):
        return 0.0, 0, 0.0, 0.0
    if float(conductances[0]) != 1.0:
        raise ValueError("solve: the flow axis's conductance is the unit")
    g = [float(c) for c in conductances]
    outside = ~mask
    m = mask.to(torch.float32)
    # diagonal: one per active face neighbour, 2 per end face (1 off the active voxels, where
    # every vector is 0, so that dividing by it is harmless)
    diag = torch.zeros_like(m)
    for dim in range(3):
        n = m.shape[dim]
        if periodic and dim > 0:
            diag.add_(torch.roll(m, 1, dim), alpha=g[dim]).add_(torch.roll(m, -1, dim),
                                                                alpha=g[dim])
            continue
        diag.narrow(dim, 1, n - 1).add_(m.narrow(dim, 0, n - 1), alpha=g[dim])
        diag.narrow(dim, 0, n - 1).add_(m.narrow(dim, 1, n - 1), alpha=g[dim])
    diag[0] += 2.0
    diag[-1] += 2.0
    diag.masked_fill_(outside, 1.0)
    inlet = 2.0 * m[0]  # b is 2·C_in on the inlet voxels and 0 elsewhere
    del m

    def apply(p, out):
        """out = A p, for p that is 0 off the active voxels."""
        torch.mul(p, diag, out=out)
        for dim in range(3):
            n = p.shape[dim]
            if periodic and dim > 0:
                out.sub_(torch.roll(p, 1, dim), alpha=g[dim]).sub_(torch.roll(p, -1, dim),
                                                                   alpha=g[dim])
                continue
            out.narrow(dim, 1, n - 1).sub_(p.narrow(dim, 0, n - 1), alpha=g[dim])
            out.narrow(dim, 0, n - 1).sub_(p.narrow(dim, 1, n - 1), alpha=g[dim])
        return out.masked_fill_(outside, 0.0)

    def residual(x, out):
        """out = b − A x."""
        apply(x, out).neg_()
        out[0] += inlet
        return out

    dot = lambda a, b: float(torch.dot(a.view(-1), b.view(-1)))
    pairs = mask[:-1] & mask[1:]

    def fluxes(x, scratch):
        """Flux into the inlet, through every pair of neighbouring planes, out of the outlet
        (``scratch``: a volume-sized buffer it may overwrite)."""
        step = torch.sub(x[:-1], x[1:], out=scratch[:-1]).mul_(pairs)
        inside = step.sum((1, 2), dtype=torch.float64)
        inflow = torch.sum(2.0 * (1.0 - x[0]) * mask[0], dtype=torch.float64)
        outflow = torch.sum(2.0 * x[-1] * mask[-1], dtype=torch.float64)
        return torch.cat([inflow[None], inside, outflow[None]])

    def spread(x, scratch):
        f = fluxes(x, scratch)
        mean = float(f.mean())
        return float(f.max() - f.min()) / mean if mean > 0 else math.inf

    # start from the linear profile of a straight channel
    centres = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length
    x = (1.0 - centres)[:, None, None].expand(length, height, width).clone()
    x.masked_fill_(outside, 0.0)
    r = residual(x, torch.empty_like(x))
    q = torch.empty_like(x)
    it, err = 0, spread(x, q)
    b_norm = float(torch.linalg.vector_norm(inlet))
    res = float(torch.linalg.vector_norm(r)) / b_norm  # CG's own residual, checked with err
    torch.div(r, diag, out=q)  # z = M⁻¹ r; later A p in the same buffer
    p = q.clone()
    rz = dot(r, q)
    limit = max_iter or max(1000, 40 * (length + height + width))
    best, improved = err, 0
    # the residual too: a start whose plane fluxes already agree (a channel whose only
    # resistance lies in one plane) has not converged until the residual says so
    while (err > tol or res > tol) and it < limit and it - improved < 400:
        apply(p, q)
        curvature = dot(p, q)
        if not curvature > 0:  # float32 round-off floor reached
            break
        alpha = rz / curvature
        x.add_(p, alpha=alpha)
        r.add_(q, alpha=-alpha)
        torch.div(r, diag, out=q)
        rz_new = dot(r, q)
        p.mul_(rz_new / rz).add_(q)
        rz = rz_new
        it += 1
        if it % 20 == 0:  # z in q has been used: q is free until the next A p
            err = spread(x, q)
            res = float(torch.linalg.vector_norm(r)) / b_norm
            if err < 0.9 * best:  # else float32 round-off has stalled it: stop after 400
                best, improved = err, it
            if progress:
                progress(it, err)
    err = spread(x, q)
    rel = float(torch.linalg.vector_norm(residual(x, q))) / float(
        torch.linalg.vector_norm(inlet))
    f = fluxes(x, q)
    d_eff = float(f.mean()) * length / (height * width)
    return d_eff, it, err, rel


BYTES_PER_VOXEL = 26  # five float32 volumes, the cluster faces and three masks


def check_solve_memory(volume, device="cpu"):
    """MdiffError if solving on ``volume`` would need more memory than is available now."""
    need = BYTES_PER_VOXEL * volume.size
    if str(device).startswith("cuda"):
        need -= 10 * volume.size  # the uint8/bool copies of the volume stay on the host
    runtime.check_memory(need, device, "crop the volume, or use --subvolume with a smaller side",
                    what=f"transport on {'x'.join(map(str, volume.shape))} voxels")


class _Progress:
    """Lines for ``log`` at most every 2 s during the solves: which phase and axis, the
    iteration, the flux spread against its target and the time left in this solve (from the
    rate at which the spread has fallen so far, on a log scale)."""

    def __init__(self, log, total):
        self.log, self.total, self.done = log, total, 0
        self.last = time.perf_counter()

    def hook(self, label, axis, tol):
        first = []

        def progress(it, err):
            now = time.perf_counter()
            if not first:
                first.append((it, err, now))
            if now - self.last < 2.0:
                return
            self.last = now
            i0, e0, t0 = first[0]
            eta = ""
            if it > i0 and tol < err < e0:
                per_iteration = (math.log(e0) - math.log(err)) / (it - i0)
                left = (math.log(err) - math.log(tol)) / per_iteration * (now - t0) / (it - i0)
                eta = f", ETA {int(left)} s for this solve"
            self.log(f"  transport: label {label} along {axis} (solve {self.done + 1} of "
                     f"{self.total}): iteration {it}, flux spread {err:.2g} (target {tol:g})"
                     + eta)
        return progress


def _conductances(spacing, k):
    """Lateral conductances relative to flow axis ``k``'s, in ``solve``'s axis order (the
    flow axis first, the others in their order)."""
    if spacing is None:
        return (1.0, 1.0, 1.0)
    h = [float(v) for v in spacing]
    rest = [h[j] for j in range(3) if j != k]
    return (1.0, (h[k] / rest[0]) ** 2, (h[k] / rest[1]) ** 2)


def phase_transport(volume, phase_map, phase, axes=AXES, tol=DEFAULT_TOL, device="cpu",
                    max_iter=None, progress=None, periodic=False, voxel_size=None):
    """{axis: figures} of phase index ``phase``; see ``transport``. ``progress``: a
    ``_Progress`` that reports on the solves."""
    spacing = None if voxel_size is None or np.isscalar(voxel_size) else voxel_size
    check_solve_memory(volume, device)
    faces = None if periodic else cluster_faces(volume, phase_map, phase)
    n_phase = int(np.count_nonzero(phase_map.lut(volume.dtype)[volume] == phase)) if periodic \
        else int(np.count_nonzero(faces))
    fraction = n_phase / volume.size
    out = {}
    for axis in axes:
        k = AXES.index(axis)
        entry = {"percolating_fraction": None, "isolated_fraction": None,
                 "effective_diffusivity": None, "tortuosity_factor": None,
                 "percolates": False, "iterations": 0, "flux_spread": None, "residual": None,
                 "converged": True, "seconds": 0.0}
        if volume.shape[k] < 2:
            entry["note"] = f"the volume is {volume.shape[k]} voxel thick along {axis}"
        if n_phase == 0:
            entry["note"] = "phase absent"
            out[axis] = entry
            continue
        if periodic:  # the lateral axes wrap: a labelling of their own for each axis
            faces = cluster_faces(volume, phase_map, phase, wrap=AXES.replace(axis, ""))
        through, isolated = fractions(faces, axis, periodic)
        entry.update(percolating_fraction=through, isolated_fraction=isolated)
        lo, hi = FACES[axis]
        active = np.moveaxis((faces & (lo | hi)) == (lo | hi), k, 0)
        start = time.perf_counter()
        hook = progress.hook(phase_map.labels[phase], axis, tol) if progress else None
        if n_phase == volume.size:  # the whole window conducts: the linear profile is exact
            d_eff, it, err, rel = 1.0, 0, 0.0, 0.0
        else:
            d_eff, it, err, rel = solve(active, tol, max_iter, device, hook, periodic,
                                        _conductances(spacing, k))
        if progress:
            progress.done += 1
        entry.update(effective_diffusivity=d_eff, iterations=it, flux_spread=err,
                     residual=rel, converged=err <= tol, percolates=d_eff > 0,
                     seconds=time.perf_counter() - start,
                     tortuosity_factor=fraction / d_eff if d_eff > 0 else math.inf)
        out[axis] = entry
    return out


def transport(volume, phase_map=None, axes=AXES, tol=DEFAULT_TOL, device="cpu",
              max_iter=None, log=None, periodic=False, voxel_size=None):
    """Per phase (label order) and axis: percolating and isolated fractions (6-connectivity),
    D_eff/D, τ (``inf`` when nothing percolates), CG iterations, the final relative residual,
    the outlet/inlet flux ratio (1 when converged) and the solve time.

    ``periodic``: the volume is a periodic cell (``mdiff-sample --periodic``, a periodic
    synthetic): along each axis the two lateral axes wrap — clusters join across them and the
    diffusion flows across them (TauFactor's PeriodicSolver) — while the faces normal to the
    axis stay the reservoirs.

    ``voxel_size``: (z, y, x) for non-cubic voxels (the conductances per axis, see the module's
    note); one number, or cubic voxels, change nothing (the figures are ratios).

    A phase absent from the volume, or an axis one voxel thick, gives an entry with a ``note``
    instead of an error. ``log``: a function that gets a progress line at most every 2 s."""
    volume = check_volume(volume)
    phase_map = phase_map or PhaseMap.from_volume(volume)
    for axis in axes:
        if axis not in AXES:
            raise MdiffError(f"transport axes are z, y and x, got {axis!r}")
    progress = _Progress(log, phase_map.n * len(axes)) if log else None
    return [phase_transport(volume, phase_map, i, axes, tol, device, max_iter, progress,
                            periodic, voxel_size) for i in range(phase_map.n)]


def tortuosity(mask, axis="z", tol=DEFAULT_TOL, device="cpu", voxel_size=None):
    """(τ, D_eff/D) of a mask (non-zero voxels conduct) along ``axis``: τ = ``inf`` and
    D_eff = 0 without a path (or without any voxel). ``voxel_size``: (z, y, x) for non-cubic
    voxels."""
    mask = np.asarray(mask)
    volume = check_volume((mask if mask.dtype == bool else mask != 0).view(np.uint8), "mask")
    entry = phase_transport(volume, PhaseMap([0, 1]), 1, axis, tol, device,
                            voxel_size=voxel_size)[axis]
    if entry["effective_diffusivity"] is None:
        return math.inf, 0.0
    return entry["tortuosity_factor"], entry["effective_diffusivity"]

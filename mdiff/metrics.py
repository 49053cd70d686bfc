"""Microstructure metrics of label volumes (docs/metrics.md): the public API over ``_metrics.pyx``.

Per phase: volume fraction, Euler counts (V, E, F, C) of the union of closed voxel cubes and
χ = V − E + F − C (26-connectivity for the phase), specific surface area by face counting and
by the 13-direction Crofton formula, the two-point correlation S2 along z, y and x by direct
counting, and the triple-phase boundary density. Two boundary conventions: ``closed`` (outside
the window is no phase) and ``periodic`` (the volume is a 3-torus).

Every figure of every phase comes from one pass over the 2x2x2 windows plus one bit-packing
pass for S2; both run in threads over z-chunks with the GIL released. Nothing copies the volume
in float or per phase in int64: the largest allocation is the bit-packed masks, N/8 bytes per
phase (phases are packed in groups under ``PACK_BUDGET`` bytes).
"""
import functools
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import figures as figure_table
from .errors import MdiffError, compiled_kernels
from .io import check_volume, spacing_triple
from .phases import PhaseMap
from .transport import tortuosity  # noqa: F401  (public API: mdiff.metrics.tortuosity)

_metrics = compiled_kernels()  # one line, not a traceback, when the extension is missing

BOUNDARIES = ("closed", "periodic")
PACK_BUDGET = 512 * 2**20
# Crofton weights γ_k per direction (axes, face diagonals, space diagonals) and step lengths δ_k,
# in the order of _metrics.PAIR_OFFSETS.
CROFTON_WEIGHTS = np.array([0.091556] * 3 + [0.073962] * 6 + [0.070392] * 4)
STEP_LENGTHS = np.array([1.0] * 3 + [math.sqrt(2)] * 6 + [math.sqrt(3)] * 4)

# Per 8-bit window configuration m of a phase (bit 4dz + 2dy + dx): the lattice vertex, edges,
# faces and cube that the window's centre point owns and that touch a voxel of the phase.
_M = np.arange(256)
_EULER_WEIGHTS = np.stack([
    (_M != 0).astype(np.int64),
    sum(((_M & bits) != 0).astype(np.int64) for bits in (0xF0, 0xCC, 0xAA)),
    sum(((_M & bits) != 0).astype(np.int64) for bits in (0x88, 0xA0, 0xC0)),
    ((_M & 0x80) != 0).astype(np.int64),
], axis=1)


def default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _in_chunks(fn, stop, threads, start=0):
    """Run fn(z0, z1) over [start, stop) split into chunks, in threads; list of results."""
    threads = threads or default_threads()
    size = stop - start
    parts = min(size, 4 * threads) if threads > 1 else 1
    edges = [start + size * i // parts for i in range(parts + 1)]
    jobs = [(edges[i], edges[i + 1]) for i in range(parts) if edges[i] < edges[i + 1]]
    if threads == 1 or len(jobs) <= 1:
        return [fn(z0, z1) for z0, z1 in jobs]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))


def _boundary(boundary):
    if boundary not in BOUNDARIES:
        raise MdiffError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    return boundary == "periodic"


def window_counts(volume, phase_map, periodic=False, triples=False, threads=None):
    """Summed window statistics: (euler (n, 4) int64 [V, E, F, C], pairs (13, n), tpb (3,):
    triple-phase edges along z, y and x, triples (3, n, n, n) per edge axis, or None)."""
    lut = phase_map.lut(volume.dtype)
    planes = volume.shape[0] if periodic else volume.shape[0] + 1
    parts = _in_chunks(lambda a0, a1: _metrics.window_counts(
        volume, lut, phase_map.n, periodic, a0, a1, triples), planes, threads)
    hist = sum(p[0] for p in parts)
    pairs = sum(p[1] for p in parts)
    tpb = sum(p[2] for p in parts)
    trip = sum(p[3] for p in parts) if triples else None
    return hist @ _EULER_WEIGHTS, pairs, tpb, trip


def pairs_examined(shape, periodic=False):
    """N_k: the number of voxel pairs along each of the 13 directions inside the window."""
    if periodic:
        return np.full(13, float(np.prod(shape)))
    return np.array([float(np.prod([n - abs(o) for n, o in zip(shape, off)]))
                     for off in _metrics.PAIR_OFFSETS])


def is_cubic(spacing):
    return spacing[0] == spacing[1] == spacing[2]


@functools.lru_cache(maxsize=64)
def crofton_weights(spacing=(1.0, 1.0, 1.0)):
    """(γ_k, δ_k) of the 13 lattice directions of a lattice of spacing (z, y, x).

    γ_k is the share of the unit sphere nearer to ±the direction's physical step than to any
    other of the 26 (its two spherical Voronoi cells, computed exactly: the cell's vertices are
    the points equidistant from three directions and no nearer to a fourth, the area the sum
    of its spherical triangles, Van Oosterom & Strackee 1983); δ_k the step's physical length.
    On cubic voxels the published weights (Ohser & Mücklich 2000) are used, so that cubic
    figures stay what they were; the computed ones agree with them to 1e-6."""
    h = np.asarray(spacing, dtype=float)
    if is_cubic(spacing):
        return CROFTON_WEIGHTS, STEP_LENGTHS * h[0]
    steps = np.array(_metrics.PAIR_OFFSETS, dtype=float) * h
    lengths = np.linalg.norm(steps, axis=1)
    units = steps / lengths[:, None]
    points = np.concatenate([units, -units])
    areas = np.array([_voronoi_cell_area(points[k], np.delete(points, k, axis=0))
                      for k in range(13)])
    return 2.0 * areas / (4.0 * math.pi), lengths


def _voronoi_cell_area(p, others):
    """Area of the spherical Voronoi cell of unit vector ``p`` among ``others``."""
    corners = []
    for q, r in itertools.combinations(others, 2):
        n = np.cross(p - q, p - r)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n = n / norm if n @ p >= 0 else -n / norm
        if np.all(others @ n <= n @ p + 1e-10) and not any(
                np.allclose(n, c, atol=1e-9) for c in corners):
            corners.append(n)
    a = np.cross(p, [0.3, 0.5, 0.7])
    a /= np.linalg.norm(a)
    b = np.cross(p, a)
    corners.sort(key=lambda c: math.atan2(c @ b, c @ a))
    area = 0.0
    for c1, c2 in zip(corners, corners[1:] + corners[:1]):
        area += 2.0 * math.atan2(abs(p @ np.cross(c1, c2)), 1.0 + p @ c1 + c1 @ c2 + c2 @ p)
    return area


def crofton_area(pairs, shape, periodic=False, spacing=(1.0, 1.0, 1.0)):
    """Surface area from crossing counts (13, ...) by the discrete Crofton formula, in the
    square of the spacing's unit (voxel² without one).

    S_V = 2 Σ_k γ_k I_k / (N_k δ_k) (discrete Crofton formula, with the weights and step
    lengths of the lattice: ``crofton_weights``); area = S_V · N · (voxel volume).
    """
    gamma, delta = crofton_weights(tuple(float(v) for v in spacing))
    n_k = pairs_examined(shape, periodic)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_length = np.where(n_k > 0, 1.0 / (n_k * delta), 0.0)
    weights = 2.0 * gamma * per_length * float(np.prod(shape)) * float(np.prod(spacing))
    return np.tensordot(weights, pairs, axes=(0, 0))


def face_area(pairs, spacing=(1.0, 1.0, 1.0)):
    """Area of the voxel faces between a phase and the others (pairs (13, ...)): faces normal
    to z count hy·hx, to y hz·hx, to x hz·hy."""
    hz, hy, hx = spacing
    return pairs[0] * (hy * hx) + pairs[1] * (hz * hx) + pairs[2] * (hz * hy)


def _s2_offsets(length, r_max, periodic):
    """Offsets whose non-periodic pair counts give S2(0..r_max) along an axis of this length."""
    near = np.arange(min(r_max, length - 1) + 1)
    if not periodic:
        return near
    return np.union1d(near, length - near[1:])


def s2_counts(volume, phase_map, r_max, periodic=False, threads=None):
    """Two-point correlation (n, 3, r_max + 1) of every phase, by direct counting.

    Non-periodic: pairs (x, x + r e) inside the window, normalised by their number; NaN where
    r ≥ the axis length. Periodic: C_per(r) = C(r) + C(L − r) for 0 < r mod L, over N.
    """
    shape = volume.shape
    n = phase_map.n
    lut = phase_map.lut(volume.dtype)
    words = (shape[2] + 63) // 64
    group = max(1, min(n, PACK_BUDGET // max(1, shape[0] * shape[1] * words * 8)))
    out = np.full((n, 3, r_max + 1), np.nan)
    kernels = (_metrics.pair_counts_z, _metrics.pair_counts_y, _metrics.pair_counts_x)
    for p0 in range(0, n, group):
        k = min(group, n - p0)
        masks = np.zeros((k, shape[0], shape[1], words), dtype=np.uint64)
        _in_chunks(lambda z0, z1: _metrics.pack_phases(volume, lut, p0, masks, z0, z1),
                   shape[0], threads)
        for axis, kernel in enumerate(kernels):
            length = shape[axis]
            offsets = _s2_offsets(length, r_max, periodic).astype(np.intp)
            for j in range(k):
                counts = sum(_in_chunks(lambda z0, z1: kernel(masks[j], offsets, z0, z1),
                                        shape[0], threads))
                out[p0 + j, axis] = _s2_from_counts(counts, offsets, shape, axis, r_max, periodic)
        del masks
    return out


def _s2_from_counts(counts, offsets, shape, axis, r_max, periodic):
    length = shape[axis]
    total = float(np.prod(shape))
    by_offset = dict(zip(offsets.tolist(), counts.tolist()))
    s2 = np.full(r_max + 1, np.nan)
    for r in range(r_max + 1):
        if periodic:
            rr = r % length
            pairs = by_offset[0] if rr == 0 else by_offset[rr] + by_offset[length - rr]
            s2[r] = pairs / total
        elif r < length:
            s2[r] = by_offset[r] / (total / length * (length - r))
    return s2


# ---------------------------------------------------------------------------------------------
# Single-phase API on boolean masks


def _mask_volume(mask):
    mask = np.asarray(mask)
    if mask.dtype != bool:
        mask = mask != 0
    volume = check_volume(mask, name="mask")
    return volume, PhaseMap([0, 1])  # phase 1 is the mask


def euler_counts(mask, periodic=False):
    """(V, E, F, C) of the union of closed unit cubes of the mask's voxels, as Python ints.

    χ = V − E + F − C is the Euler number of the mask under 26-connectivity
    (``skimage.measure.euler_number(mask, connectivity=3)``).
    """
    volume, phases = _mask_volume(mask)
    euler = window_counts(volume, phases, periodic)[0]
    return tuple(int(v) for v in euler[1])


def surface_area(mask, method="crofton", periodic=False, voxel_size=None):
    """Area of the mask's boundary with the rest of the window (float), in voxel² units, or
    in the square of ``voxel_size``'s unit (one number, or (z, y, x) for non-cubic voxels).

    ``faces`` counts voxel faces (≈ 1.5× a smooth surface); ``crofton`` is the 13-direction
    Crofton estimate (≈ 1.02× for a ball of radius 16). Window faces are not counted unless
    ``periodic``."""
    volume, phases = _mask_volume(mask)
    spacing = spacing_triple(voxel_size)
    pairs = window_counts(volume, phases, periodic)[1][:, 1]
    if method == "faces":
        return float(face_area(pairs, spacing))
    if method == "crofton":
        return float(crofton_area(pairs, volume.shape, periodic, spacing))
    raise MdiffError(f"surface_area method must be 'crofton' or 'faces', got {method!r}")


def percolation(mask, axis="z"):
    """(percolating fraction, isolated fraction) of the mask's voxels along ``axis``: those in
    6-connected clusters touching both window faces normal to the axis, and those in clusters
    touching no face at all. (None, None) for an empty mask."""
    from .transport import cluster_faces, fractions

    if axis not in ("z", "y", "x"):
        raise MdiffError(f"axis must be z, y or x, got {axis!r}")
    volume, phases = _mask_volume(mask)
    return fractions(cluster_faces(volume, phases, 1), axis)


def two_point_correlation(mask, r_max, periodic=False):
    """S2(r) = P(x and x + r e in the mask), shape (3, r_max + 1), rows z, y, x.

    Direct counting, no FFT. NaN where r reaches the axis length in the non-periodic case."""
    if int(r_max) < 0:
        raise MdiffError(f"r_max must be >= 0, got {r_max}")
    volume, phases = _mask_volume(mask)
    return s2_counts(volume, phases, int(r_max), periodic)[1]


# ---------------------------------------------------------------------------------------------
# Whole report


def _add_transport(phases, volume, phase_map, tol, device, log, periodic=False,
                   spacing=(1.0, 1.0, 1.0)):
    """Each phase entry's "transport": per axis its figures, τ = ∞ as None (JSON)."""
    from . import transport as tr

    tol = tr.DEFAULT_TOL if tol is None else tol
    for i, (phase, per_axis) in enumerate(zip(phases, tr.transport(
            volume, phase_map, tol=tol, device=device, log=log, periodic=periodic,
            voxel_size=spacing))):
        phase["transport"] = {axis: {k: (None if v == math.inf else v) for k, v in f.items()}
                              for axis, f in per_axis.items()}
        phase["clusters"] = tr.cluster_summary(tr.cluster_sizes(
            volume, phase_map, i, wrap=tr.AXES if periodic else ()))
        phase["largest_cluster_fraction"] = phase["clusters"]["largest_fraction"]


def _add_distributions(phases, volume, phase_map, spacing):
    """Each phase's thickness and chord-length distributions, in length units."""
    from . import sizes as size_kernels

    cubic = is_cubic(spacing)
    for i, phase in enumerate(phases):
        dist = size_kernels.thickness_distribution(volume, phase_map, i,
                                                   None if cubic else spacing)
        scale = spacing[0] if cubic else 1.0  # the spaced distribution is physical already
        phase["thickness_distribution"] = None if dist is None else {
            "radius": [r * scale for r in dist["radius"]], "share": dist["share"]}
        phase["chord_length_distribution"] = {
            axis: {"length": [n * h for n in d["length"]], "count": d["count"]}
            for (axis, d), h in zip(size_kernels.chord_distribution(volume, phase_map,
                                                                    i).items(), spacing)}


def describe(volume, phase_map=None, s2_max=64, boundary="closed", voxel_size=None, path=None,
             threads=None, transport=False, transport_tol=None, device="cpu", log=None,
             sizes=False, distributions=False):
    """All figures of every phase: one entry of the ``volumes`` list of ``mdiff-metrics --json``.

    ``s2_max`` is clipped to the smallest axis length − 1. With ``voxel_size`` (one number,
    or (z, y, x) for non-cubic voxels, in any unit), S_V is per unit length, χ_V and TPB per
    unit volume, sizes in that unit, and the entry's ``"s2_step"`` says the length of one S2
    lag along z, y and x (S2 is listed by lag). Non-cubic voxels are measured exactly: Crofton
    weights of the stretched lattice (``crofton_weights``), faces and triple-phase edges by
    their own areas and lengths, the diffusion solve's conductances per axis, the distance
    transform and balls in physical lengths.
    ``transport``: also each phase's ``"transport"``, per axis z, y, x: percolating and isolated
    fractions (6-connectivity), D_eff/D and τ (``None`` when nothing percolates, i.e. τ = ∞),
    with the solver's iterations, flux spread and convergence (``mdiff.transport``), and its
    ``"clusters"``: the 6-connected cluster-size distribution (``transport.cluster_summary``),
    whose largest cluster's share is also ``"largest_cluster_fraction"``. They do
    not depend on the voxel size; the faces normal to each axis are the reservoirs, and the
    other faces are closed, or with ``boundary="periodic"`` wrap (clusters and flow join
    across them, TauFactor's PeriodicSolver);
    ``log`` gets their progress lines. ``sizes``: also each phase's mean local thickness
    and mean chord length (``mdiff.sizes``; seconds to a minute on a 256³ volume, ms on a 32³
    cube), in length units; with ``distributions`` too, each phase's
    ``"thickness_distribution"`` ({"radius": [...], "share": [...]}; None where the phase fills
    the window) and ``"chord_length_distribution"`` (per axis {"length": [...], "count":
    [...]}), at no second local thickness.
    """
    volume = check_volume(volume, name=str(path or "volume"))
    periodic = _boundary(boundary)
    if phase_map is None:
        phase_map = PhaseMap.from_volume(volume, name=str(path or "volume"))
    r_max = max(0, min(int(s2_max), min(volume.shape) - 1))
    n_vox = float(volume.size)
    euler, pairs, tpb, triples = window_counts(volume, phase_map, periodic,
                                               triples=3 < phase_map.n <= 32, threads=threads)
    spacing = spacing_triple(voxel_size)
    cell = float(np.prod(spacing))  # a voxel's volume
    area = crofton_area(pairs, volume.shape, periodic, spacing)
    faces = face_area(pairs, spacing)
    s2 = s2_counts(volume, phase_map, r_max, periodic, threads) if r_max >= 0 else None
    phases = []
    for i, label in enumerate(phase_map.labels):
        v, e, f, c = (int(x) for x in euler[i])
        chi = v - e + f - c
        phases.append({
            "label": int(label),
            "volume_fraction": c / n_vox,
            "specific_surface_area": float(area[i]) / n_vox / cell,
            "specific_surface_area_faces": float(faces[i]) / n_vox / cell,
            "euler": {"vertices": v, "edges": e, "faces": f, "cubes": c, "chi": chi},
            "euler_density": chi / n_vox / cell,
            "s2": {axis: [float(x) for x in s2[i, k]] for k, axis in enumerate("zyx")},
        })
    extras = ("sizes",) if sizes else ()
    for key, values in figure_table.measured(volume, phase_map, periodic, spacing,
                                             extras).items():
        for phase, v in zip(phases, values):  # the table's rows that bring their own measure
            phase[key] = v
    if sizes and distributions:
        _add_distributions(phases, volume, phase_map, spacing)
    edge_length = np.asarray(spacing)  # a triple-phase edge along z is hz long, and so on
    entry = {
        "path": None if path is None else str(path),
        "shape": [int(s) for s in volume.shape],
        "tpb_density": float(tpb @ edge_length) / n_vox / cell if phase_map.n >= 3 else None,
        "phases": phases,
    }
    if voxel_size is not None:
        entry["voxel_size"] = spacing[0] if is_cubic(spacing) else list(spacing)
        entry["s2_step"] = dict(zip("zyx", spacing))
    if transport:
        _add_transport(phases, volume, phase_map, transport_tol, device, log, periodic,
                       spacing)
    if triples is not None:
        lengths = np.tensordot(edge_length, triples, axes=(0, 0))
        entry["tpb_density_per_triple"] = {
            "-".join(str(phase_map.labels[x]) for x in (i, j, k)): float(lengths[i, j, k])
            / n_vox / cell
            for i in range(phase_map.n) for j in range(i + 1, phase_map.n)
            for k in range(j + 1, phase_map.n)}
    return entry

"""Brute-force numpy references for the metrics kernels: slow, obvious, independent."""
import itertools

import numpy as np

OFFSETS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1),
           (0, 1, 1), (0, 1, -1), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1)]


def _neighbourhood_any(mask, periodic, offsets):
    """For every lattice element, whether any of the voxels at the given offsets is set.

    The lattice element at (a, b, c) touches voxels (a - da, b - db, c - dc)."""
    D, H, W = mask.shape
    if periodic:
        out = np.zeros((D, H, W), bool)
        for off in offsets:
            out |= np.roll(mask, off, axis=(0, 1, 2))
        return out
    padded = np.zeros((D + 2, H + 2, W + 2), bool)
    padded[1:-1, 1:-1, 1:-1] = mask
    out = np.zeros((D + 1, H + 1, W + 1), bool)
    for da, db, dc in offsets:
        out |= padded[1 - da:D + 2 - da, 1 - db:H + 2 - db, 1 - dc:W + 2 - dc]
    return out


def euler_counts(mask, periodic=False):
    """V, E, F, C by enumerating lattice points, edges and faces of the closed cubes."""
    mask = np.asarray(mask, bool)
    corners = list(itertools.product((0, 1), repeat=3))
    V = _neighbourhood_any(mask, periodic, corners).sum()
    E = 0
    F = 0
    for axis in range(3):
        # an edge along `axis` from point p touches voxels p - o with o[axis] = 0
        edge_offs = [o for o in corners if o[axis] == 0]
        E += _neighbourhood_any(mask, periodic, edge_offs)[_trim(mask.shape, axis, periodic)].sum()
        # a face perpendicular to `axis` touches voxels p - o with o = 0 off `axis`
        face_offs = [o for o in corners if all(o[k] == 0 for k in range(3) if k != axis)]
        F += _neighbourhood_any(mask, periodic, face_offs)[
            _trim_face(mask.shape, axis, periodic)].sum()
    return int(V), int(E), int(F), int(mask.sum())


def _trim(shape, axis, periodic):
    """Edges along `axis` start at lattice points with coordinate < n along that axis."""
    if periodic:
        return (slice(None),) * 3
    return tuple(slice(0, shape[k]) if k == axis else slice(None) for k in range(3))


def _trim_face(shape, axis, periodic):
    if periodic:
        return (slice(None),) * 3
    return tuple(slice(None) if k == axis else slice(0, shape[k]) for k in range(3))


def crossings(labels, phase, offset, periodic=False):
    """(I_k, N_k): pairs along `offset` with exactly one voxel of `phase`, pairs examined."""
    labels = np.asarray(labels)
    D, H, W = labels.shape
    I = 0
    N = 0
    for a, b, c in itertools.product(range(D), range(H), range(W)):
        a2, b2, c2 = a + offset[0], b + offset[1], c + offset[2]
        if periodic:
            a2, b2, c2 = a2 % D, b2 % H, c2 % W
        elif not (0 <= a2 < D and 0 <= b2 < H and 0 <= c2 < W):
            continue
        N += 1
        I += (labels[a, b, c] == phase) != (labels[a2, b2, c2] == phase)
    return int(I), N


def s2(mask, r_max, periodic=False):
    mask = np.asarray(mask, bool)
    out = np.full((3, r_max + 1), np.nan)
    for axis in range(3):
        L = mask.shape[axis]
        for r in range(r_max + 1):
            if periodic:
                out[axis, r] = (mask & np.roll(mask, -r, axis=axis)).mean()
            elif r < L:
                a = np.take(mask, range(0, L - r), axis=axis)
                b = np.take(mask, range(r, L), axis=axis)
                out[axis, r] = (a & b).mean()
    return out


def tpb_edges(labels, periodic=False, per_axis=False):
    """Lattice edges whose four surrounding voxels hold >= 3 distinct labels (with
    ``per_axis``, the counts of edges along z, y and x)."""
    labels = np.asarray(labels)
    counts = []
    for axis in range(3):
        others = [k for k in range(3) if k != axis]
        quads = []
        for d1, d2 in itertools.product((0, 1), repeat=2):
            shift = [0, 0, 0]
            shift[others[0]], shift[others[1]] = d1, d2
            if periodic:
                quads.append(np.roll(labels, shift=shift, axis=(0, 1, 2)))
            else:
                sl = tuple(slice(shift[k], labels.shape[k] - 1 + shift[k]) if k != axis
                           else slice(None) for k in range(3))
                quads.append(labels[sl])
        stack = np.stack(quads, axis=0)
        srt = np.sort(stack, axis=0)
        distinct = 1 + (np.diff(srt, axis=0) != 0).sum(axis=0)
        counts.append(int((distinct >= 3).sum()))
    return counts if per_axis else sum(counts)


def crossings_vectorised(labels, phase, offset, periodic=False):
    """The same (I_k, N_k) as ``crossings`` with array slicing (for benchmark yardsticks)."""
    mask = np.asarray(labels) == phase
    if periodic:
        other = np.roll(mask, [-o for o in offset], axis=(0, 1, 2))
        return int((mask != other).sum()), mask.size
    src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, mask.shape))
    dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, mask.shape))
    a, b = mask[src], mask[dst]
    return int((a != b).sum()), a.size

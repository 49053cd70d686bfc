# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3
"""Loops only. Validation, documentation and the formulas live in ``mdiff/metrics.py``.

Every kernel works on a z-range of the volume so that ``metrics.py`` can run chunks in threads
(the GIL is released in every loop); partial results are integer counts that simply add up.
Volumes are read through strided memoryviews, so C-, F-ordered, sliced and memory-mapped input
all work without a copy. A lookup table maps label values to phase indices 0..n-1; index 255
(``OUTSIDE``) marks voxels outside the window in the closed boundary convention.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    static inline int mdiff_popcount(unsigned long long x) { return __builtin_popcountll(x); }
    """
    int mdiff_popcount(unsigned long long x) noexcept nogil

ctypedef fused label_t:
    uint8_t
    uint16_t

cdef enum:
    OUTSIDE = 255
    IN_PHASE = 64  # cluster_faces: the voxel is of the phase

# The 2x2x2 window around a lattice point holds voxels v[k], k = 4*dz + 2*dy + dx, and v[7] is
# the voxel whose lowest corner is that point. The 13 lattice directions of the Crofton formula,
# each as one voxel pair of the window (axes z, y, x; 6 face diagonals; 4 space diagonals):
cdef int PAIR_A[13]
cdef int PAIR_B[13]
PAIR_A[:] = [0, 0, 0, 0, 2, 0, 1, 0, 1, 0, 1, 2, 3]
PAIR_B[:] = [4, 2, 1, 6, 4, 5, 4, 3, 2, 7, 6, 5, 4]
# The four voxels around the lattice edges that leave the point along +z, +y and +x.
cdef int EDGE[3][4]
EDGE[0][:] = [4, 5, 6, 7]
EDGE[1][:] = [2, 3, 6, 7]
EDGE[2][:] = [1, 3, 5, 7]

PAIR_OFFSETS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1),
                (0, 1, 1), (0, 1, -1), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1)]


def label_histogram(const label_t[:, :, :] vol, Py_ssize_t z0=0, Py_ssize_t z1=-1):
    """Voxel count of every label value (256 or 65536 bins) over planes z0 <= z < z1."""
    cdef Py_ssize_t H = vol.shape[1], W = vol.shape[2], a, b, c
    if z1 < 0:
        z1 = vol.shape[0]
    counts = np.zeros(256 if label_t is uint8_t else 65536, dtype=np.int64)
    cdef int64_t[::1] cv = counts
    with nogil:
        for a in range(z0, z1):
            for b in range(H):
                for c in range(W):
                    cv[vol[a, b, c]] += 1
    return counts


cdef void _fill_plane(const label_t[:, :, :] vol, const uint8_t[::1] lut, Py_ssize_t a,
                      bint periodic, uint8_t* buf) noexcept nogil:
    """Phase indices of plane z = a into buf, (H + 2) x (W + 2) with a one-voxel border.

    Border and out-of-range planes are OUTSIDE (closed) or the wrapped voxels (periodic)."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], S = W + 2, b, c
    cdef uint8_t* row
    if not periodic and (a < 0 or a >= D):
        memset(buf, OUTSIDE, (H + 2) * S)
        return
    a = (a + D) % D
    for b in range(H):
        row = buf + (b + 1) * S
        for c in range(W):
            row[c + 1] = lut[vol[a, b, c]]
        if periodic:
            row[0] = row[W]
            row[W + 1] = row[1]
        else:
            row[0] = OUTSIDE
            row[W + 1] = OUTSIDE
    if periodic:
        memcpy(buf, buf + H * S, S)
        memcpy(buf + (H + 1) * S, buf + S, S)
    else:
        memset(buf, OUTSIDE, S)
        memset(buf + (H + 1) * S, OUTSIDE, S)


cdef inline void _edge_phases(const uint8_t* v, int e, int n, int64_t* tpb,
                              int64_t* triples) noexcept nogil:
    """Count a triple-phase boundary edge: its four voxels hold three or more phases."""
    cdef uint8_t d[4]
    cdef int k = 0, i, j, l, seen
    cdef uint8_t p
    for i in range(4):
        p = v[EDGE[e][i]]
        if p == OUTSIDE:
            return
        seen = 0
        for j in range(k):
            if d[j] == p:
                seen = 1
        if not seen:
            d[k] = p
            k += 1
    if k < 3:
        return
    tpb[0] += 1
    if triples == NULL:
        return
    # sort the (3 or 4) distinct phases, then count every triple among them
    for i in range(1, k):
        p = d[i]
        j = i - 1
        while j >= 0 and d[j] > p:
            d[j + 1] = d[j]
            j -= 1
        d[j + 1] = p
    for i in range(k):
        for j in range(i + 1, k):
            for l in range(j + 1, k):
                triples[(d[i] * n + d[j]) * n + d[l]] += 1


def window_counts(const label_t[:, :, :] vol, const uint8_t[::1] lut, int n, bint periodic,
                  Py_ssize_t a0, Py_ssize_t a1, bint want_triples=False):
    """One pass over the 2x2x2 windows of lattice planes a0 <= a < a1.

    Returns (hist, pairs, tpb, triples):
    hist[p, m]    windows whose voxels of phase p form the 8-bit configuration m;
    pairs[k, p]   voxel pairs along direction k (PAIR_OFFSETS) inside the window (or wrapped)
                  whose two voxels differ, one of them of phase p;
    tpb           (3,) lattice edges along z, y and x with four voxels inside and three or
                  more phases among them;
    triples       (3, n, n, n) per edge axis and sorted triple of phases, or None.
    Lattice planes run over 0..D (closed) or 0..D-1 (periodic)."""
    cdef Py_ssize_t H = vol.shape[1], W = vol.shape[2], S = W + 2
    cdef Py_ssize_t a, b, c, b_end = H if periodic else H + 1, c_end = W if periodic else W + 1
    hist_arr = np.zeros((n, 256), dtype=np.int64)
    pairs_arr = np.zeros((13, n), dtype=np.int64)
    uniform_arr = np.zeros(256, dtype=np.int64)
    triples_arr = np.zeros((3, n, n, n), dtype=np.int64) if want_triples else None
    cdef int64_t[:, ::1] hist = hist_arr
    cdef int64_t[:, ::1] pairs = pairs_arr
    cdef int64_t[::1] uniform = uniform_arr
    cdef int64_t* triples = NULL
    cdef int64_t[:, :, :, ::1] triples_view
    cdef Py_ssize_t per_axis = n * n * n if want_triples else 0
    if want_triples:
        triples_view = triples_arr
        triples = &triples_view[0, 0, 0, 0]
    cdef int64_t tpb[3]
    tpb[0] = 0
    tpb[1] = 0
    tpb[2] = 0
    cdef uint8_t v[8]
    cdef uint8_t p, q
    cdef int k, j, m, seen
    cdef uint8_t* lower = <uint8_t*> malloc((H + 2) * S)
    cdef uint8_t* upper = <uint8_t*> malloc((H + 2) * S)
    cdef uint8_t* tmp
    cdef const uint8_t* r0
    cdef const uint8_t* r1
    cdef const uint8_t* r2
    cdef const uint8_t* r3
    if lower == NULL or upper == NULL:
        free(lower)
        free(upper)
        raise MemoryError()
    with nogil:
        if a0 < a1:
            _fill_plane(vol, lut, a0 - 1, periodic, upper)
        for a in range(a0, a1):
            tmp = lower
            lower = upper
            upper = tmp
            _fill_plane(vol, lut, a, periodic, upper)
            for b in range(b_end):
                r0 = lower + b * S
                r1 = r0 + S
                r2 = upper + b * S
                r3 = r2 + S
                for c in range(c_end):
                    v[0] = r0[c]
                    v[1] = r0[c + 1]
                    v[2] = r1[c]
                    v[3] = r1[c + 1]
                    v[4] = r2[c]
                    v[5] = r2[c + 1]
                    v[6] = r3[c]
                    v[7] = r3[c + 1]
                    p = v[0]
                    if (p == v[1] and p == v[2] and p == v[3] and p == v[4] and p == v[5]
                            and p == v[6] and p == v[7]):
                        uniform[p] += 1  # the common case: inside one phase
                        continue
                    seen = 0
                    for k in range(8):
                        p = v[k]
                        if p == OUTSIDE or (seen >> k) & 1:
                            continue
                        m = 0
                        for j in range(k, 8):
                            if v[j] == p:
                                m = m | (1 << j)
                        seen = seen | m
                        hist[p, m] += 1
                    for k in range(13):
                        p = v[PAIR_A[k]]
                        q = v[PAIR_B[k]]
                        if p != q and p != OUTSIDE and q != OUTSIDE:
                            pairs[k, p] += 1
                            pairs[k, q] += 1
                    if n >= 3:
                        _edge_phases(v, 0, n, &tpb[0], triples)
                        _edge_phases(v, 1, n, &tpb[1], triples + per_axis)
                        _edge_phases(v, 2, n, &tpb[2], triples + 2 * per_axis)
    free(lower)
    free(upper)
    hist_arr[:, 255] += uniform_arr[:n]
    return hist_arr, pairs_arr, np.array([tpb[0], tpb[1], tpb[2]], dtype=np.int64), triples_arr


def pack_phases(const label_t[:, :, :] vol, const uint8_t[::1] lut, int p0,
                uint64_t[:, :, :, ::1] out, Py_ssize_t z0, Py_ssize_t z1):
    """Set bit x of out[p - p0, z, y] for voxels of phase p in p0 <= p < p0 + out.shape[0].

    ``out`` must be zero; rows are padded to whole 64-bit words, padding bits stay 0."""
    cdef Py_ssize_t H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef int k = out.shape[0], p
    with nogil:
        for a in range(z0, z1):
            for b in range(H):
                for c in range(W):
                    p = <int> lut[vol[a, b, c]] - p0
                    if 0 <= p < k:
                        out[p, a, b, c >> 6] |= (<uint64_t> 1) << (c & 63)


cdef inline void _pairs_along(const uint64_t* p, Py_ssize_t stride, Py_ssize_t left,
                              Py_ssize_t words, const Py_ssize_t[::1] offsets,
                              int64_t[::1] cv) noexcept nogil:
    """cv[k] += popcount(p & p + s_k·stride) over ``words`` words, for every offset s_k < left:
    one row (a y row or a whole z slab) against the row s_k rows further on."""
    cdef Py_ssize_t k, w, s
    cdef const uint64_t* q
    cdef int64_t acc
    for k in range(offsets.shape[0]):
        s = offsets[k]
        if s >= left:
            continue
        q = p + s * stride
        acc = 0
        for w in range(words):
            acc += mdiff_popcount(p[w] & q[w])
        cv[k] += acc


def pair_counts_z(const uint64_t[:, :, ::1] mask, const Py_ssize_t[::1] offsets,
                  Py_ssize_t z0, Py_ssize_t z1):
    """counts[k] = #{(z, y, x): z0 <= z < z1, z + s_k < D, both voxels set}, s_k = offsets[k]."""
    cdef Py_ssize_t D = mask.shape[0], words = mask.shape[1] * mask.shape[2], z
    counts = np.zeros(offsets.shape[0], dtype=np.int64)
    cdef int64_t[::1] cv = counts
    with nogil:
        for z in range(z0, z1):
            _pairs_along(&mask[z, 0, 0], words, D - z, words, offsets, cv)
    return counts


def pair_counts_y(const uint64_t[:, :, ::1] mask, const Py_ssize_t[::1] offsets,
                  Py_ssize_t z0, Py_ssize_t z1):
    """counts[k] = #{(z, y, x): z0 <= z < z1, y + s_k < H, both voxels set}."""
    cdef Py_ssize_t H = mask.shape[1], words = mask.shape[2], z, y
    counts = np.zeros(offsets.shape[0], dtype=np.int64)
    cdef int64_t[::1] cv = counts
    with nogil:
        for z in range(z0, z1):
            for y in range(H):
                _pairs_along(&mask[z, y, 0], words, H - y, words, offsets, cv)
    return counts


def pair_counts_x(const uint64_t[:, :, ::1] mask, const Py_ssize_t[::1] offsets,
                  Py_ssize_t z0, Py_ssize_t z1):
    """counts[k] = #{(z, y, x): z0 <= z < z1, both x and x + s_k set} (bits past W are 0)."""
    cdef Py_ssize_t H = mask.shape[1], words = mask.shape[2]
    cdef Py_ssize_t z, y, k, w, s, q, r, nk = offsets.shape[0]
    counts = np.zeros(nk, dtype=np.int64)
    cdef int64_t[::1] cv = counts
    cdef const uint64_t* row
    cdef uint64_t shifted
    cdef int64_t acc
    with nogil:
        for z in range(z0, z1):
            for y in range(H):
                row = &mask[z, y, 0]
                for k in range(nk):
                    s = offsets[k]
                    q = s >> 6
                    r = s & 63
                    acc = 0
                    for w in range(words - q):
                        shifted = row[w + q] >> r
                        if r != 0 and w + q + 1 < words:
                            shifted = shifted | (row[w + q + 1] << (64 - r))
                        acc += mdiff_popcount(row[w] & shifted)
                    cv[k] += acc
    return counts


cdef inline int32_t _root(int32_t* parent, int32_t i) noexcept nogil:
    """Root of i's tree, halving the path on the way (Tarjan's path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


cdef inline void _union(int32_t* parent, int32_t i, int32_t j) noexcept nogil:
    i = _root(parent, i)
    j = _root(parent, j)
    if i < j:
        parent[j] = i
    elif j < i:
        parent[i] = j


cdef void _forest(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                  int32_t* parent, int wrap) noexcept nogil:
    """The union-find forest of ``phase``'s face-connected clusters over the voxels' flat
    indices, in one raster pass: each voxel of the phase joins its -z, -y, -x neighbours of
    the phase (every root is then its cluster's first voxel: ``_union`` keeps the smaller
    index); -1 for voxels of other phases. ``wrap`` (bits 1 z, 2 y, 4 x): those axes are
    periodic, and the voxels of their first and last planes join across the wrap."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef Py_ssize_t plane = H * W
    cdef int32_t i = 0, j
    for a in range(D):
        for b in range(H):
            for c in range(W):
                if lut[vol[a, b, c]] == phase:
                    parent[i] = i
                    if a > 0 and lut[vol[a - 1, b, c]] == phase:
                        _union(parent, i, i - <int32_t> (H * W))
                    if b > 0 and lut[vol[a, b - 1, c]] == phase:
                        _union(parent, i, i - <int32_t> W)
                    if c > 0 and lut[vol[a, b, c - 1]] == phase:
                        _union(parent, i, i - 1)
                else:
                    parent[i] = -1
                i += 1
    if wrap & 1 and D > 2:
        for b in range(H):
            for c in range(W):
                i = <int32_t> (b * W + c)
                j = <int32_t> ((D - 1) * plane + b * W + c)
                if parent[i] >= 0 and parent[j] >= 0:
                    _union(parent, i, j)
    if wrap & 2 and H > 2:
        for a in range(D):
            for c in range(W):
                i = <int32_t> (a * plane + c)
                j = <int32_t> (a * plane + (H - 1) * W + c)
                if parent[i] >= 0 and parent[j] >= 0:
                    _union(parent, i, j)
    if wrap & 4 and W > 2:
        for a in range(D):
            for b in range(H):
                i = <int32_t> (a * plane + b * W)
                j = <int32_t> (i + W - 1)
                if parent[i] >= 0 and parent[j] >= 0:
                    _union(parent, i, j)


def cluster_faces(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                  uint8_t[:, :, ::1] out, int wrap=0):
    """For every voxel of ``phase``: IN_PHASE | the window faces its face-connected
    (6-connected) cluster touches, bits 1/2 z = 0 / D - 1, 4/8 y, 16/32 x; 0 elsewhere.
    ``wrap``: periodic axes (bits 1 z, 2 y, 4 x), whose end planes are joined (``_forest``).

    The union-find forest of ``_forest``, then the faces of each voxel are or-ed into its root
    and read back. Needs 4 bytes a voxel for the forest (int32: at most 2^31 - 1 voxels)."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef int32_t i, r
    cdef uint8_t f
    forest = np.empty(D * H * W, dtype=np.int32)
    cdef int32_t[::1] fv = forest
    cdef int32_t* parent = &fv[0]
    with nogil:
        _forest(vol, lut, phase, parent, wrap)
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    out[a, b, c] = 0
        i = 0
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    if parent[i] >= 0:
                        f = 0
                        if a == 0:
                            f |= 1
                        if a == D - 1:
                            f |= 2
                        if b == 0:
                            f |= 4
                        if b == H - 1:
                            f |= 8
                        if c == 0:
                            f |= 16
                        if c == W - 1:
                            f |= 32
                        if f:
                            r = _root(parent, i)
                            out[r // (H * W), (r // W) % H, r % W] |= f
                    i += 1
        i = 0
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    if parent[i] >= 0:
                        r = _root(parent, i)
                        out[a, b, c] = IN_PHASE | out[r // (H * W), (r // W) % H, r % W]
                    i += 1
    return out


def cluster_labels(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                   int32_t[:, :, ::1] out, int wrap=0):
    """``phase``'s face-connected (6-connected) clusters numbered 1, 2, ... in the raster
    order of each cluster's first voxel (``scipy.ndimage.label``'s numbering), 0 elsewhere;
    returns their number. ``wrap`` as for ``cluster_faces``.

    The union-find forest of ``_forest``, whose roots are their clusters' first voxels: a
    raster pass numbers each root when it reaches it, and every later voxel takes its root's
    number. 4 bytes a voxel for the forest."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef int32_t i, r, k = 0
    forest = np.empty(D * H * W, dtype=np.int32)
    cdef int32_t[::1] fv = forest
    cdef int32_t* parent = &fv[0]
    with nogil:
        _forest(vol, lut, phase, parent, wrap)
        i = 0
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    if parent[i] < 0:
                        out[a, b, c] = 0
                    else:
                        r = _root(parent, i)
                        if r == i:
                            k += 1
                            out[a, b, c] = k
                        else:
                            out[a, b, c] = out[r // (H * W), (r // W) % H, r % W]
                    i += 1
    return k


def cluster_sizes(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                  int wrap=0):
    """Voxel counts of ``phase``'s face-connected (6-connected) clusters, int64, in the raster
    order of each cluster's first voxel; ``wrap`` as for ``cluster_faces``.

    The union-find forest of ``_forest`` (every root is its cluster's first voxel), then the
    roots are counted, and a second raster pass
    marks each root, when reached, with its cluster's number (as -2 - number: -1 is a voxel
    of another phase; the members after it stop there) and adds every voxel to its root's
    count. 4 bytes a voxel."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef int32_t i, r, p, q, k = 0
    cdef Py_ssize_t n_roots = 0
    forest = np.empty(D * H * W, dtype=np.int32)
    cdef int32_t[::1] fv = forest
    cdef int32_t* parent = &fv[0]
    with nogil:
        _forest(vol, lut, phase, parent, wrap)
        for i in range(<int32_t> (D * H * W)):
            if parent[i] == i:
                n_roots += 1
    sizes = np.zeros(n_roots, dtype=np.int64)
    cdef int64_t[::1] sv = sizes
    with nogil:
        for i in range(<int32_t> (D * H * W)):
            if parent[i] == -1:  # another phase
                continue
            r = i
            while True:  # up to a root: unnumbered (its own parent) or numbered (negative)
                p = parent[r]
                if p < 0 or p == r:
                    break
                q = parent[p]
                if q >= 0 and q != p:
                    parent[r] = q  # path halving, never past a numbered root
                r = p
            if parent[r] == r:  # the first voxel of a cluster not seen before
                parent[r] = -2 - k
                k += 1
            sv[-2 - parent[r]] += 1
    return sizes


cdef enum:
    EDT_FAR = 2147483647  # a squared distance no window reaches: no voxel of another phase

cdef double EDT_FAR_W = 1e300  # the same for the spaced transform (double)


cdef void _parabolas_w(double* f, double* d, Py_ssize_t* v, double* zs, Py_ssize_t n,
                       double w) noexcept nogil:
    """d[q] = min over p of w (q − p)² + f[p] on one line, ``w`` the squared spacing of the
    line's axis (Felzenszwalb & Huttenlocher 2012: the lower envelope of the parabolas rooted
    at the finite f[p]); EDT_FAR_W where none is."""
    cdef Py_ssize_t q, k = -1, j = 0
    cdef double s = 0.0
    for q in range(n):
        if f[q] >= EDT_FAR_W:
            continue
        while k >= 0:
            s = ((f[q] + w * q * q) - (f[v[k]] + w * v[k] * v[k])) / (2.0 * w * (q - v[k]))
            if s <= zs[k]:
                k -= 1
            else:
                break
        k += 1
        v[k] = q
        zs[k] = -1e300 if k == 0 else s
        zs[k + 1] = 1e300
    if k < 0:
        for q in range(n):
            d[q] = EDT_FAR_W
        return
    for q in range(n):
        while zs[j + 1] < q:
            j += 1
        d[q] = w * (q - v[j]) * (q - v[j]) + f[v[j]]


ctypedef fused dist_t:
    int32_t
    double


cdef void _edt_line(dist_t* line, Py_ssize_t n, Py_ssize_t stride, double* f, double* d,
                    Py_ssize_t* v, double* zs, double w) noexcept nogil:
    """One pass of the separable transform over a line of ``n`` values ``stride`` apart, of
    squared spacing ``w``. Integer lines (unit spacing) go through the same double envelope,
    exactly: every value is an integer below 2^53."""
    cdef Py_ssize_t q
    for q in range(n):
        if dist_t is int32_t:
            f[q] = EDT_FAR_W if line[q * stride] >= EDT_FAR else <double> line[q * stride]
        else:
            f[q] = line[q * stride]
    _parabolas_w(f, d, v, zs, n, w)
    for q in range(n):
        if dist_t is int32_t:
            line[q * stride] = EDT_FAR if d[q] >= EDT_FAR else <int32_t> d[q]
        else:
            line[q * stride] = d[q]


cdef int _edt(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase, dist_t* base,
              dist_t far, double wz, double wy, double wx) noexcept nogil:
    """The three separable passes (x, y, z) into the C-ordered ``base``: ``far`` on the
    phase, 0 off it, then the lower envelopes; -1 if the line buffers cannot be had."""
    cdef Py_ssize_t D = vol.shape[0], H = vol.shape[1], W = vol.shape[2], a, b, c
    cdef Py_ssize_t n = max(D, max(H, W))
    cdef double* f = <double*> malloc(n * sizeof(double))
    cdef double* d = <double*> malloc(n * sizeof(double))
    cdef Py_ssize_t* v = <Py_ssize_t*> malloc(n * sizeof(Py_ssize_t))
    cdef double* zs = <double*> malloc((n + 1) * sizeof(double))
    if f == NULL or d == NULL or v == NULL or zs == NULL:
        free(f); free(d); free(v); free(zs)
        return -1
    for a in range(D):
        for b in range(H):
            for c in range(W):
                base[(a * H + b) * W + c] = far if lut[vol[a, b, c]] == phase else 0
    for a in range(D):  # along x, then y, then z: lines of the C-ordered output
        for b in range(H):
            _edt_line(base + (a * H + b) * W, W, 1, f, d, v, zs, wx)
    for a in range(D):
        for c in range(W):
            _edt_line(base + a * H * W + c, H, W, f, d, v, zs, wy)
    for b in range(H):
        for c in range(W):
            _edt_line(base + b * W + c, D, H * W, f, d, v, zs, wz)
    free(f); free(d); free(v); free(zs)
    return 0


def edt_squared(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                int32_t[:, :, ::1] out):
    """Exact squared Euclidean distance from every voxel of ``phase`` to the centre of the
    nearest voxel of another phase (0 off the phase; EDT_FAR where the window holds no other
    phase), in three separable passes (x, y, z) of ``_parabolas_w``. Outside the window counts
    as the phase itself (scipy.ndimage.distance_transform_edt's convention)."""
    cdef int ok
    cdef int32_t far = EDT_FAR
    with nogil:
        ok = _edt(vol, lut, phase, &out[0, 0, 0], far, 1.0, 1.0, 1.0)
    if ok != 0:
        raise MemoryError("edt_squared: line buffers")
    return out


def local_thickness_squared(const int32_t[:, :, ::1] d2, int32_t[:, :, ::1] out):
    """Squared local thickness (Hildebrand & Rüegsegger 1997, as a radius): for every voxel,
    the largest R² among the balls |p − c|² < R(c)² = d2[c] that hold it, every voxel c with
    d2[c] > 0 being a centre; 0 elsewhere. ``d2`` must be finite (no EDT_FAR).

    A centre whose ball's lattice points all lie in a face/edge/corner neighbour's ball changes
    no maximum and is skipped (the distance ridge of Dougherty & Kunzelmann 2007, tested on
    the lattice points themselves): ``need[t][r²]`` is the least R² of a neighbour at offset
    type t (face, edge, corner) whose ball holds every point of a ball of r², by symmetry the
    same for every offset of the type. Exact, integer R²."""
    cdef Py_ssize_t D = d2.shape[0], H = d2.shape[1], W = d2.shape[2]
    cdef Py_ssize_t a, b, c, i, j, k, na, nb, nc, r, kk, t
    cdef int32_t r2, left_a, left_b, top = 0, far
    cdef bint ridge
    for a in range(D):
        for b in range(H):
            for c in range(W):
                top = max(top, d2[a, b, c])
    need_np = np.zeros((3, top + 1), dtype=np.int32)
    cdef int32_t[:, ::1] need = need_np
    with nogil:
        for r2 in range(1, top + 1):
            # the farthest point of the ball from offset (1, 0, 0), (1, 1, 0), (1, 1, 1): on
            # each line of the ball along x, one of its two ends
            r = _isqrt(r2 - 1)
            for t in range(3):
                far = 0
                for i in range(-r, r + 1):
                    for j in range(-r, r + 1):
                        left_b = r2 - 1 - <int32_t> (i * i + j * j)
                        if left_b < 0:
                            continue
                        kk = _isqrt(left_b)
                        nb = j - (1 if t >= 1 else 0)
                        nc = kk + (1 if t == 2 else 0)  # the end of the line away from +x
                        far = max(far, <int32_t> ((i - 1) * (i - 1) + nb * nb + nc * nc))
                need[t, r2] = far + 1
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    out[a, b, c] = 0
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    r2 = d2[a, b, c]
                    if r2 <= 0:
                        continue
                    ridge = True
                    for i in range(-1, 2):
                        for j in range(-1, 2):
                            for k in range(-1, 2):
                                na, nb, nc = a + i, b + j, c + k
                                if (i == 0 and j == 0 and k == 0) or na < 0 or nb < 0 \
                                        or nc < 0 or na >= D or nb >= H or nc >= W:
                                    continue
                                t = (i != 0) + (j != 0) + (k != 0) - 1
                                if d2[na, nb, nc] >= need[t, r2]:
                                    ridge = False
                    if not ridge:
                        continue
                    r = _isqrt(r2 - 1)
                    for i in range(max(-r, -a), min(r, D - 1 - a) + 1):
                        left_a = r2 - 1 - <int32_t> (i * i)
                        for j in range(max(-r, -b), min(r, H - 1 - b) + 1):
                            left_b = left_a - <int32_t> (j * j)
                            if left_b < 0:
                                continue
                            kk = _isqrt(left_b)
                            for k in range(max(-kk, -c), min(kk, W - 1 - c) + 1):
                                if out[a + i, b + j, c + k] < r2:
                                    out[a + i, b + j, c + k] = r2
    return out


cdef inline Py_ssize_t _isqrt(int64_t n) noexcept nogil:
    """floor(√n) for n ≥ 0, exact."""
    cdef Py_ssize_t r = <Py_ssize_t> sqrt(<double> n)
    while (r + 1) * (r + 1) <= n:
        r += 1
    while r * r > n:
        r -= 1
    return r


# ---------------------------------------------------------------------------------------------
# The same two transforms for non-cubic voxels: squared lengths in the unit of the spacing, in
# double precision (a lattice of spacings 0.03 x 0.01 x 0.01 has no integer squared distances).

EDT_FAR_SPACED = EDT_FAR_W


def edt_squared_spaced(const label_t[:, :, :] vol, const uint8_t[::1] lut, int phase,
                       double wz, double wy, double wx, double[:, :, ::1] out):
    """``edt_squared`` on a lattice of squared spacings (wz, wy, wx): the squared physical
    distance to the centre of the nearest voxel of another phase (EDT_FAR_W where the window
    holds none)."""
    cdef int ok
    cdef double far = EDT_FAR_W
    with nogil:
        ok = _edt(vol, lut, phase, &out[0, 0, 0], far, wz, wy, wx)
    if ok != 0:
        raise MemoryError("edt_squared_spaced: line buffers")
    return out


def local_thickness_spaced(const double[:, :, ::1] d2, double wz, double wy, double wx,
                           double[:, :, ::1] out):
    """``local_thickness_squared`` on a lattice of squared spacings (wz, wy, wx): for every
    voxel the largest R² among the open balls |p − c|² < R(c)² = d2[c] (physical lengths)
    that hold it; 0 elsewhere. A squared length within a relative 1e-9 of R² counts as on
    the sphere, so outside (the rounding of two sums in different orders is far below it).

    A centre is skipped when a neighbour's ball holds its whole ball by the triangle
    inequality (R' ≥ R + the neighbour's distance): a weaker test than the isotropic kernel's
    lattice-exact one, so more balls are painted, with the same result."""
    cdef Py_ssize_t D = d2.shape[0], H = d2.shape[1], W = d2.shape[2]
    cdef Py_ssize_t a, b, c, i, j, k, ri, rj, rk
    cdef double r2, limit, left_a, left_b, rad, step
    cdef bint ridge
    with nogil:
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    out[a, b, c] = 0.0
        for a in range(D):
            for b in range(H):
                for c in range(W):
                    r2 = d2[a, b, c]
                    if r2 <= 0.0:
                        continue
                    rad = sqrt(r2)
                    ridge = True
                    for i in range(-1, 2):
                        for j in range(-1, 2):
                            for k in range(-1, 2):
                                if (i == 0 and j == 0 and k == 0) or a + i < 0 or b + j < 0 \
                                        or c + k < 0 or a + i >= D or b + j >= H or c + k >= W:
                                    continue
                                step = sqrt(i * i * wz + j * j * wy + k * k * wx)
                                if sqrt(d2[a + i, b + j, c + k]) >= rad + step:
                                    ridge = False
                    if not ridge:
                        continue
                    limit = r2 * (1.0 - 1e-9)
                    ri = <Py_ssize_t> sqrt(limit / wz)
                    for i in range(max(-ri, -a), min(ri, D - 1 - a) + 1):
                        left_a = limit - i * i * wz
                        if left_a <= 0.0 and i != 0:
                            continue
                        rj = <Py_ssize_t> sqrt(max(left_a, 0.0) / wy)
                        for j in range(max(-rj, -b), min(rj, H - 1 - b) + 1):
                            left_b = left_a - j * j * wy
                            if left_b <= 0.0 and (i != 0 or j != 0):
                                continue
                            rk = <Py_ssize_t> sqrt(max(left_b, 0.0) / wx)
                            for k in range(max(-rk, -c), min(rk, W - 1 - c) + 1):
                                if i * i * wz + j * j * wy + k * k * wx < limit \
                                        and out[a + i, b + j, c + k] < r2:
                                    out[a + i, b + j, c + k] = r2
    return out

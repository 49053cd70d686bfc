"""Two-sample statistics of per-cube figures, in numpy (no scipy at run time).

A generated set is judged on the distribution of its per-cube values, not only on their mean:
real materials are heterogeneous, and a generator whose cubes are all alike fails its users
even when its mean is right. For real values r (n cubes) and generated values g (m cubes):

- ``wasserstein1``: W1 = ∫ |F_g(x) − F_r(x)| dx between the empirical distributions (for
  m = n, the mean of |sorted(g) − sorted(r)|);
- ``ks_2samp``: the Kolmogorov–Smirnov statistic D = sup |F_g − F_r| and its p-value (exact
  lattice-path count for small sets, Kolmogorov's limit for large ones);
- ``compare_values``: the above with means, stds, relative error, effect size and spread ratio;
- ``permuted_w1``, ``permuted_rms``, ``permutation_p``: the permutation test the verdicts rest
  on (``mdiff.verdict``): a statistic of the two sets against the same statistic for random
  re-labellings of the pooled cubes into sets of the same two sizes.
"""
import math

import numpy as np

# exact KS p-values up to this m·n (a 500 × 500 comparison is 0.3 s of Python loops)
EXACT_KS_MAX = 250_000


def wasserstein1(a, b):
    """W1 distance between the empirical distributions of the samples a and b."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    both = np.concatenate([a, b])
    both.sort(kind="mergesort")
    steps = np.diff(both)
    fa = np.searchsorted(a, both[:-1], side="right") / len(a)
    fb = np.searchsorted(b, both[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * steps))


def ks_2samp(a, b):
    """Two-sided two-sample Kolmogorov–Smirnov test: (D, p-value).

    D = sup_x |F_a(x) − F_b(x)|. The p-value P(D' ≥ D) under the null of one continuous
    distribution is exact for m·n ≤ ``EXACT_KS_MAX`` (the share of monotone lattice paths from
    (0, 0) to (m, n) that leave the band |i/m − j/n| < D, Hodges 1958), else from Kolmogorov's
    limit Q(√(mn/(m+n)) · D). Ties make it conservative."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    m, n = len(a), len(b)
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right")
    fb = np.searchsorted(b, both, side="right")
    # |i/m − j/n| as the integer |i·n − j·m| over m·n: exact, so the band test below is too
    h = int(np.max(np.abs(fa * n - fb * m)))
    stat = h / (m * n)
    if h == 0:
        return 0.0, 1.0
    if m * n <= EXACT_KS_MAX:
        return stat, _ks_exact_p(h, m, n)
    return stat, _kolmogorov_sf(math.sqrt(m * n / (m + n)) * stat)


def _ks_exact_p(h, m, n):
    """P(D ≥ h/(mn)) for sets of m and n: 1 − the share of the C(m+n, m) equally likely
    lattice paths that keep |i·n − j·m| < h. u[i, j] is the share of paths to (i, j) that
    stayed inside, u[i, j] = (i·u[i−1, j] + j·u[i, j−1]) / (i + j), which never overflows."""
    if m > n:
        m, n = n, m
    j = np.arange(n + 1)
    u = (j * m < h).astype(float)  # row i = 0: inside while j·m < h
    for i in range(1, m + 1):
        inside = np.abs(i * n - j * m) < h
        prev = u
        u = np.zeros(n + 1)
        u[0] = prev[0] if inside[0] else 0.0
        for k in range(1, n + 1):
            if inside[k]:
                u[k] = (i * prev[k] + k * u[k - 1]) / (i + k)
    return float(min(1.0, max(0.0, 1.0 - u[n])))


def _kolmogorov_sf(lam):
    """Q(λ) = 2 Σ_{k≥1} (−1)^(k−1) exp(−2 k² λ²), the limit of P(√N·D > λ)."""
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)))))


def effect_size(mean, reference_mean, reference_std):
    """d = |mean − mean_ref| / std_ref; None when the reference does not vary."""
    return None if reference_std == 0 else abs(mean - reference_mean) / reference_std


def compare_values(real, generated):
    """Every statistic of one figure between per-cube values of real and generated cubes.

    Returns a dict of plain floats (None where undefined: a real set that does not vary has no
    effect size, spread ratio or W1/σ; a mean of 0 has no relative error)."""
    r, g = np.asarray(real, float), np.asarray(generated, float)
    r_mean, g_mean = float(r.mean()), float(g.mean())
    r_std = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    g_std = float(g.std(ddof=1)) if len(g) > 1 else 0.0
    w1 = wasserstein1(g, r)
    ks, ks_p = ks_2samp(g, r)
    return {"reference_mean": r_mean, "reference_std": r_std, "mean": g_mean, "std": g_std,
            "relative_error": None if r_mean == 0 else abs(g_mean - r_mean) / abs(r_mean),
            "effect_size": effect_size(g_mean, r_mean, r_std),
            "spread_ratio": None if r_std == 0 else g_std / r_std,
            "w1": w1, "w1_over_sd": None if r_std == 0 else w1 / r_std,
            "ks": ks, "ks_p": ks_p}


def size_scale(m, n, a, b):
    """Factor that carries a two-sample distance between sets of a and b values to sets of m
    and n: under the null, W1, D and the difference of two means all shrink as
    √(1/m + 1/n) (the empirical processes converge to a Brownian bridge at that rate)."""
    return math.sqrt((1 / m + 1 / n) / (1 / a + 1 / b))


def membership(orders, first):
    """(B, N) boolean: row b marks the cubes ``orders[b, :first]`` (the re-labelled first set)."""
    orders = np.asarray(orders)
    inside = np.zeros(orders.shape, dtype=bool)
    inside[np.arange(len(orders))[:, None], orders[:, :first]] = True
    return inside


# re-labellings handled at once by permuted_w1 / permuted_rms: rows × pooled cubes up to this
# many elements, so that the temporaries stay bounded however many cubes are judged
_CHUNK = 1 << 16


def _row_chunks(inside):
    rows = max(1, _CHUNK // max(1, inside.shape[1]))
    return [inside[k:k + rows] for k in range(0, len(inside), rows)]


def permuted_w1(values, inside):
    """W1 between the values marked and those not marked in each row of ``inside`` (B, N):
    the empirical CDFs of both parts on the sorted pooled values, a chunk of rows at a time."""
    v = np.asarray(values, float)
    order = np.argsort(v, kind="mergesort")
    steps = np.diff(v[order])
    out = []
    for part in _row_chunks(inside):
        marked = part[:, order]
        first = marked.sum(axis=1, keepdims=True)
        fa = np.cumsum(marked, axis=1)[:, :-1] / first
        fb = np.cumsum(~marked, axis=1)[:, :-1] / (marked.shape[1] - first)
        out.append(np.abs(fa - fb) @ steps)
    return np.concatenate(out)


def permuted_rms(curves, inside):
    """RMS difference of the mean curve of the marked rows of ``curves`` (N, K) and of the
    others, for each row of ``inside`` (B, N), a chunk of rows at a time."""
    c = np.asarray(curves, float).reshape(len(curves), -1)
    out = []
    for part in _row_chunks(inside):
        w = part.astype(float)
        a = (w @ c) / w.sum(axis=1, keepdims=True)
        b = ((1 - w) @ c) / (1 - w).sum(axis=1, keepdims=True)
        out.append(np.sqrt(np.mean((a - b) ** 2, axis=1)))
    return np.concatenate(out)


def permutation_p(observed, null):
    """P-value of ``observed`` among the statistics ``null`` of B random re-labellings:
    (1 + #{null ≥ observed}) / (B + 1), which under exchangeable sets is at most α with
    probability at most α at every set size (Phipson & Smyth 2010). Values within float
    round-off of the observed count as equal (an identical set gets p = 1)."""
    null = np.asarray(null, float)
    tol = 1e-9 * max(abs(float(observed)), float(np.max(np.abs(null), initial=0.0)), 1e-300)
    return float((1 + np.count_nonzero(null >= observed - tol)) / (len(null) + 1))


def null_ranks(null):
    """(F, B) statistics of F figures over the same B re-labellings → (F, B) p-values of each
    re-labelling among all B: what a set drawn like the real cubes would get, figure by figure
    and jointly (the figures of one re-labelling share its cubes)."""
    null = np.asarray(null, float)
    ranked = np.sort(null, axis=1)
    tol = 1e-9 * np.maximum(np.abs(null).max(axis=1, keepdims=True), 1e-300)
    below = np.stack([np.searchsorted(r, row - t, side="left")
                      for r, row, t in zip(ranked, null, tol[:, 0])])
    return (null.shape[1] - below) / null.shape[1]


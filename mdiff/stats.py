"""Two-sample statistics of per-cube figures, in numpy (no scipy at run time).

A generated set is judged on the distribution of its per-cube values, not only on their mean:
real materials are heterogeneous, and a generator whose cubes are all alike fails its users
even when its mean is right. For real values r (n cubes) and generated values g (m cubes):

- ``wasserstein1``: W1 = ∫ |F_g(x) − F_r(x)| dx between the empirical distributions (for
  m = n, the mean of |sorted(g) − sorted(r)|);
- ``ks_2samp``: the Kolmogorov–Smirnov statistic D = sup |F_g − F_r| and its p-value (exact
  lattice-path count for small sets, Kolmogorov's limit for large ones);
- ``compare_values``: the above with means, stds, relative error, effect size and spread ratio.
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

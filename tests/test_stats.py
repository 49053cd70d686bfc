"""Two-sample statistics against hand computations and scipy (a test-only dependency)."""
import itertools
import math

import numpy as np
import pytest

from mdiff import stats


def test_ks_of_separated_sets_by_hand():
    # D = 1; of the C(6, 3) = 20 orderings of 3 + 3 values only the 2 fully separated ones
    # reach it, so p = 2 / 20
    d, p = stats.ks_2samp([1, 2, 3], [4, 5, 6])
    assert d == 1.0 and p == pytest.approx(0.1)
    assert stats.ks_2samp([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)


def test_ks_p_value_by_enumerating_every_ordering():
    a, b = [0.1, 0.5, 0.9, 1.3], [0.2, 0.3, 1.0, 1.1, 1.2]
    d, p = stats.ks_2samp(a, b)
    pooled = np.array(a + b)
    count = total = 0
    for pick in itertools.combinations(range(9), 4):
        rest = [k for k in range(9) if k not in pick]
        dd = stats.ks_2samp(pooled[list(pick)], pooled[rest])[0]
        count += dd >= d - 1e-12
        total += 1
    assert p == pytest.approx(count / total)


@pytest.mark.parametrize("m,n", [(5, 7), (16, 64), (32, 32), (40, 61), (128, 128)])
def test_ks_matches_scipy_exact(m, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(m * 1000 + n)
    for shift in (0.0, 0.4):
        a, b = rng.normal(size=m), rng.normal(shift, 1.3, size=n)
        want = scipy_stats.ks_2samp(a, b, method="exact")
        d, p = stats.ks_2samp(a, b)
        assert d == pytest.approx(want.statistic, abs=1e-12)
        assert p == pytest.approx(want.pvalue, rel=1e-9, abs=1e-12)


def test_ks_with_ties_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, size=30), rng.integers(1, 6, size=25)
    want = scipy_stats.ks_2samp(a, b, method="exact")
    d, p = stats.ks_2samp(a, b)
    assert d == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue, rel=1e-9)


def test_ks_large_sets_use_kolmogorovs_limit(monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(0.15, 1, size=400)
    exact = stats.ks_2samp(a, b)
    monkeypatch.setattr(stats, "EXACT_KS_MAX", 0)
    d, p = stats.ks_2samp(a, b)
    assert d == exact[0]
    assert p == pytest.approx(scipy_stats.kstwobign.sf(math.sqrt(300 * 400 / 700) * d),
                              rel=1e-9)
    assert p == pytest.approx(exact[1], rel=0.15)  # the limit is close at these sizes


def test_wasserstein_equal_sizes_is_mean_sorted_difference():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.exponential(size=50)
    assert stats.wasserstein1(a, b) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(b))))
    assert stats.wasserstein1([0, 0, 1], [0, 1, 1]) == pytest.approx(1 / 3)
    assert stats.wasserstein1(a, a) == 0


def test_wasserstein_unequal_sizes_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    for m, n in ((7, 31), (64, 20), (3, 3)):
        a, b = rng.normal(size=m), rng.normal(0.5, 2, size=n)
        assert stats.wasserstein1(a, b) == pytest.approx(scipy_stats.wasserstein_distance(a, b))


def test_compare_values_fields():
    real = np.array([1.0, 2.0, 3.0, 4.0])
    got = stats.compare_values(real, real * 0.5 + 1.25)  # same mean 2.5, half the spread
    assert got["mean"] == pytest.approx(2.5) and got["reference_mean"] == pytest.approx(2.5)
    assert got["effect_size"] == pytest.approx(0.0)
    assert got["spread_ratio"] == pytest.approx(0.5)
    assert got["w1_over_sd"] == pytest.approx(got["w1"] / real.std(ddof=1))
    flat = stats.compare_values([1.0, 1.0], [1.0, 2.0])
    assert flat["effect_size"] is None and flat["spread_ratio"] is None
    assert flat["w1_over_sd"] is None and flat["w1"] == pytest.approx(0.5)


def test_size_scale():
    assert stats.size_scale(10, 10, 10, 10) == 1
    assert stats.size_scale(64, 64, 32, 32) == pytest.approx(math.sqrt(0.5))


# ---------------------------------------------------------------------------------------------
# The permutation test behind the verdicts


@pytest.mark.parametrize("ties, chunk", [(False, 1 << 16), (True, 1 << 16), (False, 80)])
def test_permuted_statistics_equal_one_relabelling_at_a_time(ties, chunk, monkeypatch):
    monkeypatch.setattr(stats, "_CHUNK", chunk)  # 80: two re-labellings a chunk, 13 chunks
    rng = np.random.default_rng(7)
    values = rng.normal(size=(37, 2))[:, 1]  # a strided view
    if ties:
        values = np.round(values * 2) / 2  # many equal values, as percolating fractions are
    orders = np.stack([rng.permutation(37) for _ in range(25)])
    inside = stats.membership(orders, 11)
    assert inside.sum(axis=1).tolist() == [11] * 25
    ref = [stats.wasserstein1(values[o[:11]], values[o[11:]]) for o in orders]
    np.testing.assert_allclose(stats.permuted_w1(values, inside), ref, atol=1e-12)
    curves = rng.normal(size=(37, 3, 5))
    ref = [np.sqrt(np.mean((curves[o[:11]].mean(0) - curves[o[11:]].mean(0)) ** 2))
           for o in orders]
    np.testing.assert_allclose(stats.permuted_rms(curves, inside), ref, atol=1e-12)


def test_permutation_p_by_hand():
    null = np.array([0.1, 0.2, 0.3, 0.3])
    assert stats.permutation_p(0.3, null) == pytest.approx(3 / 5)   # ties count as reached
    assert stats.permutation_p(0.0, null) == 1.0
    assert stats.permutation_p(9.0, null) == pytest.approx(1 / 5)   # never below 1/(B + 1)
    assert stats.permutation_p(0.3 * (1 - 1e-12), null) == pytest.approx(3 / 5)  # round-off
    ranks = stats.null_ranks(np.array([[0.1, 0.2, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(ranks, [[1, 0.75, 0.5, 0.5], [1, 1, 1, 1]])


@pytest.mark.parametrize("m,n", [(3, 9), (8, 40)])
def test_permutation_p_is_exact_at_small_sets(m, n):
    # two sets from one distribution: P(p <= 0.05) <= 0.05 at any sizes (the split floor it
    # replaced let 6-12 % through here); 600 draws, so 3 binomial sd above is 0.077
    rng = np.random.default_rng(m)
    hits = 0
    for _ in range(600):
        values = rng.normal(size=m + n)
        inside = stats.membership(np.stack([rng.permutation(m + n) for _ in range(99)]), m)
        hits += stats.permutation_p(stats.wasserstein1(values[:m], values[m:]),
                                    stats.permuted_w1(values, inside)) <= 0.05
    assert hits / 600 < 0.077

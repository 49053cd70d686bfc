"""Non-cubic voxels (a FIB-SEM stack's thicker slices): every figure in physical lengths,
against brute-force references on random volumes, analytic balls on stretched lattices,
scipy's sampled distance transform and a direct sparse solve assembled in physical units."""
import itertools
import math

import numpy as np
import pytest

import reference as ref
from mdiff import metrics, sizes, transport
from mdiff.phases import PhaseMap

SPACINGS = [(3.0, 1.0, 1.0), (1.0, 0.5, 0.7), (0.03, 0.01, 0.01)]


def _labels(rng, shape, n=3):
    return rng.choice(np.array([0, 127, 255][:n], np.uint8), size=shape)


def test_crofton_weights_of_the_cubic_lattice_are_the_published_ones():
    gamma, delta = metrics.crofton_weights((1.0, 1.0, 1.0))
    np.testing.assert_array_equal(gamma, metrics.CROFTON_WEIGHTS)
    metrics.crofton_weights.cache_clear()
    computed, _ = metrics.crofton_weights((1.0, 1.0, 1.0 + 1e-12))  # the general path
    np.testing.assert_allclose(computed, metrics.CROFTON_WEIGHTS, atol=1.5e-6)
    np.testing.assert_allclose(delta, metrics.STEP_LENGTHS)


@pytest.mark.parametrize("spacing", SPACINGS + [(1.0, 2.0, 5.0)])
def test_crofton_weights_cover_the_sphere_and_follow_the_axes(spacing):
    gamma, delta = metrics.crofton_weights(spacing)
    assert gamma.sum() == pytest.approx(1.0, abs=1e-9) and (gamma > 0).all()
    steps = np.array(metrics._metrics.PAIR_OFFSETS) * np.array(spacing)
    np.testing.assert_allclose(delta, np.linalg.norm(steps, axis=1))
    # swapping y and x swaps the weights of the directions they swap
    swapped, _ = metrics.crofton_weights((spacing[0], spacing[2], spacing[1]))
    index = {tuple(o): k for k, o in enumerate(metrics._metrics.PAIR_OFFSETS)}
    for k, (a, b, c) in enumerate(metrics._metrics.PAIR_OFFSETS):
        o = (a, c, b)
        j = index.get(o, index.get(tuple(-v for v in o)))
        assert swapped[j] == pytest.approx(gamma[k], rel=1e-9)


def _ball(radius, spacing, pad=2):
    """Voxels whose centres lie inside a ball of ``radius`` (physical) on a lattice."""
    grids = [np.arange(-(math.ceil(radius / h) + pad), math.ceil(radius / h) + pad + 1) * h
             for h in spacing]
    z, y, x = np.meshgrid(*grids, indexing="ij")
    return z * z + y * y + x * x < radius * radius


@pytest.mark.parametrize("spacing", [(2.0, 1.0, 1.0), (3.0, 1.0, 1.0), (1.0, 0.5, 0.7),
                                     (0.25, 1.0, 1.0)])
def test_a_ball_on_a_stretched_lattice_has_its_area_and_volume(spacing):
    radius = 20.0
    ball = _ball(radius, spacing)
    area = 4 * math.pi * radius**2
    assert 1.0 < metrics.surface_area(ball, voxel_size=spacing) / area < 1.07
    assert 1.40 < metrics.surface_area(ball, "faces", voxel_size=spacing) / area < 1.50
    d = metrics.describe(ball.view(np.uint8), PhaseMap([0, 1]), voxel_size=spacing)
    cell = float(np.prod(spacing))
    assert d["phases"][1]["volume_fraction"] * ball.size * cell == pytest.approx(
        4 / 3 * math.pi * radius**3, rel=0.01)
    sv = d["phases"][1]["specific_surface_area"]
    assert sv * ball.size * cell / area == pytest.approx(
        metrics.surface_area(ball, voxel_size=spacing) / area, rel=1e-12)


def test_a_volume_stretched_by_repeating_planes_keeps_its_exact_figures(rng):
    """Each z plane twice at half the spacing is the same physical structure: the face area,
    the Euler characteristic and the triple-phase edge length are the same exactly."""
    volume = rng.choice(np.array([0, 60, 127, 255], np.uint8), size=(7, 9, 8))
    pm = PhaseMap([0, 60, 127, 255])
    once = metrics.describe(volume, pm, voxel_size=(1.0, 1.0, 1.0))
    twice = metrics.describe(np.repeat(volume, 2, axis=0), pm, voxel_size=(0.5, 1.0, 1.0))
    for a, b in zip(once["phases"], twice["phases"]):
        assert b["specific_surface_area_faces"] == pytest.approx(
            a["specific_surface_area_faces"], rel=1e-12)
        assert b["euler"]["chi"] == a["euler"]["chi"]
        assert b["euler_density"] == pytest.approx(a["euler_density"], rel=1e-12)
        assert b["volume_fraction"] == pytest.approx(a["volume_fraction"], rel=1e-12)
    assert twice["tpb_density"] == pytest.approx(once["tpb_density"], rel=1e-12)
    assert once["tpb_density_per_triple"]
    for key, value in once["tpb_density_per_triple"].items():
        assert twice["tpb_density_per_triple"][key] == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("periodic", [False, True])
def test_faces_and_triple_edges_match_brute_force_weights(rng, spacing, periodic):
    volume = _labels(rng, (6, 7, 5))[::-1, :, ::2]  # a strided view
    pm = PhaseMap([0, 127, 255])
    hz, hy, hx = spacing
    cell = hz * hy * hx
    d = metrics.describe(volume, pm, voxel_size=spacing,
                         boundary="periodic" if periodic else "closed")
    areas = (hy * hx, hz * hx, hz * hy)
    for phase, label in zip(d["phases"], pm.labels):
        faces = sum(ref.crossings(volume, label, off, periodic)[0] * a
                    for off, a in zip(ref.OFFSETS[:3], areas))
        assert phase["specific_surface_area_faces"] == pytest.approx(
            faces / (volume.size * cell), rel=1e-12)
        v, e, f, c = ref.euler_counts(volume == label, periodic)
        chi = v - e + f - c
        assert phase["euler_density"] == pytest.approx(chi / (volume.size * cell), rel=1e-12)
    edges = ref.tpb_edges(volume, periodic, per_axis=True)
    assert d["tpb_density"] == pytest.approx(np.dot(edges, spacing) / (volume.size * cell),
                                             rel=1e-12)
    assert d["voxel_size"] == list(spacing) and d["s2_step"] == dict(zip("zyx", spacing))


def test_cubic_voxels_given_as_three_equal_numbers_are_one_number(rng):
    volume = _labels(rng, (9, 8, 10))
    pm = PhaseMap([0, 127, 255])
    one = metrics.describe(volume, pm, voxel_size=0.5, sizes=True)
    three = metrics.describe(volume, pm, voxel_size=(0.5, 0.5, 0.5), sizes=True)
    assert three["voxel_size"] == 0.5
    for a, b in zip(one["phases"], three["phases"]):
        for key in ("specific_surface_area", "euler_density", "local_thickness",
                    "mean_chord_length"):
            assert b[key] == pytest.approx(a[key], rel=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_spaced_distance_transform_is_scipys_sampled_one(rng, spacing):
    ndimage = pytest.importorskip("scipy.ndimage")
    volume = _labels(rng, (9, 12, 7), 2)
    pm = PhaseMap([0, 127])
    w = [h * h for h in spacing]
    got = np.empty(volume.shape)
    metrics._metrics.edt_squared_spaced(np.asfortranarray(volume), pm.lut(volume.dtype), 1,
                                        *w, got)
    want = ndimage.distance_transform_edt(volume == 127, sampling=spacing) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def _thickness_brute_force(mask, spacing):
    """Squared local thickness by definition: every voxel of the mask a centre, its R² the
    squared distance to the nearest voxel off it (outside the window counts as the mask)."""
    pts = np.argwhere(np.ones(mask.shape, bool)) * np.asarray(spacing)
    inside, outside = pts[mask.ravel()], pts[~mask.ravel()]
    r2 = ((inside[:, None, :] - outside[None, :, :]) ** 2).sum(-1).min(1)
    d2 = ((inside[:, None, :] - inside[None, :, :]) ** 2).sum(-1)
    holds = d2 < r2[None, :] * (1 - 1e-9)  # point i in the ball of centre j
    out = np.zeros(mask.shape)
    out[mask] = np.where(holds, r2[None, :], 0).max(1)
    return out


@pytest.mark.parametrize("spacing", SPACINGS + [(1.0, 1.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_spaced_local_thickness_matches_its_definition(spacing, seed):
    rng = np.random.default_rng(seed)
    volume = (rng.random((7, 9, 8)) < 0.7).astype(np.uint8)
    pm = PhaseMap([0, 1])
    got = sizes.local_thickness_spaced(volume, pm, 1, spacing)
    np.testing.assert_allclose(got, _thickness_brute_force(volume == 1, spacing), rtol=1e-12)
    if spacing == (1.0, 1.0, 1.0):  # the float kernel is the integer one on cubic voxels
        np.testing.assert_array_equal(got, sizes.local_thickness_squared(volume, pm, 1))


def test_a_slab_two_voxels_thick_along_the_thick_axis_has_its_physical_thickness():
    volume = np.zeros((8, 12, 12), np.uint8)
    volume[3:5] = 1  # two slices of 3 um: 6 um thick, its balls' radius is one slice, 3 um
    pm = PhaseMap([0, 1])
    d = metrics.describe(volume, pm, voxel_size=(3.0, 1.0, 1.0), sizes=True,
                         distributions=True)
    assert d["phases"][1]["local_thickness"] == pytest.approx(3.0)
    assert d["phases"][1]["thickness_distribution"] == {"radius": [3.0], "share": [1.0]}
    assert d["phases"][1]["chord_length_distribution"]["z"] == {"length": [6.0],
                                                                "count": [144]}
    assert d["phases"][1]["mean_chord_length"] == pytest.approx(6.0)


def _reference_deff_physical(active, spacing):
    """The finite-volume problem assembled in physical units: conductance A_d / h_d between
    face neighbours along d, 2 A_0 / h_0 from an end voxel to its reservoir face; D_eff/D =
    F L / (A ΔC) with L and A the window's physical length and cross-section."""
    sparse = pytest.importorskip("scipy.sparse")
    from scipy.sparse.linalg import spsolve

    h = np.asarray(spacing, float)
    g = [h[1] * h[2] / h[0], h[0] * h[2] / h[1], h[0] * h[1] / h[2]]
    length, height, width = active.shape
    index = -np.ones(active.shape, int)
    index[active] = np.arange(active.sum())
    rows, cols, vals, b = [], [], [], np.zeros(active.sum())
    for (a, y, x), i in np.ndenumerate(index):
        if i < 0:
            continue
        diag = 0.0
        for d, sign in itertools.product(range(3), (1, -1)):
            n = [a, y, x]
            n[d] += sign
            if 0 <= n[0] < length and 0 <= n[1] < height and 0 <= n[2] < width \
                    and index[tuple(n)] >= 0:
                rows.append(i), cols.append(index[tuple(n)]), vals.append(-g[d])
                diag += g[d]
        if a == 0:
            diag += 2 * g[0]
            b[i] += 2 * g[0]
        if a == length - 1:
            diag += 2 * g[0]
        rows.append(i), cols.append(i), vals.append(diag)
    c = spsolve(sparse.csr_matrix((vals, (rows, cols))), b)
    inflow = sum(2 * g[0] * (1 - c[index[0, y, x]]) for y in range(height)
                 for x in range(width) if index[0, y, x] >= 0)
    return inflow * (length * h[0]) / (height * h[1] * width * h[2])


@pytest.mark.parametrize("spacing", SPACINGS)
def test_the_solver_on_non_cubic_voxels_matches_a_physical_sparse_solve(spacing):
    rng = np.random.default_rng(7)
    volume = (rng.random((9, 8, 10)) < 0.6).astype(np.uint8)
    pm = PhaseMap([0, 1])
    faces = transport.cluster_faces(volume, pm, 1)
    got_all = transport.transport(volume, pm, tol=1e-5, voxel_size=spacing)[1]
    for k, axis in enumerate("zyx"):
        lo, hi = transport.FACES[axis]
        active = np.moveaxis((faces & (lo | hi)) == (lo | hi), k, 0)
        h = (spacing[k],) + tuple(spacing[j] for j in range(3) if j != k)
        want = _reference_deff_physical(active, h) if active.any() else 0.0
        got = got_all[axis]
        assert got["effective_diffusivity"] == pytest.approx(want, rel=2e-4, abs=1e-7)
        if want > 0:
            assert got["tortuosity_factor"] == pytest.approx(volume.mean() / want, rel=2e-4)


def test_transport_of_a_full_window_and_of_straight_channels_ignores_the_spacing():
    volume = np.zeros((6, 5, 4), np.uint8)
    volume[:, 1, :] = 1  # a sheet along z and x
    pm = PhaseMap([0, 1])
    for spacing in SPACINGS:
        t = transport.transport(volume, pm, tol=1e-6, voxel_size=spacing)[1]
        assert t["z"]["effective_diffusivity"] == pytest.approx(0.2, rel=1e-5)
        assert t["x"]["effective_diffusivity"] == pytest.approx(0.2, rel=1e-5)
        assert t["y"]["percolating_fraction"] == 0

"""Every kernel against brute-force numpy counting, analytic shapes and scikit-image."""
import json

import numpy as np
import pytest

import reference as ref
from mdiff import metrics, write_volume
from mdiff.cli import metrics_main
from mdiff.phases import PhaseMap

SHAPES = [(5, 6, 7), (9, 11, 13), (1, 8, 8), (6, 7, 9), (2, 1, 3)]


def _volume(rng, shape, n_phases):
    labels = np.array([0, 40, 127, 200, 255][:n_phases], np.uint8)
    return rng.choice(labels, size=shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_phases", [2, 3, 5])
@pytest.mark.parametrize("periodic", [False, True])
def test_window_counts_match_brute_force(rng, shape, n_phases, periodic):
    volume = _volume(rng, shape, n_phases)
    pm = PhaseMap(np.unique(volume)) if len(np.unique(volume)) > 1 else PhaseMap([0, 255])
    euler, pairs, tpb, _ = metrics.window_counts(volume, pm, periodic)
    for i, label in enumerate(pm.labels):
        mask = volume == label
        assert tuple(euler[i]) == ref.euler_counts(mask, periodic)
        for k, offset in enumerate(ref.OFFSETS):
            assert pairs[k, i] == ref.crossings(volume, label, offset, periodic)[0]
    assert list(tpb) == (ref.tpb_edges(volume, periodic, per_axis=True) if pm.n >= 3
                         else [0, 0, 0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("periodic", [False, True])
def test_s2_matches_brute_force(rng, shape, periodic):
    mask = rng.random(shape) < 0.4
    r_max = 10  # beyond some axis lengths: NaN (closed) or wrapped (periodic)
    got = metrics.two_point_correlation(mask, r_max, periodic)
    want = ref.s2(mask, r_max, periodic)
    assert got.shape == (3, r_max + 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_s2_wide_rows_cross_word_boundaries(rng):
    mask = rng.random((3, 4, 150)) < 0.5  # rows of 3 words: shifts across words
    np.testing.assert_allclose(metrics.two_point_correlation(mask, 70),
                               ref.s2(mask, 70), atol=1e-12)
    np.testing.assert_allclose(metrics.two_point_correlation(mask, 70, periodic=True),
                               ref.s2(mask, 70, periodic=True), atol=1e-12)


def test_s2_limits(rng):
    mask = rng.random((40, 40, 40)) < 0.3
    s2 = metrics.two_point_correlation(mask, 20)
    np.testing.assert_allclose(s2[:, 0], mask.mean())
    np.testing.assert_allclose(s2[:, 20], mask.mean() ** 2, atol=0.01)


@pytest.mark.parametrize("make", [
    np.asfortranarray,
    lambda v: v[::2, :, ::-1],
    lambda v: v.transpose(2, 0, 1),
    lambda v: v.astype(np.uint16) * 257,
])
def test_memory_orders_and_dtypes(rng, make):
    base = _volume(rng, (10, 9, 11), 3)
    view = make(base)
    plain = np.ascontiguousarray(view)
    before = view.copy()
    a = metrics.describe(view, s2_max=6)
    b = metrics.describe(plain, s2_max=6)
    assert a == b
    np.testing.assert_array_equal(view, before)  # the input is never modified


def test_read_only_input(rng):
    volume = _volume(rng, (6, 7, 8), 2)
    volume.setflags(write=False)
    assert metrics.euler_counts(volume == 0) == ref.euler_counts(volume == 0)
    metrics.describe(volume, s2_max=3)


def test_threads_do_not_change_results(rng):
    volume = _volume(rng, (17, 13, 15), 4)
    one = metrics.describe(volume, s2_max=8, threads=1)
    many = metrics.describe(volume, s2_max=8, threads=3)
    assert one == many


def _chi(mask, periodic=False):
    v, e, f, c = metrics.euler_counts(mask, periodic)
    return v - e + f - c


def test_analytic_shapes():
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    assert _chi(single) == 1
    assert metrics.euler_counts(single) == (8, 12, 6, 1)
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    assert _chi(cube) == 1
    hollow = cube.copy()
    hollow[2:5, 2:5, 2:5] = False
    assert _chi(hollow) == 2
    z, y, x = np.mgrid[-8:9, -8:9, -8:9]
    torus = (np.sqrt(y ** 2 + x ** 2) - 5) ** 2 + z ** 2 <= 2.2 ** 2
    assert _chi(torus) == 0
    corner = np.zeros((4, 4, 4), bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True
    assert _chi(corner) == 1  # 26-connected: one object
    rod = np.zeros((6, 5, 5), bool)
    rod[:, 2, 2] = True
    assert _chi(rod, periodic=True) == 0  # a loop around the torus
    assert _chi(rod) == 1
    full = np.ones((4, 5, 6), bool)
    assert _chi(full, periodic=True) == 0  # the 3-torus


def test_agrees_with_scikit_image(rng):
    measure = pytest.importorskip("skimage.measure")
    for shape in [(9, 11, 13), (20, 20, 20)]:
        mask = rng.random(shape) < 0.45
        assert _chi(mask) == measure.euler_number(mask, connectivity=3)


def _ball_in_window(r, side):
    morphology = pytest.importorskip("skimage.morphology")
    ball = morphology.ball(r).astype(bool)
    pad = side - ball.shape[0]
    return np.pad(ball, (pad // 2, pad - pad // 2))


@pytest.mark.parametrize("r,side,low,high", [(16, 64, 1.02, 1.03), (48, 128, 1.01, 1.02)])
def test_crofton_ball(r, side, low, high):
    ball = _ball_in_window(r, side)
    area = 4 * np.pi * r * r
    assert low < metrics.surface_area(ball) / area < high
    assert 1.48 < metrics.surface_area(ball, "faces") / area < 1.50


def test_faces_count_matches_brute_force(rng):
    volume = _volume(rng, (6, 7, 9), 3)
    for periodic in (False, True):
        faces = sum(ref.crossings(volume, 127, off, periodic)[0] for off in ref.OFFSETS[:3])
        assert metrics.surface_area(volume == 127, "faces", periodic) == faces


def test_crofton_formula_by_hand(rng):
    volume = _volume(rng, (5, 6, 7), 2)
    mask = volume == 255
    weights = [0.091556] * 3 + [0.073962] * 6 + [0.070392] * 4
    steps = [1] * 3 + [2 ** 0.5] * 6 + [3 ** 0.5] * 4
    s_v = 0.0
    for off, g, d in zip(ref.OFFSETS, weights, steps):
        i_k, n_k = ref.crossings(volume, 255, off)
        s_v += 2 * g * i_k / (n_k * d)
    assert metrics.surface_area(mask) == pytest.approx(s_v * mask.size, rel=1e-12)


def test_describe_schema(rng):
    volume = _volume(rng, (12, 12, 12), 3)
    d = metrics.describe(volume, s2_max=5)
    assert d["shape"] == [12, 12, 12] and len(d["phases"]) == 3
    p = d["phases"][0]
    e = p["euler"]
    assert e["chi"] == e["vertices"] - e["edges"] + e["faces"] - e["cubes"]
    assert p["volume_fraction"] == e["cubes"] / volume.size
    assert len(p["s2"]["z"]) == 6
    assert d["tpb_density"] == ref.tpb_edges(volume) / volume.size
    assert metrics.describe(volume == 0, s2_max=2)["tpb_density"] is None


def test_tpb_per_triple(rng):
    volume = _volume(rng, (8, 9, 10), 4)
    d = metrics.describe(volume, s2_max=2)
    assert set(d["tpb_density_per_triple"]) == {"0-40-127", "0-40-200", "0-127-200",
                                               "40-127-200"}
    assert sum(d["tpb_density_per_triple"].values()) >= d["tpb_density"]


# ---------------------------------------------------------------------------------------------
# mdiff-metrics


def test_cli_json_schema(tmp_path, rng, capsys):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_volume(a, _volume(rng, (16, 16, 16), 3))
    write_volume(b, _volume(rng, (16, 16, 16), 3))
    assert metrics_main([str(a), str(b), "--json", "--s2-max", "4", "--subvolume", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"mdiff_version", "boundary", "volumes", "comparison"}
    vol = out["volumes"][0]
    assert vol["path"] == str(a) and vol["shape"] == [16, 16, 16]
    phase = vol["phases"][1]
    assert set(phase) >= {"label", "volume_fraction", "specific_surface_area",
                          "specific_surface_area_faces", "euler", "euler_density", "s2"}
    assert set(phase["euler"]) == {"vertices", "edges", "faces", "cubes", "chi"}
    assert vol["subvolumes"]["count"] == 8
    comp = out["comparison"][0]["phases"][0]["volume_fraction"]
    assert comp["relative_difference"] == pytest.approx(
        (comp["value"] - comp["reference"]) / comp["reference"])
    assert "effect_size" in comp


def test_cli_table_and_plot(tmp_path, rng, capsys):
    pytest.importorskip("matplotlib")
    a = tmp_path / "a.tif"
    write_volume(a, _volume(rng, (16, 16, 16), 3))
    assert metrics_main([str(a), "--plot", str(tmp_path / "p.png"), "--subvolume", "8",
                         "--boundary", "periodic"]) == 0
    text = capsys.readouterr().out
    assert "chi_V" in text and "Euler counts" in text and "boundary periodic" in text
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_label_mismatch_warns(tmp_path, rng, capsys):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_volume(a, _volume(rng, (8, 8, 8), 3))
    write_volume(b, _volume(rng, (8, 8, 8), 2))
    assert metrics_main([str(a), str(b), "--json"]) == 0
    captured = capsys.readouterr()
    assert "labels [127] do not occur" in captured.err
    out = json.loads(captured.out)
    assert out["volumes"][1]["phases"][2]["volume_fraction"] == 0


def test_cli_bad_flags(tmp_path, rng, capsys):
    a = tmp_path / "a.tif"
    write_volume(a, _volume(rng, (8, 8, 8), 2))
    assert metrics_main([str(a), "--subvolume", "20"]) == 2
    assert "larger than the volume" in capsys.readouterr().err


def test_real_volume(shared_data):
    from mdiff import read_volume

    volume = read_volume(shared_data / "nmc_3phase_256.tif")[:64, :64, :64]
    d = metrics.describe(volume, s2_max=10)
    for p in d["phases"]:
        mask = volume == p["label"]
        v, e, f, c = ref.euler_counts(mask)
        assert p["euler"]["chi"] == v - e + f - c

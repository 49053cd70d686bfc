"""Local thickness and chord lengths against independent references: scipy's exact distance
transform, a brute-force ball cover over every pair of voxels, run lengths counted in Python,
and shapes whose answer is known (slabs, a ball)."""
import numpy as np
import pytest

from mdiff import sizes
from mdiff.phases import PhaseMap

ndimage = pytest.importorskip("scipy.ndimage")


def _volumes(rng):
    """Random label volumes: odd shapes, two and three phases, C and F order, a strided view,
    uint16 labels, a thin axis."""
    yield np.where(rng.random((7, 9, 11)) < 0.4, 255, 0).astype(np.uint8), PhaseMap([0, 255])
    yield np.asarray(rng.choice([0, 127, 255], (10, 6, 8)).astype(np.uint8), order="F"), \
        PhaseMap([0, 127, 255])
    big = np.where(rng.random((14, 12, 18)) < 0.6, 3, 1).astype(np.uint8)
    yield big[::2, 1::1, ::3], PhaseMap([1, 3])
    yield np.where(rng.random((5, 8, 9)) < 0.5, 1000, 2).astype(np.uint16), PhaseMap([2, 1000])
    yield np.where(rng.random((1, 13, 10)) < 0.5, 1, 0).astype(np.uint8), PhaseMap([0, 1])


def _thickness_reference(mask):
    """Squared local thickness by brute force: for each voxel of the mask, the largest d²(c)
    over the voxels c of the mask with |p − c|² < d²(c), d the scipy distance transform."""
    d2 = np.rint(ndimage.distance_transform_edt(mask) ** 2).astype(np.int64)
    points = np.argwhere(mask)
    out = np.zeros(mask.shape, np.int64)
    if len(points) == 0:
        return out
    r2 = d2[tuple(points.T)]
    gaps = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)  # (p, c)
    held = gaps < r2[None, :]
    out[tuple(points.T)] = np.where(held, r2[None, :], 0).max(axis=1)
    return out


def _chords_reference(mask, axis):
    lines = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis])
    out = []
    for line in lines:
        k = 0
        while k < len(line):
            if line[k]:
                start = k
                while k < len(line) and line[k]:
                    k += 1
                if start > 0 and k < len(line):
                    out.append(k - start)
            else:
                k += 1
    return np.array(out, dtype=np.int64)


def test_distance_transform_matches_scipy(rng):
    for volume, pm in _volumes(rng):
        for i, label in enumerate(pm.labels):
            mask = volume == label
            got = sizes.distance_squared(volume, pm, i)
            if mask.all():
                assert (got == sizes.FAR).all()
                continue
            want = np.rint(ndimage.distance_transform_edt(mask) ** 2).astype(np.int64)
            np.testing.assert_array_equal(got, want)


def test_local_thickness_matches_a_brute_force_ball_cover(rng):
    for volume, pm in _volumes(rng):
        for i, label in enumerate(pm.labels):
            mask = volume == label
            got = sizes.local_thickness_squared(volume, pm, i)
            if mask.all():
                assert got is None
                continue
            np.testing.assert_array_equal(got, _thickness_reference(mask))


def test_local_thickness_of_smooth_grains_matches_brute_force():
    """Pieces several voxels across (where the ridge skip does the work), as in a rock."""
    from mdiff import synth

    volume = synth.generate((12, 14, 13), (0.35, 0.65), labels=(0, 255), length=4.0, seed=5)
    pm = PhaseMap.from_volume(volume)
    for i, label in enumerate(pm.labels):
        np.testing.assert_array_equal(sizes.local_thickness_squared(volume, pm, i),
                                      _thickness_reference(volume == label))


@pytest.mark.parametrize("thickness,radius", [(1, 1.0), (2, 1.0), (4, 2.0), (6, 3.0),
                                              (3, 2.0)])
def test_slab_thickness(thickness, radius):
    """A slab of even thickness t has local thickness t/2 (a radius) everywhere; an odd one
    (t + 1)/2: radii are distances to the centres of the other phase's voxels."""
    volume = np.zeros((12, 9, 10), np.uint8)
    volume[3:3 + thickness] = 1
    dist = sizes.thickness_distribution(volume, PhaseMap([0, 1]), 1)
    assert dist["radius"] == [radius] and dist["share"] == [1.0]
    assert sizes.mean_thickness(volume, PhaseMap([0, 1]), 1) == radius


def test_ball_thickness_is_its_radius():
    z, y, x = np.mgrid[:21, :21, :21] - 10
    volume = ((z * z + y * y + x * x) <= 36).astype(np.uint8)  # digital ball of radius 6
    lt = sizes.local_thickness(volume, PhaseMap([0, 1]), 1)
    # the nearest voxel outside is (6, 1, 0) from the centre: R² = 37, and that ball holds
    # every voxel of the digital ball
    assert (lt[volume == 1] == np.float32(np.sqrt(37))).all()
    assert (lt[volume == 0] == 0).all()


def test_distribution_shares_and_mean():
    volume = np.zeros((10, 10, 10), np.uint8)
    volume[1:3] = 1  # 200 voxels at radius 1
    volume[5:9] = 1  # 400 voxels at radius 2
    dist = sizes.thickness_distribution(volume, PhaseMap([0, 1]), 1)
    assert dist["radius"] == [1.0, 2.0]
    assert dist["share"] == pytest.approx([1 / 3, 2 / 3])
    assert dist["mean"] == pytest.approx(5 / 3)


def test_absent_and_filling_phases():
    full = np.ones((6, 5, 4), np.uint8)
    pm = PhaseMap([0, 1])
    assert sizes.thickness_distribution(full, pm, 1) is None
    assert np.isinf(sizes.local_thickness(full, pm, 1)).all()
    assert sizes.thickness_distribution(full, pm, 0) == {"radius": [], "share": [], "mean": 0.0}
    assert sizes.mean_thickness(full, pm, 1) == pytest.approx(0.5 * np.sqrt(36 + 25 + 16))
    assert sizes.mean_thickness(full, pm, 0) == 0.0
    assert sizes.mean_chord(full, pm, 1) == pytest.approx(5.0)  # no chord ends inside
    assert sizes.mean_chord(full, pm, 0) == 0.0


def test_chords_match_a_python_count(rng):
    for volume, pm in _volumes(rng):
        for i, label in enumerate(pm.labels):
            mask = volume == label
            for k, axis in enumerate("zyx"):
                np.testing.assert_array_equal(sizes.chord_lengths(volume, pm, i, axis),
                                              _chords_reference(mask, k))


def test_chords_of_a_hand_line():
    volume = np.array([[[1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1]]], np.uint8)
    assert sizes.chord_lengths(volume, PhaseMap([0, 1]), 1, "x").tolist() == [3, 1]
    assert sizes.chord_lengths(volume, PhaseMap([0, 1]), 0, "x").tolist() == [1, 2, 1]
    assert sizes.mean_chord(volume, PhaseMap([0, 1]), 1) == pytest.approx(2.0)


def test_metrics_cli_sizes_on_request_in_length_units(tmp_path, capsys):
    """mdiff-metrics --sizes adds the rows (table, JSON, sub-volumes, plot), scaled by the
    voxel size; without it they are absent; mdiff-evaluate's cubes always carry them."""
    import json

    from mdiff import evaluate, metrics
    from mdiff.cli import metrics_main
    from mdiff.io import write_volume

    volume = np.zeros((16, 12, 12), np.uint8)
    volume[2:6] = 255  # a slab 4 voxels thick: local thickness 2, chords 4 along z
    path = tmp_path / "slab.tif"
    write_volume(path, volume)
    assert metrics_main([str(path), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["volumes"][0]["phases"][1]
    assert "local_thickness" not in plain and "mean_chord_length" not in plain
    assert metrics_main([str(path), "--json", "--sizes", "--voxel-size", "0.5"]) == 0
    phase = json.loads(capsys.readouterr().out)["volumes"][0]["phases"][1]
    assert phase["local_thickness"] == pytest.approx(1.0)  # 2 voxels of 0.5
    assert phase["mean_chord_length"] == pytest.approx(2.0)  # 4 voxels of 0.5, along z only
    cubes = evaluate.describe_cubes([volume[:8, :8, :8]], PhaseMap([0, 255]), 4)
    assert cubes[0]["phases"][1]["local_thickness"] == pytest.approx(2.0)
    assert "local_thickness" not in metrics.describe(volume)["phases"][1]
    pytest.importorskip("matplotlib")
    assert metrics_main([str(path), "--sizes", "--subvolume", "8", "--plot",
                         str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "thick." in text and "chord" in text
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_describe_gives_the_distributions_that_the_maps_and_chords_give(rng):
    """metrics.describe(sizes=True, distributions=True): the thickness distribution is the
    brute-force map's histogram, the chord distribution the Python count's, both scaled by
    the voxel size, and their means are the table's figures."""
    from mdiff import metrics

    for volume, pm in _volumes(rng):
        entry = metrics.describe(volume, pm, 2, voxel_size=0.5, sizes=True, distributions=True)
        for i, label in enumerate(pm.labels):
            phase, mask = entry["phases"][i], volume == label
            dist = phase["thickness_distribution"]
            if mask.all():
                assert dist is None
                continue
            r2, counts = np.unique(_thickness_reference(mask)[mask], return_counts=True)
            assert dist["radius"] == pytest.approx((0.5 * np.sqrt(r2)).tolist())
            assert dist["share"] == pytest.approx((counts / counts.sum()).tolist())
            if mask.any():
                assert phase["local_thickness"] == pytest.approx(
                    sum(r * s for r, s in zip(dist["radius"], dist["share"])))
            for k, axis in enumerate("zyx"):
                lengths, n = np.unique(_chords_reference(mask, k), return_counts=True)
                got = phase["chord_length_distribution"][axis]
                assert got == {"length": (0.5 * lengths).tolist(), "count": n.tolist()}
    assert "thickness_distribution" not in metrics.describe(volume, pm, 2, sizes=True)["phases"][0]


def test_a_remembered_distribution_is_the_volumes_own_and_a_copy():
    volume = np.zeros((10, 10, 10), np.uint8)
    volume[1:3] = 1
    pm = PhaseMap([0, 1])
    first = sizes.thickness_distribution(volume, pm, 1)
    first["radius"].append(99.0)  # the caller's list, not the remembered one
    assert sizes.thickness_distribution(volume, pm, 1)["radius"] == [1.0]
    volume[5:9] = 1  # new content, new answer
    assert sizes.thickness_distribution(volume, pm, 1)["radius"] == [1.0, 2.0]

"""Percolation and tortuosity against independent references: scipy's labelling, a sparse
direct solve of the same finite-volume problem written out voxel by voxel, analytic shapes,
and TauFactor where it is installed."""
import math

import numpy as np
import pytest

from mdiff import metrics, synth, transport
from mdiff.cli import metrics_main
from mdiff.phases import PhaseMap

ndimage = pytest.importorskip("scipy.ndimage")
sparse = pytest.importorskip("scipy.sparse")


def _faces_reference(mask):
    """Per voxel of the mask: 64 | faces its 6-connected cluster touches (scipy labelling)."""
    return _faces_reference_wrapped(mask, "")


@pytest.mark.parametrize("shape,order", [((6, 7, 9), "C"), ((11, 5, 8), "F"), ((1, 9, 4), "C")])
def test_cluster_faces_match_scipy_labelling(rng, shape, order):
    for fraction in (0.3, 0.55, 0.8):
        volume = np.asarray(np.where(rng.random(shape) < fraction, 200, 7).astype(np.uint8),
                            order=order)
        pm = PhaseMap([7, 200])
        for phase, label in enumerate(pm.labels):
            got = transport.cluster_faces(volume, pm, phase)
            np.testing.assert_array_equal(got, _faces_reference(volume == label))


def test_cluster_faces_strided_and_uint16_input(rng):
    big = rng.choice(np.array([0, 300, 9000], np.uint16), size=(14, 15, 16))
    view = big[1::2, ::-1, 2:13]
    pm = PhaseMap([0, 300, 9000])
    before = big.copy()
    for phase, label in enumerate(pm.labels):
        np.testing.assert_array_equal(transport.cluster_faces(view, pm, phase),
                                      _faces_reference(view == label))
    np.testing.assert_array_equal(big, before)


@pytest.mark.parametrize("shape,order", [((6, 7, 9), "C"), ((11, 5, 8), "F"), ((1, 9, 4), "C")])
def test_cluster_sizes_and_labels_match_scipy_labelling(rng, shape, order):
    for fraction in (0.2, 0.45, 0.8):
        volume = np.asarray(np.where(rng.random(shape) < fraction, 200, 7).astype(np.uint8),
                            order=order)
        pm = PhaseMap([7, 200])
        for phase, label in enumerate(pm.labels):
            labels, count = ndimage.label(volume == label)  # 6-connected, raster order
            want = np.bincount(labels.ravel(), minlength=count + 1)[1:]
            np.testing.assert_array_equal(transport.cluster_sizes(volume, pm, phase), want)
            got, got_count = transport.cluster_labels(volume, pm, phase)
            assert got_count == count and got.dtype == np.int32
            np.testing.assert_array_equal(got, labels)


def test_cluster_sizes_strided_uint16_and_the_summary(rng):
    big = rng.choice(np.array([0, 300, 9000], np.uint16), size=(14, 15, 16))
    view = big[1::2, ::-1, 2:13]
    pm = PhaseMap([0, 300, 9000])
    for phase, label in enumerate(pm.labels):
        labels, count = ndimage.label(view == label)
        sizes = np.bincount(labels.ravel())[1:]
        got, got_count = transport.cluster_labels(view, pm, phase)  # strided, reversed, uint16
        assert got_count == count
        np.testing.assert_array_equal(got, labels)
        got = transport.cluster_summary(transport.cluster_sizes(view, pm, phase))
        assert got["count"] == count
        assert got["largest_fraction"] == pytest.approx(sizes.max() / sizes.sum())
        bins = np.floor(np.log2(sizes)).astype(int)
        for k, share in enumerate(got["shares"]):
            assert share == pytest.approx(sizes[bins == k].sum() / sizes.sum())
    assert transport.cluster_summary([]) == {"count": 0, "largest_fraction": 0.0, "shares": []}


def test_describe_reports_isolated_share_and_cluster_sizes(rng):
    volume = np.zeros((9, 10, 11), np.uint8)
    volume[:, 4:6, 4:6] = 1  # a rod through z: 36 voxels
    volume[4, 1, 1] = 1  # an isolated voxel
    volume[3:5, 8, 1:3] = 1  # a block of 4 touching no face
    entry = metrics.describe(volume, PhaseMap([0, 1]), 3, transport=True)
    rod = entry["phases"][1]
    assert rod["clusters"]["count"] == 3
    assert rod["largest_cluster_fraction"] == pytest.approx(36 / 41)
    assert rod["transport"]["y"]["isolated_fraction"] == pytest.approx(5 / 41)
    from mdiff.figures import FIGURES
    assert FIGURES["isolated_fraction"].value(rod) == pytest.approx(5 / 41)
    assert FIGURES["largest_cluster_fraction"].value(rod) == pytest.approx(36 / 41)


def test_percolation_fractions(rng):
    mask = rng.random((12, 13, 14)) < 0.4
    faces = _faces_reference(mask)
    labels, _ = ndimage.label(mask)
    for axis, k in zip("zyx", range(3)):
        first = set(np.unique(np.take(labels, 0, k))) - {0}
        last = set(np.unique(np.take(labels, -1, k))) - {0}
        through = np.isin(labels, list(first & last)).sum() / mask.sum()
        got_through, got_isolated = transport.fractions(faces, axis)
        assert metrics.percolation(mask, axis) == (got_through, got_isolated)
        assert got_through == pytest.approx(through, abs=1e-12)
        assert got_isolated == pytest.approx((faces == 64).sum() / mask.sum(), abs=1e-12)


def _reference_deff(active, periodic=False):
    """The same finite-volume problem assembled entry by entry and solved directly; with
    ``periodic``, axes 1 and 2 wrap (neighbours taken modulo the sides)."""
    length, height, width = active.shape
    index = -np.ones(active.shape, int)
    index[active] = np.arange(active.sum())
    rows, cols, vals = [], [], []
    b = np.zeros(active.sum())
    for (a, y, x), i in np.ndenumerate(index):
        if i < 0:
            continue
        diag = 0.0
        for da, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            na, ny, nx = a + da, y + dy, x + dx
            if periodic:
                ny, nx = ny % height, nx % width
            if 0 <= na < length and 0 <= ny < height and 0 <= nx < width and index[na, ny, nx] >= 0:
                rows.append(i), cols.append(index[na, ny, nx]), vals.append(-1.0)
                diag += 1
        if a == 0:
            diag += 2
            b[i] += 2.0
        if a == length - 1:
            diag += 2
        rows.append(i), cols.append(i), vals.append(diag)
    from scipy.sparse.linalg import spsolve

    c = spsolve(sparse.csr_matrix((vals, (rows, cols))), b)
    inflow = sum(2 * (1 - c[index[0, y, x]]) for y in range(height) for x in range(width)
                 if index[0, y, x] >= 0)
    return inflow * length / (height * width)


@pytest.mark.parametrize("seed,fraction", [(0, 0.45), (1, 0.6), (2, 0.75)])
def test_solver_matches_a_direct_sparse_solve(seed, fraction):
    rng = np.random.default_rng(seed)
    volume = (rng.random((9, 8, 10)) < fraction).astype(np.uint8)
    pm = PhaseMap([0, 1])
    faces = transport.cluster_faces(volume, pm, 1)
    for axis, k in zip("zyx", range(3)):
        lo, hi = transport.FACES[axis]
        active = np.moveaxis((faces & (lo | hi)) == (lo | hi), k, 0)
        want = _reference_deff(active) if active.any() else 0.0
        got = transport.transport(volume, pm, axes=axis, tol=1e-4)[1][axis]
        assert got["effective_diffusivity"] == pytest.approx(want, rel=2e-4, abs=1e-7)
        if want > 0:
            assert got["tortuosity_factor"] == pytest.approx(volume.mean() / want, rel=2e-4)
            assert got["converged"] and got["flux_spread"] <= 1e-4


def test_analytic_shapes():
    # straight channels along z: tau 1 along, no path across
    channels = np.zeros((10, 8, 9), np.uint8)
    channels[:, 2, 3] = 1
    channels[:, 5, 4:7] = 1
    assert transport.tortuosity(channels, "z") == pytest.approx((1.0, channels.mean()),
                                                                rel=1e-5)
    assert transport.tortuosity(channels, "y") == (math.inf, 0.0)
    # a full block: tau 1 along every axis
    for axis in "zyx":
        assert transport.tortuosity(np.ones((7, 5, 6), np.uint8), axis)[0] == pytest.approx(
            1.0, rel=1e-5)
    # two slabs in parallel with the flow: D_eff is their arithmetic mean (1 and 0 weighted by
    # area), tau 1; in series (a blocking slab across the flow) the harmonic mean, 0
    slabs = np.zeros((12, 10, 10), np.uint8)
    slabs[:, :3] = 1
    slabs[:, 6:8] = 1
    tau, d_eff = transport.tortuosity(slabs, "z")
    assert d_eff == pytest.approx(slabs.mean(), rel=1e-5) and tau == pytest.approx(1, rel=1e-5)
    assert transport.tortuosity(slabs, "y") == (math.inf, 0.0)
    # one isolated voxel neither percolates nor touches a face
    dot = np.zeros((5, 5, 5), np.uint8)
    dot[2, 2, 2] = 1
    got = transport.transport(dot)[1]
    for axis in "zyx":
        assert got[axis]["percolating_fraction"] == 0 and got[axis]["isolated_fraction"] == 1
        assert got[axis]["tortuosity_factor"] == math.inf and not got[axis]["percolates"]


def test_dead_ends_carry_no_flux_and_count_in_the_fraction_as_taufactor_does():
    # a straight channel along z with a dead-end branch off it (touching the inlet face only
    # through the channel) and a blind pore from the inlet that stops half-way
    channel = np.zeros((12, 7, 7), np.uint8)
    channel[:, 3, 3] = 1
    with_ends = channel.copy()
    with_ends[5, 3, 4:7] = 1  # a branch to the side wall: a dead end
    with_ends[:6, 1, 1] = 1  # a blind pore from the inlet
    d_channel = transport.tortuosity(channel, "z")[1]
    tau, d_eff = transport.tortuosity(with_ends, "z")
    assert d_eff == pytest.approx(d_channel, rel=1e-5)  # dead ends carry nothing
    # tau = phi / D_eff with phi the whole phase, dead ends included (TauFactor's Solver)
    assert tau == pytest.approx(with_ends.mean() / d_channel, rel=1e-5) and tau > 1
    got = transport.transport(with_ends)[1]["z"]
    assert got["percolating_fraction"] == pytest.approx(15 / 21)  # channel and its branch
    assert got["isolated_fraction"] == 0  # the blind pore touches the inlet face


def test_a_phase_touching_one_face_never_gets_a_finite_tortuosity():
    blind = np.zeros((10, 6, 6), np.uint8)
    blind[:9, 2:4, 2:4] = 1  # from the inlet to one voxel short of the outlet
    got = transport.transport(blind)[1]["z"]
    assert got["tortuosity_factor"] == math.inf and got["effective_diffusivity"] == 0
    assert got["percolating_fraction"] == 0 and not got["percolates"]
    assert transport.tortuosity(blind[::-1], "z") == (math.inf, 0.0)  # from the outlet side


@pytest.mark.parametrize("shape", [(64, 3, 5), (3, 40, 41), (2, 2, 90)])
def test_non_cubic_and_thin_slabs_converge_to_the_direct_solve(shape):
    rng = np.random.default_rng(sum(shape))
    volume = (rng.random(shape) < 0.7).astype(np.uint8)
    pm = PhaseMap([0, 1])
    faces = transport.cluster_faces(volume, pm, 1)
    for axis, k in zip("zyx", range(3)):
        lo, hi = transport.FACES[axis]
        active = np.moveaxis((faces & (lo | hi)) == (lo | hi), k, 0)
        got = transport.transport(volume, pm, axes=axis, tol=1e-4)[1][axis]
        assert got["converged"], (shape, axis, got)
        want = _reference_deff(active) if active.any() else 0.0
        assert got["effective_diffusivity"] == pytest.approx(want, rel=3e-4, abs=1e-7)


def test_the_iteration_cap_says_not_converged():
    volume = synth.generate((40, 40, 40), (0.5, 0.5), (0, 1), 2.0, 3)
    got = transport.transport(volume, axes="z", max_iter=3)[1]["z"]
    assert not got["converged"] and got["iterations"] == 3 and got["flux_spread"] > 1e-3
    full = transport.transport(volume, axes="z")[1]["z"]
    assert full["converged"] and full["flux_spread"] <= 1e-3


def test_absent_phase_and_thin_volume_give_notes_not_errors():
    volume = np.zeros((1, 6, 7), np.uint8)
    volume[:, :, 3:] = 255
    pm = PhaseMap([0, 127, 255])
    got = transport.transport(volume, pm)
    assert got[1]["z"]["note"] == "phase absent" and got[1]["z"]["percolating_fraction"] is None
    assert "1 voxel thick" in got[0]["z"]["note"]
    assert got[2]["x"]["tortuosity_factor"] == math.inf
    assert got[2]["y"]["tortuosity_factor"] == pytest.approx(1.0, rel=1e-5)


def test_taufactor_agrees_within_one_percent():
    tau_factor = pytest.importorskip("taufactor")
    for phases, (fractions, labels) in {2: ((0.45, 0.55), (0, 255)),
                                        3: ((0.4, 0.35, 0.25), (0, 127, 255))}.items():
        volume = synth.generate((40, 40, 40), fractions, labels, 2.0, seed=phases)
        ours = transport.transport(volume, tol=1e-3)
        for i, label in enumerate(labels):
            for k, axis in enumerate("zyx"):
                if not ours[i][axis]["percolates"]:
                    continue
                # TauFactor flows along its first axis
                img = np.moveaxis(volume == label, k, 0).astype(np.uint8)
                solver = tau_factor.Solver(img, device="cpu")
                solver.solve(verbose=False, conv_crit=1e-3)
                theirs = float(np.asarray(solver.tau).ravel()[0])
                assert ours[i][axis]["tortuosity_factor"] == pytest.approx(theirs, rel=0.01), \
                    (label, axis)


def test_taufactor_tpb_is_ours_over_interior_edges_per_voxel():
    """docs/coming-from.md's relation: TauFactor divides the same TPB edges by the interior
    edge count, mdiff by the voxel count."""
    tau_factor = pytest.importorskip("taufactor")
    from taufactor import metrics as their_metrics

    from mdiff import metrics
    from mdiff.phases import PhaseMap

    volume = synth.generate((40, 36, 30), (0.35, 0.4, 0.25), (0, 127, 255), 2.0, seed=5)
    ours = metrics.describe(volume, PhaseMap((0, 127, 255)), 4, "closed")["tpb_density"]
    theirs = float(their_metrics.triple_phase_boundary(np.searchsorted([0, 127, 255], volume)))
    z, y, x = volume.shape
    interior_edges = z * (x - 1) * (y - 1) + x * (y - 1) * (z - 1) + y * (x - 1) * (z - 1)
    assert tau_factor and ours == pytest.approx(theirs * interior_edges / volume.size, rel=1e-6)


def test_metrics_cli_transport(tmp_path, capsys):
    import json

    from mdiff import write_volume

    path = tmp_path / "v.tif"
    write_volume(path, synth.generate((16, 16, 16), (0.5, 0.3, 0.2), (0, 127, 255), 2.0, 3))
    assert metrics_main([str(path), str(path), "--transport", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    phase = out["volumes"][0]["phases"][0]
    assert set(phase["transport"]) == {"z", "y", "x"}
    assert {"percolating_fraction", "isolated_fraction", "effective_diffusivity",
            "tortuosity_factor"} <= set(phase["transport"]["z"])
    assert "transport" in out["comparison"][0]["phases"][0]
    assert metrics_main([str(path), "--transport"]) == 0
    text = capsys.readouterr().out
    assert "tortuosity" in text and "6-connected" in text and "flux spread of 0.001" in text


def test_set_comparison_carries_transport_figures():
    from mdiff import evaluate

    pm = PhaseMap([0, 255])
    cubes = [synth.generate((12, 12, 12), (0.5, 0.5), (0, 255), 2.0, seed=k) for k in range(4)]
    ref = evaluate.describe_set(cubes[:2], pm, 4, transport=True)
    other = evaluate.describe_set(cubes[2:], pm, 4, transport=True)
    row = evaluate.compare_sets(ref, other)["phases"][0]
    d_eff = [np.mean([transport.tortuosity(c == 0, a, tol=evaluate.TRANSPORT_TOL)[1]
                      for a in "zyx"]) for c in cubes[:2]]
    assert row["effective_diffusivity"]["reference_mean"] == pytest.approx(np.mean(d_eff),
                                                                           rel=1e-6)
    assert "percolating_fraction" in row
    real = [metrics.describe(c, pm, 4, transport=True) for c in cubes * 2]
    result = evaluate.judge(real, {"other": real[:3]}, permutations=20)
    judged = {v["figure"] for v in result["verdicts"]}
    assert {"percolating_fraction", "effective_diffusivity", "isolated_fraction",
            "largest_cluster_fraction"} <= judged
    table = evaluate.format_markdown(result)
    assert "D_eff/D" in table and "perc." in table


def test_too_large_a_problem_is_refused_with_one_line(tmp_path, capsys, monkeypatch):
    from mdiff import write_volume

    path = tmp_path / "v.tif"
    write_volume(path, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 2.0, 0))
    monkeypatch.setattr(transport, "BYTES_PER_VOXEL", 2**40)
    assert metrics_main([str(path), "--transport"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GiB are free on cpu; crop the volume" in err


def test_table_notes_absent_phases(tmp_path, capsys):
    from mdiff import write_volume

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_volume(a, synth.generate((8, 8, 8), (0.4, 0.3, 0.3), (0, 127, 255), 2.0, 0))
    write_volume(b, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 2.0, 1))
    assert metrics_main([str(a), str(b), "--transport"]) == 0
    assert "label 127: phase absent" in capsys.readouterr().out


def test_a_window_that_conducts_everywhere_has_tortuosity_exactly_one():
    # TauFactor's convention: a full block gives 1; the solver's answer would be 1 +- 5e-8
    for shape in ((6, 7, 9), (40, 3, 3), (1, 8, 8)):
        mask = np.ones(shape, bool)
        for axis in "zyx":
            assert metrics.tortuosity(mask, axis) == (1.0, 1.0)


def _wrapped_labels(mask, wrap):
    """scipy's 6-connected labels with the axes in ``wrap`` periodic: the labels on the two
    end planes of each wrapped axis merged by a union-find in Python (0 off the mask)."""
    labels, count = ndimage.label(mask)
    parent = list(range(count + 1))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for axis in wrap:
        k = "zyx".index(axis)
        if mask.shape[k] < 3:  # the end planes are neighbours already
            continue
        first, last = np.take(labels, 0, k), np.take(labels, -1, k)
        both = (first > 0) & (last > 0)
        for a, b in zip(first[both], last[both]):
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(count + 1)])[labels]


def _faces_reference_wrapped(mask, wrap):
    """``_faces_reference`` over the clusters of ``_wrapped_labels``."""
    merged = _wrapped_labels(mask, wrap)
    out = np.zeros(mask.shape, np.uint8)
    for k in np.unique(merged[merged > 0]):
        where = merged == k
        bits = 64
        for axis, (lo, hi) in enumerate(((1, 2), (4, 8), (16, 32))):
            if np.take(where, 0, axis).any():
                bits |= lo
            if np.take(where, -1, axis).any():
                bits |= hi
        out[where] = bits
    return out


@pytest.mark.parametrize("wrap", ["yx", "zx", "zy", "zyx"])
def test_wrapped_cluster_faces_and_sizes_match_merged_scipy_labels(rng, wrap):
    for shape, fraction in (((7, 9, 8), 0.35), ((10, 6, 11), 0.5), ((5, 3, 7), 0.6)):
        volume = np.where(rng.random(shape) < fraction, 9, 2).astype(np.uint8)
        pm = PhaseMap([2, 9])
        for phase, label in enumerate(pm.labels):
            mask = volume == label
            np.testing.assert_array_equal(transport.cluster_faces(volume, pm, phase, wrap),
                                          _faces_reference_wrapped(mask, wrap))
            merged = _wrapped_labels(mask, wrap)
            _, first = np.unique(merged.ravel(), return_index=True)
            order = merged.ravel()[np.sort(first)]  # clusters in raster order of first voxel
            want = [int(np.count_nonzero(merged == k)) for k in order if k > 0]
            assert transport.cluster_sizes(volume, pm, phase, wrap).tolist() == want
            got, count = transport.cluster_labels(volume, pm, phase, wrap)
            assert count == len(want)
            renumber = {k: i + 1 for i, k in enumerate(k for k in order if k > 0)}
            np.testing.assert_array_equal(got, np.vectorize(lambda k: renumber.get(k, 0))(merged))


@pytest.mark.parametrize("seed,fraction", [(3, 0.4), (4, 0.55)])
def test_periodic_solver_matches_a_direct_sparse_solve_with_wrapped_neighbours(seed, fraction):
    rng = np.random.default_rng(seed)
    volume = (rng.random((9, 7, 8)) < fraction).astype(np.uint8)
    pm = PhaseMap([0, 1])
    for axis, k in zip("zyx", range(3)):
        lateral = "zyx".replace(axis, "")
        faces = _faces_reference_wrapped(volume == 1, lateral)
        lo, hi = transport.FACES[axis]
        active = np.moveaxis((faces & (lo | hi)) == (lo | hi), k, 0)
        want = _reference_deff(active, periodic=True) if active.any() else 0.0
        got = transport.transport(volume, pm, axes=axis, tol=1e-4, periodic=True)[1][axis]
        assert got["effective_diffusivity"] == pytest.approx(want, rel=2e-4, abs=1e-7)
        assert got["percolating_fraction"] == pytest.approx(active.sum() / volume.sum())
        untouched = (faces > 0) & ((faces & (lo | hi)) == 0)  # no reservoir face
        assert got["isolated_fraction"] == pytest.approx(untouched.sum() / volume.sum())


def test_a_channel_that_joins_only_across_the_wrap_conducts_only_when_periodic():
    """A hand-built periodic channel along z: one voxel wide, at y = 0 in the lower half and
    at y = H - 1 in the upper, the two joined by one step across the y wrap. Closed, nothing
    percolates (τ = ∞); periodic, it is one channel of L + 1 voxels in series: D_eff/D =
    length / (H W) / (path resistance), the resistance of L - 1 inner links, one wrap link
    and two half-voxel ends of conductance 2."""
    L, H, W = 10, 6, 5
    volume = np.zeros((L, H, W), np.uint8)
    volume[:5, 0, 2] = 1
    volume[4:, H - 1, 2] = 1  # z = 4 holds both: the step across the wrap
    pm = PhaseMap([0, 1])
    closed = transport.transport(volume, pm, axes="z")[1]["z"]
    assert closed["percolating_fraction"] == 0 and closed["tortuosity_factor"] == math.inf
    periodic = transport.transport(volume, pm, axes="z", tol=1e-6, periodic=True)[1]["z"]
    resistance = (L - 1) + 1 + 2 * 0.5  # 9 links along z, the wrap link, two end halves
    assert periodic["percolating_fraction"] == 1.0 and periodic["isolated_fraction"] == 0.0
    assert periodic["effective_diffusivity"] == pytest.approx(L / (H * W) / resistance,
                                                              rel=1e-4)
    assert periodic["tortuosity_factor"] == pytest.approx(
        volume.mean() / periodic["effective_diffusivity"], rel=1e-9)
    # closed, the same channel with its step inside the volume: the start's plane fluxes
    # already agree there, and only the residual says the step's resistance is missing
    inside = np.zeros((L, H, W), np.uint8)
    inside[:5, 2, 2] = 1
    inside[4:, 3, 2] = 1
    got = transport.transport(inside, pm, axes="z", tol=1e-6)[1]["z"]
    assert got["effective_diffusivity"] == pytest.approx(L / (H * W) / resistance, rel=1e-4)
    # a straight channel is unchanged by the wrap: τ = 1 along it either way
    straight = np.zeros((L, H, W), np.uint8)
    straight[:, 2, :] = 1
    for flag in (False, True):
        got = transport.transport(straight, pm, axes="z", periodic=flag)[1]["z"]
        assert got["tortuosity_factor"] == pytest.approx(1.0, rel=1e-5)


def test_metrics_cli_periodic_transport(tmp_path, capsys):
    import json

    from mdiff import write_volume

    volume = np.zeros((10, 6, 5), np.uint8)
    volume[:5, 0, 2] = 255
    volume[4:, 5, 2] = 255
    write_volume(tmp_path / "v.tif", volume)
    assert metrics_main([str(tmp_path / "v.tif"), "--transport", "--json"]) == 0
    closed = json.loads(capsys.readouterr().out)
    assert closed["transport"]["lateral"] == "closed"
    assert closed["volumes"][0]["phases"][1]["transport"]["z"]["tortuosity_factor"] is None
    assert metrics_main([str(tmp_path / "v.tif"), "--transport", "--json",
                         "--boundary", "periodic"]) == 0
    periodic = json.loads(capsys.readouterr().out)
    assert periodic["transport"]["lateral"] == "periodic"
    assert periodic["volumes"][0]["phases"][1]["transport"]["z"]["tortuosity_factor"] > 1
    assert metrics_main([str(tmp_path / "v.tif"), "--transport", "--boundary", "periodic"]) == 0
    assert "periodic" in capsys.readouterr().out


def _opening_reference(mask, radius, periodic):
    """scipy's binary opening by the face-neighbour cross, ``radius`` times over: the outside
    counts as the phase for the erosions and as not the phase for the dilations (it neither
    erodes nor dilates); periodic volumes padded by wrapping, far enough for both."""
    cross = ndimage.generate_binary_structure(3, 1)
    pad = 2 * radius + 1
    m = np.pad(mask, pad, mode="wrap") if periodic else mask
    if radius:
        m = ndimage.binary_erosion(m, cross, iterations=radius, border_value=1)
        m = ndimage.binary_dilation(m, cross, iterations=radius, border_value=0)
    return m[(slice(pad, -pad),) * 3] if periodic else m


def _smooth_phase(shape, fraction, length, seed):
    return synth.generate(shape, (fraction, 1 - fraction), (3, 200), length, seed)


@pytest.mark.parametrize("shape,radius", [((17, 23, 29), 2), ((9, 1, 30), 2), ((12, 13, 14), 1),
                                          ((8, 9, 7), 0)])
@pytest.mark.parametrize("periodic", [False, True])
def test_open_cross_is_scipys_opening_and_the_training_one(shape, radius, periodic):
    import torch

    from mdiff.diffusion import opening

    volume = _smooth_phase(shape, 0.45, 2.5, sum(shape))
    mask = (volume == 3)[::-1, :, ::-1]  # a strided view
    got = transport.open_cross(mask, radius, periodic)
    np.testing.assert_array_equal(got, _opening_reference(mask, radius, periodic))
    assert 0 < got.sum() < mask.sum() or radius == 0 or shape[1] == 1
    if not periodic:  # the training weights' opening (torch, on soft masks) keeps the same
        soft = opening(torch.from_numpy(mask.copy())[None, None].float(), radius)[0, 0]
        np.testing.assert_array_equal(got, soft.numpy() > 0.5)


@pytest.mark.parametrize("periodic", [False, True])
def test_thick_percolating_fraction_against_scipy_labels(periodic):
    pm = PhaseMap([3, 200])
    for seed, (fraction, length) in enumerate([(0.3, 3.0), (0.45, 2.0), (0.2, 1.0)]):
        volume = _smooth_phase((21, 18, 24), fraction, length, seed)
        for phase, label in enumerate(pm.labels):
            opened = _opening_reference(volume == label, transport.THICK_RADIUS, periodic)
            through = []
            for k, axis in enumerate("zyx"):
                wrap = "zyx".replace(axis, "") if periodic else ""
                merged = _wrapped_labels(opened, wrap)
                ends = (set(np.unique(np.take(merged, 0, k))) &
                        set(np.unique(np.take(merged, -1, k)))) - {0}
                through.append(np.isin(merged, list(ends)).sum() / max(opened.sum(), 1))
            got = transport.thick_percolating_fraction(volume[:, ::-1], pm, phase, periodic)
            assert got == pytest.approx(float(np.mean(through)), abs=1e-12)
            if not periodic:  # radius 0: the phase's own percolating fraction
                faces = transport.cluster_faces(volume, pm, phase)
                own = np.mean([transport.fractions(faces, axis)[0] for axis in "zyx"])
                assert transport.thick_percolating_fraction(
                    volume, pm, phase, radius=0) == pytest.approx(own, abs=1e-12)
    # a phase with no part five voxels across has no thick channel
    thin = np.full((20, 20, 20), 200, np.uint8)
    thin[:, 10, 10] = 3  # a rod one voxel across
    assert transport.thick_percolating_fraction(thin, pm, 0) == 0.0
    assert transport.thick_percolating_fraction(thin, pm, 1) == 1.0


def test_thick_radius_is_the_training_weights_thin_radius():
    from mdiff.diffusion import THIN_RADIUS

    assert transport.THICK_RADIUS == THIN_RADIUS

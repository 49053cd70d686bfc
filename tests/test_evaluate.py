"""Set comparison, the fitted baseline, the memorisation check and the one-command demo."""
import numpy as np
import pytest

from mdiff import evaluate, metrics, synth
from mdiff.cli import demo_main
from mdiff.data import apply_symmetry
from mdiff.phases import PhaseMap


@pytest.fixture(scope="module")
def structure():
    return synth.generate((48, 48, 48), (0.5, 0.3, 0.2), (0, 127, 255), length=2.0, seed=3)


def test_grid_cubes_are_views_in_the_z_range(structure):
    cubes = evaluate.grid_cubes(structure, 16, (16, 48))
    assert len(cubes) == 2 * 3 * 3
    assert all(np.shares_memory(c, structure) for c in cubes)
    assert np.array_equal(cubes[0], structure[16:32, :16, :16])


def test_compare_sets_matches_hand_computed_figures(structure):
    pm = PhaseMap((0, 127, 255))
    cubes = evaluate.grid_cubes(structure, 16)
    ref, other = cubes[:14], cubes[14:]
    a, b = evaluate.describe_set(ref, pm, 8), evaluate.describe_set(other, pm, 8)
    got = evaluate.compare_sets(a, b)
    for i, label in enumerate(pm.labels):
        phi_a = np.array([metrics.describe(c, pm, 8)["phases"][i]["volume_fraction"]
                          for c in ref])
        phi_b = np.array([(c == label).mean() for c in other])
        row = got["phases"][i]["volume_fraction"]
        assert row["reference_mean"] == pytest.approx(phi_a.mean())
        assert row["mean"] == pytest.approx(phi_b.mean())
        assert row["relative_error"] == pytest.approx(abs(phi_b.mean() - phi_a.mean())
                                                      / phi_a.mean())
        assert row["effect_size"] == pytest.approx(abs(phi_b.mean() - phi_a.mean())
                                                   / phi_a.std(ddof=1))
    same = evaluate.compare_sets(a, a)
    assert all(p["s2_mean_abs_difference"] == 0 for p in same["phases"])
    assert same["tpb_density"]["effect_size"] == 0


def test_fit_baseline_recovers_fractions_and_a_length(structure):
    pm = PhaseMap((0, 127, 255))
    fit = evaluate.fit_baseline(evaluate.grid_cubes(structure, 16), pm, 8,
                                lengths=(1.0, 2.0, 6.0))
    assert fit["fractions"] == pytest.approx([0.5, 0.3, 0.2], abs=1e-4)  # exact counts, rounded
    assert fit["length"] == 2.0  # the length the structure was made with


def test_memorisation_finds_rotated_training_cubes(structure):
    pm = PhaseMap((0, 127, 255))
    copy = apply_symmetry(structure[8:24, 16:32, 0:16], 29)      # a training cube, rotated
    fresh = synth.generate((16, 16, 16), (0.5, 0.3, 0.2), (0, 127, 255), 2.0, seed=99)
    best = evaluate.nearest_training_agreement([copy, fresh], structure, pm, 16, 8, (0, 48))
    assert best[0] == 1.0
    assert 0.3 < best[1] < 0.95
    # outside the searched z range the copy is no longer found
    assert evaluate.nearest_training_agreement([copy], structure, pm, 16, 8, (24, 48))[0] < 1


def test_plot_sets_writes_a_png(structure, tmp_path):
    pytest.importorskip("matplotlib")
    pm = PhaseMap((0, 127, 255))
    cubes = evaluate.grid_cubes(structure, 16)
    ref = evaluate.describe_set(cubes[:9], pm, 8)
    assert evaluate.plot_sets(tmp_path / "c.png", ref,
                              {"other": evaluate.describe_set(cubes[9:], pm, 8)}, pm.labels)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--preset", "tiny", "--steps", "3",
                      "--samples", "2"]) == 0
    printed = capsys.readouterr()
    assert "| 127 | S_V |" in printed.out and "TPB density" in printed.out
    assert sorted(p.name for p in (out / "samples").glob("*.tif")) == ["sample_000.tif",
                                                                      "sample_001.tif"]
    assert (out / "comparison.md").read_text().count("| phi |") == 3
    assert "mdiff-train --resume" in printed.err


def test_demo_bad_steps_is_one_line(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path / "d"), "--preset", "tiny", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mdiff-demo: error: --steps must be at least 1, got 0"
    assert not (tmp_path / "d").exists()  # checked before anything is written

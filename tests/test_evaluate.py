"""Set comparison, the calibrated verdicts, mdiff-evaluate, the fitted baseline, the
memorisation check and the one-command demo."""
import hashlib
import json

import numpy as np
import pytest
import tifffile

from mdiff import evaluate, metrics, read_volume, synth, write_volume
from mdiff.cli import demo_main, evaluate_main
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


def test_cube_records_give_back_the_judged_entries(structure):
    """describe_cubes keeps each cube as a few arrays; reading one gives the same figures,
    S2 curves and per-axis transport figures (None included) as the full describe() entry."""
    pm = PhaseMap((0, 127, 255))
    cube = structure[:16, :16, :16].copy()
    cube[cube == 255] = 0  # a phase that is absent: its transport figures are None / 0
    entry = metrics.describe(cube, pm, 8, "closed", threads=1, transport=True, sizes=True,
                             transport_tol=evaluate.TRANSPORT_TOL)
    record = evaluate.describe_cubes([cube], pm, 8, transport=True)[0]
    assert isinstance(record, evaluate.CubeRecord)
    assert record["tpb_density"] == entry["tpb_density"]
    for got, full in zip(record["phases"], entry["phases"]):
        assert got["label"] == full["label"]
        for key in ("volume_fraction", "specific_surface_area", "euler_density",
                    "local_thickness", "mean_chord_length"):
            assert got[key] == full[key]
        for axis in "zyx":
            np.testing.assert_array_equal(got["s2"][axis], full["s2"][axis])
            for key, value in got["transport"][axis].items():
                assert value == full["transport"][axis][key]
    assert any(v is None for p in record["phases"] for t in p["transport"].values()
               for v in t.values())
    unpacked = [{"path": r["path"], "shape": r["shape"], "tpb_density": r["tpb_density"],
                 "phases": r["phases"]} for r in evaluate.describe_cubes(
                     evaluate.grid_cubes(structure, 16), pm, 8)]
    packed = evaluate.describe_cubes(evaluate.grid_cubes(structure, 16), pm, 8)
    assert (evaluate.judge(packed[:14], {"g": packed[14:]}, 40)["verdicts"]
            == evaluate.judge(unpacked[:14], {"g": unpacked[14:]}, 40)["verdicts"])


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
        assert row["spread_ratio"] == pytest.approx(phi_b.std(ddof=1) / phi_a.std(ddof=1))
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


def test_plot_result_writes_a_png(structure, tmp_path):
    pytest.importorskip("matplotlib")
    pm = PhaseMap((0, 127, 255))
    cubes = evaluate.describe_cubes(evaluate.grid_cubes(structure, 16), pm, 8)
    result = evaluate.judge(cubes[:18], {"other": cubes[18:]}, permutations=20)
    assert evaluate.plot_result(tmp_path / "c.png", result)
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
    # it opens with a shipped model's volume, before any training
    assert printed.err.index("[0/3] the shipped model nmc-cathode") < printed.err.index("[1/3]")
    assert read_volume(out / "nmc-cathode.tif").shape == (32, 32, 32)


def test_demo_bad_steps_is_one_line(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path / "d"), "--preset", "tiny", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mdiff-demo: error: --steps must be at least 1, got 0"
    assert not (tmp_path / "d").exists()  # checked before anything is written


# ---------------------------------------------------------------------------------------------
# Verdicts on per-cube values chosen by hand


def _entries(phi, rng):
    """describe()-like entries of 2-phase cubes whose figures are given per cube: phase 0 has
    the φ values ``phi``, S_V and χ_V noise of fixed spread, S2 a curve from φ."""
    out = []
    for f in phi:
        curve = [f] + [f * f + (f - f * f) * np.exp(-r / 3) for r in range(1, 9)]
        phases = []
        for label, frac in ((0, f), (1, 1 - f)):
            phases.append({"label": label, "volume_fraction": frac,
                           "specific_surface_area": 0.2 + 0.01 * rng.normal(),
                           "specific_surface_area_faces": 0.3,
                           "euler_density": 1e-3 * rng.normal(),
                           "s2": {a: curve if label == 0 else
                                  [1 - 2 * f + c for c in curve] for a in "zyx"}})
        out.append({"phases": phases, "tpb_density": None})
    return out


def _verdict(result, figure, phase=0, name="gen"):
    return next(v for v in result["verdicts"] if v["set"] == name and v["figure"] == figure
                and v["phase"] == phase)


def test_identical_sets_are_as_real():
    rng = np.random.default_rng(0)
    real = _entries(rng.normal(0.4, 0.05, 60), rng)
    result = evaluate.judge(real, {"gen": real}, permutations=50)
    assert result["as_real"] == result["figures"] == 4 * 2  # phi, S_V, chi_V, S2 per phase
    assert all(v["verdict"] == "as real" for v in result["verdicts"])
    assert _verdict(result, "s2")["nrmse"] == 0


def test_a_shifted_mean_differs_and_says_so():
    rng = np.random.default_rng(1)
    real = _entries(rng.normal(0.4, 0.05, 60), rng)
    gen = _entries(rng.normal(0.5, 0.05, 30), rng)
    result = evaluate.judge(real, {"gen": gen}, permutations=100)
    v = _verdict(result, "volume_fraction")
    assert v["verdict"] == "differs" and v["d"] > 1.5
    assert v["why"].startswith("mean +2") and v["ks_p"] < 1e-4
    assert _verdict(result, "s2")["verdict"] == "differs"
    # the unchanged figures stay as real
    assert _verdict(result, "specific_surface_area")["verdict"] == "as real"


def test_a_halved_spread_differs_although_the_mean_is_right():
    rng = np.random.default_rng(2)
    real = _entries(rng.normal(0.4, 0.06, 120), rng)
    gen = _entries(rng.normal(0.4, 0.03, 120), rng)
    result = evaluate.judge(real, {"gen": gen}, permutations=200)
    v = _verdict(result, "volume_fraction")
    assert v["d"] < 0.3 and v["spread_ratio"] == pytest.approx(0.5, abs=0.1)
    assert v["verdict"] == "differs" and "spread 0.5" in v["why"]


@pytest.mark.parametrize("m,n", [(3, 24), (16, 48)])
def test_real_against_real_differs_at_most_at_the_level(m, n):
    # both sets drawn from one distribution: the permutation test calls at most 5 % of
    # figures "differs" at any set size; 60 judgements of 8 partly correlated figures, so the
    # bound leaves 3 standard errors (measured over judgements of this kind: 1.5 %)
    rng = np.random.default_rng(3 + m)
    rates, expected = [], []
    for _ in range(60):
        real = _entries(rng.normal(0.4, 0.05, n), rng)
        gen = _entries(rng.normal(0.4, 0.05, m), rng)
        result = evaluate.judge(real, {"gen": gen}, permutations=100,
                                seed=int(rng.integers(1000)))
        rates.append(np.mean([v["verdict"] == "differs" for v in result["verdicts"]]))
        expected.append(result["sets"][0]["expected_as_real"]["mean"])
    assert np.mean(rates) < 0.05 + 0.045
    # what the headline stands beside: about 95 % of the 8 figures, never more than all
    assert 7.2 < np.mean(expected) <= 8


def test_each_verdict_carries_its_p_value_and_the_set_its_expectation():
    rng = np.random.default_rng(6)
    real = _entries(rng.normal(0.4, 0.05, 40), rng)
    gen = _entries(rng.normal(0.55, 0.05, 12), rng)
    result = evaluate.judge(real, {"gen": gen, "same": real[:12]}, permutations=60)
    assert result["test"] == "permutation"
    phi = _verdict(result, "volume_fraction")
    assert phi["verdict"] == "differs" and phi["p"] == pytest.approx(1 / 61)
    assert _verdict(result, "s2")["p"] == pytest.approx(1 / 61)
    assert all(0 < v["p"] <= 1 for v in result["verdicts"])
    assert all("null_key" not in v and "constant_real" not in v for v in result["verdicts"])
    same = next(s for s in result["sets"] if s["name"] == "same")
    e = same["expected_as_real"]
    assert 0 < e["sd"] and 6 < e["mean"] <= same["figures"] == 8
    line = evaluate.verdict_line(result)
    assert f"gen {result['sets'][0]['as_real']} of 8 (real cubes: " in line and "permutation test at the 5 % level" in line
    # a set's verdicts do not depend on the other sets judged with it
    alone = evaluate.judge(real, {"gen": gen}, permutations=60)
    assert [v["p"] for v in alone["verdicts"]] == [v["p"] for v in result["verdicts"]
                                                   if v["set"] == "gen"]


def test_judge_needs_enough_real_cubes():
    rng = np.random.default_rng(4)
    with pytest.raises(evaluate.MdiffError, match="at least 8"):
        evaluate.judge(_entries([0.4] * 5, rng), {"gen": _entries([0.4] * 5, rng)})


# ---------------------------------------------------------------------------------------------
# mdiff-evaluate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_volume(root / "real.tif", synth.generate((48, 32, 32), (0.5, 0.3, 0.2),
                                                   (0, 127, 255), 2.0, seed=1))
    gen = root / "gen"
    gen.mkdir()
    for k in range(6):
        write_volume(gen / f"sample_{k:03d}.tif",
                     synth.generate((16, 16, 16), (0.5, 0.3, 0.2), (0, 127, 255), 2.0, seed=10 + k))
    (gen / "samples.json").write_text("{}")  # what mdiff-sample writes beside: not a volume
    return root


def test_evaluate_json_contract(files, capsys):
    assert evaluate_main([str(files / "real.tif"), str(files / "gen"), "--json",
                          "--permutations", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cube"] == 16 and out["real"]["count"] == 3 * 2 * 2
    # per phase: phi, S_V, chi_V, local thickness, chord length, S2; then TPB
    assert out["figures"] == len(out["verdicts"]) == 3 * 6 + 1
    assert out["as_real"] == sum(v["verdict"] == "as real" for v in out["verdicts"])
    assert out["test"] == "permutation"
    assert {"mean", "sd"} <= set(out["sets"][0]["expected_as_real"])
    for v in out["verdicts"]:
        assert {"set", "phase", "figure", "d", "spread_ratio", "w1_over_sd", "ks_p",
                "floor_w1_95", "p", "verdict"} <= set(v)
        assert v["verdict"] in ("as real", "differs")
    assert [i["cubes"] for i in out["inputs"]] == [1] * 6


def test_evaluate_prints_the_verdict_line_first_and_writes_reports(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    assert evaluate_main([str(files / "real.tif"), str(files / "gen"), "--out", str(out),
                          "--permutations", "30"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("**as real: ")
    assert "| 127 | S_V |" in text
    report = json.loads((out / "report.json").read_text())
    assert report["permutations"] == 30
    assert set(report["files"]) == {"report.md", "report.png", "slices.png"}
    for name, digest in report["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert (out / "report.md").read_text().startswith("`mdiff-evaluate ")
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_maps_another_tools_labels(files, tmp_path, capsys):
    real = tifffile.imread(files / "real.tif")
    other = np.searchsorted([0, 127, 255], real[:32]).astype(np.uint8)  # labels 0/1/2
    tifffile.imwrite(tmp_path / "other.tif", other)  # one 3D page, 32 x 32 x 32
    args = [str(files / "real.tif"), str(tmp_path / "other.tif"), "--size", "16", "--json",
            "--permutations", "30"]
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--map 0:0,1:127,2:255" in err
    assert evaluate_main(args + ["--map", "0:0,1:127,2:255"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the mapped copy of real cubes: its figures equal the first 8 real cubes' own
    phi = _verdict(out, "volume_fraction", 0, str(tmp_path / "other.tif"))
    want = [(c == 0).mean() for c in evaluate.grid_cubes(real[:32], 16)]
    assert phi["mean"] == pytest.approx(np.mean(want))


def test_evaluate_judges_in_the_unit_the_real_volume_records(files, tmp_path, capsys):
    """The voxel size scales the figures, not the verdicts (they are ratios); a generated file
    that records another spacing than the real volume is one line; non-cubic voxels judge."""
    real = tifffile.imread(files / "real.tif")
    write_volume(tmp_path / "real_um.tif", real, voxel_size=0.5, unit="um")
    args = [str(files / "gen"), "--json", "--permutations", "30"]
    assert evaluate_main([str(files / "real.tif")] + args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert evaluate_main([str(tmp_path / "real_um.tif")] + args) == 0
    scaled = json.loads(capsys.readouterr().out)
    assert "voxel_size" not in plain and (scaled["voxel_size"], scaled["unit"]) == (0.5, "um")
    assert [v["verdict"] for v in scaled["verdicts"]] == [v["verdict"] for v in plain["verdicts"]]
    sv = [_verdict(r, "specific_surface_area", 0, str(files / "gen")) for r in (plain, scaled)]
    assert sv[1]["mean"] == pytest.approx(sv[0]["mean"] / 0.5)
    assert sv[1]["d"] == pytest.approx(sv[0]["d"])
    assert evaluate_main([str(tmp_path / "real_um.tif")] + args[:1] + ["--permutations", "30"]
                         ) == 0
    assert "Lengths in um (voxel size 0.5 um)" in capsys.readouterr().out
    write_volume(tmp_path / "other.tif", real[:16, :16, :16], voxel_size=0.25, unit="um")
    assert evaluate_main([str(tmp_path / "real_um.tif"), str(tmp_path / "other.tif"),
                          "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records a voxel size of 0.25" in err
    assert evaluate_main([str(tmp_path / "real_um.tif"), str(tmp_path / "other.tif"),
                          "--size", "16", "--voxel-size", "0.03,0.01,0.01", "--json",
                          "--permutations", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["voxel_size"] == [0.03, 0.01, 0.01]


@pytest.mark.parametrize("case", ["phases", "empty", "size", "corrupt", "region", "map"])
def test_evaluate_bad_input_is_one_line(files, tmp_path, capsys, case):
    real, gen = str(files / "real.tif"), str(files / "gen")
    extra = []
    if case == "phases":  # one label: nothing to judge (two of three would be a lost phase)
        write_volume(tmp_path / "one.tif", np.zeros((16, 16, 16), np.uint8))
        gen = str(tmp_path / "one.tif")
    elif case == "empty":
        (tmp_path / "none").mkdir()
        gen = str(tmp_path / "none")
    elif case == "size":
        extra = ["--size", "24"]
    elif case == "corrupt":
        (tmp_path / "bad.tif").write_bytes(b"II*\x00not a tiff at all")
        gen = str(tmp_path / "bad.tif")
    elif case == "region":
        extra = ["--real-region", "40:20"]
    else:
        extra = ["--map", "0-0"]
    assert evaluate_main([real, gen, "--permutations", "20"] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdiff-evaluate: error: ") and err.count("\n") == 1, err


def test_a_phase_the_generator_lost_is_judged_not_refused(files, tmp_path, capsys):
    lost = synth.generate((16, 16, 16), (0.5, 0.5), (0, 255), 2.0, seed=0)
    write_volume(tmp_path / "two.tif", lost)
    assert evaluate_main([str(files / "real.tif"), str(tmp_path / "two.tif"),
                          "--permutations", "20", "--json"]) == 0
    captured = capsys.readouterr()
    assert "no voxel of label(s) [127]" in captured.err
    report = json.loads(captured.out)
    phi = [v for v in report["verdicts"] if v["phase"] == 127
           and v["figure"] == "volume_fraction"]
    assert len(phi) == 1 and phi[0]["mean"] == 0 and phi[0]["verdict"] == "differs"


def test_evaluate_plot_target_is_checked_before_the_work(files, capsys):
    assert evaluate_main([str(files / "real.tif"), str(files / "gen"),
                          "--plot", "/nonexistent/dir/x.png"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "/nonexistent/dir does not exist" in captured.err


def test_evaluate_memorisation_finds_copies(files, tmp_path, capsys):
    real = tifffile.imread(files / "real.tif")
    copies = tmp_path / "copies"
    copies.mkdir()
    for k, cube in enumerate(evaluate.grid_cubes(real[:16], 16)[:3]):
        write_volume(copies / f"c{k}.tif", np.rot90(cube, axes=(1, 2)))
    write_volume(tmp_path / "train.tif", real[:16])  # the real region 16:48 is unseen
    assert evaluate_main([str(files / "real.tif"), str(copies), "--real-region", "16:48",
                          "--training", str(tmp_path / "train.tif"), "--json",
                          "--permutations", "20", "--memorisation-cubes", "2"]) == 0
    memo = json.loads(capsys.readouterr().out)["memorisation"]["sets"]
    assert memo[str(copies)]["values"] == [1.0, 1.0]
    assert memo["real"]["cubes"] == 2 and memo["real"]["max"] < 1.0


def test_evaluate_near_a_target_keeps_the_real_cubes_of_that_composition(files, capsys):
    real = tifffile.imread(files / "real.tif")
    phi = np.array([[(c == v).mean() for v in (0, 127, 255)]
                    for c in evaluate.grid_cubes(real, 16)])
    target = phi.mean(axis=0)
    want = int(np.sum(np.abs(phi - target).max(axis=1) <= 0.2))
    args = [str(files / "real.tif"), str(files / "gen"), "--json", "--permutations", "20",
            "--near", ",".join(map(str, target))]
    if want >= evaluate.MIN_REAL_CUBES:
        assert evaluate_main(args + ["--near-tol", "0.2"]) == 0
        assert json.loads(capsys.readouterr().out)["real"]["count"] == want
    assert evaluate_main(args + ["--near-tol", "0.0001"]) == 2
    assert "--near: only" in capsys.readouterr().err


def test_a_report_folder_is_replaced_as_one_set(tmp_path, monkeypatch):
    import os

    from mdiff import evaluate_report

    out = tmp_path / "report"

    def plot(path, result):
        path.write_bytes(b"png of " + result["command"].encode())
        return True

    def report(command):
        return {"command": command, "as_real": 1}

    def check(command):
        named = json.loads((out / "report.json").read_text())
        assert named["command"] == command
        for name, digest in named["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert sorted(named["files"]) == sorted(p.name for p in out.iterdir()
                                                if p.name != "report.json")

    evaluate_report.report_staging(out)
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "slices.png").write_bytes(b"slices a")
    assert evaluate_report.write_report(out, report("a"), "text a", plot) == [
        "report.md", "report.png", "slices.png", "report.json"]
    check("a")
    # a run that fails while it draws leaves the old report whole
    def broken(path, result):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        evaluate_report.write_report(out, report("b"), "text b", broken)
    check("a")
    # one cut short while it replaces the files leaves no report.json (so no mix is named)...
    replace, calls = os.replace, []
    def cut(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        replace(src, dst)
    monkeypatch.setattr(evaluate_report.os, "replace", cut)
    with pytest.raises(OSError):
        evaluate_report.write_report(out, report("c"), "text c", plot)
    monkeypatch.setattr(evaluate_report.os, "replace", replace)
    assert not (out / "report.json").exists()
    # ... and the next run, here without a picture, leaves a complete one without old files
    evaluate_report.report_staging(out)
    assert evaluate_report.write_report(out, report("d"), "text d") == ["report.md",
                                                                         "report.json"]
    check("d")
    assert not (out / ".partial").exists()


def test_advice_names_the_throat_weight_where_the_thick_channels_do_not_join():
    """The real phase 0 connects through thick channels (length 3); a set of the same
    fraction cut finer (length 1) has hardly any, and gets the advice for phase 0 alone; a set
    of the real kind gets none; the rule needs the real thick channels to percolate."""
    pm = PhaseMap((0, 255))

    def cubes(length, seed, count):
        volume = synth.generate((count * 16, 16, 16), (0.4, 0.6), (0, 255), length, seed)
        return evaluate.grid_cubes(volume, 16)

    real = evaluate.describe_cubes(cubes(3.0, 1, 16), pm, 8)
    like = evaluate.describe_cubes(cubes(3.0, 2, 12), pm, 8)
    fine = evaluate.describe_cubes(cubes(1.0, 3, 12), pm, 8)
    result = evaluate.judge(real, {"like": like, "fine": fine}, permutations=20)
    by_name = {s["name"]: s for s in result["sets"]}
    thick = [p["thick_percolating_fraction"]["mean"] for p in result["real"]["summary"]["phases"]]
    assert thick[0] >= evaluate.THICK_REAL
    assert by_name["like"]["advice"] == []
    (advice,) = by_name["fine"]["advice"]
    assert advice["phase"] == 0 and advice["flag"] == "--throat-weight 10"
    assert advice["real"] == pytest.approx(thick[0])
    assert advice["generated"] < evaluate.THICK_SHORT * advice["real"]
    text = evaluate.format_markdown(result)
    assert text.count("Advice: label 0:") == 1 and "`--throat-weight 10`" in text
    # real cubes whose phase has no thick channel: no advice, however thin the set
    thin = evaluate.describe_cubes(cubes(1.0, 4, 16), pm, 8)
    assert evaluate.judge(thin, {"fine": fine}, permutations=20)["sets"][0]["advice"] == []


def test_advice_to_train_longer_where_the_phase_lies_in_isolated_bits():
    def summary(isolated):
        return {"phases": [{"label": 0, "isolated_fraction": {"mean": isolated}},
                           {"label": 255, "isolated_fraction": {"mean": 0.0}}]}

    real = summary(0.002)
    (advice,) = evaluate.advice(real, summary(0.02))
    assert advice["phase"] == 0 and advice["figure"] == "isolated_fraction"
    assert advice["flag"] == "--resume --steps" and "2.0 % of it" in advice["text"]
    assert evaluate.advice(real, summary(0.0059)) == []  # under three times the real share
    # three times a tiny share is no excess worth a run
    assert evaluate.advice(summary(0.0001), summary(0.004)) == []
    assert evaluate.advice({"phases": [{"label": 0}]}, {"phases": [{"label": 0}]}) == []

"""Transport targets (``--targets deff:LABEL=V``, ``tau:...``): candidates generated, measured
and kept where they meet the target (``mdiff.selection``)."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mdiff
from mdiff import selection, synth, transport, write_volume
from mdiff.cli import sample_main
from mdiff.phases import PhaseMap
from mdiff.selection import TransportTarget

QUIET = {"log": None}
FAST = {"sampler": "ddim", "steps": 5}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny fractions-conditioned model of a two-phase structure."""
    folder = tmp_path_factory.mktemp("sel")
    write_volume(folder / "v.tif", synth.generate((32, 32, 32), (0.5, 0.5), (0, 255), 2.0,
                                                  seed=4))
    return mdiff.train([folder / "v.tif"], preset="tiny", out=folder / "run",
                       train={"steps": 12}, **QUIET)


def _deff(volume, label, axes="zyx"):
    pm = PhaseMap([0, 255])
    figures = transport.transport(volume, pm, axes=axes)[[0, 255].index(label)]
    return float(np.mean([figures[a]["effective_diffusivity"] or 0.0 for a in axes]))


def test_targets_split_into_descriptor_and_transport_parts():
    rest, found = selection.split_targets("phi:0=0.2,deff:0=0.05,tau:z:255=3", [0, 255])
    assert rest == "phi:0=0.2"
    assert found == (TransportTarget("deff", 0, 0.05), TransportTarget("tau", 255, 3.0, "z"))
    assert str(found[1]) == "tau:z:255=3"
    assert selection.split_targets("deff:x:0=1", [0, 255])[0] is None
    assert selection.split_targets(None) == (None, ())


@pytest.mark.parametrize("text, says", [
    ("deff:0=0", "0 < value <= 1"), ("deff:0=1.5", "0 < value <= 1"),
    ("tau:0=0.5", "value >= 1"), ("tau:0=inf", "value >= 1"), ("deff:w:0=0.1", "AXIS z"),
    ("deff:0", "expected deff:LABEL=VALUE"), ("deff:7=0.1", "label 7 is not a phase"),
    ("deff:z:y:0=0.1", "expected"),
])
def test_a_malformed_transport_target_says_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        selection.split_targets(text, [0, 255])


def test_a_target_measures_deff_and_tau_as_transport_does(rng):
    volume = np.where(rng.random((9, 10, 11)) < 0.7, 0, 255).astype(np.uint8)
    pm = PhaseMap([0, 255])
    figures = transport.phase_transport(volume, pm, 0)
    phi = float(np.mean(volume == 0))
    mean = np.mean([figures[a]["effective_diffusivity"] for a in "zyx"])
    assert TransportTarget("deff", 0, 0.1).measure(figures, phi) == pytest.approx(mean)
    assert TransportTarget("deff", 0, 0.1, "y").measure(figures, phi) == \
        pytest.approx(figures["y"]["effective_diffusivity"])
    assert TransportTarget("tau", 0, 2.0, "x").measure(figures, phi) == \
        pytest.approx(figures["x"]["tortuosity_factor"])
    assert TransportTarget("tau", 0, 2.0).measure(figures, phi) == pytest.approx(phi / mean)
    closed = np.zeros((6, 6, 6), np.uint8)
    closed[:, :, 3] = 255  # a wall across x: nothing of phase 0 crosses it
    assert TransportTarget("tau", 0, 2.0, "x").measure(
        transport.phase_transport(closed, pm, 0, "x"), 5 / 6) == math.inf


def test_kept_volumes_meet_their_target_as_an_independent_solve_measures_them(model):
    gen = mdiff.load(model, device="cpu")
    plain = gen.generate(mdiff.SampleRequest(count=8, seed=3, **FAST)).volumes
    target = float(np.median([_deff(v, 0) for v in plain]))
    out = gen.generate(mdiff.SampleRequest(count=3, seed=3, targets=f"deff:0={target:.4f}",
                                           target_tolerance=0.3, **FAST))
    sel = out.selection
    assert len(out.volumes) == sel["kept"] == 3
    assert sel["steered"] and sel["candidates"] <= sel["max_candidates"] == 30
    for volume, j in zip(out.volumes, sel["kept_candidates"]):
        d = _deff(volume, 0)
        assert abs(d - target) <= 0.3 * target + 1e-9
        assert sel["made"][j]["values"][f"deff:0={target:.4g}"] == pytest.approx(d)
    # each kept volume's condition is recorded, and it is a composition that sums to 1
    assert len(out.conditions) == 3 and all(sum(c[:2]) == pytest.approx(1) for c in
                                            out.conditions)
    again = gen.generate(mdiff.SampleRequest(count=3, seed=3, targets=f"deff:0={target:.4f}",
                                             target_tolerance=0.3, **FAST))
    assert np.array_equal(again.volumes, out.volumes)  # a function of the seed


def test_candidates_are_the_volumes_of_an_ordinary_run_where_nothing_is_steered(model):
    """At a fraction target the condition is fixed, so candidate j is volume j of the run
    without the transport target and the kept volumes are those of its volumes that meet it."""
    gen = mdiff.load(model, device="cpu")
    plain = gen.generate(mdiff.SampleRequest(count=6, seed=5, fractions=(0.5, 0.5),
                                             batch=3, **FAST)).volumes
    values = [_deff(v, 255, "z") for v in plain]
    target = float(np.median(values))
    out = gen.generate(mdiff.SampleRequest(count=2, seed=5, fractions=(0.5, 0.5), batch=3,
                                           targets=f"deff:z:255={target:.5f}",
                                           target_tolerance=0.25, max_candidates=6, **FAST))
    assert not out.selection["steered"]
    meets = [j for j, d in enumerate(values) if abs(d - float(f"{target:.5f}"))
             <= 0.25 * float(f"{target:.5f}")][:2]
    assert out.selection["kept_candidates"] == meets
    for volume, j in zip(out.volumes, meets):
        assert np.array_equal(volume, plain[j])


@pytest.mark.parametrize("fields", [
    {"size": 32, "tiling": "windows"}, {"periodic": True}, {"size": 24, "tiling": "whole"},
    {"size": (32, 16, 16), "fractions_along": ("z", [(0.0, (0.4, 0.6)), (1.0, (0.6, 0.4))])},
    {"fractions": (0.3, 0.7)}])
def test_transport_targets_work_with_every_tiling(model, fields):
    gen = mdiff.load(model, device="cpu")
    out = gen.generate(mdiff.SampleRequest(count=1, seed=2, targets="tau:0=1.5",
                                           target_tolerance=0.9, max_candidates=4,
                                           **FAST, **fields))
    sel = out.selection
    assert sel["candidates"] >= 1 and len(out.volumes) == sel["kept"]
    for j in sel["kept_candidates"]:
        assert abs(sel["made"][j]["values"]["tau:0=1.5"] - 1.5) <= 0.9 * 1.5
    if fields.get("periodic"):  # measured as the periodic cell it is
        volume = out.volumes[0] if len(out.volumes) else None
        if volume is not None:
            figures = transport.phase_transport(volume, PhaseMap([0, 255]), 0, periodic=True)
            phi = float(np.mean(volume == 0))
            assert sel["made"][sel["kept_candidates"][0]]["values"]["tau:0=1.5"] == \
                pytest.approx(TransportTarget("tau", 0, 1.5).measure(figures, phi))


def test_the_steering_fit_conditions_at_the_fraction_that_meets_the_target():
    """D_eff/D = exp(-6 + 10 φ) over candidates at φ 0.2-0.5: a target of exp(-2.5) is met at
    φ 0.35, with the fit's residual (none) floored at a spread of 0.005."""
    recorded = torch.tensor([[0.1, 0.9], [0.6, 0.4]])
    gen = SimpleNamespace(record=SimpleNamespace(descriptors=recorded),
                          phase_map=PhaseMap([0, 255]), condition="fractions")
    chosen = selection.Selection(gen, SimpleNamespace(
        transport=(TransportTarget("deff", 0, math.exp(-2.5)),), drawn="per volume"))
    assert chosen._fit() is None  # nothing made yet
    chosen.made = [{"condition": [x, 1 - x], "d_eff": math.exp(-6 + 10 * x)}
                   for x in (0.2, 0.3, 0.4, 0.5)]
    centre, spread, low, high = chosen._fit()
    assert centre == pytest.approx(0.35, abs=0.002) and spread == 0.005
    assert (low, high) == pytest.approx((0.1, 0.6))
    tau = selection.Selection(gen, SimpleNamespace(
        transport=(TransportTarget("tau", 0, 0.4 / math.exp(-2.0)),), drawn="per volume"))
    tau.made = chosen.made
    assert tau._fit()[0] == pytest.approx(0.4, abs=0.002)  # τ = φ / D_eff met at φ 0.4
    chosen.made = [{"condition": [x, 1 - x], "d_eff": math.exp(-10 * x)} for x in (0.2, 0.4,
                                                                                   0.5)]
    assert chosen._fit() is None  # falling with the fraction: no steering, the draws go on


def test_mdiff_sample_writes_the_kept_volumes_and_records_the_selection(model, tmp_path):
    out = tmp_path / "s"
    assert sample_main([str(model), str(out), "-n", "2", "--seed", "1", "--targets",
                        "deff:0=0.5", "--target-tolerance", "0.99", "--max-candidates",
                        "6"]) == 0
    info = json.loads((out / "samples.json").read_text())
    sel = info["selection"]
    assert info["count"] == 2 and sel["kept"] == 2 and sel["targets"] == ["deff:0=0.5"]
    assert info["files"] == ["sample_000.tif", "sample_001.tif"]
    assert info["condition"]["per_volume"] == [sel["made"][j]["condition"]
                                               for j in sel["kept_candidates"]]
    for name, j in zip(info["files"], sel["kept_candidates"]):
        assert sel["made"][j]["values"]["deff:0=0.5"] == pytest.approx(
            _deff(mdiff.read_volume(out / name), 0))


def test_too_few_volumes_meeting_a_target_is_one_line_and_the_set_holds_those_that_did(
        model, tmp_path, capsys):
    out = tmp_path / "s"
    code = sample_main([str(model), str(out), "-n", "2", "--seed", "1", "--targets",
                        "deff:0=0.001", "--target-tolerance", "0.01", "--max-candidates",
                        "3", "--sampler", "ddim", "--steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mdiff-sample: error: 0 of 2 volumes met")
    assert "0 of 2 volumes met deff:0=0.001 (± 1%) in 3 candidates" in "\n".join(err)
    info = json.loads((out / "samples.json").read_text())
    assert info["count"] == 0 and info["files"] == [] and info["selection"]["candidates"] == 3
    assert not list(out.glob("sample_*"))


@pytest.mark.parametrize("flags, says", [
    (["--target-tolerance", "0.2"], "are for transport targets"),
    (["--targets", "deff:0=0.1", "--target-tolerance", "1.5"], "in (0, 1)"),
    (["--targets", "deff:0=0.1", "--max-candidates", "1"], "fewer than the 2 volumes"),
    (["--targets", "deff:9=0.1"], "label 9 is not a phase"),
    (["--targets", "perc:0=0.5,deff:0=0.1"], "'perc' is not a descriptor"),
])
def test_bad_transport_requests_are_one_line(model, tmp_path, capsys, flags, says):
    assert sample_main([str(model), str(tmp_path / "s"), "-n", "2", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


def test_an_unconditioned_model_takes_transport_targets_by_selection_alone(tmp_path):
    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.5, 0.5), (0, 255), 2.0,
                                                    seed=1))
    ckpt = mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "run",
                       unet={"condition": "none"}, train={"steps": 2}, **QUIET)
    gen = mdiff.load(ckpt, device="cpu")
    out = gen.generate(mdiff.SampleRequest(count=1, seed=0, targets="deff:255=0.5",
                                           target_tolerance=0.99, max_candidates=2,
                                           sampler="ddim", steps=3))
    assert not out.selection["steered"] and out.conditions is None
    assert out.selection["candidates"] >= 1


@pytest.mark.parametrize("sampler", sorted(mdiff.samplers.SAMPLERS))
def test_transport_targets_work_with_every_sampler(model, sampler):
    gen = mdiff.load(model, device="cpu")
    steps = None if mdiff.samplers.SAMPLERS[sampler].steps is None else 4
    out = gen.generate(mdiff.SampleRequest(count=1, seed=4, targets="deff:255=0.5",
                                           target_tolerance=0.99, max_candidates=2,
                                           sampler=sampler, steps=steps))
    assert out.selection["candidates"] in (1, 2) and len(out.volumes) == out.selection["kept"]
    for volume in out.volumes:
        assert abs(_deff(volume, 255) - 0.5) <= 0.99 * 0.5

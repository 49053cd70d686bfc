"""Models conditioned on connectivity: each phase's fraction and percolating fraction, drawn
together from the training cubes, and targets for them (``--targets``)."""
import json

import numpy as np
import pytest
import torch

import mdiff
from mdiff import conditioning, descriptors, metrics, synth, write_volume
from mdiff.cli import sample_main
from mdiff.phases import PhaseMap

QUIET = {"log": None}


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("conn") / "v.tif"
    write_volume(path, synth.generate((32, 32, 32), (0.5, 0.3, 0.2), (0, 127, 255), 2.0,
                                      seed=4))
    return path


@pytest.fixture(scope="module")
def connected(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return mdiff.train([volume], preset="tiny", out=out, unet={"condition": "connectivity"},
                       train={"steps": 4}, **QUIET)


def test_the_descriptor_equals_the_transport_figures_of_each_cube(volume):
    vol = mdiff.read_volume(volume)
    pm = PhaseMap.from_volume(vol)
    cubes = [vol[:16, :16, :16], vol[16:, 8:24, 3:19], vol[5:21, ::2, 1:17][:, :16]]
    x = torch.stack([pm.encode(np.ascontiguousarray(c)) for c in cubes])
    got = descriptors.of_batch("connectivity", x).numpy()
    assert got.shape == (3, 6)
    for cube, row in zip(cubes, got):
        entry = metrics.describe(cube, pm, 2, transport=True)
        phi = [p["volume_fraction"] for p in entry["phases"]]
        perc = [np.mean([t["percolating_fraction"] or 0.0 for t in p["transport"].values()])
                for p in entry["phases"]]
        assert row[:3] == pytest.approx(phi, abs=1e-6)
        assert row[3:] == pytest.approx(perc, abs=1e-6)


def test_the_descriptor_is_invariant_under_the_cube_symmetries(volume):
    from mdiff.data import SYMMETRIES, apply_symmetry

    vol = mdiff.read_volume(volume)
    pm = PhaseMap.from_volume(vol)
    cube = np.ascontiguousarray(vol[3:19, 7:23, 0:16])
    want = descriptors.of_batch("connectivity", pm.encode(cube)[None])
    for index in (1, 7, 23, 47):
        turned = np.ascontiguousarray(apply_symmetry(cube, index, SYMMETRIES))
        got = descriptors.of_batch("connectivity", pm.encode(turned)[None])
        assert got.numpy() == pytest.approx(want.numpy(), abs=1e-6)


def test_draws_are_whole_vectors_of_real_training_cubes(connected):
    gen = mdiff.load(connected, device="cpu")
    recorded = gen.record.descriptors
    assert recorded.shape[1] == 6
    conds = gen.conditions(40, seed=5)[:, :-1]
    rows = {tuple(r) for r in recorded.tolist()}
    assert all(tuple(c) in rows for c in conds.tolist())
    plan = gen.plan(size=32, count=1, seed=2, tiling="windows")  # larger: per window
    assert plan.drawn == "per window"
    for call in conditioning.for_batch(plan, recorded, gen.model.factor, gen.patch, 0, 1):
        assert all(tuple(c) in rows for c in call[:, :-1].tolist())


def test_among_tied_cubes_the_completion_takes_the_most_typical():
    recorded = torch.tensor([[0.05, 0.95, 1.0, 1.0], [0.30, 0.70, 1.0, 1.0],
                             [0.20, 0.80, 1.0, 1.0], [0.10, 0.90, 0.2, 1.0],
                             [0.25, 0.75, 0.6, 1.0]])
    got = descriptors.complete(recorded, {2: 1.0})
    assert got[:2] == pytest.approx((0.20, 0.80))  # the tied cube nearest the mean fraction


def test_a_target_is_completed_from_the_nearest_training_cube(connected):
    gen = mdiff.load(connected, device="cpu")
    recorded = gen.record.descriptors.double()
    plan = gen.plan(count=1, targets="perc:0=0.75")
    vector = np.array(plan.target)
    spread = recorded[:, 3].std().item()
    nearest = recorded[((recorded[:, 3] - 0.75) / spread).abs().argmin()].numpy()
    assert vector[3] == pytest.approx(0.75)
    assert vector[[4, 5]] == pytest.approx(nearest[[4, 5]])
    assert vector[:3].sum() == pytest.approx(1)
    fractions = gen.plan(count=1, fractions=(2, 1, 1)).target
    assert fractions[:3] == pytest.approx((0.5, 0.25, 0.25))
    both = gen.plan(count=1, fractions=(2, 1, 1), targets="perc:255=0.1").target
    assert both[:3] == pytest.approx((0.5, 0.25, 0.25)) and both[5] == pytest.approx(0.1)
    one = gen.plan(count=1, targets="phi:0=0.6").target  # the others scaled to the rest
    assert one[0] == pytest.approx(0.6) and sum(one[:3]) == pytest.approx(1)


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ddpm"])
def test_sampling_at_a_connectivity_target_with_every_sampler(connected, sampler):
    gen = mdiff.load(connected, device="cpu")
    steps = None if sampler == "ddpm" else 3
    volumes = gen.sample(2, sampler=sampler, steps=steps, seed=1, targets="perc:127=0.9")
    assert volumes.shape == (2, 16, 16, 16)
    assert set(np.unique(volumes)) <= {0, 127, 255}


@pytest.mark.parametrize("fields", [{"size": 32, "tiling": "windows"},
                                    {"size": 32, "tiling": "whole"},
                                    {"size": 32, "tiling": "windows", "periodic": True},
                                    {"size": 32}])
def test_sampling_with_every_tiling(connected, fields):
    gen = mdiff.load(connected, device="cpu")
    a = gen.sample(1, steps=2, seed=4, targets="perc:0=0.8", **fields)
    assert a.shape == (1, 32, 32, 32)
    drawn = gen.sample(1, steps=2, seed=4, **fields)
    assert drawn.shape == (1, 32, 32, 32)


def test_graded_fractions_on_a_connectivity_model(connected):
    gen = mdiff.load(connected, device="cpu")
    plan = gen.plan(size=(32, 16, 16), count=1, seed=0,
                    fractions_along=("z", [(0.0, (0.6, 0.3, 0.1)), (1.0, (0.3, 0.4, 0.3))]))
    calls = conditioning.for_batch(plan, gen.record.descriptors, gen.model.factor, gen.patch,
                                   0, 1)
    first = calls[0][0, :-1]  # the first window's centre: voxel 7.5 of 0..31
    want = descriptors.profile_at(plan.profile[1], 7.5 / 31)
    assert first[:3].tolist() == pytest.approx(want, abs=1e-6)
    assert first.shape[0] == 6
    assert gen.generate(plan).volumes.shape == (1, 32, 16, 16)


def test_the_cli_records_targets_and_refuses_what_the_model_cannot_take(connected, tmp_path,
                                                                       capsys):
    out = tmp_path / "s"
    assert sample_main([str(connected), str(out), "-n", "1", "--steps", "2",
                        "--targets", "perc:0=0.9,phi:0=0.4"]) == 0
    info = json.loads((out / "samples.json").read_text())["condition"]
    assert info["kind"] == "connectivity" and info["targets"] == "perc:0=0.9,phi:0=0.4"
    assert info["vector"][0] == pytest.approx(0.4) and info["vector"][3] == pytest.approx(0.9)
    assert info["per_volume"][0] == pytest.approx(info["vector"], abs=1e-6)
    capsys.readouterr()
    for args, expected in ((["--targets", "tort:0=3"], "'tort' is not a descriptor"),
                           (["--targets", "perc:9=0.5"], "label 9 is not a phase"),
                           (["--targets", "perc:0=2"], "in [0, 1]"),
                           (["--targets", "perc0.5"], "expected NAME:LABEL=VALUE"),
                           (["--targets", "phi:0=0.7,phi:127=0.5"], "sum to more than 1"),
                           (["--fractions", "1,1,1", "--targets", "phi:0=0.2"], "not both")):
        assert sample_main([str(connected), str(tmp_path / "o")] + args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "o").exists()


def test_a_fractions_model_takes_phi_targets_and_refuses_perc(volume, tmp_path, capsys):
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "f", train={"steps": 1},
                       **QUIET)
    gen = mdiff.load(ckpt, device="cpu")
    assert gen.plan(count=1, targets="phi:255=0.3").target[2] == pytest.approx(0.3)
    assert sample_main([str(ckpt), str(tmp_path / "o"), "--targets", "perc:0=0.9"]) == 2
    assert "fractions: phi" in capsys.readouterr().err

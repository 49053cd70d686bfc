"""Models conditioned on sizes: each phase's fraction and mean local thickness, drawn together
from the training cubes, and thickness targets (``--targets thick:LABEL=V``)."""
import numpy as np
import pytest
import torch

import mdiff
from mdiff import descriptors, metrics, synth, write_volume
from mdiff.cli import sample_main
from mdiff.phases import PhaseMap


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("sizes") / "v.tif"
    write_volume(path, synth.generate((32, 32, 32), (0.6, 0.4), (0, 255), 2.5, seed=6))
    return path


@pytest.fixture(scope="module")
def sized(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return mdiff.train([volume], preset="tiny", out=out, unet={"condition": "sizes"},
                       train={"steps": 4}, log=None)


def test_the_descriptor_equals_the_figures_of_each_cube_and_ignores_symmetries(volume):
    from mdiff.data import SYMMETRIES, apply_symmetry

    vol = mdiff.read_volume(volume)
    pm = PhaseMap.from_volume(vol)
    cubes = [vol[:16, :16, :16], vol[16:, 8:24, 3:19]]
    got = descriptors.of_batch("sizes", torch.stack(
        [pm.encode(np.ascontiguousarray(c)) for c in cubes])).numpy()
    for cube, row in zip(cubes, got):
        entry = metrics.describe(cube, pm, 2, sizes=True)
        assert row[:2] == pytest.approx([p["volume_fraction"] for p in entry["phases"]])
        assert row[2:] == pytest.approx([p["local_thickness"] for p in entry["phases"]])
    cube = np.ascontiguousarray(cubes[1])
    for index in (3, 17, 40):
        turned = np.ascontiguousarray(apply_symmetry(cube, index, SYMMETRIES))
        again = descriptors.of_batch("sizes", pm.encode(turned)[None]).numpy()
        assert again[0] == pytest.approx(got[1], abs=1e-6)


def test_thickness_targets_sample_and_bad_ones_are_one_line(sized, tmp_path, capsys):
    gen = mdiff.load(sized, device="cpu")
    recorded = gen.record.descriptors
    assert recorded.shape[1] == 4
    rows = {tuple(r) for r in recorded.tolist()}
    assert all(tuple(c) in rows for c in gen.conditions(12, seed=1)[:, :-1].tolist())
    target = gen.plan(count=1, targets="thick:0=3.5").target
    assert target[2] == pytest.approx(3.5) and sum(target[:2]) == pytest.approx(1)
    out = tmp_path / "s"
    assert sample_main([str(sized), str(out), "-n", "2", "--steps", "3",
                        "--targets", "thick:0=3.5,phi:0=0.5", "--threads", "1"]) == 0
    assert len(list(out.glob("sample_*.tif"))) == 2
    capsys.readouterr()
    for bad, says in (("thick:0=-1", "at least 0"), ("perc:0=0.5", "not a descriptor"),
                      ("phi:0=1.5", "a share")):
        assert sample_main([str(sized), str(tmp_path / "bad"), "-n", "1", "--steps", "2",
                            "--targets", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0]

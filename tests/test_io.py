import json

import numpy as np
import pytest
import tifffile

import mdiff
from mdiff import synth
from mdiff.cli import metrics_main, train_main
from mdiff.errors import MdiffError


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".npy"])
def test_round_trip(tmp_path, rng, suffix):
    volume = rng.choice(np.array([0, 127, 255], np.uint8), size=(5, 6, 7))
    path = tmp_path / f"v{suffix}"
    mdiff.write_volume(path, volume)
    back = mdiff.read_volume(path)
    assert back.dtype == np.uint8 and back.shape == (5, 6, 7)
    np.testing.assert_array_equal(back, volume)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_uint16_round_trip(tmp_path, rng):
    volume = rng.choice(np.array([3, 1000, 60000], np.uint16), size=(4, 5, 6))
    mdiff.write_volume(tmp_path / "v.tif", volume)
    np.testing.assert_array_equal(mdiff.read_volume(tmp_path / "v.tif"), volume)


def test_voxel_size_kept(tmp_path, rng):
    volume = rng.integers(0, 2, (4, 5, 6)).astype(np.uint8) * 255
    mdiff.write_volume(tmp_path / "v.tif", volume, voxel_size=(0.05, 0.025, 0.025), unit="um")
    back, meta = mdiff.read_volume(tmp_path / "v.tif", with_meta=True)
    np.testing.assert_allclose(meta["voxel_size"], (0.05, 0.025, 0.025), rtol=1e-6)
    assert meta["unit"] == "um"
    mdiff.write_volume(tmp_path / "w.tif", volume)
    assert mdiff.read_volume(tmp_path / "w.tif", with_meta=True)[1]["voxel_size"] is None


def test_multipage_stack_written_by_tifffile(tmp_path, rng):
    volume = rng.integers(0, 3, (6, 8, 9)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", volume)  # one page per slice
    np.testing.assert_array_equal(mdiff.read_volume(tmp_path / "stack.tif"), volume)


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    cases["missing"] = (tmp_path / "nope.tif", "no such file")
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, rng.integers(0, 2, (16, 16)).astype(np.uint8))
    cases["2d"] = (p, "2D image")
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (4, 8, 8, 3)).astype(np.uint8), photometric="rgb")
    cases["rgb"] = (p, "RGB")
    p = tmp_path / "four.npy"
    np.save(p, rng.integers(0, 2, (2, 3, 4, 5)).astype(np.uint8))
    cases["4d"] = (p, "4D array")
    p = tmp_path / "float.tif"
    tifffile.imwrite(p, rng.random((6, 8, 8)).astype(np.float32))
    cases["float"] = (p, "float voxels")
    p = tmp_path / "one.tif"
    tifffile.imwrite(p, np.full((6, 8, 8), 7, np.uint8))
    cases["one label"] = (p, "only one label")
    p = tmp_path / "grey.tif"
    tifffile.imwrite(p, np.arange(6 * 10 * 10, dtype=np.uint16).reshape(6, 10, 10))
    cases["too many labels"] = (p, "600 distinct labels")
    p = tmp_path / "text.tif"
    p.write_text("this is not an image\n")
    cases["not an image"] = (p, "not a readable TIFF")
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    cases["empty"] = (p, "empty")
    return cases


@pytest.mark.parametrize("main", [metrics_main, train_main], ids=["metrics", "train"])
def test_bad_inputs_give_one_line(tmp_path, capsys, main):
    for name, (path, expected) in _bad_inputs(tmp_path).items():
        if name == "2d" and main is train_main:
            continue  # a 2D image trains a 2D model (tests/test_multiplane.py)
        argv = [str(path)] + (["--preset", "tiny", "--out", str(tmp_path / "run")]
                              if main is train_main else [])
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (name, err)
        assert expected in err and str(path.name) in err, (name, err)
        assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_write_refuses_bad_volume(tmp_path):
    with pytest.raises(MdiffError, match="float"):
        mdiff.write_volume(tmp_path / "x.tif", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(MdiffError, match="folder"):
        mdiff.write_volume(tmp_path / "no" / "x.tif", np.zeros((2, 2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_umask_permissions_not_private(tmp_path):
    import os
    import stat

    from mdiff.checkpoint import save

    mask = os.umask(0o022)
    try:
        mdiff.write_volume(tmp_path / "a.tif", np.array([[[0, 255]]], np.uint8))
        mdiff.write_volume(tmp_path / "a.npy", np.array([[[0, 255]]], np.uint8))
        save(tmp_path / "c.pt", {"x": 1})
    finally:
        os.umask(mask)
    for name in ("a.tif", "a.npy", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.tif", "c.pt"]


def _metrics_json(argv, capsys):
    assert metrics_main(argv + ["--json", "--s2-max", "2"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mdiff_metrics_takes_the_voxel_size_the_file_records(tmp_path, capsys):
    volume = synth.generate((20, 20, 20), (0.6, 0.4), (0, 255), 2.0, seed=2)
    mdiff.write_volume(tmp_path / "plain.tif", volume)
    mdiff.write_volume(tmp_path / "um.tif", volume, voxel_size=0.5, unit="um")
    plain = _metrics_json([str(tmp_path / "plain.tif")], capsys)
    scaled = _metrics_json([str(tmp_path / "um.tif")], capsys)
    assert "voxel_size" not in plain and scaled["voxel_size"] == 0.5 and scaled["unit"] == "um"
    for a, b in zip(plain["volumes"][0]["phases"], scaled["volumes"][0]["phases"]):
        assert b["volume_fraction"] == a["volume_fraction"]
        assert b["specific_surface_area"] == pytest.approx(a["specific_surface_area"] / 0.5)
        assert b["euler_density"] == pytest.approx(a["euler_density"] / 0.125)
    given = _metrics_json([str(tmp_path / "um.tif"), "--voxel-size", "2", "--unit", "nm"],
                          capsys)
    assert given["voxel_size"] == 2.0 and given["unit"] == "nm"
    assert given["volumes"][0]["phases"][0]["specific_surface_area"] == pytest.approx(
        plain["volumes"][0]["phases"][0]["specific_surface_area"] / 2)


def test_mdiff_metrics_measures_the_non_cubic_voxels_a_file_records(tmp_path, capsys):
    volume = synth.generate((12, 12, 12), (0.6, 0.4), (0, 255), 2.0, seed=2)
    mdiff.write_volume(tmp_path / "fib.tif", volume, voxel_size=(0.03, 0.01, 0.01), unit="um")
    got = _metrics_json([str(tmp_path / "fib.tif"), "--sizes"], capsys)
    assert got["unit"] == "um"
    np.testing.assert_allclose(got["voxel_size"], (0.03, 0.01, 0.01), rtol=1e-6)
    want = mdiff.metrics.describe(volume, voxel_size=tuple(got["voxel_size"]), sizes=True)
    for a, b in zip(got["volumes"][0]["phases"], want["phases"]):
        for key in ("specific_surface_area", "euler_density", "local_thickness"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)
    assert metrics_main([str(tmp_path / "fib.tif"), "--s2-max", "2"]) == 0
    assert "voxel size 0.03x0.01x0.01 (z, y, x) um" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["bad flag", "mixed files", "zero"])
def test_mdiff_metrics_refuses_spacings_it_cannot_measure_in_one_line(tmp_path, capsys, case):
    volume = synth.generate((12, 12, 12), (0.6, 0.4), (0, 255), 2.0, seed=2)
    mdiff.write_volume(tmp_path / "fib.tif", volume, voxel_size=(0.03, 0.01, 0.01), unit="um")
    mdiff.write_volume(tmp_path / "a.tif", volume, voxel_size=1.0, unit="um")
    mdiff.write_volume(tmp_path / "b.tif", volume)
    argv = {"bad flag": [str(tmp_path / "a.tif"), "--voxel-size", "1,2"],
            "mixed files": [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")],
            "zero": [str(tmp_path / "a.tif"), "--voxel-size", "0"]}[case]
    assert metrics_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdiff-metrics: error:")
    assert "voxel" in err[0]


def test_a_plain_tiffs_dpi_is_not_a_voxel_size(tmp_path):
    """Resolution tags without ImageJ metadata (72 dpi by many programs' default) stay
    voxel units; mdiff's own TIFFs keep theirs."""
    volume = np.zeros((4, 5, 6), np.uint8)
    tifffile.imwrite(tmp_path / "dpi.tif", volume, resolution=(72, 72), resolutionunit="INCH")
    assert mdiff.read_volume(tmp_path / "dpi.tif", with_meta=True)[1]["voxel_size"] is None
    mdiff.write_volume(tmp_path / "own.tif", volume, voxel_size=(2.0, 0.5, 0.5), unit="um")
    meta = mdiff.read_volume(tmp_path / "own.tif", with_meta=True)[1]
    np.testing.assert_allclose(meta["voxel_size"], (2.0, 0.5, 0.5))


def test_an_ome_tiff_gives_its_physical_sizes_in_one_unit(tmp_path):
    volume = np.zeros((4, 5, 6), np.uint8)
    volume[1:3] = 255
    tifffile.imwrite(tmp_path / "a.ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 10.0, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 10.0, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 0.03, "PhysicalSizeZUnit": "\u00b5m"})
    got, meta = mdiff.read_volume(tmp_path / "a.ome.tif", with_meta=True)
    np.testing.assert_array_equal(got, volume)
    np.testing.assert_allclose(meta["voxel_size"], (30.0, 10.0, 10.0))
    assert meta["unit"] == "nm"
    tifffile.imwrite(tmp_path / "b.ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})  # no Z, no unit: um
    meta = mdiff.read_volume(tmp_path / "b.ome.tif", with_meta=True)[1]
    assert meta == {"voxel_size": (0.5, 0.5, 0.5), "unit": "um"}
    tifffile.imwrite(tmp_path / "c.ome.tif", volume, ome=True, metadata={"axes": "ZYX"})
    assert mdiff.read_volume(tmp_path / "c.ome.tif", with_meta=True)[1]["voxel_size"] is None


def test_a_slice_folder_takes_the_spacing_its_first_slice_records(tmp_path):
    volume = np.zeros((3, 5, 6), np.uint8)
    volume[1] = 255
    for folder, spacing in (("with", True), ("without", False)):
        (tmp_path / folder).mkdir()
        for k, image in enumerate(volume):
            metadata = {"unit": "um", **({"spacing": 0.03} if spacing else {})}
            tifffile.imwrite(tmp_path / folder / f"s_{k}.tif", image, imagej=True,
                             resolution=(100.0, 100.0), metadata=metadata)
    got, meta = mdiff.read_volume(tmp_path / "with", with_meta=True)
    np.testing.assert_array_equal(got, volume)
    np.testing.assert_allclose(meta["voxel_size"], (0.03, 0.01, 0.01))
    assert meta["unit"] == "um"
    # a pixel size without the distance between slices is no voxel size
    assert mdiff.read_volume(tmp_path / "without", with_meta=True)[1]["voxel_size"] is None

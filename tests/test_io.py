import numpy as np
import pytest
import tifffile

import mdiff
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

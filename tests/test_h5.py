"""HDF5 (.h5) volumes: read back by h5py itself, by mdiff, from another tool's layout, and
from the CLI; what is not a label volume is one line."""
import builtins
import json

import numpy as np
import pytest

import mdiff
from mdiff import synth
from mdiff.cli import metrics_main, sample_main
from mdiff.errors import MdiffError
from mdiff.io import read_volume, volume_files, write_volume

h5py = pytest.importorskip("h5py")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_an_h5_holds_the_volume_voxel_for_voxel_with_its_spacing(tmp_path, rng, dtype):
    big = rng.integers(0, 3, (9, 70, 22)).astype(dtype) * (127 if dtype == np.uint8 else 3000)
    volume = big[:, ::1, 1:][:, :, ::-1]  # odd shape, not contiguous, over one chunk in y
    path = tmp_path / "v.h5"
    write_volume(path, volume, voxel_size=(0.03, 0.01, 0.01), unit="um")
    with h5py.File(path, "r") as f:  # what any HDF5 reader sees
        np.testing.assert_array_equal(f["volume"][()], volume)
        assert f["volume"].attrs["axes"] == "zyx"
        np.testing.assert_allclose(f["volume"].attrs["voxel_size"], (0.03, 0.01, 0.01))
        np.testing.assert_allclose(f["volume"].attrs["element_size_um"], (0.03, 0.01, 0.01))
        assert f["volume"].compression == "gzip"
    back, meta = read_volume(path, with_meta=True)
    np.testing.assert_array_equal(back, volume)
    assert back.dtype == dtype
    assert meta == {"voxel_size": (0.03, 0.01, 0.01), "unit": "um"}
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, renamed


def test_another_tools_h5_is_read_by_its_only_volume_and_ilastik_spacing(tmp_path):
    volume = synth.generate((10, 12, 14), (0.5, 0.5), (0, 255), 2.0, 1)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["raw"] = np.zeros((10, 12), np.float32)  # 2D: not the labels
        f["group/labels"] = volume
        f["group/labels"].attrs["element_size_um"] = [0.1, 0.05, 0.05]
    back, meta = read_volume(tmp_path / "other.h5", with_meta=True)
    np.testing.assert_array_equal(back, volume)
    assert meta == {"voxel_size": (0.1, 0.05, 0.05), "unit": "um"}


@pytest.mark.parametrize("case", ["two volumes", "float", "damaged", "empty"])
def test_what_is_no_label_volume_is_one_line(tmp_path, case):
    path = tmp_path / "bad.h5"
    if case == "damaged":
        write_volume(tmp_path / "good.h5", np.zeros((8, 8, 8), np.uint8))
        path.write_bytes((tmp_path / "good.h5").read_bytes()[:300])
    else:
        with h5py.File(path, "w") as f:
            if case == "two volumes":
                f["a"] = np.zeros((4, 4, 4), np.uint8)
                f["b"] = np.zeros((4, 4, 4), np.uint8)
            elif case == "float":
                f["volume"] = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(MdiffError) as err:
        read_volume(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_without_h5py_reading_and_writing_say_how_to_get_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(MdiffError, match=r"pip install 'mdiff\[h5\]'"):
        write_volume(tmp_path / "v.h5", np.zeros((4, 4, 4), np.uint8))
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(MdiffError, match="needs h5py"):
        read_volume(tmp_path / "x.h5")


def test_mdiff_sample_writes_h5_sets_that_metrics_and_the_judge_read(tmp_path, capsys):
    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1),
                 voxel_size=0.5, unit="um")
    ckpt = mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "run",
                       train={"steps": 2}, log=None)
    out = tmp_path / "out"
    assert sample_main([str(ckpt), str(out), "-n", "2", "--steps", "2", "--format", "h5"]) == 0
    assert [p.name for p in volume_files(out)] == ["sample_000.h5", "sample_001.h5"]
    # an h5 set is mdiff-sample's own: refused without --overwrite, replaced whole with it
    assert sample_main([str(ckpt), str(out), "-n", "1", "--steps", "2"]) == 2
    assert "already holds 3 sample file(s)" in capsys.readouterr().err
    assert sample_main([str(ckpt), str(out), "-n", "1", "--steps", "2", "--format", "h5",
                        "--overwrite"]) == 0
    assert [p.name for p in volume_files(out)] == ["sample_000.h5"]
    volume, meta = read_volume(out / "sample_000.h5", with_meta=True)
    assert volume.shape == (16, 16, 16) and meta == {"voxel_size": (0.5, 0.5, 0.5),
                                                     "unit": "um"}
    # a two-step model's volumes may hold one label: metrics read the training volume as .h5
    real, real_meta = read_volume(tmp_path / "v.tif", with_meta=True)
    write_volume(tmp_path / "v.h5", real, **real_meta)
    capsys.readouterr()
    assert metrics_main([str(tmp_path / "v.tif"), "--json", "--s2-max", "2"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert metrics_main([str(tmp_path / "v.h5"), "--json", "--s2-max", "2"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["voxel_size"] == 0.5 and got["unit"] == "um"
    assert got["volumes"][0]["phases"] == want["volumes"][0]["phases"]

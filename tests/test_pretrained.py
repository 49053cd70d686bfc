"""The models that ship inside the package: each loads by name, its file matches the SHA-256 in
the index, and it makes a volume with its labels; bad names and damaged files are one line."""
import fnmatch
import shutil
from pathlib import Path

import numpy as np
import pytest

import mdiff
from mdiff import pretrained
from mdiff.cli import models_main, sample_main

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(pretrained.index())


def test_the_package_ships_the_two_models_of_the_cards():
    assert {"nmc-cathode", "berea-sandstone"} <= set(MODELS)
    cards = (ROOT / "docs" / "models.md").read_text()
    for name, entry in pretrained.index().items():
        assert entry["sha256"] in cards, f"docs/models.md lacks {name}'s SHA-256"


def test_the_installed_package_carries_every_indexed_file():
    """pyproject's package-data globs take each model file and the index into a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["mdiff.pretrained"]
    for name in ["index.json"] + [e["file"] for e in pretrained.index().values()]:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


@pytest.mark.parametrize("name", MODELS)
def test_a_shipped_model_makes_a_volume_by_name(name):
    entry = pretrained.index()[name]
    assert pretrained.sha256(pretrained.FOLDER / entry["file"]) == entry["sha256"]
    gen = mdiff.load(name, device="cpu")
    volume = gen.sample(1, size=32, sampler="dpm++", steps=4, seed=0)[0]
    assert volume.shape == (32, 32, 32)
    assert set(np.unique(volume)) <= set(entry["labels"])
    assert len(np.unique(volume)) >= 2  # not one phase everywhere


def test_mdiff_models_lists_each_model_on_one_line(capsys):
    assert models_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == MODELS


def test_an_unknown_model_name_is_one_line_and_exit_2(tmp_path, capsys):
    assert sample_main(["nmc-catode", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nmc-cathode" in err[0] and "mdiff-models" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_damaged_shipped_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    name = MODELS[0]
    entry = pretrained.index()[name]
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.FOLDER, folder)
    data = bytearray((folder / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / entry["file"]).write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    with pytest.raises(mdiff.MdiffError, match="SHA-256"):
        mdiff.load(name)


def test_a_file_path_that_exists_wins_over_a_name(tmp_path, monkeypatch):
    """A checkpoint file called like a model in the working folder is that file."""
    monkeypatch.chdir(tmp_path)
    Path(MODELS[0]).write_bytes(b"not a checkpoint")
    with pytest.raises(mdiff.MdiffError, match="not an mdiff checkpoint"):
        mdiff.load(MODELS[0])


def test_a_damaged_index_is_one_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "index.json").write_text("{not json")
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    assert models_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.json is damaged" in err[0]

"""What a new user meets in the first hour: no run or sample set lost or mixed, one clear line
for each mistake, Ctrl-C that says how to go on."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mdiff
from mdiff import synth, write_volume
from mdiff.cli import metrics_main, sample_main, train_main
from mdiff.report import short_names

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--steps", "2", "--save-every", "2", "--log-every", "2"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("first") / "v.tif"
    write_volume(path, synth.generate((24, 24, 24), (0.5, 0.5), (0, 255), 2.0, seed=2))
    return path


def _one_line(capsys, *expected):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_a_run_folder_is_never_replaced_silently(volume, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([str(volume), "--out", str(run)] + TINY) == 0
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train_main([str(volume), "--out", str(run)] + TINY) == 2
    _one_line(capsys, "already holds a run", "--resume", "--overwrite")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert train_main([str(volume), "--out", str(run), "--overwrite", "--seed", "5"] + TINY) == 0
    assert (run / "checkpoint.pt").read_bytes() != before


def test_resume_below_the_runs_step_is_refused(volume, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([str(volume), "--out", str(run)] + TINY[:2] + ["--steps", "4"]) == 0
    capsys.readouterr()
    assert train_main(["--resume", "--out", str(run), "--steps", "2"]) == 2
    _one_line(capsys, "already at step 4")


@pytest.fixture(scope="module")
def checkpoint(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    return mdiff.train([volume], preset="tiny", out=out, train={"steps": 2}, log=None)


def test_a_sample_folder_never_mixes_two_sets(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample_main([str(checkpoint), str(out), "-n", "3", "--steps", "2"]) == 0
    first = (out / "sample_002.tif").read_bytes()
    capsys.readouterr()
    assert sample_main([str(checkpoint), str(out), "-n", "1", "--steps", "2", "--seed", "9"]) == 2
    _one_line(capsys, "already holds 4 sample file(s)", "--overwrite")
    assert (out / "sample_002.tif").read_bytes() == first
    assert sample_main([str(checkpoint), str(out), "-n", "1", "--steps", "2", "--seed", "9",
                        "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.tif", "samples.json"]


@pytest.mark.parametrize("args,expected", [
    (["-n", "0"], "nothing to generate"),
    (["--sampler", "ddpm", "--steps", "10"], "--steps does not apply to --sampler ddpm"),
])
def test_sample_requests_that_would_be_ignored_are_refused(checkpoint, tmp_path, capsys, args,
                                                           expected):
    assert sample_main([str(checkpoint), str(tmp_path / "o")] + args) == 2
    _one_line(capsys, expected)
    assert not (tmp_path / "o").exists()


def test_metrics_plot_is_checked_before_the_work(volume, capsys, monkeypatch):
    assert metrics_main([str(volume), "--plot", "/nonexistent/dir/x.png"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "the folder /nonexistent/dir does not exist" in captured.err
    assert ".tmp" not in captured.err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert metrics_main([str(volume), "--plot", "x.png"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--plot needs matplotlib" in captured.err


def test_column_headers_stay_distinct():
    names = short_names(["runs/a/sample_000.tif", "runs/b/sample_000.tif"])
    assert len(set(names)) == 2 and all(n.endswith("sample_000.tif") for n in names)
    assert short_names(["x.tif", "a_rather_long_name_of_a_file.tif"]) == [
        "x.tif", "…of_a_file.tif"]  # 14 characters, as before


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_ctrl_c_says_which_step_is_saved_and_how_to_go_on(volume, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdiff", "train", str(volume), "--preset", "tiny", "--steps",
         "100000", "--save-every", "3", "--log-every", "3", "--out", str(run)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "checkpoint.pt").exists(), "no checkpoint within 2 minutes"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("mdiff-train: interrupted at step ")
    step = mdiff.load(run / "checkpoint.pt", device="cpu").step
    assert f"holds step {step}" in last
    assert f"go on with: mdiff-train --resume --out {run}" in last


def test_python_m_mdiff_help_and_a_missing_extension(volume, tmp_path):
    got = subprocess.run([sys.executable, "-m", "mdiff", "--help"], capture_output=True,
                         text=True, env=_env())
    assert got.returncode == 0 and "usage: python -m mdiff" in got.stdout
    # a source folder without the compiled extension shadows the installed package
    shutil.copytree(ROOT / "mdiff", tmp_path / "mdiff",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    # `python -m mdiff metrics v.tif` there, with an editable install's finder (which would
    # supply the extension from the clone) taken away, as after a plain `pip install .`
    run = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not "
           "in getattr(f, '__module__', '')]; sys.argv = ['mdiff', 'metrics', sys.argv[1]]; "
           "runpy.run_module('mdiff', run_name='__main__', alter_sys=True)")
    got = subprocess.run([sys.executable, "-c", run, str(volume)], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert got.returncode == 2
    assert got.stderr.count("\n") == 1 and "compiled kernels" in got.stderr
    assert "pip install -e ." in got.stderr and "Traceback" not in got.stderr


def test_synth_labels_follow_the_fractions(tmp_path):
    from mdiff.cli import synth_main

    assert synth_main([str(tmp_path / "two.tif"), "--shape", "8", "--fractions", "0.3,0.7"]) == 0
    assert set(np.unique(mdiff.read_volume(tmp_path / "two.tif"))) == {0, 255}

"""Processes killed at any moment (SIGKILL: no handler runs, as at a power loss): training
always leaves a complete checkpoint or none, and ``--resume`` from it ends bit for bit where an
uninterrupted run ends; a sample set is the old complete one or the new complete one. Seeded
kill times; a few kills in CI, more in a benchmark run with MDIFF_KILLS=N (issue 28)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mdiff import checkpoint, synth, write_volume

KILLS = int(os.environ.get("MDIFF_KILLS", "2"))
STEPS = 12


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _kill_after(args, seconds, cwd):
    """Run a command, SIGKILL it after ``seconds`` (if it is still running); its exit code."""
    proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return proc.wait()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kills")
    write_volume(folder / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    return folder / "v.tif"


def _train_args(volume, out, steps=STEPS):
    return ["mdiff-train", str(volume), "--preset", "tiny", "--steps", str(steps),
            "--save-every", "2", "--out", str(out), "--threads", "1"]


def test_a_training_killed_at_any_moment_resumes_to_the_uninterrupted_result(volume, tmp_path):
    started = time.perf_counter()
    subprocess.run(_train_args(volume, tmp_path / "whole"), check=True, env=_env(),
                   capture_output=True)
    duration = time.perf_counter() - started
    want = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")["checksum"]["tensors"]
    rng = np.random.default_rng(28)
    outcomes = []
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        _kill_after(_train_args(volume, out), float(rng.uniform(0.2, 1.0)) * duration, tmp_path)
        if (out / "checkpoint.pt").exists():
            state = checkpoint.load(out / "checkpoint.pt")  # complete, or this raises
            outcomes.append(int(state["step"]))
            args = ["mdiff-train", "--resume", "--out", str(out), "--steps", str(STEPS),
                    "--threads", "1"]
        else:
            outcomes.append(None)
            args = _train_args(volume, out) + ["--overwrite"]
        done = subprocess.run(args, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, (k, done.stderr[-400:])
        got = checkpoint.load(out / "checkpoint.pt")
        assert int(got["step"]) == STEPS
        assert got["checksum"]["tensors"] == want, (k, outcomes[-1])
        steps = [json.loads(line)["step"] for line in
                 (out / "loss.jsonl").read_text().splitlines() if line.strip()]
        assert steps == sorted(set(steps)), (k, steps)  # no step logged twice after a resume
    assert any(s is not None for s in outcomes)  # some kills fell after a save


def test_a_sample_set_killed_while_written_is_the_old_set_or_the_new(volume, tmp_path):
    import mdiff

    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "run", train={"steps": 2},
                       log=None)
    out = tmp_path / "set"
    args = ["mdiff-sample", str(ckpt), str(out), "-n", "6", "--steps", "3", "--threads", "1"]
    subprocess.run(args + ["--seed", "1"], check=True, env=_env(), capture_output=True)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    started = time.perf_counter()
    subprocess.run(args + ["--seed", "2", "--overwrite"], check=True, env=_env(),
                   capture_output=True, cwd=tmp_path)
    duration = time.perf_counter() - started
    new = {p.name: p.read_bytes() for p in out.iterdir()}
    assert new != old
    rng = np.random.default_rng(29)
    for k in range(KILLS):
        # put the old set back, then overwrite it with the new one and kill that mid-way
        for p in out.iterdir():
            p.unlink()
        for name, data in old.items():
            (out / name).write_bytes(data)
        _kill_after(args + ["--seed", "2", "--overwrite"],
                    float(rng.uniform(0.3, 1.0)) * duration, tmp_path)
        now = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
        volumes = lambda files: {n: b for n, b in files.items() if n != "samples.json"}  # noqa
        if "samples.json" in now:  # a samples.json names a complete set, old or new
            assert volumes(now) in (volumes(old), volumes(new)), (k, sorted(now))
            assert json.loads(now["samples.json"])["files"] == sorted(volumes(now))
        else:  # killed while swapping: only whole new files, and .partial holds the rest
            assert (out / ".partial").is_dir(), (k, sorted(now))
            assert all(new.get(n) == b for n, b in now.items()), (k, sorted(now))
        # and the next run cleans what the killed one left in .partial
        subprocess.run(args + ["--seed", "2", "--overwrite"], check=True, env=_env(),
                       capture_output=True)
        final = {p.name: p.read_bytes() for p in out.iterdir()}
        assert volumes(final) == volumes(new) and "samples.json" in final


def test_a_report_killed_while_written_is_never_a_mix(volume, tmp_path):
    # mdiff-evaluate --out over an earlier report, killed at random moments (most in its
    # last part, where it writes): a report.json always names, by SHA-256, exactly the files
    # beside it; without one, the next run leaves a complete report
    import hashlib

    from mdiff.evaluate_report import REPORT_FILES

    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(3):
        write_volume(gen / f"sample_{i:03d}.tif",
                     synth.generate((12, 12, 12), (0.6, 0.4), (0, 255), 2.0, 10 + i))
    out = tmp_path / "report"
    args = ["mdiff-evaluate", str(volume), str(gen), "--out", str(out), "--permutations", "20"]
    subprocess.run(args + ["--seed", "1"], check=True, env=_env(), capture_output=True)
    started = time.perf_counter()
    subprocess.run(args + ["--seed", "2"], check=True, env=_env(), capture_output=True)
    duration = time.perf_counter() - started

    def consistent():
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        if "report.json" not in files:
            return False
        named = json.loads(files.pop("report.json"))["files"]
        assert set(files) <= set(REPORT_FILES) and set(named) == set(files), sorted(files)
        for name, data in files.items():
            assert hashlib.sha256(data).hexdigest() == named[name], name
        return True

    assert consistent()
    rng = np.random.default_rng(30)
    for k in range(KILLS):
        _kill_after(args + ["--seed", str(3 + k)], float(rng.uniform(0.5, 1.0)) * duration,
                    tmp_path)
        consistent()  # a report.json, where there is one, belongs to the files beside it
        subprocess.run(args + ["--seed", "9"], check=True, env=_env(), capture_output=True)
        assert consistent() and not (out / ".partial").exists()


def test_a_distillation_killed_at_any_moment_goes_on_to_the_uninterrupted_student(tmp_path):
    """Killed while the teacher solves (its solutions so far kept) or while the student
    learns (its last save kept): the same command, or --resume, ends where an uninterrupted
    run ends, bit for bit."""
    import torch

    teacher = Path(__file__).resolve().parent / "pin" / "tiny3d.pt"

    def args(out):
        return ["mdiff-distill", str(teacher), "--out", str(out), "--iterations", "8",
                "--trajectories", "4", "--batch-size", "2", "--save-every", "2",
                "--log-every", "1", "--threads", "1"]

    started = time.perf_counter()
    subprocess.run(args(tmp_path / "whole"), check=True, env=_env(), capture_output=True)
    duration = time.perf_counter() - started
    want = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")["ema"]
    rng = np.random.default_rng(26)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        _kill_after(args(out), float(rng.uniform(0.3, 1.0)) * duration, tmp_path)
        again = (["mdiff-distill", "--resume", "--out", str(out), "--threads", "1"]
                 if (out / "checkpoint.pt").exists() else args(out))
        done = subprocess.run(again, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, (k, done.stderr[-400:])
        got = checkpoint.load(out / "checkpoint.pt")
        assert got["distill"]["step"] == 8
        assert all(torch.equal(got["ema"][name], want[name]) for name in want), k
        steps = [json.loads(line)["step"] for line in
                 (out / "distill.jsonl").read_text().splitlines() if line.strip()]
        assert steps == list(range(1, 9)), (k, steps)

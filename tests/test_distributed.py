"""Data-parallel training and sampling: two Gloo processes on the CPU, tiny configs."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mdiff
from mdiff import checkpoint, distributed
from mdiff.cli import train_main
from mdiff.errors import MdiffError

# fp32 named: one process and two agree to fp32 rounding; in bf16 (what "auto" is on a CPU
# with native bf16) half batches round differently from whole ones
TRAIN = {"steps": 4, "batch_size": 4, "save_every": 2, "log_every": 2, "precision": "fp32"}


def _weights(path):
    state = torch.load(path, weights_only=True)
    return state, {k: v for k, v in state["model"].items()}


def test_two_processes_equal_one_with_the_same_effective_batch(tmp_path):
    one = mdiff.train(example=True, preset="tiny", out=tmp_path / "one", train=TRAIN, log=None)
    two = mdiff.train(example=True, preset="tiny", out=tmp_path / "two", train=TRAIN, procs=2)
    a, wa = _weights(one)
    b, wb = _weights(two)
    assert (b["world_size"], b["effective_batch"]) == (2, 4) and a["world_size"] == 1
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    # rank 0 alone wrote: one config, one checkpoint, one loss line per log point
    import importlib.util

    plotted = ["loss.png"] if importlib.util.find_spec("matplotlib") else []
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([
        "checkpoint.pt", "config.json", "loss.jsonl", "loss.csv", *plotted])
    lines = [json.loads(x) for x in (tmp_path / "two" / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4] and lines[0]["processes"] == 2


def test_two_process_resume_is_bit_for_bit(tmp_path):
    straight = mdiff.train(example=True, preset="tiny", out=tmp_path / "a", train=TRAIN,
                           procs=2)
    mdiff.train(example=True, preset="tiny", out=tmp_path / "b", train={**TRAIN, "steps": 2},
                procs=2)
    resumed = mdiff.train(preset="tiny", out=tmp_path / "b", resume=True, train={"steps": 4},
                          procs=2)
    a, wa = _weights(straight)
    b, wb = _weights(resumed)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert a["loss"] == b["loss"]


def _fail_on_rank_1():
    """Rank 1 fails at once; rank 0 waits at a barrier that rank 1 never reaches."""
    ctx = distributed.setup("cpu")
    if ctx.rank == 1:
        raise MdiffError("rank 1 cannot go on")
    distributed.barrier()
    return "rank 0 finished"


def test_an_error_on_one_process_ends_the_others_with_its_message():
    start = time.perf_counter()
    with pytest.raises(MdiffError, match="^rank 1 cannot go on$"):
        distributed.launch(2, _fail_on_rank_1)
    assert time.perf_counter() - start < 120


def _workers(pid):
    """The worker processes the launcher ``pid`` spawned (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


# the first-started worker in CI (it is rank 0, the one that saves, when pids follow the
# start order); both with MDIFF_KILLS > 2, as tests/test_kills.py does for more kills
VICTIMS = [0, 1] if int(os.environ.get("MDIFF_KILLS", "2")) > 2 else [0]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
@pytest.mark.parametrize("victim", VICTIMS)
def test_a_rank_killed_mid_run_stops_the_others_with_one_line_and_a_whole_checkpoint(
        tmp_path, victim):
    import signal
    import subprocess

    out = tmp_path / "run"
    proc = subprocess.Popen(
        ["mdiff-train", "--example", "--preset", "tiny", "--steps", "100000", "--batch-size",
         "4", "--save-every", "3", "--log-every", "3", "--procs", "2", "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.pt").exists() or len(_workers(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        time.sleep(0.5 * victim)  # the first kill lands near a save, the second between
        os.kill(_workers(proc.pid)[victim], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 60  # the other rank did not wait for a timeout
    assert proc.returncode == 2
    said = [line for line in err.strip().splitlines() if not line.startswith(("step ",
                                                                               "mdiff-train: "))]
    assert said == [], said  # no launcher or torch log lines
    last = err.strip().splitlines()[-1]
    assert last.startswith("mdiff-train: error: process ") and "(exit code -9)" in last
    assert f"holds step {checkpoint.load(out / 'checkpoint.pt')['step']}: go on with " \
           f"mdiff-train --resume --out {out}" in last
    assert not any(w for w in _workers(proc.pid))  # no worker left behind
    state = checkpoint.load(out / "checkpoint.pt")  # whole, or this raises
    step = int(state["step"])
    straight = mdiff.train(example=True, preset="tiny", out=tmp_path / "straight",
                           train={"steps": step + 3, "batch_size": 4, "save_every": 3,
                                  "log_every": 3}, procs=2)
    resumed = mdiff.train(preset="tiny", out=out, resume=True, train={"steps": step + 3},
                          procs=2)
    _, want = _weights(straight)
    _, got = _weights(resumed)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_cli_procs_errors_are_one_line(capsys):
    assert train_main(["--example", "--preset", "tiny", "--out", "unused", "--procs", "2",
                       "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiple of the 2 processes" in err


def test_sampling_split_over_processes_gives_the_same_volumes(tmp_path):
    ckpt = mdiff.train(example=True, preset="tiny", out=tmp_path / "run",
                       train={"steps": 2}, log=None)
    alone = mdiff.load(ckpt, device="cpu").sample(3, steps=3, seed=5)
    distributed.launch(2, _sample_entry, str(ckpt), str(tmp_path / "s"))
    got = np.stack([mdiff.read_volume(tmp_path / "s" / f"sample_{i:03d}.tif")
                    for i in range(3)])
    np.testing.assert_array_equal(got, alone)
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["processes"] == 2 and info["count"] == 3


def _sample_entry(ckpt, out):
    from mdiff.sampling import sample_to_dir

    sample_to_dir(ckpt, out, n=3, steps=3, seed=5, device="cpu", log=lambda text: None)


def test_one_volume_shares_its_windows_over_processes_bit_for_bit(tmp_path):
    """A volume larger than the training cube, fewer volumes than processes: every step's
    window groups are shared over the two processes, each window conditioned on its own drawn
    composition, and the fused x̂_0 is gathered in the one-process order."""
    ckpt = Path(__file__).resolve().parent / "pin" / "tiny3d.pt"
    flags = dict(size=(16, 16, 40), steps=3, seed=2, windows=2)
    alone = mdiff.load(ckpt, device="cpu").sample(1, **flags)
    distributed.launch(2, _windows_entry, str(ckpt), str(tmp_path / "w"), flags)
    got = mdiff.read_volume(tmp_path / "w" / "sample_000.tif")
    np.testing.assert_array_equal(got, alone[0])
    info = json.loads((tmp_path / "w" / "samples.json").read_text())
    assert info["processes"] == 2 and info["processes_share"] == "windows"
    assert info["tiling"] == "windows" and info["windows"] > 2 and info["count"] == 1


def _windows_entry(ckpt, out, flags):
    from mdiff.sampling import sample_to_dir

    sample_to_dir(ckpt, out, n=1, device="cpu", log=lambda text: None, **flags)


def test_python_m_mdiff_dispatches_the_commands(capsys):
    from mdiff.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["metrics", "--version"])
    assert exc.value.code == 0 and "mdiff-metrics" in capsys.readouterr().out
    assert main(["nonsense"]) == 2 and "usage: python -m mdiff" in capsys.readouterr().err

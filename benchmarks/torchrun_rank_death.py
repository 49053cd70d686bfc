"""A rank of a torchrun training killed mid-run: how long the others take to stop, what the
user reads, and whether the last checkpoint is whole and resumes.

    python benchmarks/torchrun_rank_death.py [--kills 3]

Each repetition starts ``torchrun --standalone --nproc-per-node 2 -m mdiff train --example
--preset tiny`` (one thread a process, a save every 3 steps), waits for the first checkpoint,
SIGKILLs one worker (the second one, then the first, alternately), and measures the seconds
until torchrun has exited and no worker is left. Then the checkpoint is loaded (it must be
whole) and the run goes on under torchrun with ``--resume`` for 3 steps. ``--procs`` has its
own test (tests/test_distributed.py); this is torchrun's agent, which stops the others and
reports in its own words: its lines are counted here, not shaped. Writes
benchmarks/results/torchrun_rank_death_cpu.json.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mdiff
from mdiff import checkpoint
from mdiff.io import atomic_path

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def workers(pid):
    """PIDs of the worker processes torchrun (``pid``, its agent) started: its children."""
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return sorted(int(p) for p, pp in rows if int(pp) == pid)


def alive(out):
    """PIDs of processes still running with ``out`` on their command line."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(out) in line and "ps -eo" not in line]


def torchrun(out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "mdiff", "train", *extra, "--threads", "1", "--out", str(out)]


def one(out, victim):
    proc = subprocess.Popen(torchrun(out, "--example", "--preset", "tiny", "--steps", "100000",
                                     "--batch-size", "4", "--save-every", "3", "--log-every",
                                     "3"), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() or len(workers(proc.pid)) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"torchrun did not start a run:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(workers(proc.pid)[victim], signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    stopped = time.monotonic() - killed
    left = alive(out)
    state = checkpoint.load(out / "checkpoint.pt")  # whole, or this raises
    step = int(state["step"])
    resumed = subprocess.run(torchrun(out, "--resume", "--steps", str(step + 3)), env=ENV,
                             capture_output=True, text=True, timeout=600)
    last = json.loads((out / "loss.jsonl").read_text().rstrip().rsplit("\n", 1)[-1])["step"]
    lines = err.strip().splitlines()
    return {"victim": victim, "seconds_to_stop": round(stopped, 2), "exit": proc.returncode,
            "workers_left": len(left), "stderr_lines": len(lines),
            "stderr_lines_not_progress": sum(not x.startswith(("step ", "mdiff-train: "))
                                             for x in lines),
            "mdiff_error_lines": [x for x in lines if x.startswith("mdiff-train: error")],
            "checkpoint_step": step, "resume_exit": resumed.returncode,
            "resumed_to_step": last}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for k in range(args.kills):
        with tempfile.TemporaryDirectory() as tmp:
            row = one(Path(tmp) / "run", victim=1 - k % 2)
        runs.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": "python benchmarks/torchrun_rank_death.py"
              + (f" --kills {args.kills}" if args.kills != 3 else ""),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "mdiff": mdiff.__version__, "runs": runs}
    path = HERE / "results" / "torchrun_rank_death_cpu.json"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()

"""Long runs in one process: resident memory against work done, and a long training's log.

    python benchmarks/long_runs.py [--volumes 500] [--cubes 1000] [--steps 10000]

Three commands, each a fresh process with one thread, its resident set size (VmRSS
from /proc) read every 0.2 s beside how far it has got:
- ``mdiff-sample`` of ``--volumes`` volumes of 32³ from a tiny model, 3 DPM-Solver++ steps
  each (memory is what is measured, not fidelity; progress: the files in
  OUT/.partial);
- ``mdiff-evaluate --transport`` of ``--cubes`` cubes of 32³ (half cut from an mdiff-synth
  volume, half a folder of mdiff-synth volumes; progress: its "done/total cubes" lines);
- ``mdiff-train`` of ``--steps`` tiny steps with a save every 100 (progress: its loss log), then
  ``--resume`` to 100 more: the week-long run in miniature. Its log's bytes per step and the
  time of each save late in the run against early say whether a long run's files and saves
  stay bounded.
Memory "growth" is the largest RSS after the first 10 % of the work (at least 50 units) over
the RSS at that point, minus one: the issue's target is ≤ 5 %. Writes
benchmarks/results/long_runs_cpu.json (the curves, thinned) and prints them.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import mdiff
from mdiff import synth

HERE = Path(__file__).resolve().parent


def rss_mib(pid):
    """Resident memory of process ``pid`` in MiB (None once it has gone)."""
    try:
        found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None  # None too for a zombie


def watch(args, progress, env=None):
    """Run ``args``; every 0.2 s record (seconds, RSS MiB, progress()) until it exits. The
    stderr lines are kept for ``progress`` to read (``lines``) and for the error message."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    curve, start = [], time.perf_counter()
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None:
            curve.append((time.perf_counter() - start, rss, progress(lines)))
        time.sleep(0.2)
    reader.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{''.join(lines[-5:])}")
    return curve, time.perf_counter() - start, lines


def growth(curve, total):
    """(RSS at the first 10 % of the work, largest RSS after it, growth) of a curve."""
    mark = max(50, total // 10)
    after = [(rss, done) for _, rss, done in curve if done is not None and done >= mark]
    if not after:
        return None
    base = after[0][0]
    top = max(rss for rss, _ in after)
    return {"at": mark, "rss_mib": round(base, 1), "max_after_mib": round(top, 1),
            "growth": round(top / base - 1, 4)}


def thin(curve, points=60):
    """About ``points`` rows of a curve, for the file and the printout."""
    step = max(1, len(curve) // points)
    return [[round(t, 1), round(r, 1), d] for t, r, d in curve[::step] + curve[-1:]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=500)
    ap.add_argument("--cubes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--parts", default="sample,evaluate,train",
                    help="which to run (evaluate needs sample); the others' results in the "
                         "file are kept, so parts can run one by one")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    results = Path(args.results)
    saved = results / "long_runs_cpu.json"
    runs = {}
    with tempfile.TemporaryDirectory(prefix="mdiff-long-") as tmp:
        tmp = Path(tmp)
        if "sample" in parts:
            runs["sample"] = sample_part(tmp, args.volumes)
        if "evaluate" in parts:
            runs["evaluate"] = evaluate_part(tmp, args.cubes)
        if "train" in parts:
            runs["train"] = train_part(tmp, args.steps)
    command = "python benchmarks/long_runs.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    for run in runs.values():
        run["benchmark_command"] = command
    # parts may run one by one, or side by side: the others' results, read as they are now
    runs = {**(json.loads(saved.read_text())["runs"] if saved.exists() else {}), **runs}
    info = {"command": command,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "mdiff": mdiff.__version__, "runs": runs}
    results.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(info, indent=1) + "\n")
    for name, r in runs.items():
        m = r["memory"]
        print(f"{name}: {r['total']} {r['units']} in {r['seconds']:.0f} s; " + (
              f"RSS {m['rss_mib']:.0f} MiB at {m['at']}, at most {m['max_after_mib']:.0f} MiB "
              f"after: growth {100 * m['growth']:+.1f} %" if m else "too short to judge"))
        print("   " + "  ".join(f"{d}:{rss:.0f}" for _, rss, d in r["curve"][::6]
                                if d is not None))
    if "train" in runs:
        t = runs["train"]
        print(f"train: log {t['log_bytes']} bytes for {t['log_lines']} lines "
              f"({t['log_bytes_per_step']} bytes a step); steps/s first tenth "
              f"{t['steps_per_s_first_tenth']}, last tenth {t['steps_per_s_last_tenth']}; "
              f"resume exit {t['resume']['exit']} at step {t['resume']['last_step']}")


def sample_part(tmp, volumes):
    """``mdiff-sample -n volumes`` from a tiny model of the built-in example."""
    print("training a tiny model to sample from ...", file=sys.stderr)
    ckpt = mdiff.train(example=True, preset="tiny", out=tmp / "model", train={"steps": 20},
                       log=None)
    out = tmp / "samples"
    partial = out / ".partial"

    def count(_):
        return sum(1 for _ in partial.glob("sample_*")) if partial.is_dir() else None

    cmd = ["mdiff-sample", str(ckpt), str(out), "-n", str(volumes), "--size", "32",
           "--steps", "3", "--threads", "1"]
    shown = " ".join(["mdiff-sample", "CKPT", "OUT", *cmd[3:]])
    print(f"{shown} ...", file=sys.stderr)
    curve, seconds, _ = watch(cmd, count)
    return {"command": shown, "units": "volumes", "total": volumes, "seconds": seconds,
            "memory": growth(curve, volumes), "curve": thin(curve)}


def evaluate_part(tmp, cubes):
    """``mdiff-evaluate --transport`` of about ``cubes`` cubes of 32³: half cut from an
    mdiff-synth volume like the built-in example (the real cubes), half a folder of
    mdiff-synth volumes of 32³ (the generated set; what made them does not matter here)."""
    half = cubes // 2
    side = int(np.ceil((half / 4) ** 0.5))  # 4 cubes deep, side x side across
    real = tmp / "real.tif"
    example = synth.EXAMPLE
    mdiff.write_volume(real, synth.generate((128, 32 * side, 32 * side), example.fractions,
                                            example.labels, example.length, seed=7))
    samples = tmp / "generated"
    samples.mkdir()
    for i in range(cubes - half):
        mdiff.write_volume(samples / f"sample_{i:03d}.tif", synth.generate(
            (32, 32, 32), example.fractions, example.labels, example.length, seed=100 + i))
    n_real = 4 * side * side
    total = n_real + cubes - half
    pattern = re.compile(r"(\d+)/(\d+) cubes")

    def measured(lines):
        for line in lines[::-1]:
            m = pattern.search(line)
            if m:  # the real cubes are measured first, then the generated set
                return int(m.group(1)) + (0 if line.lstrip().startswith("real") else n_real)
        return 0

    cmd = ["mdiff-evaluate", str(real), str(samples), "--size", "32", "--transport", "--json"]
    shown = "mdiff-evaluate REAL OUT " + " ".join(cmd[3:])
    print(f"{shown} ({total} cubes) ...", file=sys.stderr)
    curve, seconds, _ = watch(cmd, measured)
    return {"command": shown, "units": "cubes", "total": total, "seconds": seconds,
            "memory": growth(curve, total), "curve": thin(curve)}


def train_part(tmp, steps):
    """``mdiff-train`` of ``steps`` tiny steps with saves, then ``--resume`` to 100 more."""
    run = tmp / "run"
    log = run / "loss.jsonl"

    def logged_step(_):
        try:
            return json.loads(log.read_text().rstrip().rsplit("\n", 1)[-1])["step"]
        except (OSError, ValueError, KeyError, IndexError):
            return None

    cmd = ["mdiff-train", "--example", "--preset", "tiny", "--steps", str(steps),
           "--save-every", "100", "--log-every", "10", "--threads", "1", "--out", str(run)]
    print(f"mdiff-train ... --steps {steps} ...", file=sys.stderr)
    curve, seconds, _ = watch(cmd, logged_step)
    progress = [(t, d) for t, _, d in curve]
    resume = ["mdiff-train", "--resume", "--out", str(run), "--steps", str(steps + 100),
              "--threads", "1"]
    done = subprocess.run(resume, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logged = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    return {
        "command": " ".join(["mdiff-train", *cmd[1:-1], "RUN"]), "units": "steps",
        "total": steps, "seconds": seconds, "memory": growth(curve, steps),
        "curve": thin(curve), "log_bytes": log.stat().st_size, "log_lines": len(logged),
        "log_bytes_per_step": round(log.stat().st_size / logged[-1], 2),
        "files": sorted(p.name for p in run.iterdir()),
        "checkpoint_bytes": (run / "checkpoint.pt").stat().st_size,
        "resume": {"command": f"mdiff-train --resume --out RUN --steps {steps + 100}",
                   "exit": done.returncode, "last_step": logged[-1],
                   "steps_in_order": logged == sorted(set(logged))},
        "steps_per_s_first_tenth": _rate(progress, 0, steps // 10),
        "steps_per_s_last_tenth": _rate(progress, steps - steps // 10, steps)}


def _rate(points, lo, hi):
    """Steps per second between the first times progress passed ``lo`` and ``hi``."""
    at = lambda s: next((t for t, d in points if d is not None and d >= s), None)  # noqa
    a, b = at(max(lo, 1)), at(hi)
    if a is None or b is None or b <= a:
        return None
    return round((hi - max(lo, 1)) / (b - a), 2)


if __name__ == "__main__":
    main()

"""Issue 26's speed figures, each `mdiff-sample` run in a fresh process, alone on the machine:
wall, user and system time and peak memory of the same requests from a teacher and its
distilled student (ratios in one run), and a set of volumes from one 2-thread process against
two 1-thread processes under torchrun.

    python benchmarks/fast_generation.py TEACHER.pt STUDENT.pt [--cases ...]

Cases: ``set32`` (8 volumes of 32³, each model), ``v128`` (one 128³ volume, each model: the
default path, windows with drawn compositions), ``v256`` and ``v512`` (one 256³ or 512³
volume, the student; 512³ is not in the default cases: ~40 minutes on a 2-core CPU),
``procs`` (8 volumes of 32³ from the teacher, 1 process × 2 threads against torchrun 2 × 1),
``precision`` (8 volumes of 32³ from each model at fp32 and at bf16: the speed-up of bf16 and
the share of voxels whose label it changes), ``batch`` (16 volumes of 32³ from the teacher
at the default batch and at ``--batch 8``, at fp32 and at bf16: the system time a batch's
feature maps cost above glibc's heap ceiling). The other cases run at ``mdiff-sample``'s
default precision ("auto"); each record says which ran.
Writes benchmarks/results/fast_generation_cpu.json, or --out (merged with the cases already
there, so one file holds one teacher and student pair).
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fast_generation_cpu.json"


def run(cmd, env=None):
    """Wall, user and system seconds and peak resident memory of one command (GNU time; under
    torchrun the launcher's children are summed for the times, the memory is the largest
    process's)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%U %S %M", *cmd],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        user, system, peak_kib = report.read().split()[-3:]
    return {"command": " ".join(_rel(c) for c in cmd), "wall_s": round(wall, 2),
            "user_s": float(user), "sys_s": float(system),
            "sys_over_user": round(float(system) / max(float(user), 1e-9), 3),
            "peak_rss_gib": round(int(peak_kib) / 2**20, 3)}


def _rel(text):
    if text == sys.executable:
        return "python"
    try:
        return str(Path(text).resolve().relative_to(ROOT)) if "/" in text else text
    except ValueError:
        return text


def sample(ckpt, out, *flags, threads=2):
    got = run(["mdiff-sample", str(ckpt), str(out), "--seed", "0", "--threads", str(threads),
               *flags])
    info = json.loads((Path(out) / "samples.json").read_text())
    got.update(precision=info["precision"], batch=info["batch"])
    return got


def precisions(ckpt, tmp, name):
    """8 volumes of 32³ at fp32 and at bf16 from the same seed: times and changed labels."""
    from mdiff.io import read_volume

    got = {p: sample(ckpt, tmp / f"precision_{name}_{p}", "-n", "8", "--precision", p)
           for p in ("fp32", "bf16")}
    shares = [float((read_volume(tmp / f"precision_{name}_fp32" / f) !=
                     read_volume(tmp / f"precision_{name}_bf16" / f)).mean())
              for f in (f"sample_{i:03d}.tif" for i in range(8))]
    got["bf16_speedup"] = round(got["fp32"]["wall_s"] / got["bf16"]["wall_s"], 2)
    got["voxels_changed"] = {"mean": round(sum(shares) / len(shares), 6),
                             "max": round(max(shares), 6)}
    return got


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("student")
    ap.add_argument("--cases", nargs="+", default=["set32", "v128", "v256", "procs"])
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="results file (default %(default)s)")
    args = ap.parse_args(argv)
    out = args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    command = "python benchmarks/fast_generation.py " + " ".join(
        [_rel(args.teacher), _rel(args.student), "--cases", *args.cases]
        + ([] if out == RESULTS else ["--out", _rel(str(out))]))
    results.update({"device": f"CPU ({platform.machine()}), {_cores()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                    "teacher": _rel(args.teacher), "student": _rel(args.student),
                    "command": command})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in args.cases:
            if case == "set32":
                got = {name: sample(ck, tmp / f"{case}_{name}", "-n", "8")
                       for name, ck in (("teacher", args.teacher), ("student", args.student))}
            elif case == "v128":
                got = {name: sample(ck, tmp / f"{case}_{name}", "-n", "1", "--size", "128")
                       for name, ck in (("teacher", args.teacher), ("student", args.student))}
            elif case in ("v256", "v512"):
                got = {"student": sample(args.student, tmp / case, "-n", "1", "--size",
                                         case[1:])}
            elif case == "procs":
                one = sample(args.teacher, tmp / "procs_1", "-n", "8")
                two = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "mdiff", "sample", args.teacher,
                           str(tmp / "procs_2"), "-n", "8", "--seed", "0"],
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
                same = all((tmp / "procs_1" / f).read_bytes() == (tmp / "procs_2" / f)
                           .read_bytes() for f in (f"sample_{i:03d}.tif" for i in range(8)))
                got = {"one_process_2_threads": one, "two_processes_1_thread": two,
                       "same_volumes": same, "ratio": round(two["wall_s"] / one["wall_s"], 3)}
            elif case == "batch":
                got = {f"{p}_{b}": sample(args.teacher, tmp / f"batch_{p}_{b}", "-n", "16",
                                          "--precision", p, *([] if b == "default" else
                                                              ["--batch", b]))
                       for p in ("fp32", "bf16") for b in ("default", "8")}
            elif case == "precision":
                got = {name: precisions(ck, tmp, name)
                       for name, ck in (("teacher", args.teacher), ("student", args.student))}
            else:
                raise SystemExit(f"unknown case {case}")
            if "teacher" in got and "student" in got and case != "precision":
                got["speedup"] = round(got["teacher"]["wall_s"] / got["student"]["wall_s"], 2)
            got["run_by"] = command  # the file may merge cases of several runs
            results[case] = got
            print(case, json.dumps(got, indent=1), flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")


def _cores():
    import os

    return os.cpu_count()


if __name__ == "__main__":
    main()

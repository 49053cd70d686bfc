"""What keeping freed memory (``runtime.keep_freed_memory``, which the sampling commands call)
does to CPU sampling: wall, user and system time and peak memory of the same volumes, each way
in a fresh process, alone on the machine.

    python benchmarks/allocator.py CKPT [--count 8] [--size 32] [--threads 2]

Writes benchmarks/results/allocator_cpu.json.
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = """
import hashlib, json, resource, sys, time
import torch
import mdiff
from mdiff.runtime import keep_freed_memory
ckpt, count, size, threads, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads(threads)
took = keep_freed_memory() if keep else False
gen = mdiff.load(ckpt, device="cpu")
start = time.perf_counter()
volumes = gen.sample(count, size=size, seed=0)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"keep_freed": took, "wall_s": wall, "user_s": usage.ru_utime,
                  "sys_s": usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024,
                  "sha256": hashlib.sha256(volumes.tobytes()).hexdigest()}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = {}
    for keep in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", CHILD, args.checkpoint, str(args.count),
                              str(args.size), str(args.threads), keep],
                             capture_output=True, text=True, check=True)
        rows["kept" if keep == "1" else "default"] = json.loads(out.stdout.splitlines()[-1])
        print(rows, file=sys.stderr)
    result = {"command": "python benchmarks/allocator.py " + " ".join(argv or sys.argv[1:]),
              "device": f"CPU ({platform.processor() or platform.machine()}), "
                        f"{args.threads} threads",
              "count": args.count, "size": args.size, "date": time.strftime("%Y-%m-%d"),
              "same_volumes": rows["kept"]["sha256"] == rows["default"]["sha256"], **rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocator_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, r in rows.items():
        print(f"{name:>8}: wall {r['wall_s']:.1f} s, user {r['user_s']:.1f} s, sys "
              f"{r['sys_s']:.1f} s ({100 * r['sys_s'] / r['user_s']:.0f} % of user), peak "
              f"{r['peak_rss_bytes'] / 2**30:.2f} GiB")
    print(f"same volumes: {result['same_volumes']}")


if __name__ == "__main__":
    main()

"""Wall time and peak memory of the full metrics report (all phases and figures, S2 to r = 64
on three axes) on synthetic 3-phase volumes, with the brute-force numpy reference at 128³ as
the yardstick. Prints a table and writes results/metrics_speed.json.

    python benchmarks/metrics_speed.py [--sizes 128 256 512] [--threads N]
"""
import argparse
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import reference as ref  # noqa: E402
from mdiff import metrics, synth  # noqa: E402
from mdiff.phases import PhaseMap  # noqa: E402


def numpy_report(volume, r_max):
    """The same figures by vectorised brute-force numpy (no Cython)."""
    out = []
    for label in np.unique(volume):
        mask = volume == label
        out.append((ref.euler_counts(mask),
                    [ref.crossings_vectorised(volume, label, o) for o in ref.OFFSETS],
                    ref.s2(mask, r_max)))
    return out, ref.tpb_edges(volume)


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, wall, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--r-max", type=int, default=64)
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        volume = synth.generate((size,) * 3, seed=size)
        pm = PhaseMap.from_volume(volume)
        metrics.describe(volume[:32, :32, :32], pm, 8)  # warm-up
        _, wall, peak = timed(lambda: metrics.describe(volume, pm, args.r_max,
                                                       threads=args.threads))
        rows.append({"what": "mdiff", "size": size, "seconds": wall, "peak_mb": peak / 2**20})
        print(f"mdiff    {size:>4}^3  {wall:8.3f} s  {peak / 2**20:8.1f} MB beyond the input",
              flush=True)
    ref_size = 128
    volume = synth.generate((ref_size,) * 3, seed=ref_size)
    _, wall, peak = timed(lambda: numpy_report(volume, args.r_max))
    rows.append({"what": "numpy reference", "size": ref_size, "seconds": wall,
                 "peak_mb": peak / 2**20})
    print(f"numpy    {ref_size:>4}^3  {wall:8.3f} s  {peak / 2**20:8.1f} MB (brute-force yardstick)")
    big = max(args.sizes)
    t_big = next(r["seconds"] for r in rows if r["size"] == big and r["what"] == "mdiff")
    extrapolated = t_big * (750 / big) ** 3
    print(f"750^3 extrapolated from {big}^3: {extrapolated:.1f} s")
    info = {"machine": f"{platform.machine()} {platform.processor()}",
            "threads": args.threads or metrics.default_threads(), "r_max": args.r_max,
            "rows": rows, "extrapolated_750_seconds": extrapolated}
    out = HERE / "results" / "metrics_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()

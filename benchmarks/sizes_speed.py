"""What local thickness and chord lengths cost on whole volumes, against the rest of the
``mdiff-metrics`` table (``metrics.describe`` without ``sizes``), one thread.

    python benchmarks/sizes_speed.py ../shared/data/berea_2phase_200.tif \\
        ../shared/data/nmc_3phase_256.tif

Writes benchmarks/results/sizes_speed.json: per volume the table's seconds, and per phase the
seconds of the distance transform, the local thickness and the chords, with the figures.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import mdiff
from mdiff import metrics, sizes
from mdiff.phases import PhaseMap

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volumes", nargs="+")
    ap.add_argument("--out", default=str(RESULTS / "sizes_speed.json"))
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = ap.parse_args(argv)
    rows = []
    for path in args.volumes:
        volume = mdiff.read_volume(path)
        pm = PhaseMap.from_volume(volume)
        _, table = timed(metrics.describe, volume, pm, 64, "closed", None, None, 1)
        row = {"volume": os.path.relpath(path, Path(__file__).resolve().parents[1]),
               "shape": list(volume.shape), "table_seconds": round(table, 2), "phases": []}
        for i, label in enumerate(pm.labels):
            _, edt = timed(sizes.distance_squared, volume, pm, i)
            dist, thick = timed(sizes.thickness_distribution, volume, pm, i)
            chord, chords = timed(sizes.mean_chord, volume, pm, i)
            row["phases"].append({
                "label": int(label), "edt_seconds": round(edt, 2),
                "local_thickness_seconds": round(thick, 2),
                "chords_seconds": round(chords, 2),
                "mean_thickness": None if dist is None else dist["mean"],
                "max_thickness": None if dist is None or not dist["radius"]
                else dist["radius"][-1], "mean_chord": chord})
            print(f"{row['volume']} label {label}: distance transform {edt:.2f} s, local "
                  f"thickness {thick:.2f} s (mean {row['phases'][-1]['mean_thickness']:.2f}), "
                  f"chords {chords:.2f} s (mean {chord:.2f}); the table {table:.2f} s",
                  flush=True)
        row["sizes_over_table"] = round(sum(p["local_thickness_seconds"] + p["chords_seconds"]
                                            for p in row["phases"]) / table, 1)
        rows.append(row)
    out = {"command": "python benchmarks/sizes_speed.py " + " ".join(
               os.path.relpath(p, Path(__file__).resolve().parents[1]) for p in args.volumes),
           "machine": platform.processor() or platform.machine(), "threads": 1,
           "note": args.note, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out + ".part")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main()

"""Which piece sizes a generated phase lacks: the local-thickness distribution of one phase
pooled over real cubes and over each set of generated volumes.

    python benchmarks/size_distribution.py ../shared/data/berea_2phase_200.tif --label 0 \\
        --region 150: --region 0:150 --sets runs/curve_berea_2phase_200/samples_1600 ... \\
        --name berea_levers

For each set, the share of the phase's voxels whose local thickness (a radius, voxels;
``mdiff.sizes``) falls in each bin, pooled over its cubes (real: the 32³ grid cubes of each
``--region`` of z; generated: every volume of the folder). Writes
benchmarks/results/size_distribution_<name>.json and prints a table.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import mdiff
from mdiff import evaluate, sizes
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent
EDGES = (1, 2, 3, 4, 5, 6, 8, 10, 1e9)


def pooled(cubes, phase_map, phase):
    """Shares of the phase's voxels per radius bin [EDGES[k], EDGES[k+1]), and the count."""
    counts = np.zeros(len(EDGES) - 1)
    for cube in cubes:
        squared = sizes.local_thickness_squared(np.ascontiguousarray(cube), phase_map, phase)
        if squared is None:
            continue
        r2 = np.bincount(squared.ravel())
        r2[0] = 0
        radius = np.sqrt(np.arange(len(r2)))
        counts += np.histogram(radius, bins=EDGES, weights=r2)[0]
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def _region(text):
    lo, _, hi = text.partition(":")
    return int(lo or 0), (int(hi) if hi else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real")
    ap.add_argument("--label", type=int, required=True)
    ap.add_argument("--region", action="append", default=[], help="z0:z1 of the real cubes")
    ap.add_argument("--cube", type=int, default=32)
    ap.add_argument("--sets", nargs="+", default=[])
    ap.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    volume = mdiff.read_volume(args.real)
    phase_map = PhaseMap.from_volume(volume)
    phase = list(phase_map.labels).index(args.label)
    rows = []
    for text in args.region or [":"]:
        lo, hi = _region(text)
        cubes = evaluate.grid_cubes(volume, args.cube, (lo, hi or volume.shape[0]))
        rows.append({"set": f"real z {text}", "cubes": len(cubes),
                     "shares": pooled(cubes, phase_map, phase)})
    for folder in args.sets:
        files = sorted(Path(folder).glob("sample_*.tif"))
        rows.append({"set": folder, "cubes": len(files), "shares": pooled(
            (mdiff.read_volume(f) for f in files), phase_map, phase)})
    bins = [f"[{a:g}, {b:g})" if b < 1e8 else f">= {a:g}" for a, b in zip(EDGES, EDGES[1:])]
    print("radius  " + "  ".join(f"{b:>9}" for b in bins))
    for row in rows:
        print(f"{row['set']}\n        " + "  ".join(f"{s:9.3f}" for s in row["shares"]))
    out = {"command": "python benchmarks/size_distribution.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "label": args.label, "cube": args.cube, "bins": bins, "rows": rows}
    path = HERE / "results" / f"size_distribution_{args.name}.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(HERE.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""How closely a graded volume follows its requested fraction profile, slab by slab.

    mdiff-sample CKPT graded/ -n 1 --size 128 --fractions-along z 0:0.30,0.50,0.20 1:0.55,0.33,0.12
    python benchmarks/graded_profile.py graded/ [--slab 16]

Reads the profile from graded/samples.json; per slab of --slab voxels along the graded axis
(target at the slab's centre) prints requested and generated fractions and writes
benchmarks/results/graded_profile.json.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import mdiff
from mdiff.descriptors import profile_at

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--slab", type=int, default=16)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    info = json.loads((Path(args.folder) / "samples.json").read_text())
    graded = info["condition"]["graded"]
    points = [(p, tuple(v)) for p, v in graded["points"]]
    k = "zyx".index(graded["axis"])
    rows = []
    for name in info["files"]:
        vol = np.moveaxis(mdiff.read_volume(Path(args.folder) / name), k, 0)
        for a in range(0, vol.shape[0] - args.slab + 1, args.slab):
            got = [float(np.mean(vol[a:a + args.slab] == v)) for v in info["labels"]]
            want = profile_at(points, (a + args.slab / 2 - 0.5) / (vol.shape[0] - 1))
            rows.append({"file": name, "start": a, "requested": want, "generated": got,
                         "max_abs_error": float(np.max(np.abs(np.subtract(got, want))))})
            print(f"{name} {graded['axis']} {a:>4}-{a + args.slab - 1:<4} requested "
                  f"{', '.join(f'{x:.3f}' for x in want)}  generated "
                  f"{', '.join(f'{x:.3f}' for x in got)}  |error| {rows[-1]['max_abs_error']:.3f}")
    errors = [r["max_abs_error"] for r in rows]
    print(f"largest error over slabs and phases {max(errors):.3f}, mean {np.mean(errors):.3f}")
    out = {"command": "python benchmarks/graded_profile.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "sampled_with": {k2: info[k2] for k2 in ("checkpoint_step", "size", "sampler",
                                                     "steps", "tiling", "condition")},
           "rows": rows, "max_abs_error": max(errors), "mean_abs_error": float(np.mean(errors))}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / "graded_profile.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

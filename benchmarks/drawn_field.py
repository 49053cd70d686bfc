"""Drawn compositions of large volumes, by windows against made whole under a field of the same
draws (issue 26): how the volumes' composition varies and follows its draws, and what each
costs.

    python benchmarks/drawn_field.py spread CKPT VOLUME --real-region 192: --sets DIR [DIR ...]
    python benchmarks/drawn_field.py speed CKPT

``spread``: each set's volumes (``mdiff-sample`` directories of one size S, made with drawn
compositions) against the real volume's non-overlapping S³ cubes of the region: the mean and
sd of each phase's whole-volume fraction and the spread ratio sd_gen / sd_real; and, since a
set's draws are a function of its seed alone, the draws recomputed (``conditioning.
drawn_field``: the windows' draws blended with their fusion weights, what both ways are
conditioned on) and each volume's and each of its 32³ sub-cubes' fractions regressed on them
(slope, and mean absolute error). ``speed``: one S³ volume (``--size``, default 128) by windows
and made whole, and separate volumes of the training cube's size holding a quarter of its
voxels, each a fresh ``mdiff-sample`` of 2 threads, alone; the figure is time per voxel
against the separate volumes'.

Writes benchmarks/results/drawn_field_NAME.json (NAME from --name, default the volume's or
the checkpoint's parent directory's name), merged with what is there.
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fast_generation import _rel, sample  # noqa: E402


def _fractions(volume, labels):
    return [float(np.count_nonzero(volume == v)) / volume.size for v in labels]


def real_cubes(volume, region, side, labels):
    """Fractions (K, phases) of the region's non-overlapping side³ cubes."""
    lo, hi = region
    part = volume[lo:hi]
    out = []
    for z in range(0, part.shape[0] - side + 1, side):
        for y in range(0, part.shape[1] - side + 1, side):
            for x in range(0, part.shape[2] - side + 1, side):
                out.append(_fractions(part[z:z + side, y:y + side, x:x + side], labels))
    return np.array(out)


def draws_of(gen, info):
    """(n, phases, *grid) fractions of the field a set's draws make (the same draws whether it
    was made by windows or whole)."""
    from mdiff import conditioning

    plan = gen.plan(size=info["size"], count=info["count"], seed=info["seed"], tiling="whole")
    field = conditioning.for_batch(plan, gen.record.descriptors, gen.model.factor, gen.patch,
                                   0, info["count"])
    return field.fractions(gen.phase_map.n).numpy(), gen.model.factor


def _fit(x, y):
    x, y = np.asarray(x), np.asarray(y)
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else float("nan")
    return {"slope": round(slope, 3), "mean_abs_error": round(float(np.abs(y - x).mean()), 4),
            "corr": round(float(np.corrcoef(x, y)[0, 1]), 3) if np.ptp(x) > 0 else None}


def spread(args):
    import mdiff

    volume = mdiff.read_volume(args.volume)
    gen = mdiff.load(args.ckpt, device="cpu")
    labels = [int(v) for v in gen.phase_map.labels]
    lo, _, hi = args.real_region.partition(":")
    region = (int(lo or 0), int(hi) if hi else volume.shape[0])
    out = {"real_region": args.real_region, "sets": {}}
    for d in args.sets:
        info = json.loads((Path(d) / "samples.json").read_text())
        side = info["size"][0]
        vols = [mdiff.read_volume(Path(d) / f) for f in info["files"]]
        got = np.array([_fractions(v, labels) for v in vols])
        real = real_cubes(volume, region, side, labels)
        field, cell = draws_of(gen, info)
        sub = 32 if side % 32 == 0 else side
        k = sub // cell
        cubes_x, cubes_y = [], []
        for v, f in zip(vols, field):
            for z, y, x in np.ndindex(*(s // sub for s in v.shape)):
                piece = v[z * sub:(z + 1) * sub, y * sub:(y + 1) * sub, x * sub:(x + 1) * sub]
                cubes_y.append(_fractions(piece, labels))
                cubes_x.append(f[:, z * k:(z + 1) * k, y * k:(y + 1) * k,
                                 x * k:(x + 1) * k].mean((1, 2, 3)))
        cubes_x, cubes_y = np.array(cubes_x), np.array(cubes_y)
        drawn = field.mean((2, 3, 4))
        out["sets"][_rel(str(Path(d).resolve()))] = {
            "tiling": info["tiling"], "drawn": info["condition"]["drawn"], "size": side,
            "count": len(vols), "seconds": info["seconds"], "threads": info["threads"],
            "real_cubes": len(real),
            "mean": got.mean(0).round(4).tolist(), "real_mean": real.mean(0).round(4).tolist(),
            "sd": got.std(0, ddof=1).round(4).tolist(),
            "real_sd": real.std(0, ddof=1).round(4).tolist(),
            "spread": (got.std(0, ddof=1) / real.std(0, ddof=1)).round(2).tolist(),
            "whole_on_draws": [_fit(drawn[:, p], got[:, p]) for p in range(len(labels))],
            f"cubes{sub}_on_draws": [_fit(cubes_x[:, p], cubes_y[:, p])
                                     for p in range(len(labels))]}
        print(json.dumps({d: out["sets"][_rel(str(Path(d).resolve()))]}, indent=1), flush=True)
    return out


def speed(args):
    import mdiff

    gen = mdiff.load(args.ckpt, device="cpu")
    patch, side = gen.patch, args.size
    count = max(1, side ** 3 // patch ** 3 // 4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {"separate": sample(args.ckpt, tmp / "separate", "-n", str(count)),
                "windows": sample(args.ckpt, tmp / "windows", "-n", "1", "--size", str(side),
                                  "--tiling", "windows"),
                "field": sample(args.ckpt, tmp / "field", "-n", "1", "--size", str(side),
                                "--tiling", "whole")}
    per_voxel = {k: r["wall_s"] / (count * patch ** 3 if k == "separate" else side ** 3)
                 for k, r in runs.items()}
    return {"size": side, "separate_volumes": count, "runs": runs,
            "cost_per_voxel_vs_separate": {k: round(v / per_voxel["separate"], 3)
                                           for k, v in per_voxel.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("spread", "speed"))
    ap.add_argument("ckpt")
    ap.add_argument("volume", nargs="?", help="the real volume (spread)")
    ap.add_argument("--real-region", default=":", help="Z0:Z1 of the real cubes (spread)")
    ap.add_argument("--sets", nargs="+", default=[], help="sample directories (spread)")
    ap.add_argument("--size", type=int, default=128, help="the large volume's side (speed)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    if args.mode == "spread" and not (args.volume and args.sets):
        ap.error("spread needs the real volume and --sets")
    name = args.name or (Path(args.volume).stem if args.volume else
                         Path(args.ckpt).resolve().parent.name)
    path = ROOT / "benchmarks" / "results" / f"drawn_field_{name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    got = spread(args) if args.mode == "spread" else speed(args)
    got.update(device=f"CPU ({platform.machine()})", date=time.strftime("%Y-%m-%d"),
               checkpoint=_rel(str(Path(args.ckpt).resolve())),
               command="python benchmarks/drawn_field.py " + " ".join(
                   _rel(a) if "/" in a else a for a in (argv or sys.argv[1:])))
    results[args.mode] = got
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {_rel(str(path))}")


if __name__ == "__main__":
    main()

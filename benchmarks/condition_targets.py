"""A fraction-conditioned model at targets: how close are the generated fractions, and are the
volumes at a target like the real cubes of that composition?

    python benchmarks/condition_targets.py CKPT ../shared/data/nmc_3phase_256.tif --z-cut 192

For the 10th, 50th and 90th percentiles of the first phase's fraction over the training cubes
(the target vector: the mean fractions of the training cubes within ±0.02 of it), generate
--count volumes at the target with each --guidance, and report the mean absolute error of
their fractions against the target and the verdicts (``mdiff.evaluate.judge``) of their
figures against the held-out real cubes whose first-phase fraction lies within ±0.03 of the
target. ``--beyond D`` adds targets D below the least and above the largest first-phase
fraction of the training cubes (extrapolation); ``--size 128`` makes larger volumes (by
windows), judged on their fractions alone. Writes
benchmarks/results/condition_targets_<name>.json and prints a table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import evaluate
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("volume")
    ap.add_argument("--z-cut", type=int, required=True, help="held-out slab: z >= this")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    ap.add_argument("--percentiles", type=float, nargs="+", default=[10, 50, 90])
    ap.add_argument("--beyond", type=float, nargs="*", default=[],
                    help="also targets this far below the training cubes' least first-phase "
                         "fraction and above their largest (extrapolation), the other phases "
                         "in the proportions of the extreme cubes")
    ap.add_argument("--size", type=int, help="side of the generated volumes (default the "
                    "training cube's; larger ones are made by windows and judged on their "
                    "fractions alone)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--name")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = mdiff.load(args.checkpoint, device="cpu")
    if gen.recorded is None:
        sys.exit("the checkpoint is not conditioned on fractions")
    volume = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(volume)
    size = gen.patch
    s2_max = size // 2
    held = evaluate.grid_cubes(volume, size, (args.z_cut, volume.shape[0]))
    real = evaluate.describe_cubes(held, pm, s2_max)
    real_phi0 = np.array([e["phases"][0]["volume_fraction"] for e in real])
    train = gen.recorded.numpy()
    targets = []
    for q in args.percentiles:
        centre = float(np.percentile(train[:, 0], q))
        near = train[np.abs(train[:, 0] - centre) <= 0.02]
        targets.append((q, tuple(float(v) for v in near.mean(axis=0))))
    for delta in args.beyond:
        for q, sign in ((0, -1), (100, 1)):
            edge = float(np.percentile(train[:, 0], q))
            rest = train[np.abs(train[:, 0] - edge) <= 0.02][:, 1:].mean(axis=0)
            first = min(max(edge + sign * delta, 0.0), 1.0)
            targets.append((f"{'min' if sign < 0 else 'max'}{sign * delta:+g}",
                            (first, *(float(v) for v in rest / rest.sum() * (1 - first)))))
    rows = []
    for q, target in targets:
        similar = [e for e, p in zip(real, real_phi0) if abs(p - target[0]) <= 0.03]
        for w in args.guidance:
            start = time.perf_counter()
            vols = gen.sample(args.count, size=args.size, seed=0, fractions=target,
                              guidance=w)
            seconds = time.perf_counter() - start
            got = np.array([[np.mean(v == label) for label in pm.labels] for v in vols])
            row = {"percentile": q, "target": target, "guidance": w, "seconds": seconds,
                   "fractions_mae": float(np.abs(got - target).mean()),
                   "volume_mae": np.abs(got - target).mean(axis=1).tolist(),
                   "fractions_mean": got.mean(axis=0).tolist(),
                   "real_cubes_near_target": len(similar)}
            if len(similar) >= evaluate.MIN_REAL_CUBES and vols.shape[1:] == (size,) * 3:
                result = evaluate.judge(similar, {"generated": evaluate.describe_cubes(
                    list(vols), pm, s2_max)}, permutations=200)
                row["verdicts"] = [{k: v[k] for k in ("phase", "figure", "d", "spread_ratio",
                                                       "verdict", "why")}
                                   for v in result["verdicts"]]
                row["as_real"] = f"{result['as_real']} of {result['figures']}"
            rows.append(row)
            label = q if isinstance(q, str) else f"p{q:g}"
            print(f"{label} target {', '.join(f'{v:.3f}' for v in target)} w {w:g}: "
                  f"fraction MAE {row['fractions_mae']:.4f}, mean "
                  f"{', '.join(f'{v:.3f}' for v in row['fractions_mean'])}; "
                  + (f"{row['as_real']} as real against {len(similar)} held-out cubes near "
                     f"it" if "as_real" in row else "not judged (larger than the training "
                     "cube)" if args.size not in (None, size) else f"too few held-out cubes "
                     f"near it ({len(similar)})") + f" ({seconds:.0f} s)", flush=True)
    name = args.name or Path(args.volume).stem
    info = {"command": "python benchmarks/condition_targets.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "checkpoint_step": gen.step, "cube": size, "size": args.size or size,
            "rows": rows}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"condition_targets_{name}.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()

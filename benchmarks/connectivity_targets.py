"""Does a connectivity-conditioned model follow its percolating-fraction condition?

    python benchmarks/connectivity_targets.py CKPT --label 0 --name berea_1600

``--part thick`` asks the same of a model conditioned on sizes (``--condition sizes``) and its
mean local thickness; the text below says "percolating fraction" for whichever part it is.

For the 25th, 50th and 75th percentiles of one phase's percolating fraction over the training
cubes (``--percentiles``) and each ``--guidance``, generate ``--count`` volumes with
``--targets perc:LABEL=Q`` (the other values from the nearest training cube), and report the
generated volumes' percolating fraction and volume fraction of that phase (mean and sd, each
volume's the mean over z, y, x as the descriptor defines it) against the target, and the
spread of the training cubes' percolating fraction (a target "met" lies within 0.3 of it).
The completed vector then takes its fractions from a training cube of about that percolating
fraction; ``--phi F`` fixes the phase's fraction too (``--targets phi:LABEL=F,perc:...``),
which asks whether the network reads the percolating fraction itself.
Writes benchmarks/results/connectivity_targets_<name>.json and prints a table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import descriptors

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--label", type=int, required=True, help="the phase whose target is set")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    ap.add_argument("--percentiles", type=float, nargs="+", default=[25, 50, 75])
    ap.add_argument("--phi", type=float, default=None, help="also a target fraction")
    ap.add_argument("--targets", type=float, nargs="*", default=[],
                    help="percolating fractions to target besides the percentiles")
    ap.add_argument("--part", default="perc", help="the descriptor part targeted: perc or thick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = mdiff.load(args.checkpoint, device="cpu")
    labels = [int(v) for v in gen.phase_map.labels]
    cols = descriptors.columns(gen.condition, labels)
    i = labels.index(args.label)
    recorded = gen.record.descriptors.numpy()
    part = args.part
    perc = recorded[:, cols[(part, args.label)]]
    rows = []
    points = [(q, float(np.percentile(perc, q))) for q in args.percentiles]
    points += [(None, t) for t in args.targets]
    phi = "" if args.phi is None else f"phi:{args.label}={args.phi},"
    for q, target in points:
        for w in args.guidance:
            start = time.perf_counter()
            volumes = gen.sample(args.count, seed=args.seed, guidance=w,
                                 targets=f"{phi}{part}:{args.label}={target:.4f}")
            x = torch.stack([gen.phase_map.encode(v) for v in volumes])
            got = descriptors.of_batch(gen.condition, x).numpy()
            row = {"percentile": q, "target": target, "guidance": w,
                   f"{part}_mean": float(got[:, cols[(part, args.label)]].mean()),
                   f"{part}_sd": float(got[:, cols[(part, args.label)]].std(ddof=1)),
                   "phi_mean": float(got[:, i].mean()),
                   "seconds": time.perf_counter() - start}
            row["error_in_training_sd"] = abs(row[f"{part}_mean"] - target) / float(perc.std())
            rows.append(row)
            print(f"{'p%g' % q if q is not None else 'at'} target {target:.3f}  W {w:g}: "
                  f"{part} {row[f'{part}_mean']:.3f} ± {row[f'{part}_sd']:.3f} "
                  f"(error {row['error_in_training_sd']:.2f} training sd)"
                  f", phi {row['phi_mean']:.3f}", flush=True)
    out = {"command": "python benchmarks/connectivity_targets.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "checkpoint_step": gen.step, "label": args.label, "count": args.count,
           "phi_target": args.phi,
           f"training_{part}": {"mean": float(perc.mean()), "sd": float(perc.std()),
                             "cubes": int(len(perc))},
           "training_phi_mean": float(recorded[:, i].mean()), "rows": rows}
    path = HERE / "results" / f"connectivity_targets_{args.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()

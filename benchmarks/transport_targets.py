"""Transport targets (``--targets deff:LABEL=V``): are they met, and at what cost?

    python benchmarks/transport_targets.py CKPT ../shared/data/berea_2phase_200.tif \
        --region 0:150 --label 0 --name berea_1600

The real cubes of side the model's training cube, without overlap, in ``--region`` (z range)
of the volume give the phase's D_eff/D (mean over z, y, x) per cube; targets at their
``--percentiles``. For each target, ``--count`` volumes are asked with every other default
(``mdiff.selection``: candidates made and measured, those within the tolerance kept); reported
are the kept volumes' D_eff/D (mean, sd), the error of that mean in units of the real cubes'
sd (the issue's bar: 0.3), the candidates made per kept volume, the seconds, and the kept
volumes' phase fraction against the real cubes near the target. Also the model's plain draws
(the first candidates, before steering, are those) give where its D_eff/D lies unselected.
Writes benchmarks/results/transport_targets_<name>.json and prints a table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import transport
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent


def real_cubes(path, region, side, label):
    """(D_eff/D mean over axes, fraction) of the phase in each non-overlapping cube."""
    volume = mdiff.read_volume(path)
    lo, hi = (int(v) if v else None for v in region.split(":"))
    volume = volume[lo:hi]
    pm = PhaseMap.from_volume(volume)
    phase = [int(v) for v in pm.labels].index(label)
    rows = []
    for z in range(0, volume.shape[0] - side + 1, side):
        for y in range(0, volume.shape[1] - side + 1, side):
            for x in range(0, volume.shape[2] - side + 1, side):
                cube = np.ascontiguousarray(volume[z:z + side, y:y + side, x:x + side])
                fig = transport.phase_transport(cube, pm, phase)
                d = np.mean([fig[a]["effective_diffusivity"] or 0.0 for a in "zyx"])
                rows.append((float(d), float(np.mean(pm.to_index(cube) == phase))))
    return np.array(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("real")
    ap.add_argument("--region", default=":", help="z range of the real cubes, e.g. 0:150")
    ap.add_argument("--label", type=int, required=True)
    ap.add_argument("--percentiles", type=float, nargs="+", default=[25, 50, 75])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = mdiff.load(args.checkpoint, device="cpu")
    real = real_cubes(args.real, args.region, gen.patch, args.label)
    sd = float(real[:, 0].std())
    rows = []
    for q in args.percentiles:
        target = float(np.percentile(real[:, 0], q))
        request = mdiff.SampleRequest(count=args.count, seed=args.seed,
                                      targets=f"deff:{args.label}={target:.5f}",
                                      target_tolerance=args.tolerance)
        started = time.perf_counter()
        out = gen.generate(request)
        seconds = time.perf_counter() - started
        sel = out.selection
        key = sel["targets"][0]
        kept = [sel["made"][j] for j in sel["kept_candidates"]]
        values = np.array([m["values"][key] for m in kept])
        near = real[np.abs(real[:, 0] - target) <= max(sel["tolerance"] * target, 1e-9)]
        first = sel["made"][:min(8, len(sel["made"]))]  # the plain draws of the first batch
        rows.append({
            "percentile": q, "target": target, "kept": len(kept), "asked": args.count,
            "candidates": sel["candidates"], "seconds": seconds,
            "kept_mean": float(values.mean()) if len(values) else None,
            "kept_sd": float(values.std()) if len(values) else None,
            "error_in_real_sd": float(abs(values.mean() - target) / sd) if len(values) else None,
            "kept_fraction": float(np.mean([m["fraction"] for m in kept])) if kept else None,
            "real_fraction_near_target": float(near[:, 1].mean()) if len(near) else None,
            "plain_draws_deff": [m["values"][key] for m in first],
            "tolerance": sel["tolerance"], "steered": sel["steered"]})
        r = rows[-1]
        print(f"p{q:g}: target {target:.4f}  kept {r['kept']}/{args.count} of "
              f"{r['candidates']} candidates  mean {r['kept_mean']}  err/sd "
              f"{r['error_in_real_sd']}  phi {r['kept_fraction']} (real near "
              f"{r['real_fraction_near_target']})  {seconds:.0f} s", flush=True)
    result = {
        "command": "python benchmarks/transport_targets.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "checkpoint_step": gen.step, "threads": torch.get_num_threads(),
        "real_cubes": len(real), "real_deff_mean": float(real[:, 0].mean()), "real_deff_sd": sd,
        "real_deff_percentiles": {str(q): float(np.percentile(real[:, 0], q))
                                  for q in (10, 25, 50, 75, 90)},
        "rows": rows}
    out = HERE / "results" / f"transport_targets_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()

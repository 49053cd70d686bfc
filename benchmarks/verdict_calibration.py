"""How often the verdict calls two sets drawn from one distribution "differs", at set sizes
from 3 to 168: the permutation test of ``mdiff.verdict.judge`` beside the split floor it
replaced (real-vs-real splits carried to the compared sizes by √(1/m + 1/n)).

Per-cube figures are drawn by hand (no volumes): two phases, φ ~ N(0.4, 0.05) per cube, S_V
and χ_V independent normal noise, S2 a curve of φ, so the 8 figures of a judgement are partly
correlated (φ of the two phases is one figure twice) as real figures are. For each size pair
``--reps`` judgements of new draws; the rate's standard error is taken over the repetitions.

    python benchmarks/verdict_calibration.py

Prints a table and writes benchmarks/results/verdict_calibration.json.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from mdiff import verdict  # noqa: E402
from mdiff.stats import size_scale, wasserstein1  # noqa: E402
from test_evaluate import _entries as entries  # noqa: E402  (the one definition)

SIZES = [(3, 64), (8, 64), (16, 48), (32, 128), (64, 64), (168, 168)]


def split_floor_differs(real, gen, permutations, seed, level):
    """The verdicts the split floor gave (mdiff before the permutation test), for the W1
    figures: real cubes split into a = min(m, n // 2) and n − a, their W1/σ carried by
    size_scale; a figure differs above the level quantile. Returns (differs, figures)."""
    rv, gv = verdict._per_cube(real), verdict._per_cube(gen)
    n, m = len(real), len(gen)
    a = min(m, n // 2)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(permutations)]
    scale = size_scale(m, n, a, n - a)
    differs = total = 0
    for key, vals in rv["figures"].items():
        sd = vals.std(ddof=1)
        floor = np.array([wasserstein1(vals[p[:a]], vals[p[a:]]) for p in perms]) / sd
        differs += wasserstein1(gv["figures"][key], vals) / sd > np.quantile(floor * scale,
                                                                             level)
        total += 1
    return differs, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for m, n in SIZES:
        rng = np.random.default_rng(1000 * m + n)
        perm_rates, split_rates, expected = [], [], []
        for rep in range(args.reps):
            real = entries(rng.normal(0.4, 0.05, n), rng)
            gen = entries(rng.normal(0.4, 0.05, m), rng)
            res = verdict.judge(real, {"gen": gen}, args.permutations, seed=rep,
                                level=args.level)
            perm_rates.append(np.mean([v["verdict"] == "differs" for v in res["verdicts"]]))
            expected.append(res["sets"][0]["expected_as_real"]["mean"] / res["figures"])
            d, t = split_floor_differs(real, gen, args.permutations, rep, args.level)
            split_rates.append(d / t)
        row = {"generated": m, "real": n, "reps": args.reps,
               "permutation_differs": float(np.mean(perm_rates)),
               "permutation_se": float(np.std(perm_rates, ddof=1) / math.sqrt(args.reps)),
               "permutation_expected_as_real": float(np.mean(expected)),
               "split_floor_differs": float(np.mean(split_rates)),
               "split_floor_se": float(np.std(split_rates, ddof=1) / math.sqrt(args.reps))}
        rows.append(row)
        print(f"{m:4d} vs {n:4d}: permutation {100 * row['permutation_differs']:5.1f} ± "
              f"{100 * row['permutation_se']:.1f} % differs (expected as real "
              f"{100 * row['permutation_expected_as_real']:.1f} %); split floor "
              f"{100 * row['split_floor_differs']:5.1f} ± {100 * row['split_floor_se']:.1f} %",
              flush=True)
    info = {"command": "python benchmarks/verdict_calibration.py "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "level": args.level, "permutations": args.permutations,
            "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict_calibration.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()

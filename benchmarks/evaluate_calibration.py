"""Calibration of mdiff-evaluate's verdicts: how often does real judged against real "differ"?

Two ways of drawing two sets of real cubes, each repeated with --reps seeds:

- ``mixed``: all non-overlapping cubes of the volume, shuffled, the first ``--real`` form the
  real set and the next ``--generated`` the "generated" one. Both come from one population,
  so this measures the test itself: with a 95th-percentile floor about 5 % of figures should
  come out "differs".
- ``slabs``: the real set from the lower half of the volume along z, the "generated" set from
  the upper half, each on a grid shifted at random per seed. This adds the material's own
  heterogeneity between two regions (what a held-out slab is): a heterogeneous sample may
  "differ" from itself more often, and that is a fact about the sample, not the test. The
  repetitions of one volume shift the grids but compare the same two slabs, so they are not
  independent; ``--synth LENGTH`` instead makes a new ``mdiff-synth`` realisation (the volume's
  shape, fractions and labels, correlation length LENGTH) for every repetition, a stationary
  material whose slabs differ only by chance. With ``--synth`` a third way, ``independent``:
  the real set from one realisation, the "generated" one from another (what a perfect
  generator gives: its cubes are independent of the real volume).

Each rate comes with its standard error over the repetitions (the figures of one judgement
are correlated, so the binomial error of the judgements alone would understate it).

    python benchmarks/evaluate_calibration.py ../shared/data/nmc_3phase_256.tif --size 32

Prints a table and writes benchmarks/results/evaluate_calibration_<name>.json.
"""
import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import mdiff
from mdiff import evaluate, synth
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent


def shifted_cubes(volume, size, z_range, rng):
    """Non-overlapping cubes of volume[z0:z1] on a grid shifted by a random offset < size."""
    z0, z1 = z_range
    off = [int(rng.integers(0, size)) for _ in range(3)]
    sub = volume[z0 + off[0]:z1, off[1]:, off[2]:]
    return evaluate.grid_cubes(sub, size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume")
    ap.add_argument("--size", type=int, default=32, help="cube side")
    ap.add_argument("--real", type=int, default=64, help="real cubes per set (mixed)")
    ap.add_argument("--generated", type=int, default=32, help="'generated' cubes (mixed)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--transport", action="store_true")
    ap.add_argument("--synth", type=float, metavar="LENGTH",
                    help="judge a new mdiff-synth realisation like the volume in every "
                         "repetition (seed = repetition)")
    ap.add_argument("--name", help="results name (default: the file's stem and size)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    volume = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(volume)
    s2_max = args.size // 2
    name = args.name or f"{Path(args.volume).stem}_{args.size}"
    t0 = time.perf_counter()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.synth:
        fractions = [float(np.mean(volume == v)) for v in pm.labels]
        name += "" if args.name else f"_synth{args.synth:g}"
    cubes = evaluate.grid_cubes(volume, args.size)
    if len(cubes) < args.real + args.generated:
        sys.exit(f"{len(cubes)} cubes of {args.size}^3 in the volume; --real + --generated "
                 f"is {args.real + args.generated}")
    entries = evaluate.describe_cubes(cubes, pm, s2_max, args.transport,
                                      evaluate.Progress("all cubes", say))
    modes = {"mixed": [], "slabs": []}
    if args.synth:
        modes["independent"] = []
    half = volume.shape[0] // 2
    for rep in range(args.reps):
        rng = np.random.default_rng(1000 + rep)
        if args.synth:
            volume = synth.generate(volume.shape, fractions, pm.labels, args.synth, seed=rep)
            entries = evaluate.describe_cubes(evaluate.grid_cubes(volume, args.size), pm,
                                              s2_max, args.transport)
        order = rng.permutation(len(entries))
        real = [entries[i] for i in order[:args.real]]
        other = [entries[i] for i in order[args.real:args.real + args.generated]]
        modes["mixed"].append(evaluate.judge(real, {"other": other}, args.permutations,
                                             seed=rep))
        if args.synth:
            twin = synth.generate(volume.shape, fractions, pm.labels, args.synth,
                                  seed=100_000 + rep)
            twin_cubes = evaluate.grid_cubes(twin, args.size)
            pick = rng.permutation(len(twin_cubes))[:args.generated]
            modes["independent"].append(evaluate.judge(
                real, {"other": evaluate.describe_cubes([twin_cubes[i] for i in pick], pm,
                                                        s2_max, args.transport)},
                args.permutations, seed=rep))
        lower = shifted_cubes(volume, args.size, (0, half), rng)
        upper = shifted_cubes(volume, args.size, (half, volume.shape[0]), rng)
        modes["slabs"].append(evaluate.judge(
            evaluate.describe_cubes(lower, pm, s2_max, args.transport),
            {"other": evaluate.describe_cubes(upper, pm, s2_max, args.transport)},
            args.permutations, seed=rep))
        say(f"  rep {rep + 1}/{args.reps}: mixed {modes['mixed'][-1]['as_real']}/"
            f"{modes['mixed'][-1]['figures']}, slabs {modes['slabs'][-1]['as_real']}/"
            f"{modes['slabs'][-1]['figures']} as real")
    summary = {}
    for mode, results in modes.items():
        figures = sum(r["figures"] for r in results)
        differs = Counter(f"{v['phase']} {v['figure']}" for r in results
                          for v in r["verdicts"] if v["verdict"] == "differs")
        per_rep = np.array([sum(v["verdict"] == "differs" for v in r["verdicts"])
                            / r["figures"] for r in results])
        expected = [r["sets"][0].get("expected_as_real") for r in results]
        summary[mode] = {"judgements": figures, "differs": sum(differs.values()),
                         "differs_fraction": sum(differs.values()) / figures,
                         "standard_error": float(per_rep.std(ddof=1) / np.sqrt(len(per_rep))),
                         "expected_as_real": None if expected[0] is None else
                         float(np.mean([e["mean"] for e in expected])),
                         "figures_per_judgement": results[0]["figures"],
                         "by_figure": dict(differs.most_common()),
                         "sets": [results[0]["real"]["count"], results[0]["sets"][0]["count"]]}
    info = {"command": "python benchmarks/evaluate_calibration.py "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "volume": str(args.volume), "shape": list(volume.shape), "cube": args.size,
            "synth_length": args.synth,
            "reps": args.reps, "permutations": args.permutations,
            "test": modes["mixed"][0].get("test", "split floor"),
            "seconds": time.perf_counter() - t0, "summary": summary}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"evaluate_calibration_{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{Path(args.volume).name}, {args.size}^3 cubes, {args.reps} repetitions, "
          f"{args.permutations} re-labellings each")
    for mode, s in summary.items():
        worst = ", ".join(f"{k} {v}" for k, v in list(s["by_figure"].items())[:4]) or "none"
        print(f"  {mode:<11} ({s['sets'][0]} vs {s['sets'][1]} cubes): {s['differs']} of "
              f"{s['judgements']} judgements 'differs' ({100 * s['differs_fraction']:.1f} "
              f"± {100 * s['standard_error']:.1f} %); most often: {worst}")


if __name__ == "__main__":
    main()

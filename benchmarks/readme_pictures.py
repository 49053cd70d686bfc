"""The README's pictures, from a judged worked example: docs/slices.png (mid-depth slices of real
held-out cubes and generated volumes) and docs/verdict.png (the verdict plot of its report).

    python benchmarks/readme_pictures.py ../shared/data/nmc_3phase_256.tif \
        runs/example_nmc_3phase_256/samples benchmarks/results/evaluate_nmc_3phase_256/report.json

REAL is the real volume the report judged against (its real region is read from the report),
SAMPLES the folder of generated volumes; both are read, nothing is trained or sampled here.
"""
import argparse
import json
from pathlib import Path

from mdiff.evaluate import grid_cubes, plot_result, plot_slices
from mdiff.io import read_volume, volume_files
from mdiff.phases import PhaseMap

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real", help="the real volume of the report")
    ap.add_argument("samples", help="the folder of generated volumes the report judged")
    ap.add_argument("report", help="its report.json")
    ap.add_argument("--out", default=str(DOCS), help="folder of the two PNGs")
    ap.add_argument("--count", type=int, default=4, help="cubes a row")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.report).read_text())
    volume = read_volume(args.real)
    size = result["cube"]
    real = grid_cubes(volume, size, tuple(result["real_region"]))
    step = max(1, len(real) // args.count)  # spread over the slab, not its first corner
    generated = [read_volume(p) for p in volume_files(args.samples)[:args.count]]
    labels = PhaseMap.from_volume(volume).labels
    out = Path(args.out)
    plot_slices(out / "slices.png", {"real (held out)": real[::step][:args.count],
                                     "generated": generated}, labels, args.count, dpi=80)
    plot_result(out / "verdict.png", result, dpi=60)
    print(f"wrote {out / 'slices.png'} and {out / 'verdict.png'}")


if __name__ == "__main__":
    main()

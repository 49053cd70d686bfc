"""Time of mdiff-evaluate: 64 real cubes of 64³ against 64 generated ones, with and without
--transport (targets on the 2-core CPU: 30 s without, 3 minutes with).

    python benchmarks/evaluate_speed.py ../shared/data/nmc_3phase_256.tif

The generated set is one 256³ mdiff-synth volume with the real volume's fractions (cut into
64 cubes of 64³). Each run is a fresh process, timed from start to exit. Writes
benchmarks/results/evaluate_speed_cpu.json.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mdiff
from mdiff import synth
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    real = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(real)
    fractions = [float(np.mean(real == v)) for v in pm.labels]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "generated.tif"
        mdiff.write_volume(gen, synth.generate(real.shape, fractions, pm.labels, 3.0, seed=1))
        for name, extra in (("figures", []), ("figures + transport", ["--transport"])):
            command = ["mdiff-evaluate", args.volume, str(gen), "--size", str(args.size),
                       "--json"] + extra
            start = time.perf_counter()
            got = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if got.returncode:
                sys.exit(got.stderr)
            out = json.loads(got.stdout)
            runs[name] = {"seconds": seconds, "real_cubes": out["real"]["count"],
                          "generated_cubes": out["sets"][0]["count"],
                          "as_real": out["as_real"], "figures": out["figures"]}
            print(f"{name}: {seconds:.1f} s for {out['real']['count']} + "
                  f"{out['sets'][0]['count']} cubes of {args.size}^3")
    info = {"command": "python benchmarks/evaluate_speed.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "cpu": platform.processor() or platform.machine(), "runs": runs}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate_speed_cpu.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()

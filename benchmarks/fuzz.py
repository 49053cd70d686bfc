"""The fuzz test at length: many damaged files of each kind mdiff reads, and what came of them.

    python benchmarks/fuzz.py [--cases 1000] [--seed 28]

The mutations are the test suite's (``tests/test_fuzz.py``: bit flips, truncation, 4-byte
header words set to absurd sizes) on a valid TIFF, .npy and .vti volume, a folder of 2D TIFF
slices (one slice damaged) and a checkpoint. Each damaged file is read the way the commands
read it (``read_volume`` and ``volume_shape``; ``checkpoint.load`` and ``model_record``).
Counted: read as a valid volume or checkpoint, refused with one MdiffError line, and anything
else (a traceback a user would see: the target is 0); the slowest case and the growth of the
process's peak memory. Writes benchmarks/results/fuzz_cpu.json.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import mdiff  # noqa: E402
from mdiff import checkpoint, synth  # noqa: E402
from mdiff.errors import MdiffError  # noqa: E402
from mdiff.io import read_volume, volume_shape, write_volume  # noqa: E402
from test_fuzz import _mutants  # noqa: E402  (the one definition of the mutations)


def _volume(path):
    volume = read_volume(path)
    assert volume.ndim == 3 and volume.size > 0
    np.asarray(volume).sum()
    volume_shape(path)


def _checkpoint(path):
    checkpoint.model_record(checkpoint.load(path), path=path)


def run_kind(name, raw, place, read, cases, rng):
    """Mutate ``raw`` ``cases`` times, ``place`` each mutant where it is read, ``read`` it."""
    outcomes, kinds, errors = Counter(), Counter(), Counter()
    slowest = 0.0
    for kind, data in _mutants(raw, rng, cases):
        path = place(data)
        started = time.perf_counter()
        try:
            read(path)
            outcomes["read"] += 1
        except MdiffError as exc:
            one_line = str(exc).strip() and "\n" not in str(exc).strip()
            outcomes["refused, one line" if one_line else "refused, several lines"] += 1
            kinds[("flip", "cut", "absurd word")[kind]] += 1
        except Exception as exc:  # noqa: BLE001  (what the test forbids, counted here)
            outcomes["other exception"] += 1
            first = str(exc).splitlines()[0][:80] if str(exc).strip() else ""
            errors[f"{type(exc).__name__}: {first}"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    print(f"{name}: {dict(outcomes)}; slowest {slowest:.2f} s", file=sys.stderr)
    return {"cases": cases, "outcomes": dict(outcomes), "refused_by_mutation": dict(kinds),
            "other_exceptions": dict(errors.most_common(10)), "slowest_s": round(slowest, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="damaged files of each kind")
    ap.add_argument("--seed", type=int, default=28)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    kinds = {}
    with tempfile.TemporaryDirectory(prefix="mdiff-fuzz-") as tmp:
        tmp = Path(tmp)
        volume = synth.generate((12, 10, 9), (0.5, 0.3, 0.2), (0, 127, 255), 1.5, 2)
        for suffix in (".tif", ".npy", ".vti"):
            good = tmp / f"good{suffix}"
            write_volume(good, volume, voxel_size=0.5, unit="um")
            target = tmp / f"mutant{suffix}"

            def place(data, target=target):
                target.write_bytes(data)
                return target
            kinds[suffix[1:]] = run_kind(suffix, good.read_bytes(), place, _volume,
                                         args.cases, rng)
        folder = tmp / "slices"
        folder.mkdir()
        for z, image in enumerate(volume):
            tifffile.imwrite(folder / f"slice_{z}.tif", image)
        middle = folder / f"slice_{len(volume) // 2}.tif"
        original = middle.read_bytes()

        def place_slice(data):
            middle.write_bytes(data)
            return folder
        kinds["slice folder"] = run_kind("slice folder", original, place_slice, _volume,
                                         args.cases, rng)
        write_volume(tmp / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
        good = mdiff.train([tmp / "v.tif"], preset="tiny", out=tmp / "run",
                           train={"steps": 2}, log=None)
        target = tmp / "mutant.pt"

        def place_ckpt(data):
            target.write_bytes(data)
            return target
        kinds["checkpoint"] = run_kind("checkpoint", good.read_bytes(), place_ckpt, _checkpoint,
                                       args.cases, rng)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    info = {"command": "python benchmarks/fuzz.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "mdiff": mdiff.__version__, "seconds": round(time.perf_counter() - started, 1),
            "peak_memory_growth_mib": round(growth, 1), "kinds": kinds}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "fuzz_cpu.json").write_text(json.dumps(info, indent=1) + "\n")
    total = sum(k["cases"] for k in kinds.values())
    other = sum(k["outcomes"].get("other exception", 0) for k in kinds.values())
    print(f"{total} damaged files in {info['seconds']:.0f} s: {other} other exceptions; peak "
          f"memory grew {growth:.0f} MiB")


if __name__ == "__main__":
    main()

"""Transport figures: time per phase and axis, against TauFactor in the same run, and memory.

A 3-phase truncated-Gaussian structure (mdiff-synth; fractions 0.4 / 0.35 / 0.25, correlation
length 4 voxels) of each side; for every phase and axis, mdiff's solve (cluster labelling +
preconditioned CG) and TauFactor's SOR solver (when installed: pip install taufactor), both
stopped at the same plane-flux spread. The memory run solves one phase and axis of a larger
volume in a fresh process and reports its peak resident set beyond the input volume.

    python benchmarks/transport_speed.py [--sizes 128 256] [--tol 1e-2] [--memory 512]
    python benchmarks/transport_speed.py --sizes 256 --axes z --labels 0 --memory 0 --tag 256z

Prints a table and writes results/transport_speed_<device>.json.
"""
import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mdiff import synth, transport
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent
FRACTIONS, LABELS, LENGTH = (0.4, 0.35, 0.25), (0, 127, 255), 4.0


def taufactor_tau(mask, tol, device):
    """(τ, iterations, seconds) of TauFactor along axis 0, or None without TauFactor."""
    try:
        import taufactor
    except ImportError:
        return None
    start = time.perf_counter()
    solver = taufactor.Solver(mask.astype(np.uint8), device=device)
    solver.solve(verbose=False, conv_crit=tol)
    tau = float(np.ravel(solver.tau)[0])
    return (tau if tau > 0 else float("inf")), solver.iter, time.perf_counter() - start


def speed(size, tol, device, axes, labels):
    volume = synth.generate((size,) * 3, FRACTIONS, LABELS, LENGTH, seed=size)
    pm = PhaseMap(LABELS)
    rows = []
    for phase, label in enumerate(LABELS):
        if label not in labels:
            continue
        start = time.perf_counter()
        figures = transport.phase_transport(volume, pm, phase, axes, tol, device)
        total = time.perf_counter() - start
        for axis in axes:
            f = figures[axis]
            row = {"size": size, "label": label, "axis": axis, "tau": f["tortuosity_factor"],
                   "iterations": f["iterations"], "seconds": f["seconds"],
                   "flux_spread": f["flux_spread"], "converged": f["converged"],
                   "labelling_seconds": (total - sum(figures[a]["seconds"] for a in axes))}
            mask = np.moveaxis(volume == label, "zyx".index(axis), 0)
            theirs = taufactor_tau(mask, tol, device) if f["percolates"] else None
            if theirs:
                row.update(taufactor_tau=theirs[0], taufactor_iterations=theirs[1],
                           taufactor_seconds=theirs[2])
            rows.append(row)
            their = (f"TauFactor tau {row['taufactor_tau']:.4f} in {row['taufactor_seconds']:.2f}"
                     f" s ({row['taufactor_iterations']} it)" if "taufactor_tau" in row
                     else "TauFactor: -")
            print(f"{size:>4}^3 label {label:>3} {axis}: tau {f['tortuosity_factor']:.4f} in "
                  f"{f['seconds']:.2f} s ({f['iterations']} it, spread "
                  f"{f['flux_spread'] if f['flux_spread'] is not None else 0:.1e})  {their}",
                  flush=True)
    return rows


def _peak(path, tol, device, max_iter):
    """Solve label 0 along z of the volume in ``path`` (a fresh process: its peak resident set
    is this solve's, on top of the interpreter, torch and the input read beforehand)."""
    volume = np.load(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    figures = transport.phase_transport(volume, PhaseMap(LABELS), 0, "z", tol, device,
                                        max_iter=max_iter)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"size": volume.shape[0], "input_gib": volume.nbytes / 2**30,
            "rss_before_gib": before, "peak_rss_gib": peak, "beyond_input_gib": peak - before,
            "seconds": wall, "iterations": figures["z"]["iterations"],
            "tau": figures["z"]["tortuosity_factor"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--axes", default="zyx")
    ap.add_argument("--tol", type=float, default=1e-2,
                    help="plane-flux spread at which both solvers stop (TauFactor's default)")
    ap.add_argument("--labels", type=int, nargs="+", default=list(LABELS),
                    help="phases to time (labels 0 127 255)")
    ap.add_argument("--memory", type=int, default=512, help="side of the memory run (0: none)")
    ap.add_argument("--memory-iters", type=int, default=60,
                    help="CG iterations of the memory run (its peak is reached in the first)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    rows = []
    for size in args.sizes:
        rows += speed(size, args.tol, args.device, args.axes, args.labels)
    memory = None
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "volume.npy"
            np.save(path, synth.generate((args.memory,) * 3, FRACTIONS, LABELS, LENGTH,
                                         seed=args.memory))
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                memory = pool.apply(_peak, (str(path), args.tol, args.device,
                                            args.memory_iters))
        print(f"{args.memory}^3, label 0, z: {memory['seconds']:.0f} s for labelling and "
              f"{memory['iterations']} CG iterations, peak RSS {memory['peak_rss_gib']:.2f} GiB: "
              f"{memory['beyond_input_gib']:.2f} GiB beyond the process holding its "
              f"{memory['input_gib']:.2f} GiB input", flush=True)
    for size in args.sizes:
        mine = sum(r["seconds"] + r["labelling_seconds"] / len(args.axes)
                   for r in rows if r["size"] == size)
        both = [r for r in rows if r["size"] == size and "taufactor_seconds" in r]
        if both:
            ratio = sum(r["taufactor_seconds"] for r in both) / sum(
                r["seconds"] + r["labelling_seconds"] / len(args.axes) for r in both)
            worst = max(abs(r["tau"] / r["taufactor_tau"] - 1) for r in both)
            print(f"{size}^3: mdiff {mine:.0f} s for all phases and axes; TauFactor / mdiff time "
                  f"{ratio:.2f}x on the percolating ones; largest tau difference "
                  f"{100 * worst:.2f} %")
    tag = f"_{args.tag}" if args.tag else ""
    out = HERE / "results" / f"transport_speed_{device.type}{tag}.json"
    out.write_text(json.dumps({"device": name, "tol": args.tol, "rows": rows,
                               "memory": memory}, indent=1, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()

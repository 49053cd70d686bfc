"""Are volumes larger than the training cube still right, seamless and (with --periodic)
periodic, and what do they cost?

    python benchmarks/large_volume.py CKPT VOLUME.tif --size 128 --count 2

CKPT is a model trained on cubes of VOLUME.tif with its top ``--holdout`` along z held out (as
``benchmarks/fidelity.py`` trains). For every ``--tilings`` entry it generates ``--count``
volumes of ``--size``³ and reports:

1. statistics at scale: all training-size sub-cubes at half-cube stride (those straddling
   window seams included) against held-out real cubes, beside training-size samples of the
   same model, sampler and steps (the figure to match): effect size d per phase of φ, S_V,
   χ_V, TPB density and mean |ΔS2|; S2 along each axis up to r = size/2 against real crops of
   ``--size``³ cut from the whole volume, per band of r (inside the training cube, beyond it);
2. seams: the density of interface between neighbouring planes (voxel pairs across the plane
   with different labels) at window boundaries against all other planes, per axis;
3. periodic (one ``--periodic`` volume per tiling): the interface density across the wrap
   (last plane to first) against the interior planes, and χ closed − χ periodic per phase
   against the same difference in real crops;
4. cost: seconds per denoising step and peak resident memory of one volume at each of
   ``--cost-sizes``, each in a fresh process, against the fully convolutional yardstick
   (the training cube's cost per step times the volume ratio).

Figures go to results/large_volume_<name>.json and .md, with the device and command.
"""
import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff.plan import memory_needed
from mdiff.request import SampleRequest
from mdiff import evaluate, metrics
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent


def say(text):
    print(text, file=sys.stderr, flush=True)


def cost(ckpt, size, tiling, steps, threads, precision):
    """One volume, ``steps`` DPM++ steps, in this process: (seconds a step, peak RSS bytes)."""
    torch.set_num_threads(threads)
    gen = mdiff.load(ckpt, device="cpu", precision=precision)
    gen.sample(1, size=gen.patch, sampler="dpm++", steps=1, seed=0)  # warm-up
    start = time.perf_counter()
    made = gen.generate(SampleRequest(count=1, size=size, sampler="dpm++", steps=steps, seed=0,
                                      tiling=tiling))
    seconds = (time.perf_counter() - start) / steps
    return {"size": size, "tiling": tiling, "seconds_per_step": seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "estimated_bytes": memory_needed(gen.facts, made.plan, 1)}


def interface_density(volume, axis):
    """(L − 1,) fraction of voxel pairs across each plane normal to ``axis`` with different
    labels; and the same across the wrap (last plane against the first)."""
    v = np.moveaxis(volume, "zyx".index(axis), 0)
    planes = np.array([np.count_nonzero(v[i] != v[i + 1]) / v[0].size
                       for i in range(len(v) - 1)])
    return planes, np.count_nonzero(v[-1] != v[0]) / v[0].size


def seam_planes(length, plan):
    """Indices i of the planes between voxel i and i + 1 that are window boundaries."""
    if plan["tiling"] == "whole":  # attention blocks of the training size
        return [i for i in range(length - 1) if (i + 1) % plan["training_size"] == 0]
    from mdiff.tiling import window_starts
    starts = window_starts(length, plan["window"], plan["stride"], plan["periodic"])
    edges = {s for s in starts} | {s + plan["window"] for s in starts}
    return sorted(e - 1 for e in edges if 0 < e < length)


def seams(volumes, plan):
    out = {}
    for axis in "zyx":
        density = np.mean([interface_density(v, axis)[0] for v in volumes], axis=0)
        at = seam_planes(volumes[0].shape["zyx".index(axis)], plan)
        other = np.delete(density, at)
        out[axis] = {"seam_planes": at, "seam_mean": float(density[at].mean()) if at else None,
                     "other_mean": float(other.mean()), "other_std": float(other.std()),
                     "z_score": float((density[at].mean() - other.mean()) /
                                      (other.std() / math.sqrt(len(at))))
                     if at and other.std() > 0 else None}
    return out


def periodic_check(volume, real, phase_map):
    """Interface density across the wrap against interior planes, per axis; and per phase
    χ closed − χ periodic of the generated periodic volume beside the boundary term a real
    volume of its size has (``boundary_terms``)."""
    out = {"wrap": {}, "chi_closed_minus_periodic": {}}
    for axis in "zyx":
        planes, wrap = interface_density(volume, axis)
        out["wrap"][axis] = {"wrap": wrap, "interior_mean": float(planes.mean()),
                             "interior_std": float(planes.std())}
    expected = boundary_terms(real, phase_map, volume.shape[0])
    for label in phase_map.labels:
        gen = _chi(volume == label, False) - _chi(volume == label, True)
        out["chi_closed_minus_periodic"][str(label)] = {"generated": gen,
                                                        **expected[str(label)]}
    return out


def boundary_terms(real, phase_map, side):
    """Per phase, the boundary term of χ in a closed real cube of ``side``: the mean closed χ
    of real crops of sides side/4, side/2, side (and 2·side where the volume holds one) fitted
    by a·L³ + b·L² + c·L (a stationary structure's χ in a cube window: χ_V·V plus terms of
    the faces and edges), then b·side² + c·side; with the fit's residual. A periodic volume has
    no boundary, so χ closed − χ periodic of a generated periodic volume should match it (the
    wrapped χ of a real crop would not do as the reference: its wrap is not continuous)."""
    sides = [s for s in (side // 4, side // 2, side, 2 * side) if s <= min(real.shape)]
    out = {}
    for label in phase_map.labels:
        means = [np.mean([_chi(c == label, False) for c in evaluate.grid_cubes(real, s)])
                 for s in sides]
        design = np.array([[s ** 3, s ** 2, s] for s in sides], float)
        coef, *_ = np.linalg.lstsq(design, np.array(means), rcond=None)
        fit = design @ coef
        out[str(label)] = {"real_boundary_term": float(coef[1] * side ** 2 + coef[2] * side),
                           "real_fit_sides": sides, "real_mean_chi": [float(m) for m in means],
                           "real_fit_max_residual": float(np.abs(fit - means).max())}
    return out


def _chi(mask, periodic):
    v, e, f, c = metrics.euler_counts(mask, periodic=periodic)
    return int(v - e + f - c)


def s2_bands(volumes, crops, phase_map, r_max, patch):
    """Mean |ΔS2| per phase and axis in the bands r ≤ patch/2, patch/2 < r ≤ patch, r > patch."""
    def s2(vols):
        return np.mean([[metrics.two_point_correlation(v == label, r_max)
                         for label in phase_map.labels] for v in vols], axis=0)
    gen, real = s2(volumes), s2(crops)  # (phases, 3, r_max + 1)
    bands = {"r<=%d" % (patch // 2): slice(1, patch // 2 + 1),
             "%d<r<=%d" % (patch // 2, patch): slice(patch // 2 + 1, patch + 1),
             "%d<r<=%d" % (patch, r_max): slice(patch + 1, r_max + 1)}
    out = {}
    for i, label in enumerate(phase_map.labels):
        out[str(label)] = {name: {axis: float(np.abs(gen[i, a, b] - real[i, a, b]).mean())
                                  for a, axis in enumerate("zyx")}
                           for name, b in bands.items() if b.start < b.stop}
    return out, gen.tolist(), real.tolist()


def d_row(comparison):
    phases = comparison["phases"]
    row = {key: [p[key]["effect_size"] for p in phases]
           for key in ("volume_fraction", "specific_surface_area", "euler_density")}
    row["s2_mean_abs_difference"] = [p["s2_mean_abs_difference"] for p in phases]
    if "tpb_density" in comparison:
        row["tpb_ratio"] = comparison["tpb_density"]["mean"] / \
            comparison["tpb_density"]["reference_mean"]
        row["tpb_d"] = comparison["tpb_density"]["effect_size"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("volume", help="the volume the checkpoint was trained on")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--count", type=int, default=2, help="large volumes per tiling")
    ap.add_argument("--tilings", nargs="+", default=["windows", "whole"])
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--small", type=int, default=16, help="training-size samples to match")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--no-periodic", action="store_true", help="skip the periodic check")
    ap.add_argument("--cost-sizes", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--cost-steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precision", default="fp32", help="sampling precision (fp32, bf16)")
    ap.add_argument("--name", help="results name (default: the volume's stem)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--only-cost", action="store_true",
                    help="measure the cost alone (on an idle machine) into the results file "
                         "that a run of the statistics wrote")
    ap.add_argument("--only-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cost-only", nargs=2, metavar=("SIZE", "TILING"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cost_only:
        print(json.dumps(cost(args.checkpoint, int(args.cost_only[0]), args.cost_only[1],
                              args.cost_steps, args.threads, args.precision)))
        return
    torch.set_num_threads(args.threads)
    gen = mdiff.load(args.checkpoint, device="cpu", precision=args.precision)
    patch = gen.patch
    volume = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(volume)
    name = args.name or Path(args.volume).stem
    out = Path(args.results)
    if args.only_cost or args.only_reference:
        result = json.loads((out / f"large_volume_{name}.json").read_text())
        if args.only_cost:
            measure_cost(result, args)
        else:  # the real boundary term of χ, for a run made before it was computed this way
            expected = boundary_terms(volume, pm, result["size"])
            for entry in result["tilings"].values():
                for label, c in entry.get("periodic", {}).get(
                        "chi_closed_minus_periodic", {}).items():
                    c.pop("real_mean", None), c.pop("real_std", None)
                    c.update(expected[label])
        write(result, out, name, pm)
        return
    depth = volume.shape[0]
    z_cut = depth - int(round(args.holdout * depth))
    held = evaluate.grid_cubes(volume, patch, (z_cut, depth))
    crops = evaluate.grid_cubes(volume, args.size)
    say(f"{len(held)} held-out real {patch}^3 cubes, {len(crops)} real {args.size}^3 crops")
    s2_max = patch // 2
    ref = evaluate.describe_set(held, pm, s2_max)
    result = {"checkpoint": str(Path(args.checkpoint).resolve()), "step": gen.step,
              "objective": gen.diffusion.objective, "volume": str(Path(args.volume).resolve()),
              "size": args.size, "training_size": patch, "sampler": args.sampler,
              "steps": args.steps,
              "precision": args.precision,
              "device": f"CPU ({platform.processor() or platform.machine()}, "
                        f"{args.threads} threads)",
              "command": "python benchmarks/large_volume.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d")}

    t0 = time.perf_counter()
    small = gen.sample(args.small, sampler=args.sampler, steps=args.steps, seed=0)
    result["small"] = {"count": args.small, "seconds": time.perf_counter() - t0,
                       "d": d_row(evaluate.compare_sets(ref, evaluate.describe_set(
                           list(small), pm, s2_max)))}
    say(f"{args.small} samples of {patch}^3: {result['small']}")
    result["tilings"] = {}
    for tiling in args.tilings:
        t0 = time.perf_counter()
        made = gen.generate(SampleRequest(count=args.count, size=args.size,
                                          sampler=args.sampler, steps=args.steps, seed=1,
                                          tiling=tiling))
        big = made.volumes
        seconds = (time.perf_counter() - t0) / args.count
        plan = {**made.plan.layout(), "shape": list(made.plan.shape), "training_size": patch}
        cubes = [c for v in big for c in evaluate.grid_cubes(v, patch, stride=patch // 2)]
        entry = {"plan": plan, "seconds_per_volume": seconds, "sub_cubes": len(cubes),
                 "d": d_row(evaluate.compare_sets(ref, evaluate.describe_set(cubes, pm,
                                                                             s2_max)))}
        entry["s2_bands"], entry["s2_generated"], entry["s2_real"] = s2_bands(
            list(big), crops, pm, args.size // 2, patch)
        entry["seams"] = seams(list(big), plan)
        if not args.no_periodic:
            per = gen.sample(1, size=args.size, sampler=args.sampler, steps=args.steps, seed=2,
                             tiling=tiling, periodic=True)[0]
            entry["periodic"] = periodic_check(per, volume, pm)
            entry["periodic"]["closed_volume_wrap"] = {
                axis: interface_density(big[0], axis)[1] for axis in "zyx"}
        result["tilings"][tiling] = entry
        say(f"{tiling}: {seconds:.0f} s a volume; d {entry['d']}; seams "
            + " ".join(f"{a}: z={s['z_score']}" for a, s in entry["seams"].items()))

    measure_cost(result, args)
    write(result, out, name, pm)


def measure_cost(result, args):
    """Cost rows of every tiling × side in ``args``; rows of other sides already in ``result``
    are kept (measure the large sides in a later run)."""
    result["cost"] = [c for c in result.get("cost", []) if c["size"] not in args.cost_sizes]
    result["cost_device"] = f"CPU ({platform.processor() or platform.machine()}, " \
                            f"{args.threads} threads)"
    result.setdefault("cost_commands", []).append(
        "python benchmarks/large_volume.py " + " ".join(sys.argv[1:]))
    for tiling in args.tilings:
        for size in args.cost_sizes:
            cmd = [sys.executable, __file__, args.checkpoint, args.volume, "--cost-only",
                   str(size), tiling, "--cost-steps", str(args.cost_steps),
                   "--threads", str(args.threads), "--precision", args.precision]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                tail = (run.stderr.strip().splitlines() or ["?"])[-1]
                result["cost"].append({"size": size, "tiling": tiling, "refused": tail})
                say(f"cost {tiling} {size}^3: {tail}")
                continue
            row = json.loads(run.stdout.strip().splitlines()[-1])
            result["cost"].append(row)
            say(f"cost {tiling} {size}^3: {row['seconds_per_step']:.2f} s/step, peak "
                f"{row['peak_rss_bytes'] / 2**30:.2f} GiB")
    base = cost(args.checkpoint, result.get("training_size", 32), "whole", args.cost_steps,
                args.threads, args.precision)
    result["yardstick"] = {"training_cube_seconds_per_step": base["seconds_per_step"],
                           "per_voxel": base["seconds_per_step"] / base["size"] ** 3}


def write(result, out, name, pm):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"large_volume_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"large_volume_{name}.md").write_text(format_md(result, pm) + "\n")
    print(format_md(result, pm))


def _d(values):
    return " / ".join("–" if v is None else f"{v:.2f}" for v in values)


def format_md(r, pm):
    patch = r["tilings"][next(iter(r["tilings"]))]["plan"]["training_size"] if r["tilings"] \
        else None
    md = [f"# Large volumes: {Path(r['volume']).name}, {r['size']}³ from a model trained on "
          f"{patch}³ cubes", "",
          f"Checkpoint step {r['step']} ({r['objective']}), {r['sampler']} {r['steps']} steps, "
          f"{r['precision']}, {r['device']}, {r['date']}. `{r['command']}`", "",
          "## Statistics of training-size sub-cubes against held-out real cubes (d per phase)",
          "", "| volumes | d φ | d S_V | d χ_V | mean abs ΔS2 | TPB |", "|---|---|---|---|---|---|"]

    def row(name, d):
        tpb = f"{d['tpb_ratio']:.2f}× (d {d['tpb_d']:.2f})" if "tpb_ratio" in d else "–"
        return (f"| {name} | {_d(d['volume_fraction'])} | {_d(d['specific_surface_area'])} | "
                f"{_d(d['euler_density'])} | "
                + " / ".join(f"{v:.3f}" for v in d["s2_mean_abs_difference"]) + f" | {tpb} |")

    md.append(row(f"{r['small']['count']} samples of {patch}³", r["small"]["d"]))
    for tiling, e in r["tilings"].items():
        md.append(row(f"{tiling}: {e['sub_cubes']} sub-cubes of {r['size']}³ volumes "
                      f"({e['seconds_per_volume']:.0f} s each)", e["d"]))
    md += ["", "## S2 beyond the training cube: mean |ΔS2| against real crops, by band of r", "",
           "| tiling | phase | " + " | ".join(
               next(iter(next(iter(r["tilings"].values()))["s2_bands"].values())).keys()) + " |",
           "|---|---|" + "---|" * len(next(iter(next(iter(
               r["tilings"].values()))["s2_bands"].values())))]
    for tiling, e in r["tilings"].items():
        for label, bands in e["s2_bands"].items():
            md.append(f"| {tiling} | {label} | " + " | ".join(
                " / ".join(f"{v:.3f}" for v in b.values()) for b in bands.values()) + " |")
    md += ["", "(z / y / x in each cell.)", "",
           "## Seams: interface density between neighbouring planes", "",
           "| tiling | axis | at window boundaries | other planes (mean ± std) | z-score |",
           "|---|---|---|---|---|"]
    for tiling, e in r["tilings"].items():
        for axis, s in e["seams"].items():
            seam = "–" if s["seam_mean"] is None else f"{s['seam_mean']:.4f}"
            z = "–" if s["z_score"] is None else f"{s['z_score']:.2f}"
            md.append(f"| {tiling} | {axis} | {seam} | {s['other_mean']:.4f} ± "
                      f"{s['other_std']:.4f} | {z} |")
    if any("periodic" in e for e in r["tilings"].values()):
        md += ["", "## Periodic volumes", "",
               "| tiling | axis | across the wrap | interior planes | closed volume's wrap |",
               "|---|---|---|---|---|"]
        for tiling, e in r["tilings"].items():
            if "periodic" not in e:
                continue
            for axis, w in e["periodic"]["wrap"].items():
                md.append(f"| {tiling} | {axis} | {w['wrap']:.4f} | {w['interior_mean']:.4f} ± "
                          f"{w['interior_std']:.4f} | "
                          f"{e['periodic']['closed_volume_wrap'][axis]:.4f} |")
        md += ["", "| tiling | phase | χ closed − χ periodic, generated | boundary term of a "
               "real cube this size (fit residual) |", "|---|---|---|---|"]
        for tiling, e in r["tilings"].items():
            for label, c in e.get("periodic", {}).get("chi_closed_minus_periodic", {}).items():
                md.append(f"| {tiling} | {label} | {c['generated']} | "
                          f"{c['real_boundary_term']:.0f} ({c['real_fit_max_residual']:.1f}) |")
    md += ["", f"## Cost of one volume ({r.get('cost_device', r['device'])})", "",
           *[f"    {c}" for c in r.get("cost_commands", [r["command"]])], "",
           "| tiling | side | s / step | peak RSS (mdiff's estimate beyond the model) | "
           "fully convolutional yardstick, s / step |", "|---|---|---|---|---|"]
    for c in sorted(r["cost"], key=lambda c: (c["tiling"], c["size"])):
        if "refused" in c:
            md.append(f"| {c['tiling']} | {c['size']} | refused: {c['refused']} | | |")
            continue
        md.append(f"| {c['tiling']} | {c['size']} | {c['seconds_per_step']:.2f} | "
                  f"{c['peak_rss_bytes'] / 2**30:.2f} GiB "
                  f"({c['estimated_bytes'] / 2**30:.2f} GiB) | "
                  f"{r['yardstick']['per_voxel'] * c['size'] ** 3:.2f} |")
    return "\n".join(md)


if __name__ == "__main__":
    main()

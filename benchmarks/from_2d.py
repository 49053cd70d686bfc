"""Issue 17's figures for volumes generated from 2D models (and 3D ones beside them), against
held-out real cubes of a shared volume:

- φ, S_V, χ_V per phase: d = |Δmean| / sd_real and spread = sd_gen / sd_real;
- percolating fraction and D_eff/D per phase along z (never seen by a model trained on an xy
  slice) and along x: generated minus real, and the relative error of D_eff/D;
- S2: the largest |S2_gen − S2_real| / S2_real of the mean curves over r ≤ 16 and the three
  axes (MicroLad's figure of merit), per phase;
- isotropy: the generated mean S2 along z against the real cubes' S2 along x, in units of the
  real cubes' per-cube sd along x (within 1 = no layering between the denoised planes).

    python benchmarks/from_2d.py ../shared/data/nmc_3phase_256.tif --real-region 192:256 \
        --size 64 --out benchmarks/results/from_2d/nmc_3phase_256.json SET=FOLDER ...

A set is NAME=FOLDER of generated volumes (cubes of --size are cut from each, on a grid).
Prints a markdown table and writes JSON (and the table beside it, .md).
"""
import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mdiff  # noqa: E402
from mdiff import metrics, transport  # noqa: E402
from mdiff.evaluate import TRANSPORT_TOL, grid_cubes, parse_region  # noqa: E402
from mdiff.io import volume_files  # noqa: E402
from mdiff.phases import PhaseMap  # noqa: E402

R_MAX = 16
AXES = ("z", "x")


def figures(cube, phase_map):
    """Per phase: φ, S_V, χ_V, S2 (z, y, x up to R_MAX), and percolation and D_eff/D along z
    and x."""
    import torch

    torch.set_num_threads(1)
    entry = metrics.describe(cube, phase_map, s2_max=R_MAX, threads=1)
    moves = transport.transport(cube, phase_map, axes=AXES, tol=TRANSPORT_TOL)
    out = []
    for phase, move in zip(entry["phases"], moves):
        out.append({"phi": phase["volume_fraction"], "S_V": phase["specific_surface_area"],
                    "chi_V": phase["euler_density"],
                    "s2": np.array([phase["s2"][a] for a in "zyx"]),
                    **{f"perc_{a}": move[a]["percolating_fraction"] or 0.0 for a in AXES},
                    **{f"deff_{a}": move[a]["effective_diffusivity"] or 0.0 for a in AXES}})
    return out


def describe(cubes, phase_map, workers=2):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda c: figures(np.ascontiguousarray(c), phase_map), cubes))


def compare(real, gen, labels):
    rows = []
    for i, label in enumerate(labels):
        r = {k: np.array([c[i][k] for c in real]) for k in real[0][i]}
        g = {k: np.array([c[i][k] for c in gen]) for k in gen[0][i]}
        row = {"label": int(label)}
        for k in ("phi", "S_V", "chi_V"):
            sd = r[k].std(ddof=1)
            row[k] = {"real": [float(r[k].mean()), float(sd)],
                      "generated": [float(g[k].mean()), float(g[k].std(ddof=1))],
                      "d": float(abs(g[k].mean() - r[k].mean()) / sd),
                      "spread": float(g[k].std(ddof=1) / sd)}
        for a in AXES:
            row[f"perc_{a}"] = {"real": float(r[f"perc_{a}"].mean()),
                                "generated": float(g[f"perc_{a}"].mean())}
            real_d = r[f"deff_{a}"].mean()
            row[f"deff_{a}"] = {"real": float(real_d), "generated": float(g[f"deff_{a}"].mean()),
                                "relative_error": float((g[f"deff_{a}"].mean() - real_d)
                                                        / real_d) if real_d > 0 else None}
        s2_real, s2_gen = r["s2"].mean(0), g["s2"].mean(0)  # (3 axes, R_MAX + 1)
        rel = np.abs(s2_gen - s2_real) / np.maximum(s2_real, 1e-12)
        row["s2_max_relative_error"] = float(rel.max())
        row["s2_worst"] = {"axis": "zyx"[int(rel.max(1).argmax())],
                           "r": int(rel.max(0).argmax())}
        sd_x = r["s2"][:, 2].std(0, ddof=1)
        gap = np.abs(s2_gen[0] - s2_real[2])[1:] / np.maximum(sd_x[1:], 1e-12)
        row["isotropy_z_vs_real_x_sd"] = float(gap.max())
        rows.append(row)
    return rows


def markdown(result):
    lines = [f"`{result['command']}`", "",
             f"Real: {result['real']['cubes']} cubes of {result['size']}³ from "
             f"`{result['real']['path']}` z {result['real']['region']}. d = |Δmean|/sd_real, "
             "spread = sd_gen/sd_real; perc. and D_eff/D as generated (real); S2 err = max over "
             f"r ≤ {R_MAX} and z, y, x of |ΔS2|/S2_real (mean curves); isotropy = max_r "
             "|S2_z,gen − S2_x,real| / sd of real per-cube S2_x.", "",
             "| set | label | φ d (spread) | S_V d (spread) | χ_V d (spread) | perc. z | perc. x "
             "| D_eff/D z (rel. err) | D_eff/D x (rel. err) | S2 err | isotropy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["sets"]:
        for row in s["phases"]:
            cells = [f"{row[k]['d']:.2f} ({row[k]['spread']:.2f}×)" for k in ("phi", "S_V",
                                                                              "chi_V")]
            cells += [f"{row[f'perc_{a}']['generated']:.2f} ({row[f'perc_{a}']['real']:.2f})"
                      for a in AXES]
            for a in AXES:
                e = row[f"deff_{a}"]
                err = "–" if e["relative_error"] is None else f"{100 * e['relative_error']:+.0f} %"
                cells.append(f"{e['generated']:.3g} ({e['real']:.3g}; {err})")
            cells += [f"{100 * row['s2_max_relative_error']:.1f} %",
                      f"{row['isotropy_z_vs_real_x_sd']:.2f}"]
            lines.append(f"| {s['name']} ({s['cubes']}) | {row['label']} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("real")
    parser.add_argument("sets", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--real-region", required=True, metavar="Z0:Z1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--real-stride", type=int, default=32,
                        help="stride of the real cubes in the held-out region")
    parser.add_argument("--out", required=True, metavar="FILE.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    volume = mdiff.read_volume(args.real)
    pm = PhaseMap.from_volume(volume)
    region = parse_region(args.real_region, volume.shape[0])
    real_cubes = grid_cubes(volume, args.size, region, args.real_stride)
    print(f"real: {len(real_cubes)} cubes of {args.size}^3", file=sys.stderr)
    real = describe(real_cubes, pm)
    result = {"command": "python benchmarks/from_2d.py " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "size": args.size, "r_max": R_MAX,
              "real": {"path": Path(args.real).name, "region": args.real_region,
                       "cubes": len(real_cubes), "stride": args.real_stride},
              "sets": []}
    for spec in args.sets:
        name, _, folder = spec.partition("=")
        cubes = [c for f in volume_files(folder) for c in grid_cubes(mdiff.read_volume(f),
                                                                      args.size)]
        print(f"{name}: {len(cubes)} cubes", file=sys.stderr)
        gen = describe(cubes, pm)
        info = Path(folder) / "samples.json"
        result["sets"].append({"name": name, "folder": str(folder), "cubes": len(cubes),
                               "samples": json.loads(info.read_text()) if info.exists()
                               else None,
                               "phases": compare(real, gen, pm.labels)})
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

"""Which thickness of a phase carries its connectivity: the percolating fraction of the phase
and of its openings (radius 1 and 2 by the face-neighbour cross: what remains of it in
channels at least ~3 and ~5 voxels thick), in real cubes and in generated sets of cubes, and
the share of the phase each opening removes (its thin parts).

A real phase whose opening still percolates connects through thick channels; a generated one
whose opening does not is connected, where it is, by thin bridges only. Issue 25's diagnostic
of where the generated pore's connections are missing.

    python benchmarks/thick_paths.py ../shared/data/berea_2phase_200.tif --label 0 \\
        --real-region 150: runs/curve_berea_2phase_200_high05/samples_1600 \\
        --out benchmarks/results/levers/thick_paths_berea.json

The percolating fraction is the judge's (``mdiff.transport.thick_percolating_fraction`` at
each radius: the mean over the three axes of the share of the opened phase in clusters that
join both faces of an axis). Volumes
larger than --size are cut into non-overlapping cubes, as mdiff-evaluate cuts them.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdiff  # noqa: E402
from mdiff.grid import grid_cubes  # noqa: E402
from mdiff.phases import PhaseMap  # noqa: E402
from mdiff.transport import open_cross, thick_percolating_fraction  # noqa: E402

RADII = (0, 1, 2)


def thick_percolation(cubes, label, radii=RADII):
    """({radius: mean percolating fraction of the ``label`` phase opened by radius} over the
    cubes, {radius: share of the phase's voxels, pooled, that the opening removes}): the
    judge's ``thick_percolating_fraction`` at each radius (``transport.open_cross``)."""
    binary = PhaseMap([0, 1])  # the phase against the rest
    perc = dict.fromkeys(radii, 0.0)
    kept = dict.fromkeys(radii, 0)
    total = 0
    for cube in cubes:
        mask = np.ascontiguousarray(cube == label)
        total += int(mask.sum())
        for r in radii:
            kept[r] += int(open_cross(mask, r).sum())
            perc[r] += thick_percolating_fraction(mask.view(np.uint8), binary, 1, radius=r)
    return ({r: perc[r] / len(cubes) for r in radii},
            {r: 1 - kept[r] / max(total, 1) for r in radii})


def cubes_of(path, size, z_range=None):
    """The size³ cubes of a volume, or of every volume in a folder (sorted)."""
    path = Path(path)
    files = sorted(path.glob("*.tif")) if path.is_dir() else [path]
    out = []
    for f in files:
        out += grid_cubes(mdiff.read_volume(str(f)), size, z_range)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", help="the real volume (TIFF)")
    parser.add_argument("sets", nargs="+", help="folders of generated volumes")
    parser.add_argument("--label", type=int, required=True, help="the phase's label value")
    parser.add_argument("--real-region", default=":", help="z0:z1 of the real volume (held out)")
    parser.add_argument("--size", type=int, default=32, help="cube side (default: 32)")
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    try:
        z0, z1 = (args.real_region.split(":") + [""])[:2]
        real = mdiff.read_volume(args.real)
        rows = {"real": grid_cubes(real, args.size, (int(z0 or 0), int(z1 or real.shape[0])))}
        for s in args.sets:
            rows[s] = cubes_of(s, args.size)
    except (ValueError, mdiff.MdiffError) as err:
        sys.exit(f"thick_paths.py: {err}")
    result = {"command": "python benchmarks/thick_paths.py " + " ".join(sys.argv[1:]),
              "label": args.label, "size": args.size, "rows": {}}
    print(f"{'set':60s} cubes  " + "  ".join(f"perc r{r}" for r in RADII)
          + "".join(f"  thin r{r}" for r in RADII[1:]))
    for name, cubes in rows.items():
        if not cubes:
            sys.exit(f"thick_paths.py: no {args.size}³ cubes in {name}")
        perc, thin = thick_percolation(cubes, args.label)
        result["rows"][name] = {"cubes": len(cubes),
                                **{f"perc_r{r}": v for r, v in perc.items()},
                                **{f"removed_r{r}": thin[r] for r in RADII[1:]}}
        print(f"{name:60s} {len(cubes):5d}  " + "  ".join(f"{perc[r]:7.3f}" for r in RADII)
              + "".join(f"  {thin[r]:7.3f}" for r in RADII[1:]))
    if args.out:
        tmp = args.out + ".part"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

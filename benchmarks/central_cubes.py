"""The central cube of each volume of a generated set, as a set of its own: for judging
volumes larger than the real cubes on their interior rather than on the corner cube that
`mdiff-evaluate --size` cuts first (a 48³ volume holds one 32³ cube, at a corner touching
three of its faces).

    python benchmarks/central_cubes.py runs/curve_berea_2phase_200_p48/samples_950 \\
        runs/curve_berea_2phase_200_p48/samples_950_central --size 32

Writes DST/NNNN.tif, one cube per volume of SRC, in SRC's order.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdiff  # noqa: E402


def central(volume, size):
    """The size³ cube at the centre of ``volume`` (its offsets rounded down)."""
    if min(volume.shape) < size:
        raise ValueError(f"a volume of {volume.shape} is smaller than {size}³")
    corner = [(n - size) // 2 for n in volume.shape]
    return volume[tuple(slice(c, c + size) for c in corner)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a folder of generated volumes (TIFF)")
    parser.add_argument("dst", help="the folder to write the central cubes to")
    parser.add_argument("--size", type=int, default=32, help="cube side (default: 32)")
    args = parser.parse_args()
    files = sorted(Path(args.src).glob("*.tif"))
    if not files:
        sys.exit(f"central_cubes.py: no .tif volumes in {args.src}")
    out = Path(args.dst)
    out.mkdir(parents=True, exist_ok=True)
    if args.size < 1:
        sys.exit(f"central_cubes.py: --size must be at least 1, got {args.size}")
    for i, path in enumerate(files):
        try:
            cube = central(mdiff.read_volume(str(path)), args.size)
        except ValueError as err:
            sys.exit(f"central_cubes.py: {path}: {err}")
        mdiff.write_volume(str(out / f"{i:04d}.tif"), cube)
    print(f"central_cubes.py: {len(files)} cubes of {args.size}³ in {out}")


if __name__ == "__main__":
    main()

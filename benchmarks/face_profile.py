"""Where in a generated volume its sparse phase lies: the phase's fraction by distance from the
volume's nearest face, beside real cubes cut from the training volume, and what the network
predicts there from pure noise at the top of the chain. Issue 25 asked whether the throats
are lost at a generated cube's faces (where zero padding marks them); the measurement says
not (benchmarks/results/README.md, "Faces").

    python benchmarks/face_profile.py ../shared/data/berea_2phase_200.tif --label 0 \\
        --region 0:150 --sets runs/curve_berea_2phase_200/samples_1600 ... \\
        --probe runs/curve_berea_2phase_200/at_1600.pt ... --name berea

Writes benchmarks/results/face_profile_NAME.json. Distances are Chebyshev (the nearest face
over the three axes), in voxels, binned 0-2, 3-6, 7-10, 11+ (relative to each volume's own
side: the last bin is its centre); the real cubes are the training volume's cubes of the generated
volumes' side on a grid of stride 8.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BINS = ((0, 2), (3, 6), (7, 10), (11, 10 ** 9))


def distance_to_faces(shape):
    """Chebyshev distance of every voxel to the nearest face of a volume of ``shape``."""
    axes = [np.minimum(np.arange(n), n - 1 - np.arange(n)) for n in shape]
    return np.minimum(np.minimum(axes[0][:, None, None], axes[1][None, :, None]),
                      axes[2][None, None, :])


def profile(volumes, label):
    """The fraction of ``label`` in each distance bin of BINS, over volumes of one shape."""
    distance = distance_to_faces(volumes[0].shape)
    out = []
    for lo, hi in BINS:
        inside = (distance >= lo) & (distance <= hi)
        out.append(float(np.mean([np.mean(v[inside] == label) for v in volumes])))
    return out


def real_cubes(volume, z0, z1, side, stride=8):
    """Cubes on a grid of ``stride`` (overlapping): at every distance from their faces the
    same voxels of the volume appear, so their profile is flat up to sampling noise."""
    return [volume[z:z + side, y:y + side, x:x + side]
            for z in range(z0, z1 - side + 1, stride)
            for y in range(0, volume.shape[1] - side + 1, stride)
            for x in range(0, volume.shape[2] - side + 1, stride)]


def probe(path, label, count, threads, steps=(999, 990, 965, 930)):
    """The network's mean probability of ``label`` in each distance bin, from pure noise at
    the top timesteps of the default sampler's grid, conditioned on ``count`` training cubes'
    drawn conditions: with the padding it was trained with and with circular padding (where
    no voxel is nearer a face than another)."""
    import torch

    from mdiff import descriptors, sampling

    torch.set_num_threads(threads)
    gen = sampling.load(path)
    k = list(gen.phase_map.labels).index(label)
    side, phases = gen.patch, gen.phase_map.n
    cond = None
    if gen.record.descriptors is not None:
        picks = torch.randperm(len(gen.record.descriptors),
                               generator=torch.Generator().manual_seed(0))[:count]
        cond = descriptors.condition(gen.record.descriptors[picks].float())
    distance = distance_to_faces((side,) * 3)
    masks = [torch.from_numpy((distance >= lo) & (distance <= hi)) for lo, hi in BINS]
    out = {"condition_mean": None if cond is None else float(cond[:, k].mean())}
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for periodic in (False, True):
            gen.model.set_periodic(periodic)
            rows = {}
            for t in steps:
                x = torch.randn((count, phases, side, side, side), generator=noise)
                tt = torch.full((count,), t, dtype=torch.long)
                x0, _ = gen.diffusion.predict(
                    lambda a, b: gen.model_fn(a, b, cond=cond), x, tt)
                p = (x0[:, k] + 1) / 2
                rows[str(t)] = [round(float(p[:, m].mean()), 4) for m in masks]
            out["circular" if periodic else gen.unet_config.padding] = rows
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("real", help="the training volume (a TIFF mdiff reads)")
    parser.add_argument("--label", type=int, required=True, help="the phase's label")
    parser.add_argument("--region", default=None, metavar="Z0:Z1",
                        help="slab of the real volume to cut real cubes from")
    parser.add_argument("--sets", nargs="*", default=[], help="folders of generated volumes")
    parser.add_argument("--probe", nargs="*", default=[], help="checkpoints to probe")
    parser.add_argument("--count", type=int, default=32, help="noise cubes a probe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    from mdiff import read_volume
    from mdiff.sampleset import sample_set

    real = read_volume(args.real)
    z0, z1 = (0, real.shape[0]) if not args.region else map(int, args.region.split(":"))
    result = {"command": "python benchmarks/face_profile.py " + " ".join(
        os.path.relpath(a) if os.path.exists(a) else a for a in (argv or sys.argv[1:])),
        "bins": [list(b) for b in BINS], "label": args.label, "sets": {}, "probes": {}}
    sides = set()
    for folder in args.sets:
        volumes = [read_volume(p) for p in sample_set(folder) if p.name != "samples.json"]
        sides.add(min(volumes[0].shape))
        result["sets"][os.path.relpath(folder)] = {
            "volumes": len(volumes), "shape": list(volumes[0].shape),
            "fraction": float(np.mean([np.mean(v == args.label) for v in volumes])),
            "by_distance": profile(volumes, args.label)}
    for side in sorted(sides):
        cubes = real_cubes(real, z0, z1, side)
        result[f"real_{side}"] = {"cubes": len(cubes), "by_distance": profile(cubes, args.label)}
    for path in args.probe:
        result["probes"][os.path.relpath(path)] = probe(path, args.label, args.count,
                                                        args.threads)
    out = Path(__file__).parent / "results" / f"face_profile_{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()

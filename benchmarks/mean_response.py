"""Does the network see a cube's composition at high noise? The mechanism behind too-alike volumes.

    python benchmarks/mean_response.py ../shared/data/nmc_3phase_256.tif --z-cut 192 \
        --checkpoints plain=runs/nmc/checkpoint.pt mean=runs/nmc_mean/checkpoint.pt

For held-out real cubes x_0 (the training cube's side, z >= --z-cut) and timesteps t where the
composition is decided, draw x_t = √ᾱ x_0 + √(1 − ᾱ) ε and read the network's x̂_0. Per phase,
the slope of the cubes' predicted fraction mean(x̂_0) on their true fraction φ is set against
the slope an ideal denoiser would have if the cube mean of x_t were all it knew of φ:
k* = σ²/(σ² + (1 − ᾱ)/(4ᾱV)), σ² the real cubes' variance of φ, V the voxels of a cube (the
cube mean of x_t is √ᾱ(2φ − 1) plus noise of variance (1 − ᾱ)/V). A network that reads the
composition has slope/k* near 1 (above 1 where the cube's texture tells it more than its mean);
one that predicts the average composition whatever x_t holds has slope near 0, and its
samples' fractions spread too little: the deterministic samplers follow x̂_0 from t ≈ 990 on.
Writes benchmarks/results/mean_response_<name>.json and prints a table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import evaluate
from mdiff.phases import PhaseMap, one_hot

HERE = Path(__file__).resolve().parent


def response(gen, cubes, pm, timesteps, seed=0, batch=8):
    """Per timestep: per phase the fitted slope of predicted on true fractions and k*."""
    index = [torch.from_numpy(pm.to_index(np.ascontiguousarray(c))).long() for c in cubes]
    true = np.array([[float((i == p).float().mean()) for p in range(pm.n)] for i in index])
    var = true.var(axis=0, ddof=1)
    voxels = index[0].numel()
    rows = []
    for t_value in timesteps:
        abar = float(gen.diffusion.alphas_cumprod[t_value])
        got = []
        g = torch.Generator().manual_seed(seed * 7919 + t_value)
        for start in range(0, len(index), batch):
            x0 = torch.stack([one_hot(i, pm.n) for i in index[start:start + batch]])
            noise = torch.randn(x0.shape, generator=g)
            t = torch.full((len(x0),), t_value, dtype=torch.long)
            x_t = gen.diffusion.q_sample(x0, t, noise)
            with torch.no_grad():
                x_hat, _ = gen.diffusion.denoiser(gen.model_fn)(x_t, t)
            got.append(((x_hat + 1) / 2).flatten(2).mean(2).numpy())
        got = np.concatenate(got)
        slope = [float(np.polyfit(true[:, p], got[:, p], 1)[0]) for p in range(pm.n)]
        ideal = [float(v / (v + (1 - abar) / (4 * abar * voxels))) for v in var]
        rows.append({"t": int(t_value), "abar": abar, "slope": slope, "ideal_slope": ideal,
                     "response": [s / k for s, k in zip(slope, ideal)],
                     "predicted_sd": got.std(axis=0, ddof=1).tolist(),
                     "true_sd": np.sqrt(var).tolist()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume")
    ap.add_argument("--z-cut", type=int, required=True, help="held-out slab: z >= this")
    ap.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=CKPT")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[995, 990, 980, 965, 950, 900])
    ap.add_argument("--cubes", type=int, default=64, help="held-out cubes used (at most)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--name")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    volume = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(volume)
    out = {"command": "python benchmarks/mean_response.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "models": {}}
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        gen = mdiff.load(path, device="cpu")
        cubes = evaluate.grid_cubes(volume, gen.patch, (args.z_cut, volume.shape[0]))
        cubes = cubes[::max(1, len(cubes) // args.cubes)][:args.cubes]
        start = time.perf_counter()
        rows = response(gen, cubes, pm, args.timesteps)
        out["models"][name] = {"checkpoint_step": gen.step, "cubes": len(cubes),
                               "mean_input": gen.unet_config.mean_input,
                               "condition": gen.condition, "rows": rows}
        print(f"{name} ({path}, step {gen.step}, {len(cubes)} cubes of {gen.patch}^3, "
              f"{time.perf_counter() - start:.0f} s): slope / ideal slope per phase")
        for r in rows:
            print(f"  t {r['t']:4d}  abar {r['abar']:.2e}  " + "  ".join(
                f"{s:.3f}/{k:.3f} = {s / k:.2f}" for s, k in zip(r["slope"], r["ideal_slope"])))
    dest = Path(args.results)
    dest.mkdir(parents=True, exist_ok=True)
    name = args.name or Path(args.volume).stem
    (dest / f"mean_response_{name}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

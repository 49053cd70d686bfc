"""Where does a model fail: denoising real volumes, or generating from pure noise?

For held-out real cubes (the top ``--holdout`` of z, as in fidelity.py), noised to timestep t:
- one step: the MSE of ε̂ (whatever the objective, ε̂ is derived from the output) and the voxel
  accuracy of argmax x̂_0(x_t, t);
- the DDIM chain (50 re-spaced steps) from x_t down to 0: relative error of φ and S_V of the
  result against the real cubes.
A last row starts the same chain from pure noise (ordinary generation). If the chains from
noised real cubes end right and the one from noise does not, the model denoises well but has
not learnt the high-noise steps where the large-scale structure is decided.

    python benchmarks/denoise_check.py runs/fidelity/nmc_3phase_256_small/checkpoint.pt \\
        ../shared/data/nmc_3phase_256.tif
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import evaluate, metrics
from mdiff.samplers import ddim_sample

HERE = Path(__file__).resolve().parent


def figures(labels, phase_map):
    """Per phase: mean φ and mean Crofton S_V over the cubes of a label array (n, S, S, S)."""
    size = labels.shape[-1]
    return [(float(np.mean(labels == v)),
             float(np.mean([metrics.surface_area(c == v) for c in labels])) / size ** 3)
            for v in phase_map.labels]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("volume")
    ap.add_argument("--holdout", type=float, default=0.25, help="fraction of z held out")
    ap.add_argument("--cubes", type=int, default=8, help="held-out cubes used")
    ap.add_argument("--name", help="results name (default: <volume stem>_denoise_<objective>; "
                    "the objective is the checkpoint's)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    gen = mdiff.load(args.checkpoint, device="cpu")
    pm, size = gen.phase_map, gen.patch
    volume = mdiff.read_volume(args.volume)
    z_cut = volume.shape[0] - int(round(args.holdout * volume.shape[0]))
    cubes = evaluate.grid_cubes(volume, size, (z_cut, volume.shape[0]))[: args.cubes]
    x0 = torch.stack([pm.encode(np.ascontiguousarray(c)) for c in cubes])
    real = figures(pm.decode(x0), pm)
    ddim = gen.diffusion.respace(50)
    n = len(cubes)
    torch.manual_seed(0)
    rows = []

    def row(name, t, labels, mse=None, accuracy=None):
        got = figures(labels, pm)
        r = {"start": name, "t": t, "eps_mse": mse, "x0_accuracy": accuracy,
             "phi_rel_err": [abs(g[0] - w[0]) / w[0] for g, w in zip(got, real)],
             "sv_rel_err": [abs(g[1] - w[1]) / w[1] for g, w in zip(got, real)]}
        rows.append(r)
        one = "" if mse is None else f"eps-MSE {mse:.4f}  x0 accuracy {accuracy:.4f}  "
        print(f"{name:>22} t={t:>4}  {one}chain to 0: phi rel. err "
              + " ".join(f"{e:.3f}" for e in r["phi_rel_err"]) + "  S_V rel. err "
              + " ".join(f"{e:.3f}" for e in r["sv_rel_err"]), flush=True)

    with torch.no_grad():
        for step in (5, 15, 25, 35, 40, 45):
            t_full = int(ddim.timestep_map[step])
            t = torch.full((n,), step, dtype=torch.long)
            noise = torch.randn_like(x0)
            x_t = ddim.q_sample(x0, t, noise)
            x_start, eps = ddim.predict(gen.model_fn, x_t, t, clip_denoised=False)
            mse = float((eps - noise).pow(2).mean())
            accuracy = float((x_start.argmax(1) == x0.argmax(1)).float().mean())
            out = ddim_sample(ddim.denoiser(gen.model_fn), ddim, x0.shape[1:], [None] * n,
                              x_t=x_t, start=step)
            row("noised real", t_full, pm.decode(out), mse, accuracy)
        gens = [torch.Generator().manual_seed(k) for k in range(n)]
        out = ddim_sample(ddim.denoiser(gen.model_fn), ddim, x0.shape[1:], gens)
        row("pure noise", int(ddim.timestep_map[-1]), pm.decode(out))
    name = args.name or f"{Path(args.volume).stem}_denoise_{gen.diffusion.objective}"
    out_path = Path(args.results) / f"{name}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"checkpoint": str(args.checkpoint), "step": gen.step,
                                    "objective": gen.diffusion.objective,
                                    "volume": str(args.volume), "cubes": n, "size": size,
                                    "labels": list(pm.labels), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()

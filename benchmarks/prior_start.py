"""Issue 25: does generation connect like the real material when its coarse structure comes
from a stochastic model that is fitted to the material, not from the model's own high-noise
steps? (SDEdit, Meng et al. 2022, from a prior.)

For each of ``--count`` volumes: the condition the default sampling would draw for it, a
truncated-Gaussian field of that composition (``mdiff.synth``) with the smoothing length whose
S2 fits the training cubes best (``evaluate.fit_baseline``), noised to step K of DDIM-50 and
denoised from there to 0 by the model under its default guidance and fraction holding. K = 50
is ordinary generation from noise; K = 0 writes the fields themselves. The issue measured that
held-out real cubes noised to t = 816 come back percolating 0.71 (from noise: 0.39), so a prior
with the real coarse connectivity would carry it through.

    python benchmarks/prior_start.py runs/curve_berea_2phase_200/at_1600.pt \\
        runs/curve_berea_2phase_200/train.tif runs/prior_start_berea --starts 0,35,40,45,50

Writes OUT/startK/sample_NNN.tif for each K; judge them with mdiff-evaluate.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mdiff  # noqa: E402
from mdiff import conditioning, evaluate, synth  # noqa: E402
from mdiff.request import SampleRequest  # noqa: E402
from mdiff.samplers import ddim_sample  # noqa: E402

STEPS = 50  # DDIM steps of the whole chain


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("training", help="the training volume (the prior is fitted to it)")
    parser.add_argument("out")
    parser.add_argument("--starts", default="0,35,40,45,50",
                        help=f"DDIM-{STEPS} steps to start from (0: the fields themselves)")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--length", type=float, help="the field's smoothing length (default: "
                        "fitted to the training cubes' S2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    starts = [int(k) for k in args.starts.split(",")]
    if not all(0 <= k <= STEPS for k in starts):
        sys.exit(f"prior_start.py: --starts must lie in 0..{STEPS}")
    try:
        gen = mdiff.load(args.checkpoint, device="cpu")
        volume = None if args.length is not None else mdiff.read_volume(args.training)
    except (mdiff.MdiffError, OSError) as err:
        sys.exit(f"prior_start.py: {err}")
    pm, n = gen.phase_map, args.count
    length = args.length
    if length is None:
        length = evaluate.fit_baseline(evaluate.grid_cubes(volume, gen.patch), pm, 16)["length"]
    print(f"prior: truncated-Gaussian field, smoothing length {length:g}", flush=True)
    plan = gen.plan(SampleRequest(count=n, sampler="ddim", steps=STEPS, seed=0))
    cond = conditioning.for_batch(plan, gen.record.descriptors, gen.model.factor, gen.patch,
                                  0, n)
    fractions = cond[:, :pm.n] / cond[:, :pm.n].sum(1, keepdim=True)
    shape = (gen.patch,) * 3
    x0 = torch.stack([pm.encode(synth.generate(shape, tuple(fractions[i].tolist()), pm.labels,
                                               length, 1000 + i)) for i in range(n)])
    process = gen.process(plan)
    denoise = gen.denoiser(process, plan, conditioning.guided(gen.model_fn, cond,
                                                              plan.guidance, plan.hold))
    for k in starts:
        t0 = time.time()
        if k == 0:
            labels = pm.decode(x0)
        else:
            gens = [torch.Generator().manual_seed(i) for i in range(n)]
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
            step = min(k, STEPS - 1)
            x_t = noise if k == STEPS else process.q_sample(
                x0, torch.full((n,), step, dtype=torch.long), noise)
            labels = pm.decode(ddim_sample(denoise, process, x0.shape[1:], gens, x_t=x_t,
                                           start=step))
        folder = Path(args.out) / f"start{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(labels):
            mdiff.write_volume(str(folder / f"sample_{i:03d}.tif"), v)
        t = int(process.timestep_map[min(k, STEPS - 1)]) if k else 0
        print(f"start {k} (t = {t}): {time.time() - t0:.0f} s, φ "
              + " ".join(f"{float((labels == v).mean()):.3f}" for v in pm.labels), flush=True)


if __name__ == "__main__":
    main()

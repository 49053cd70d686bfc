"""Seconds per generated volume: DDIM-50 and ancestral DDPM-1000.

Untrained weights (speed does not depend on them). Every step of a sampler costs one network
call, so where the 1000 ancestral steps would take too long (a CPU), ``--ddpm-measure K`` times
the first K steps and extrapolates linearly; the output says so. Writes
results/sample_speed_<device>.json.

    python benchmarks/sample_speed.py [--preset small] [--size 64] [--precision bf16]
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mdiff.config import PRESETS
from mdiff.diffusion import GaussianDiffusion
from mdiff.samplers import ddim_sample, ddpm_sample
from mdiff.runtime import autocast, resolve_device
from mdiff.unet import UNet

HERE = Path(__file__).resolve().parent


class _Enough(Exception):
    """Raised from the progress callback to stop a sampler after the measured steps."""


def timed(fn, total, measure, device):
    """Seconds for ``fn(progress)`` to run ``total`` steps, measuring at most ``measure``."""
    def progress(done, _):
        if done >= measure:
            raise _Enough
    t0 = time.perf_counter()
    try:
        fn(progress)
    except _Enough:
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * total / min(measure, total)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", help="default: paper on CUDA, small on CPU")
    ap.add_argument("--size", type=int, default=64, help="cube side of the volumes (default 64)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ddpm-measure", type=int,
                    help="time this many ancestral steps and extrapolate (default: all on "
                         "CUDA, 20 on a CPU)")
    ap.add_argument("--skip-ddpm", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "small")
    p = PRESETS[preset]
    model = UNet(p.unet, p.train.patch).to(device).eval()

    def model_fn(x, t):
        with autocast(device, args.precision):
            return model(x, t)

    process = GaussianDiffusion.from_config(p.diffusion)
    shape = (p.unet.phases,) + (args.size,) * 3
    gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
    T = process.num_timesteps
    ddpm_measure = args.ddpm_measure or (T if device.type == "cuda" else 20)
    runs = [("DDIM-50", 50, 50, lambda progress: ddim_sample(
        process.respace(50).denoiser(model_fn), process.respace(50), shape, gens, device,
        progress=progress))]
    if not args.skip_ddpm:
        runs.append((f"DDPM-{T}", T, ddpm_measure, lambda progress: ddpm_sample(
            process.denoiser(model_fn), process, shape, gens, device, progress=progress)))
    model_fn(torch.zeros((1,) + shape, device=device), torch.zeros(1, dtype=torch.long,
                                                                    device=device))  # warm-up
    rows = []
    for name, total, measure, fn in runs:
        per = timed(fn, total, measure, device) / args.batch
        note = "" if measure >= total else f", extrapolated from {measure} of {total} steps"
        rows.append({"sampler": name, "seconds_per_volume": per, "steps_timed": min(measure, total),
                     "steps": total})
        print(f"{preset} {args.size}^3 {args.precision} {name}: {per:.2f} s per volume "
              f"(batch {args.batch}{note})", flush=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    out = HERE / "results" / f"sample_speed_{device.type}.json"
    out.write_text(json.dumps({"device": dev, "preset": preset, "size": args.size,
                               "precision": args.precision, "batch": args.batch, "rows": rows},
                              indent=1) + "\n")


if __name__ == "__main__":
    main()

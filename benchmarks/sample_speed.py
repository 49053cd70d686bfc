"""Seconds per generated volume: DDIM-50 and ancestral DDPM-1000, at the preset's cube size.

Untrained weights (speed does not depend on them). Writes results/sample_speed_<device>.json.

    python benchmarks/sample_speed.py [--preset small] [--precision bf16] [--skip-ddpm]
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
from mdiff.training import autocast, resolve_device
from mdiff.unet import UNet

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", help="default: paper on CUDA, small on CPU")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=1)
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
    shape = (p.unet.phases,) + (p.train.patch,) * 3
    gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
    rows = []
    runs = [("DDIM-50", lambda: ddim_sample(model_fn, process.respace(50), shape, gens, device))]
    if not args.skip_ddpm:
        runs.append(("DDPM-%d" % process.num_timesteps,
                     lambda: ddpm_sample(model_fn, process, shape, gens, device)))
    for name, fn in runs:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / args.batch
        rows.append({"sampler": name, "seconds_per_volume": per})
        print(f"{preset} {p.train.patch}^3 {args.precision} {name}: {per:.2f} s per volume "
              f"(batch {args.batch})", flush=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    out = HERE / "results" / f"sample_speed_{device.type}.json"
    out.write_text(json.dumps({"device": dev, "preset": preset, "precision": args.precision,
                               "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

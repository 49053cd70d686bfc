"""Training throughput (voxels/s) and peak memory: fp32 eager, bf16, bf16 + torch.compile.

Peak memory is the allocator's peak on CUDA and the process's peak resident set on a CPU (each
variant runs in a fresh process).

`small` on CPU, `paper` on CUDA (when there is one). Prints a table and writes
results/train_speed_<device>.json.

    python benchmarks/train_speed.py [--preset small] [--steps 10] [--device auto]
    python benchmarks/train_speed.py --procs 1 2 [--steps 60]   # data-parallel processes

With ``--procs``: whole ``mdiff.train`` runs (bf16) on a synthetic volume, one per process
count, the effective batch fixed at the preset's; 1 process uses every thread, N > 1 processes
one thread each. Steps/s come from the run's own progress log after a warm-up.
"""
import argparse
import dataclasses
import functools
import json
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import torch

from mdiff import descriptors
from mdiff.config import PRESETS
from mdiff.diffusion import GaussianDiffusion
from mdiff.runtime import autocast, resolve_device
from mdiff.unet import UNet

HERE = Path(__file__).resolve().parent


def measure(preset, precision, compile_, steps, device, condition="none"):
    p = PRESETS[preset]
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(p.unet, condition=condition), p.train.patch).to(device)
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    process = GaussianDiffusion.from_config(p.diffusion)
    shape = (p.train.batch_size, p.unet.phases) + (p.train.patch,) * 3
    x0 = torch.randn(shape, device=device).sign()

    def step():
        t = torch.randint(0, process.num_timesteps, (shape[0],), device=device)
        model_fn = forward
        if condition != "none":  # as the training loop does it: descriptors of each cube
            model_fn = functools.partial(forward, cond=descriptors.condition(
                descriptors.fractions(x0)))
        with autocast(device, precision):
            loss = process.training_losses(model_fn, x0, t, torch.randn_like(x0)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3 if compile_ else 1):  # warm-up (compilation)
        step()
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # this process measures one variant, so its peak resident set is that variant's
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    vox = steps * shape[0] * p.train.patch ** 3 / wall
    return {"preset": preset, "precision": precision, "compile": compile_, "condition": condition,
            "steps_per_s": steps / wall, "voxels_per_s": vox, "warmup_s": warm,
            "peak_gib": peak}


def measure_procs(preset, procs, steps, device):
    """Steps/s of ``mdiff.train`` with ``procs`` processes, from its loss log (warm-up cut)."""
    import tempfile

    import mdiff
    from mdiff import synth

    log_every = max(steps // 6, 1)
    with tempfile.TemporaryDirectory() as tmp:
        volume = synth.generate((96, 96, 96), (0.45, 0.35, 0.2), (0, 127, 255), 3.0)
        start = time.perf_counter()
        mdiff.train([volume], preset=preset, out=tmp, procs=procs, log=None,
                    train={"steps": steps, "log_every": log_every, "save_every": steps,
                           "precision": "bf16", "device": device.type})
        wall = time.perf_counter() - start
        lines = [json.loads(x) for x in (Path(tmp) / "loss.jsonl").read_text().splitlines()]
    rates = [x["steps_per_s"] for x in lines[1:]]  # the first window holds the warm-up
    p = PRESETS[preset]
    rate = len(rates) / sum(1 / r for r in rates)
    return {"preset": preset, "processes": procs, "precision": "bf16",
            "threads_per_process": torch.get_num_threads() if procs == 1 else 1,
            "effective_batch": p.train.batch_size, "steps_per_s": rate,
            "voxels_per_s": rate * p.train.batch_size * p.train.patch ** 3,
            "wall_s_with_startup": wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", help="default: paper on CUDA, small on CPU")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    ap.add_argument("--condition", default="none",
                    help="fractions: a model conditioned on phase fractions (its cost per step)")
    ap.add_argument("--procs", type=int, nargs="+",
                    help="measure data-parallel training with these process counts instead")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "small")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    if args.procs:
        rows = [measure_procs(preset, n, max(args.steps, 30), device) for n in args.procs]
        for r in rows:
            print(f"{preset:>6} bf16 {r['processes']} process(es) x "
                  f"{r['threads_per_process']} thread(s): {r['steps_per_s']:.2f} steps/s, "
                  f"{r['voxels_per_s'] / 1e6:.2f} Mvox/s (batch {r['effective_batch']})",
                  flush=True)
        for r in rows[1:]:
            print(f"  {r['processes']} processes: {r['voxels_per_s'] / rows[0]['voxels_per_s']:.2f}x "
                  f"{rows[0]['processes']} process(es)")
        out = HERE / "results" / f"train_procs_{device.type}.json"
        out.write_text(json.dumps({"device": name, "rows": rows}, indent=1) + "\n")
        return
    rows = []
    variants = [("fp32", False), ("bf16", False)] + ([] if args.no_compile else [("bf16", True)])
    spawn = multiprocessing.get_context("spawn")
    for precision, compile_ in variants:
        # a fresh process per variant: CPU peak memory (max RSS) is then the variant's own
        with spawn.Pool(1) as pool:
            r = pool.apply(measure, (preset, precision, compile_, args.steps, device,
                                     args.condition))
        rows.append(r)
        peak = f"{r['peak_gib']:.2f} GiB" + ("" if device.type == "cuda" else " RSS")
        print(f"{preset:>6} {precision:>5} {'compile' if compile_ else 'eager':>8}  "
              f"{r['steps_per_s']:7.2f} steps/s  {r['voxels_per_s'] / 1e6:8.2f} Mvox/s  "
              f"peak {peak}  (warm-up {r['warmup_s']:.0f} s)", flush=True)
    base = rows[0]["voxels_per_s"]
    for r in rows[1:]:
        print(f"  {r['precision']}{' + compile' if r['compile'] else ''}: "
              f"{r['voxels_per_s'] / base:.2f}x fp32 eager")
    tag = "" if args.condition == "none" else f"_{args.condition}"
    out = HERE / "results" / f"train_speed_{device.type}{tag}.json"
    out.write_text(json.dumps({"device": name, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

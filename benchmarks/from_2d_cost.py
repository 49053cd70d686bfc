"""Time and peak memory of one generated volume (DPM-Solver++, 30 steps) from 2D models
(multi-plane denoising, fused and cycled) and from 3D models, at 64³ and 128³.

Each measurement runs in a fresh process, so that its peak memory is its own: on a GPU
``torch.cuda.max_memory_allocated``, on a CPU the process's peak resident set minus what it
held after loading the model. The first volume is a warm-up (allocator, kernels) and is timed
separately.

    python benchmarks/from_2d_cost.py NAME=CKPT.pt ... [--sizes 64 128] [--device cuda] \
        [--batch 1] [--slices 64] --out benchmarks/results/from_2d/cost_DEVICE.json
"""
import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, ROOT_DIR)
import mdiff
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"]) if args["threads"] else None
gen = mdiff.load(args["ckpt"], device=args["device"], precision=args["precision"])
cuda = gen.device.type == "cuda"
kw = dict(size=args["size"], seed=0, batch=args["batch"], sampler="dpm++", steps=30)
if gen.dims == 2:
    kw.update(fuse=args["fuse"], slices=args["slices"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter(); gen.sample(1, **kw)
if cuda: torch.cuda.synchronize()
warm = time.perf_counter() - t
if cuda: torch.cuda.reset_peak_memory_stats()
t = time.perf_counter(); gen.sample(1, **kw)
if cuda: torch.cuda.synchronize()
seconds = time.perf_counter() - t
peak = (torch.cuda.max_memory_allocated() if cuda else
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
print(json.dumps({"seconds": seconds, "first_seconds": warm, "peak_bytes": peak,
                  "dims": gen.dims, "device": str(gen.device)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=CKPT")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() \
        or platform.machine()
    rows = []
    for spec in args.models:
        label, _, ckpt = spec.partition("=")
        dims = mdiff_dims(ckpt)
        for size in args.sizes:
            for fuse in (("mean", "cycle") if dims == 2 else (None,)):
                job = {"ckpt": ckpt, "device": device, "precision": args.precision,
                       "size": size, "batch": args.batch, "slices": args.slices, "fuse": fuse,
                       "threads": args.threads}
                code = ONE.replace("ROOT_DIR", repr(str(ROOT)))
                run = subprocess.run([sys.executable, "-c", code, json.dumps(job)],
                                     capture_output=True, text=True)
                if run.returncode:
                    row = {"error": run.stderr.strip().splitlines()[-1]}
                else:
                    row = json.loads(run.stdout.strip().splitlines()[-1])
                row.update(model=label, size=size, fuse=fuse)
                rows.append(row)
                what = f"{label} {size}^3" + (f" {fuse}" if fuse else "")
                print(f"{what:<28} " + (f"{row['seconds']:8.2f} s  peak "
                                        f"{row['peak_bytes'] / 2**20:8.0f} MiB"
                                        if "error" not in row else row["error"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/from_2d_cost.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "device": name, "precision": args.precision, "batch": args.batch,
        "slices": args.slices, "sampler": "dpm++ 30 steps", "rows": rows}, indent=1) + "\n")


def mdiff_dims(ckpt):
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=True)["unet"].get("dims", 3)


if __name__ == "__main__":
    main()

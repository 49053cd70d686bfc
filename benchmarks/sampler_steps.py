"""At how many steps does a sampler match DDIM-50's fidelity figures?

    python benchmarks/sampler_steps.py CKPT VOLUME.tif --runs ddim:50 dpm++:10 dpm++:20 ddim:20

CKPT is a model trained on VOLUME.tif with its top ``--holdout`` along z held out (as
``benchmarks/fidelity.py`` trains). Every run samples the same ``--samples`` training-size
volumes (same seeds) and compares them with the held-out real cubes: effect size d per phase of
φ, S_V, χ_V and TPB density, mean |ΔS2|, beside the real-vs-real floor (two halves of the
held-out cubes), and the seconds it took. Written to results/sampler_steps_<name>.md and .json.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import evaluate
from mdiff.phases import PhaseMap

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from large_volume import d_row  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("volume")
    ap.add_argument("--runs", nargs="+", default=["ddim:50", "dpm++:10", "dpm++:20", "ddim:20"],
                    help="SAMPLER:STEPS")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--name")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = mdiff.load(args.checkpoint, device="cpu")
    volume = mdiff.read_volume(args.volume)
    pm = PhaseMap.from_volume(volume)
    z_cut = volume.shape[0] - int(round(args.holdout * volume.shape[0]))
    held = evaluate.grid_cubes(volume, gen.patch, (z_cut, volume.shape[0]))
    order = np.random.default_rng(0).permutation(len(held))
    half_a = [held[i] for i in order[: len(held) // 2]]
    half_b = [held[i] for i in order[len(held) // 2:]]
    s2_max = gen.patch // 2
    ref = evaluate.describe_set(half_a, pm, s2_max)  # as fidelity.py compares
    name = args.name or Path(args.volume).stem
    out = Path(args.results)
    rows = {"real (other half)": {"d": d_row(evaluate.compare_sets(
        ref, evaluate.describe_set(half_b, pm, s2_max))), "seconds": None, "calls": None}}
    command = "python benchmarks/sampler_steps.py " + " ".join(argv or sys.argv[1:])
    commands = [command]
    old = out / f"sampler_steps_{name}.json"
    if old.exists():  # runs of the same checkpoint and sample count are kept (--runs adds)
        before = json.loads(old.read_text())
        if (before["checkpoint"], before["step"], before["samples"]) == (
                str(Path(args.checkpoint).resolve()), gen.step, args.samples):
            rows.update({k: v for k, v in before["runs"].items() if k not in args.runs})
            commands = before.get("commands", [before.get("command")]) + commands
    for spec in args.runs:
        sampler, _, steps = spec.partition(":")
        t0 = time.perf_counter()
        vols = gen.sample(args.samples, sampler=sampler, steps=int(steps or 50), seed=0)
        seconds = time.perf_counter() - t0
        rows[spec] = {"d": d_row(evaluate.compare_sets(ref, evaluate.describe_set(
            list(vols), pm, s2_max))), "seconds": seconds,
            "calls": gen.diffusion.num_timesteps if sampler == "ddpm" else int(steps)}
        print(f"{spec}: {seconds:.0f} s  {rows[spec]['d']}", file=sys.stderr, flush=True)
    result = {"checkpoint": str(Path(args.checkpoint).resolve()), "step": gen.step,
              "objective": gen.diffusion.objective, "samples": args.samples,
              "device": f"CPU ({platform.processor() or platform.machine()}, "
                        f"{args.threads} threads)", "date": time.strftime("%Y-%m-%d"),
              "commands": commands,
              "runs": rows}
    md = [f"# Sampler steps: {Path(args.volume).name}, checkpoint step {gen.step} "
          f"({gen.diffusion.objective})", "",
          f"{args.samples} volumes of {gen.patch}³ per run against {len(half_a)} held-out real "
          f"cubes; d per phase. {result['device']}, {result['date']}.", "",
          *[f"    {c}" for c in commands], "",
          "| run | network calls | seconds | d φ | d S_V | d χ_V | mean abs ΔS2 | TPB |",
          "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: " / ".join("–" if x is None else f"{x:.2f}" for x in v)  # noqa: E731
    order = lambda item: (item[1]["calls"] or 0, item[0])  # noqa: E731
    for spec, r in sorted(rows.items(), key=order):
        d = r["d"]
        tpb = f"{d['tpb_ratio']:.2f}× (d {d['tpb_d']:.2f})" if "tpb_ratio" in d else "–"
        md.append(f"| {spec} | {r['calls'] or '–'} | "
                  f"{'–' if r['seconds'] is None else round(r['seconds'])} | "
                  f"{fmt(d['volume_fraction'])} | {fmt(d['specific_surface_area'])} | "
                  f"{fmt(d['euler_density'])} | "
                  + " / ".join(f"{v:.3f}" for v in d["s2_mean_abs_difference"]) + f" | {tpb} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sampler_steps_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"sampler_steps_{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

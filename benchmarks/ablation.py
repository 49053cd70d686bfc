"""Which training choices make `small` volumes pass for real ones at a fixed CPU budget?

Every variant is a `fidelity.py` run (held-out top quarter along z, DDIM-50 samples of the
training cube size against held-out real cubes, beside the real-vs-real floor and the fitted
Gaussian baseline) whose training steps are chosen so that all variants get the same CPU time:
``--budget`` steps of the plain `small` model, divided by the variant's measured cost per step
relative to it (``cost`` writes results/ablation_cost.json; self-conditioning adds a forward
pass on half the batch, a wider net costs more per step).

    python benchmarks/ablation.py cost                      # relative cost per step
    python benchmarks/ablation.py run VOLUME VARIANT [--budget 600] [--threads 1]
    python benchmarks/ablation.py report                    # results/ablation.md + .json

Run two variants side by side with ``--threads 1`` each on a 2-core machine (small 3D
convolutions scale badly over threads, so that is the fastest way through the table).
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COST = RESULTS / "ablation_cost.json"

# name -> (what it tests, fidelity.py arguments). Everything not named is the `small` preset.
VARIANTS = {
    "eps": ("paper's ε-MSE (Algorithm 1)", ["--objective", "eps"]),
    "x0": ("x0 cross-entropy", ["--objective", "x0"]),
    "x0+selfcond": ("x0 + self-conditioning", ["--objective", "x0",
                                               "--set", "self_condition=true"]),
    "x0+shift2": ("x0, SNR shifted by 1/4", ["--objective", "x0", "--set", "snr_shift=2"]),
    "v+minsnr5": ("v-prediction, min-SNR-5", ["--objective", "v", "--set", "snr_gamma=5"]),
    "eps+minsnr5": ("ε-MSE, min-SNR-5", ["--objective", "eps", "--set", "snr_gamma=5"]),
    "x0+wide24": ("x0, 24 base channels (4.1 M)", ["--objective", "x0",
                                                   "--set", "base_channels=24"]),
    "x0+ema999": ("x0, EMA decay 0.999", ["--objective", "x0", "--set", "ema_decay=0.999"]),
}


def _config(variant):
    """(UNetConfig, DiffusionConfig) of `small` with the variant's --set/--objective applied."""
    sys.path.insert(0, str(HERE))
    from fidelity import parse_set

    from mdiff.config import PRESETS

    p = PRESETS["small"]
    args = VARIANTS[variant][1]
    sets = dict(parse_set(v) for k, v in zip(args, args[1:]) if k == "--set")
    if "--objective" in args:
        sets["objective"] = args[args.index("--objective") + 1]
    unet = replace(p.unet, **{k: v for k, v in sets.items() if hasattr(p.unet, k)})
    diffusion = replace(p.diffusion, **{k: v for k, v in sets.items()
                                        if hasattr(p.diffusion, k)})
    return unet, diffusion, p.train


def measure_cost(steps=15, threads=1):
    """Seconds per training step of each variant (bf16, batch 4 × 32³, one thread)."""
    from mdiff.diffusion import GaussianDiffusion
    from mdiff.runtime import autocast
    from mdiff.unet import UNet

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    seconds = {}
    for variant in VARIANTS:
        ucfg, dcfg, tcfg = _config(variant)
        torch.manual_seed(0)
        model = UNet(ucfg, tcfg.patch, dcfg.self_condition)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        process = GaussianDiffusion.from_config(dcfg)
        x0 = torch.randn(tcfg.batch_size, ucfg.phases, *(tcfg.patch,) * 3).sign()

        def step():
            t = torch.randint(0, process.num_timesteps, (x0.shape[0],))
            with autocast(device, "bf16"):
                loss = process.training_losses(model, x0, t, torch.randn_like(x0)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds[variant] = (time.perf_counter() - start) / steps
        print(f"{variant:>14}  {seconds[variant]:.3f} s/step", flush=True)
    base = seconds["x0"]
    return {"threads": threads, "precision": "bf16", "seconds_per_step": seconds,
            "relative": {k: v / base for k, v in seconds.items()}}


def steps_for(variant, budget):
    relative = json.loads(COST.read_text())["relative"] if COST.exists() else {}
    return max(1, round(budget / relative.get(variant, 1.0)))


def run(volume, variant, budget, threads, runs):
    sys.path.insert(0, str(HERE))
    import fidelity

    name = f"ablation_{Path(volume).stem}_{variant}"
    steps = steps_for(variant, budget)
    argv = [volume, "--preset", "small", "--precision", "bf16", "--steps", str(steps),
            "--samples", "8", "--name", name, "--results", str(RESULTS / "ablation"),
            *VARIANTS[variant][1]]
    if threads:
        argv += ["--threads", str(threads)]
    if runs:
        argv += ["--runs", runs]
    print(f"ablation: {variant} on {volume}: {steps} steps (budget {budget} plain steps)",
          file=sys.stderr, flush=True)
    fidelity.main(argv)


def _row(name, comparison):
    phases = comparison["phases"]
    d = lambda key: " / ".join(_num(p[key]["effect_size"]) for p in phases)
    s2 = " / ".join(f"{p['s2_mean_abs_difference']:.3f}" for p in phases)
    tpb = comparison.get("tpb_density")
    tpb_cell = "–" if tpb is None else (f"{tpb['mean'] / tpb['reference_mean']:.2f}× "
                                        f"(d {_num(tpb['effect_size'])})")
    return f"| {name} | {d('volume_fraction')} | {d('specific_surface_area')} | " \
           f"{d('euler_density')} | {s2} | {tpb_cell} |"


def _comparisons(evaluation):
    """The effect-size rows of a fidelity.py report that has verdicts (``judge``), per set, in
    the shape of the reports written before them."""
    out = {}
    for v in evaluation["verdicts"]:
        row = out.setdefault(v["set"], {"phases": []})
        if v["figure"] == "tpb_density":
            row["tpb_density"] = {"mean": v["mean"], "reference_mean": v["reference_mean"],
                                  "effect_size": v["d"]}
            continue
        if not row["phases"] or row["phases"][-1]["label"] != v["phase"]:
            row["phases"].append({"label": v["phase"]})
        phase = row["phases"][-1]
        if v["figure"] == "s2":
            phase["s2_mean_abs_difference"] = sum(v["mean_abs_difference"].values()) / 3
        else:
            phase[v["figure"]] = {"effect_size": v["d"]}
    return out


def _num(x):
    return "–" if x is None else f"{x:.2f}"


def report():
    rows = {}
    for path in sorted((RESULTS / "ablation").glob("ablation_*.json")):
        info = json.loads(path.read_text())
        volume = Path(info["volume"]).name
        variant = path.stem.split("_")[-1]
        rows.setdefault(volume, []).append((variant, info))
    md = ["# Ablation at equal CPU time, `small` preset", "",
          "Each row trains from scratch on the volume minus its top quarter along z, then "
          "samples 8 volumes of 32³ with DDIM-50 and compares them with held-out real 32³ cubes "
          "(effect size d = |Δmean| / std_real per phase, in label order; mean |ΔS2| over the "
          "three axes; TPB density as a ratio to real). Steps are the budget divided by the "
          "variant's cost per step (`ablation_cost.json`), so every row had the same CPU time. "
          "The last two rows of each table are the real-vs-real floor and the fitted Gaussian "
          "baseline. Reproduce a row with `python benchmarks/ablation.py run VOLUME VARIANT "
          "--threads 1` (the command each run executed is in its JSON). `synth_coarse.tif`, a "
          "structure of another length scale and fraction, is `mdiff-synth synth_coarse.tif "
          "--shape 192,160,160 --fractions 0.3,0.7 --labels 0,255 --length 10 --seed 3`.", ""]
    summary = {}
    for volume, entries in rows.items():
        md += [f"## {volume}", "", "| variant | d φ | d S_V | d χ_V | mean abs ΔS2 | TPB |",
               "|---|---|---|---|---|---|"]
        order = list(VARIANTS)
        entries.sort(key=lambda e: order.index(e[0]) if e[0] in order else len(order))
        for variant, info in entries:
            comparisons = info.get("comparisons") or _comparisons(info["evaluation"])
            sampled = next(k for k in comparisons if k.startswith("DDIM"))
            label = f"{variant}: {VARIANTS.get(variant, ('?',))[0]}, {info['steps']} steps, " \
                    f"{info['train_wall_s'] / 60:.0f} min"
            md.append(_row(label, comparisons[sampled]))
            summary.setdefault(volume, {})[variant] = {
                "steps": info["steps"], "train_wall_s": info["train_wall_s"],
                "command": info.get("command"), "comparison": comparisons[sampled],
                "memorisation": info["memorisation"]}
        _, last = entries[-1]
        last = last.get("comparisons") or _comparisons(last["evaluation"])
        for key in last:
            if not key.startswith("DDIM"):
                md.append(_row(f"*{key}*", last[key]))
        md.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ablation.md").write_text("\n".join(md) + "\n")
    (RESULTS / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(md))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost", help="measure the relative cost per step of every variant")
    c.add_argument("--steps", type=int, default=15)
    r = sub.add_parser("run", help="train and evaluate one variant on one volume")
    r.add_argument("volume")
    r.add_argument("variant", choices=list(VARIANTS))
    r.add_argument("--budget", type=int, default=600,
                   help="training steps of the plain small model; others get the same time")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--runs", help="run directories (default: fidelity.py's)")
    sub.add_parser("report", help="collect the runs into results/ablation.md and .json")
    args = ap.parse_args(argv)
    if args.command == "cost":
        result = measure_cost(args.steps)
        RESULTS.mkdir(exist_ok=True)
        COST.write_text(json.dumps(result, indent=1) + "\n")
    elif args.command == "run":
        run(args.volume, args.variant, args.budget, args.threads, args.runs)
    else:
        report()


if __name__ == "__main__":
    main()

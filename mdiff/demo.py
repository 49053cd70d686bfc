"""``mdiff-demo``: train on the built-in example, sample, compare with real cubes."""
import json
import sys
from pathlib import Path

from . import synth
from .config import PRESETS
from .errors import MdiffError
from .evaluate import (describe_cubes, format_markdown, grid_cubes, judge, plot_result,
                       plot_slices, verdict_line)
from .io import write_volume
from .phases import PhaseMap
from .sampling import sample_to_dir
from .training import train


def _say(text):
    print(text, file=sys.stderr, flush=True)


def _shipped_model_first(out, device, name="nmc-cathode", size=32):
    """The demo's opening: a model that ships with mdiff generates a volume before any
    training, so the first thing a user sees is a volume of a real material."""
    import time

    from .pretrained import index
    from .sampling import load

    if name not in index():
        return
    start = time.perf_counter()
    volume = load(name, device).sample(1, size=size, sampler="dpm++", steps=20, seed=0)[0]
    path = out / f"{name}.tif"
    write_volume(path, volume)
    _say(f"[0/3] the shipped model {name} generated a {size}^3 volume in "
         f"{time.perf_counter() - start:.0f} s: {path} (mdiff-models lists the models; "
         f"mdiff-sample {name} OUT_DIR makes more). Now the demo trains its own.")


def run_demo(out="runs/demo", steps=300, samples=8, preset="small", device="auto",
             overwrite=False):
    if preset not in PRESETS:
        raise MdiffError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    for name, value in (("--steps", steps), ("--samples", samples)):
        if value < 1:
            raise MdiffError(f"{name} must be at least 1, got {value}")
    out = Path(out)
    if (out / "run" / "checkpoint.pt").exists() and not overwrite:
        raise MdiffError(f"{out} holds an earlier demo; go on training it with mdiff-train "
                         f"--resume --out {out / 'run'} --steps {4 * steps}, or start over "
                         "with mdiff-demo --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    _shipped_model_first(out, device)
    example = synth.example()
    write_volume(out / "example.tif", example)
    _say(f"[1/3] training preset '{preset}' for {steps} steps on the built-in example "
         f"({'x'.join(map(str, example.shape))}, labels 0/127/255, written to "
         f"{out / 'example.tif'})")
    ckpt = train(example=True, preset=preset, out=out / "run", overwrite=overwrite,
                 train={"steps": steps, "device": device})
    _say(f"[2/3] sampling {samples} volumes with DPM-Solver++ (30 steps)")
    paths = sample_to_dir(ckpt, out / "samples", n=samples, sampler="dpm++", steps=30, seed=0,
                          device=device, overwrite=overwrite)
    from .io import read_volume

    generated = [read_volume(p) for p in paths]
    size = generated[0].shape[0]
    phase_map = PhaseMap(synth.EXAMPLE.labels)
    real = grid_cubes(example, size)
    _say(f"[3/3] metrics: {len(real)} real {size}^3 cubes of the example vs {len(generated)} "
         "generated ones")
    s2_max = size // 2
    result = judge(describe_cubes(real, phase_map, s2_max),
                   {"generated": describe_cubes(generated, phase_map, s2_max)})
    text = format_markdown(result, f"Real cubes of the example vs generated volumes "
                           f"({size}^3, closed boundary, voxel units).") + "\n"
    (out / "comparison.md").write_text(text)
    (out / "comparison.json").write_text(json.dumps(result) + "\n")
    print(text)
    plotted = plot_result(out / "comparison.png", result)
    plot_slices(out / "slices.png", {"real (the example)": real[:4], "generated": generated[:4]},
                phase_map.labels)
    wrote = f"{out / 'comparison.md'}, comparison.json" + (
        f", {out / 'comparison.png'} and slices.png" if plotted else
        " (no plot without matplotlib: pip install matplotlib)")
    _say(f"Wrote {wrote}; samples in {out / 'samples'}. {verdict_line(result)}. A "
         f"{steps}-step CPU run already has the structure's "
         "fractions and feature size roughly right but not converged (what 30 minutes reach: "
         "benchmarks/results/README.md, Fidelity). Go on with: mdiff-train --resume "
         f"--out {out / 'run'} --steps {4 * steps}")

"""``mdiff-demo``: train on the built-in example, sample, compare with real cubes."""
import sys
from pathlib import Path

from . import synth
from .config import PRESETS
from .errors import MdiffError
from .evaluate import compare_sets, describe_set, format_comparisons, grid_cubes, plot_sets
from .io import write_volume
from .phases import PhaseMap
from .sampling import sample_to_dir
from .training import train


def _say(text):
    print(text, file=sys.stderr, flush=True)


def run_demo(out="runs/demo", steps=300, samples=8, preset="small", device="auto"):
    if preset not in PRESETS:
        raise MdiffError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    for name, value in (("--steps", steps), ("--samples", samples)):
        if value < 1:
            raise MdiffError(f"{name} must be at least 1, got {value}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    example = synth.generate()
    write_volume(out / "example.tif", example)
    _say(f"[1/3] training preset '{preset}' for {steps} steps on the built-in example "
         f"({'x'.join(map(str, example.shape))}, labels 0/127/255, written to "
         f"{out / 'example.tif'})")
    ckpt = train(example=True, preset=preset, out=out / "run", train={"steps": steps,
                                                                      "device": device})
    _say(f"[2/3] sampling {samples} volumes with DPM-Solver++ (30 steps)")
    paths = sample_to_dir(ckpt, out / "samples", n=samples, sampler="dpm++", steps=30, seed=0,
                          device=device)
    from .io import read_volume

    generated = [read_volume(p) for p in paths]
    size = generated[0].shape[0]
    phase_map = PhaseMap(synth.EXAMPLE.labels)
    real = grid_cubes(example, size)
    _say(f"[3/3] metrics: {len(real)} real {size}^3 cubes of the example vs {len(generated)} "
         "generated ones")
    s2_max = size // 2
    ref = describe_set(real, phase_map, s2_max)
    gen = describe_set(generated, phase_map, s2_max)
    table = format_comparisons(ref, {"generated": compare_sets(ref, gen)})
    text = (f"Real cubes vs generated volumes ({size}^3, closed boundary, voxel units). "
            "rel. err = |mean_gen - mean_real| / mean_real; d = |mean_gen - mean_real| / "
            "std_real (d < 0.5: within the spread of real cubes).\n\n" + table + "\n")
    (out / "comparison.md").write_text(text)
    print(text)
    plotted = plot_sets(out / "comparison.png", ref, {"generated": gen}, phase_map.labels)
    wrote = f"{out / 'comparison.md'}" + (f" and {out / 'comparison.png'}" if plotted else
                                          " (no plot without matplotlib: pip install matplotlib)")
    _say(f"Wrote {wrote}; samples in {out / 'samples'}. d < 0.5 means within "
         f"the spread of real cubes. A {steps}-step CPU run already has the structure's "
         "fractions and feature size roughly right but not converged (the README's fidelity "
         "section says what 30 minutes reach). Go on with: mdiff-train --resume "
         f"--out {out / 'run'} --steps {4 * steps}")

"""Remake the pin: two tiny checkpoints (a conditioned 3D model, a 2D model) and what a dozen
sampling requests make from them (``tests/test_pin.py`` checks it).

    python tests/pin/make_pin.py            # checkpoints and expected outputs
    python tests/pin/make_pin.py --expect   # only the expected outputs, from the checkpoints

Run it only when a change is meant to change what sampling produces; a refactor must leave the
pin passing as it is.
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {"3d": HERE / "tiny3d.pt", "2d": HERE / "tiny2d.pt"}
EXPECTED = HERE / "expected.json"
VOLUMES = HERE / "expected_volumes.npz"

# (name, model, mdiff-sample flags): every sampler, whole and windows, periodic, graded,
# drawn compositions (per volume, per window, per field), a target, guidance, fractions
# held (the default) and not, 2D fusions
REQUESTS = [
    ("drawn_dpm", "3d", ["-n", "3", "--steps", "6"]),
    ("drawn_free", "3d", ["-n", "3", "--steps", "6", "--no-hold-fractions"]),
    ("ddim_eta1", "3d", ["-n", "2", "--sampler", "ddim", "--steps", "5", "--eta", "1"]),
    ("ddpm", "3d", ["-n", "1", "--sampler", "ddpm"]),
    ("target", "3d", ["-n", "2", "--steps", "5", "--fractions", "0.6,0.25,0.15"]),
    ("target_guided", "3d", ["-n", "1", "--steps", "5", "--fractions", "0.3,0.4,0.3",
                             "--guidance", "2"]),
    ("windows_drawn", "3d", ["-n", "2", "--steps", "4", "--size", "32", "--tiling",
                             "windows", "--windows", "3"]),
    ("whole_field", "3d", ["-n", "1", "--steps", "4", "--size", "32", "--tiling",
                           "whole"]),
    ("periodic_windows", "3d", ["-n", "1", "--steps", "4", "--size", "32", "--periodic",
                                "--tiling", "windows", "--overlap", "0.5"]),
    ("periodic_whole", "3d", ["-n", "1", "--steps", "4", "--periodic"]),
    ("graded", "3d", ["-n", "1", "--steps", "4", "--size", "32", "16", "16",
                      "--fractions-along", "z", "0:0.7,0.2,0.1", "1:0.3,0.4,0.3"]),
    ("batch_seed", "3d", ["-n", "3", "--steps", "4", "--batch", "2", "--seed", "9"]),
    ("2d_cycle", "2d", ["-n", "1", "--steps", "5"]),
    ("2d_mean_free", "2d", ["-n", "1", "--steps", "4", "--fuse", "mean", "--free-fractions",
                            "--slices", "7"]),
    ("2d_geo", "2d", ["-n", "1", "--steps", "4", "--fuse", "geo", "--size", "16", "16", "24"]),
]
# what samples.json says that is not a function of the request: time, place and machine
UNPINNED = ("seconds", "checkpoint", "device", "torch_version", "numpy_version", "threads")


def cpu_capability():
    import torch

    return torch.backends.cpu.get_cpu_capability()


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def pinned_info(info):
    return {k: v for k, v in info.items() if k not in UNPINNED}


def run_request(flags, model, out):
    """(volumes, samples.json without UNPINNED) of one request, by the command line."""
    from mdiff.cli import sample_main
    from mdiff.io import read_volume

    # fp32 named: "auto" would be bf16 on CPUs that have it, and the pin is one for every host
    code = sample_main([str(MODELS[model]), str(out), "--threads", "1", "--precision", "fp32",
                        *flags])
    assert code == 0, f"mdiff-sample {' '.join(flags)} exited {code}"
    info = json.loads((out / "samples.json").read_text())
    return [read_volume(out / f) for f in info["files"]], pinned_info(info)


def make_models(work):
    import mdiff
    from mdiff import synth, write_volume

    volume = work / "v.tif"
    write_volume(volume, synth.generate((40, 40, 40), (0.5, 0.3, 0.2), (0, 127, 255), 3.0,
                                        seed=4))
    three = mdiff.train([volume], preset="tiny", out=work / "r3", unet={"base_channels": 4},
                        train={"steps": 400},
                        log=None)
    two = mdiff.train([volume], preset="tiny", out=work / "r2", unet={"dims": 2, "base_channels": 4},
                      train={"steps": 400}, log=None)
    for src, key in ((three, "3d"), (two, "2d")):
        strip(src, MODELS[key])


def strip(src, dst):
    """The sampling part of a checkpoint (benchmarks/strip_checkpoint.py's rule)."""
    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    import strip_checkpoint

    strip_checkpoint.main([str(src), str(dst)])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if "--expect" not in argv:
            make_models(work)
        expected, arrays = {"cpu_capability": cpu_capability(), "requests": {}}, {}
        for name, model, flags in REQUESTS:
            volumes, info = run_request(flags, model, work / name)
            expected["requests"][name] = {"model": model, "flags": flags, "samples_json": info,
                                          "sha256": [digest(v) for v in volumes]}
            for i, v in enumerate(volumes):
                arrays[f"{name}/{i}"] = v
    np.savez_compressed(VOLUMES, **arrays)
    EXPECTED.write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {EXPECTED.name}, {VOLUMES.name}: {len(REQUESTS)} requests")


if __name__ == "__main__":
    main()

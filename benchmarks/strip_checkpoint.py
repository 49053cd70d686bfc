"""A sampling-only copy of a checkpoint: the EMA weights and what rebuilds the model, without
the raw weights and the optimiser state (a third of the size), to carry to another machine.

    python benchmarks/strip_checkpoint.py runs/x/checkpoint.pt runs/gpu/x.pt
"""
import sys

from mdiff import checkpoint

KEEP = ("unet", "diffusion", "train", "labels", "patch", "voxel_size", "unit", "data",
        "descriptors", "image_fractions", "step", "seed", "loss")


def main(argv=None):
    src, dst = (argv or sys.argv[1:])[:2]
    state = checkpoint.load(src)
    small = {k: state[k] for k in KEEP if k in state}
    small["ema"] = state["ema"]
    small["model"] = state["ema"]  # mdiff.load(..., use_ema=False) still finds weights
    checkpoint.save(dst, {k: v for k, v in small.items()
                          if k not in ("format", "format_version", "mdiff_version")})


if __name__ == "__main__":
    main()

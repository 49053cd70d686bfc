"""Make a shipped model (mdiff/pretrained/NAME.pt) from a run's checkpoint and enter it in
mdiff/pretrained/index.json: the EMA weights in fp16 (sampling computes in fp32; fp16 halves
the file) and what rebuilds and conditions the model, without the raw weights, the optimiser
state or the paths of the machine it was trained on.

    python benchmarks/ship_model.py runs/ship/nmc/checkpoint.pt nmc-cathode \
        --data "../shared/data/nmc_3phase_256.tif, z < 192" --summary "..."
"""
import argparse
import json
from pathlib import Path

from mdiff import checkpoint, pretrained
from mdiff.io import atomic_path, spacing_text

KEEP = ("unet", "diffusion", "train", "labels", "patch", "voxel_size", "unit", "descriptors",
        "image_fractions", "step", "seed")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("name")
    ap.add_argument("--data", required=True, help="what it was trained on, for the record")
    ap.add_argument("--summary", required=True, help="one line for mdiff-models")
    args = ap.parse_args(argv)
    state = checkpoint.load(args.checkpoint)
    small = {k: state[k] for k in KEEP if k in state}
    small["ema"] = {k: v.half() if v.is_floating_point() else v for k, v in state["ema"].items()}
    small["model"] = small["ema"]  # use_ema=False finds the same weights
    small["data"] = {"paths": [], "example": False, "planes": {}, "provenance": args.data}
    pretrained.FOLDER.mkdir(exist_ok=True)
    file = pretrained.FOLDER / f"{args.name}.pt"
    checkpoint.save(file, small)
    entries = [e for e in pretrained.index().values() if e["name"] != args.name]
    voxel = state.get("voxel_size")
    entries.append({"name": args.name, "file": file.name, "sha256": pretrained.sha256(file),
                    "phases": len(state["labels"]), "labels": list(state["labels"]),
                    "patch": int(state["patch"]), "step": int(state["step"]),
                    "voxel": "voxel units" if voxel is None else
                    f"{spacing_text(voxel)} {state.get('unit') or ''}".strip(),
                    "data": args.data, "summary": args.summary})
    with atomic_path(pretrained.FOLDER / "index.json") as tmp:
        Path(tmp).write_text(json.dumps(sorted(entries, key=lambda e: e["name"]), indent=1) + "\n")
    print(f"{file}: {file.stat().st_size / 2**20:.1f} MB, sha256 {entries[-1]['sha256']}")


if __name__ == "__main__":
    main()

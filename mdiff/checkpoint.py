"""Self-describing checkpoints: plain tensors and Python primitives, written atomically.

``torch.load(path, weights_only=True)`` reads them: loading a checkpoint never runs code from
the file. Everything needed to rebuild the model and decode samples is inside.
"""
import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ._version import __version__
from .errors import MdiffError
from .io import atomic_path

FORMAT = "mdiff-checkpoint"
FORMAT_VERSION = 1


def save(path, state):
    """Write ``state`` (a dict of tensors and primitives) to ``path`` atomically, with the
    SHA-256 of its tensors (``tensor_digest``), which ``load`` checks."""
    path = Path(path)
    state = {k: v for k, v in state.items() if k != "checksum"}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "mdiff_version": __version__,
             **state}
    state["checksum"] = {"algorithm": "sha256", "tensors": tensor_digest(state)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def tensor_digest(state):
    """SHA-256 over every tensor of a (nested) checkpoint dict, in the order of their keys'
    paths, each with its path, dtype and shape: flipped bytes in any weight change it (the zip
    archive torch writes carries no check of its own that ``torch.load`` verifies)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_tensors(state), key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # its buffer, no copy
    return digest.hexdigest()


def _tensors(value, prefix=""):
    """(path, tensor) of every tensor inside nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if prefix == "" and k == "checksum":
                continue
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}/{i}")


def load(path):
    """Read and check a checkpoint with ``weights_only=True``; MdiffError if it is not one.
    ``path`` may be a shipped model's name (``mdiff-models`` lists them)."""
    from .pretrained import resolve

    path = resolve(path)
    if not path.is_file():
        raise MdiffError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise MdiffError(f"{path}: not an mdiff checkpoint ({_looks_like(head)}; a checkpoint "
                         "is the checkpoint.pt that mdiff-train writes in its run folder)")
    try:
        with warnings.catch_warnings():  # a damaged file's odd pickle protocol is warned of
            warnings.simplefilter("ignore")  # in two stray lines; the answer is this one
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # torch's own message may advise weights_only=False, which would run the file's code:
        # never pass that on
        raise MdiffError(f"{path}: not an mdiff checkpoint, or a truncated or damaged one "
                         "(torch cannot read it as plain tensors); use the checkpoint.pt "
                         "that mdiff-train wrote, copied whole") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MdiffError(f"{path}: not an mdiff checkpoint (no '{FORMAT}' format tag)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise MdiffError(f"{path}: checkpoint format {state['format_version']} is newer than "
                         f"this mdiff ({__version__}) reads; upgrade mdiff")
    _verify(path, state)
    return state


def _verify(path, state):
    """MdiffError naming the file as corrupt where its tensors' checksum does not match; a
    one-line note for a checkpoint written before checkpoints carried one."""
    recorded = state.get("checksum")
    if not isinstance(recorded, dict) or "tensors" not in recorded:
        print(f"mdiff: note: {path} was written before checkpoints carried a checksum; its "
              "weights cannot be verified", file=sys.stderr)
        return
    if recorded.get("algorithm") != "sha256" or tensor_digest(state) != recorded["tensors"]:
        raise MdiffError(f"{path}: the checkpoint is corrupt: its tensors do not match the "
                         "checksum written with them (damaged on disk or in a copy); copy it "
                         "again from where it was trained, or resume from another")


def _looks_like(head):
    """What a file that is not a zip archive seems to be, from its first bytes."""
    if head[:2] in (b"II", b"MM"):
        return "it is a TIFF image"
    if head[:1] in (b"{", b"["):
        return "it looks like JSON text"
    if head[:4] == b"\x93NUM":
        return "it is a .npy array"
    if not head:
        return "the file is empty"
    return "not a PyTorch file"


# ---------------------------------------------------------------------------------------------
# The layout: what training writes and what sampling and resuming read, in one place


@dataclass(frozen=True)
class ModelRecord:
    """What a checkpoint says of its model: enough to rebuild it and to sample from it."""

    unet: object  # UNetConfig
    diffusion: object  # DiffusionConfig
    labels: tuple
    patch: int
    step: int
    weights: dict  # the EMA's (or the raw model's) state dict
    voxel_size: list = None
    unit: str = None
    image_fractions: object = None  # (phases,) float tensor: a 2D model's images' composition
    descriptors: object = None  # (cubes, k) float tensor: the training cubes' descriptors
    descriptor_kind: str = None
    student: dict = None  # a distilled student's record (mdiff.distill): method, steps, ...


def model_record(state, use_ema=True, path=None):
    """The ModelRecord of a loaded checkpoint dict; MdiffError if a field is missing."""
    from .config import UNetConfig, diffusion_config, from_dict

    try:
        recorded = state.get("descriptors")
        fractions = state.get("image_fractions")
        return ModelRecord(
            unet=from_dict(UNetConfig, state["unet"]),
            diffusion=diffusion_config(state["diffusion"]), labels=tuple(state["labels"]),
            patch=int(state["patch"]), step=int(state["step"]),
            weights=state["ema" if use_ema else "model"],
            voxel_size=state.get("voxel_size"), unit=state.get("unit"),
            image_fractions=None if fractions is None else fractions.float(),
            descriptors=None if recorded is None else recorded["values"].float(),
            descriptor_kind=None if recorded is None else recorded["kind"],
            student=state.get("student"))
    except (KeyError, TypeError) as exc:
        raise MdiffError(f"{path or 'checkpoint'}: not a complete mdiff checkpoint (no "
                         f"{exc})") from None


def static_record(unet, diffusion, train, labels, voxel_size, unit, paths, example, planes):
    """What every checkpoint of a run records besides its weights and step: the configs (as
    plain dicts), the phase labels, the patch side, the voxel size and the training data."""
    from .config import to_dict

    def resolved(files):
        return [str(Path(p).resolve()) for p in files if isinstance(p, (str, Path))]

    return {"unet": to_dict(unet), "diffusion": to_dict(diffusion), "train": to_dict(train),
            "labels": list(labels), "patch": train.patch,
            "voxel_size": None if voxel_size is None else list(voxel_size), "unit": unit,
            "data": {"paths": resolved(paths), "example": example,
                     "planes": {k: resolved(v) for k, v in (planes or {}).items() if v}}}


@dataclass(frozen=True)
class RunRecord:
    """What resuming a run reads of its checkpoint."""

    unet: object  # UNetConfig
    diffusion: object  # DiffusionConfig
    train: object  # TrainConfig
    step: int
    labels: tuple
    paths: list  # the training files (empty for in-memory arrays)
    planes: dict  # 2D images per orientation, or None
    example: bool


def run_record(state):
    """The RunRecord of a checkpoint dict written by ``mdiff-train``."""
    from .config import TrainConfig, UNetConfig, diffusion_config, from_dict

    data = state["data"]
    # a run from before --high-noise-share drew its timesteps uniformly, and resumes so
    train = {"high_noise_share": 0.0, **state["train"]}
    return RunRecord(from_dict(UNetConfig, state["unet"]), diffusion_config(state["diffusion"]),
                     from_dict(TrainConfig, train), int(state["step"]),
                     tuple(state["labels"]), list(data["paths"]), data.get("planes"),
                     bool(data["example"]))


def training_state(static, recorded, step, seed, loss, world_size, batch_size, model, ema,
                   optimizer, scaler):
    """The dict ``mdiff-train`` saves: the run's static record (configs, labels, patch, data),
    what sampling draws from (``recorded``), and the state that resumes bit for bit."""
    return {**static, **recorded, "step": step, "seed": seed, "loss": loss,
            "world_size": world_size, "effective_batch": batch_size,
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}


def restore(state, model, ema, optimizer, scaler):
    """Load a ``training_state`` into the training objects; returns (step, world size)."""
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"]), int(state.get("world_size", 1))

"""Self-describing checkpoints: plain tensors and Python primitives, written atomically.

``torch.load(path, weights_only=True)`` reads them: loading a checkpoint never runs code from
the file. Everything needed to rebuild the model and decode samples is inside.
"""
from pathlib import Path

import torch

from ._version import __version__
from .errors import MdiffError
from .io import atomic_path

FORMAT = "mdiff-checkpoint"
FORMAT_VERSION = 1


def save(path, state):
    """Write ``state`` (a dict of tensors and primitives) to ``path`` atomically."""
    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "mdiff_version": __version__,
             **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path):
    """Read and check a checkpoint with ``weights_only=True``; MdiffError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MdiffError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise MdiffError(f"{path}: not an mdiff checkpoint ({_looks_like(head)}; a checkpoint "
                         "is the checkpoint.pt that mdiff-train writes in its run folder)")
    try:
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
    return state


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

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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MdiffError(f"{path}: not a readable mdiff checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MdiffError(f"{path}: not an mdiff checkpoint (no '{FORMAT}' format tag)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise MdiffError(f"{path}: checkpoint format {state['format_version']} is newer than "
                         f"this mdiff ({__version__}) reads; upgrade mdiff")
    return state

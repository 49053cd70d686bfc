"""Phase labels ↔ phase indices, and the one-hot encoding the diffusion model works in.

Phases are the sorted distinct label values of a volume: phase i is the i-th smallest label.
A generated volume is decoded back to the same label values as the training volume.
"""
import numpy as np

from .errors import MdiffError

MAX_PHASES = 255  # phase indices are stored in uint8 with 255 kept as "outside" by the kernels


def label_counts(volume):
    """{label: voxel count} of a uint8/uint16 volume, in one pass and without a copy."""
    from .errors import compiled_kernels

    counts = compiled_kernels().label_histogram(volume)
    labels = np.flatnonzero(counts)
    return {int(v): int(counts[v]) for v in labels}


def check_labels(labels, expected=None, name="volume"):
    """Sorted labels of a volume, or MdiffError naming the file if they cannot be phases."""
    labels = sorted(labels)
    if len(labels) > MAX_PHASES:
        raise MdiffError(f"{name}: {len(labels)} distinct labels; at most {MAX_PHASES} "
                         "phases are supported (is this a grey-scale image rather than a "
                         "segmentation?)")
    if len(labels) < 2:
        raise MdiffError(f"{name}: only one label ({labels[0]}) in the volume; "
                         "a microstructure needs at least two phases")
    if expected is not None and expected != len(labels):
        shown = ", ".join(str(v) for v in labels[:20]) + (" ..." if len(labels) > 20 else "")
        raise MdiffError(f"{name}: --phases {expected} given but the volume has "
                         f"{len(labels)} labels: {shown}")
    return labels


class PhaseMap:
    """Sorted phase labels and the lookups between labels, indices and one-hot tensors."""

    def __init__(self, labels):
        labels = sorted(int(v) for v in labels)
        if len(set(labels)) != len(labels):
            raise MdiffError(f"phase labels must be distinct, got {labels}")
        if len(labels) < 2:
            raise MdiffError(f"a microstructure needs at least two phases; found only the label "
                             f"{labels[0] if labels else None}")
        if len(labels) > MAX_PHASES:
            raise MdiffError(f"{len(labels)} distinct labels; at most {MAX_PHASES} phases are "
                             "supported (is this a grey-scale image rather than a segmentation?)")
        if labels[0] < 0 or labels[-1] > 65535:
            raise MdiffError(f"labels must lie in 0..65535, got {labels[0]}..{labels[-1]}")
        self.labels = tuple(labels)

    @classmethod
    def from_volume(cls, volume, expected=None, name="volume"):
        """The phase map of a label volume; ``expected`` checks the number of phases (--phases)."""
        return cls(check_labels(label_counts(volume), expected, name))

    @property
    def n(self):
        return len(self.labels)

    def lut(self, dtype=np.uint8):
        """uint8 table, label value → phase index (255 for values that are not a phase),
        long enough to index volumes of ``dtype`` (uint8 or uint16)."""
        wide = self.labels[-1] > 255 or np.dtype(dtype).itemsize > 1
        table = np.full(65536 if wide else 256, 255, dtype=np.uint8)
        table[list(self.labels)] = np.arange(self.n, dtype=np.uint8)
        return table

    def to_index(self, labels):
        """Label array → uint8 phase indices (same shape). Unknown labels raise MdiffError."""
        labels = np.asarray(labels)
        index = self.lut(labels.dtype)[labels]
        if (index == 255).any():
            unknown = sorted(set(np.unique(labels[index == 255]).tolist()))[:10]
            raise MdiffError(f"labels {unknown} are not among the phases {list(self.labels)}")
        return index

    def from_index(self, index):
        """uint8 phase indices → label array in the labels' dtype (uint8 or uint16)."""
        dtype = np.uint8 if self.labels[-1] < 256 else np.uint16
        return np.asarray(self.labels, dtype=dtype)[np.asarray(index)]

    def encode(self, labels):
        """(D, H, W) label cube → float32 tensor (n, D, H, W): one-hot scaled to [-1, 1]."""
        import torch

        return one_hot(torch.from_numpy(self.to_index(labels)), self.n)

    def decode(self, x):
        """Tensor (..., n, D, H, W) → label array (..., D, H, W) by argmax over channels."""
        import torch

        return self.from_index(x.argmax(dim=-4).to("cpu", torch.uint8).numpy())


def one_hot(index, n, dims=3):
    """uint8 index tensor (..., D, H, W) → float32 (..., n, D, H, W) in {-1, 1}; with
    ``dims=2`` (..., H, W) images → (..., n, H, W)."""
    import torch

    x = torch.nn.functional.one_hot(index.long(), n).movedim(-1, -1 - dims)
    return x.to(torch.float32).mul_(2).sub_(1)

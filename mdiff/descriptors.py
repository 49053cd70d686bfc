"""Per-cube descriptors a model can be conditioned on, in one place: today each phase's volume
fraction ("fractions"). Training computes them from each cube on the fly (they are invariant
under the 48 cube symmetries); sampling takes a target, or draws each volume's from the
distribution recorded over the training cubes, so that a generated set varies like the real
cubes; the U-Net embeds them (``mdiff.unet``), and classifier-free guidance (Ho & Salimans
2022) mixes the conditional and unconditional outputs.

A condition is an (N, phases + 1) tensor: the descriptor vector, then a 1 that says it is
given; all zeros means "no condition" (the dropped case of training and the unconditional
branch of guidance).
"""
import numpy as np

KINDS = ("none", "fractions")


def fractions(x_start):
    """(N, n, D, H, W) one-hot batch in [-1, 1] → (N, n) volume fraction of each phase."""
    return ((x_start + 1) * 0.5).flatten(2).mean(dim=2)


def condition(values, keep=None):
    """(N, n) descriptors (and an (N,) bool mask of those kept) → (N, n + 1) condition."""
    import torch

    values = torch.as_tensor(values, dtype=torch.float32)
    keep = torch.ones(len(values), dtype=torch.bool, device=values.device) if keep is None \
        else keep.to(values.device)
    flag = keep.to(values.dtype)[:, None]
    return torch.cat([values * flag, flag], dim=1)


def training_distribution(dataset, limit=4096):
    """(K, n) float32 fractions of up to ``limit`` training cubes (the dataset's grid, evenly
    thinned; random positions when it has none), recorded in the checkpoint so that sampling
    can draw from it."""
    rng = np.random.default_rng(0)
    if len(dataset):
        picks = np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).astype(int)
        cubes = (dataset.cube_at(dataset.positions[k]) for k in picks)
    else:
        cubes = (dataset.cube(rng) for _ in range(limit))
    return np.stack([np.bincount(c.ravel(), minlength=dataset.n) / c.size
                     for c in cubes]).astype(np.float32)


def normalise_target(values, phases):
    """User fractions → a tuple summing to 1, or ValueError saying what is wrong."""
    values = [float(v) for v in values]
    if len(values) != phases:
        raise ValueError(f"{len(values)} fractions for a model of {phases} phases: give one per "
                         "phase, in label order")
    if min(values) < 0 or sum(values) <= 0:
        raise ValueError("fractions must be >= 0 and not all 0")
    total = sum(values)
    return tuple(v / total for v in values)


def parse_profile(axis, points, phases):
    """``z`` and ["0:0.30,0.45,0.25", "1:0.45,0.35,0.20"] → ("z", [(0.0, (...)), (1.0, (...))]):
    target fractions at relative positions along an axis (0 = its first voxel, 1 = its last),
    normalised, sorted; ValueError saying what is wrong."""
    if axis not in ("z", "y", "x"):
        raise ValueError(f"the axis must be z, y or x, got {axis!r}")
    out = []
    for point in points:
        pos, sep, values = str(point).partition(":")
        try:
            pos = float(pos)
            values = [float(v) for v in values.split(",")]
        except ValueError:
            sep = ""
        if not sep or not 0 <= pos <= 1:
            raise ValueError(f"{point!r}: expected POSITION:F0,F1,... with a position in [0, 1]")
        out.append((pos, normalise_target(values, phases)))
    if len(out) < 2:
        raise ValueError("give targets at two positions at least (e.g. 0:... and 1:...)")
    return axis, sorted(out)


def profile_at(points, position):
    """The target fractions at ``position`` in [0, 1]: linear between the given points,
    constant beyond the first and the last."""
    positions = [p for p, _ in points]
    values = np.array([v for _, v in points])
    return tuple(float(np.interp(position, positions, values[:, k]))
                 for k in range(values.shape[1]))

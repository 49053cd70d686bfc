"""Per-cube descriptors a model can be conditioned on, in one table: ``DESCRIPTORS``: each
phase's volume fraction ("fractions"), and those with each phase's percolating fraction
("connectivity"). Training computes a batch's from its cubes on the
fly (they must be invariant under the cube symmetries used); the checkpoint records them over
the training cubes, so that sampling can draw each volume's (``mdiff.conditioning``); the
U-Net embeds them (``mdiff.unet``). A new descriptor is one ``register`` call: its size for n
phases and its function of a one-hot batch.

A condition is an (N, k + 1) tensor: the k descriptor values, then a 1 that says it is given;
all zeros means "no condition" (the dropped case of training and the unconditional branch of
classifier-free guidance).

A descriptor made of named parts, one value per phase each (``parts``: "phi", then "perc"),
takes targets by name and phase label (``parse_targets``: ``perc:0=0.9``); a target that names
some values only is completed from the training cube nearest to it in those values
(``complete``), so that every condition is a real cube's vector wherever it was not given.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Descriptor:
    """A row of ``DESCRIPTORS``."""

    size: object  # size(phases) -> k, the number of values
    of_batch: object  # of_batch(x_start (N, n, D, H, W) one-hot in [-1, 1]) -> (N, k) tensor
    help: str = ""
    parts: tuple = ()  # names of its groups of one value per phase, in column order


DESCRIPTORS = {}
# what each part's name means in --targets (docs/composition.md)
PART_HELP = {"phi": "volume fraction",
             "perc": "percolating fraction: share of the phase in 6-connected clusters that "
                     "touch both faces of an axis, the mean over z, y and x",
             "thick": "mean local thickness, voxels: the radius of the largest ball inside "
                      "the phase that holds a voxel, the mean over the phase's voxels"}
# the values each part takes in --targets (a share, or a length in voxels)
PART_RANGE = {"phi": (0.0, 1.0), "perc": (0.0, 1.0), "thick": (0.0, float("inf"))}


def register(name, size, of_batch, help="", parts=()):
    """Add a descriptor that models can be trained on (``--condition NAME``). ``parts``:
    the names of its groups of one value per phase (then ``size`` is len(parts) · phases)."""
    DESCRIPTORS[name] = Descriptor(size, of_batch, help, tuple(parts))
    return DESCRIPTORS[name]


def leads_with_fractions(kind):
    """Whether a descriptor's first values are the phases' volume fractions (what holding
    fractions and --fractions targets need)."""
    return kind in DESCRIPTORS and DESCRIPTORS[kind].parts[:1] == ("phi",)


def kinds():
    """The values ``--condition`` takes: none and every registered descriptor."""
    return ("none", *DESCRIPTORS)


def size(kind, phases):
    """k, the number of values of descriptor ``kind`` for a model of ``phases``."""
    return int(DESCRIPTORS[kind].size(phases))


def of_batch(kind, x_start):
    """(N, k) descriptor values of a one-hot batch (N, n, D, H, W) in [-1, 1]."""
    return DESCRIPTORS[kind].of_batch(x_start)


def fractions(x_start):
    """(N, n, D, H, W) one-hot batch in [-1, 1] → (N, n) volume fraction of each phase."""
    return ((x_start + 1) * 0.5).flatten(2).mean(dim=2)


def percolating(x_start):
    """(N, n, D, H, W) one-hot batch in [-1, 1] → (N, n) each phase's percolating fraction:
    the share of its voxels in 6-connected clusters touching both faces normal to an axis,
    the mean over the three axes (invariant under the cube symmetries); 0 where absent.
    The clusters are labelled on the CPU (``mdiff.transport.cluster_faces``)."""
    import torch

    from . import transport
    from .phases import PhaseMap

    n = x_start.shape[1]
    labels = x_start.detach().argmax(dim=1).to(torch.uint8).cpu().numpy()
    phase_map = PhaseMap(list(range(n)))
    out = np.zeros((len(labels), n), dtype=np.float32)
    for b, cube in enumerate(labels):
        for i in range(n):
            faces = transport.cluster_faces(cube, phase_map, i)
            shares = [transport.fractions(faces, axis)[0] for axis in transport.AXES]
            out[b, i] = 0.0 if shares[0] is None else float(np.mean(shares))
    return torch.from_numpy(out).to(x_start.device)


def connectivity(x_start):
    """(N, 2n): each phase's volume fraction, then its percolating fraction."""
    import torch

    return torch.cat([fractions(x_start).float(), percolating(x_start)], dim=1)


def thickness(x_start):
    """(N, n+n): each phase's volume fraction, then its mean local thickness in voxels (a
    radius; ``mdiff.sizes``, on the CPU; 0 where absent), invariant under the cube
    symmetries: how large the phase's pieces are, which fractions alone leave free."""
    import torch

    from . import sizes
    from .phases import PhaseMap

    n = x_start.shape[1]
    labels = x_start.detach().argmax(dim=1).to(torch.uint8).cpu().numpy()
    phase_map = PhaseMap(list(range(n)))
    out = np.array([[sizes.mean_thickness(cube, phase_map, i) for i in range(n)]
                    for cube in labels], dtype=np.float32).reshape(len(labels), n)
    return torch.cat([fractions(x_start).float(), torch.from_numpy(out).to(x_start.device)],
                     dim=1)


register("fractions", lambda phases: phases, fractions, "each phase's volume fraction",
         parts=("phi",))
register("connectivity", lambda phases: 2 * phases, connectivity,
         "each phase's volume fraction and percolating fraction, drawn together as a real "
         "training cube's", parts=("phi", "perc"))
register("sizes", lambda phases: 2 * phases, thickness,
         "each phase's volume fraction and mean local thickness, drawn together as a real "
         "training cube's", parts=("phi", "thick"))
KINDS = kinds()  # the built-in ones (kinds() also counts those registered later)


def columns(kind, labels):
    """{(part, label): column} of a descriptor with named parts, for a model's labels."""
    parts = DESCRIPTORS[kind].parts
    return {(part, int(label)): k * len(labels) + i
            for k, part in enumerate(parts) for i, label in enumerate(labels)}


def parse_targets(text, kind, labels):
    """"perc:0=0.9,phi:255=0.7" → {column: value} for a model conditioned on ``kind`` with
    phase ``labels``; ValueError saying what is wrong."""
    parts = DESCRIPTORS[kind].parts if kind in DESCRIPTORS else ()
    cols = columns(kind, labels) if parts else {}
    out = {}
    for item in str(text).split(","):
        key, sep, value = item.strip().partition("=")
        name, sep2, label = key.partition(":")
        try:
            value, label = float(value), int(label)
        except ValueError:
            sep = ""
        if not sep or not sep2:
            raise ValueError(f"{item!r}: expected NAME:LABEL=VALUE, e.g. perc:0=0.9")
        if name not in parts:
            raise ValueError(f"{name!r} is not a descriptor this model was conditioned on "
                             f"({kind}: {', '.join(parts) or 'none'}; deff and tau, "
                             f"transport, any model takes)")
        if (name, label) not in cols:
            raise ValueError(f"label {label} is not a phase of this model (labels "
                             f"{', '.join(map(str, labels))})")
        low, high = PART_RANGE.get(name, (0.0, 1.0))
        if not low <= value <= high:
            raise ValueError(f"{item!r}: {name} is " + ("a share, in [0, 1]" if high == 1
                                                        else f"at least {low:g}"))
        out[cols[(name, label)]] = value
    return out


def complete(recorded, given):
    """A full descriptor vector (tuple) with the ``given`` {column: value} and, elsewhere,
    the values of the training cube (a row of ``recorded``) nearest to them, each column's
    distance in units of its spread over the training cubes. Among cubes equally near (a
    quarter of a sandstone's cubes percolate fully: perc = 1), the one whose other values lie
    nearest the training cubes' mean."""
    import torch

    recorded = torch.as_tensor(recorded, dtype=torch.float64)
    cols = sorted(given)
    if len(cols) == recorded.shape[1]:
        return tuple(float(given[c]) for c in range(recorded.shape[1]))
    want = torch.tensor([given[c] for c in cols], dtype=torch.float64)
    spread = recorded[:, cols].std(dim=0).clamp_min(1e-6) if len(recorded) > 1 \
        else torch.ones(len(cols), dtype=torch.float64)
    distance = ((recorded[:, cols] - want) / spread).square().sum(dim=1)
    tied = torch.nonzero(distance <= distance.min() + 1e-12).flatten()
    others = [c for c in range(recorded.shape[1]) if c not in given]
    rest = recorded[tied][:, others]
    typical = ((rest - recorded[:, others].mean(dim=0))
               / recorded[:, others].std(dim=0).clamp_min(1e-6)).square().sum(dim=1)
    nearest = int(tied[typical.argmin()])
    row = recorded[nearest].clone()
    row[cols] = want
    return tuple(float(v) for v in row)


def condition(values, keep=None):
    """(N, n) descriptors (and an (N,) bool mask of those kept) → (N, n + 1) condition."""
    import torch

    values = torch.as_tensor(values, dtype=torch.float32)
    keep = torch.ones(len(values), dtype=torch.bool, device=values.device) if keep is None \
        else keep.to(values.device)
    flag = keep.to(values.dtype)[:, None]
    return torch.cat([values * flag, flag], dim=1)


def training_distribution(dataset, kind="fractions", limit=4096):
    """(K, k) float32 descriptors of up to ``limit`` training cubes (the dataset's grid,
    evenly thinned; random positions when it has none), recorded in the checkpoint so that
    sampling can draw from it. Each cube goes through the descriptor's own function, one-hot
    encoded one at a time (never the whole volume)."""
    import torch

    from .phases import one_hot

    rng = np.random.default_rng(0)
    if len(dataset):
        picks = np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).astype(int)
        cubes = (dataset.cube_at(dataset.positions[k]) for k in picks)
    else:
        cubes = (dataset.cube(rng) for _ in range(limit))
    if kind == "fractions":  # exact counts, as the recorded distributions always were
        return np.stack([np.bincount(c.ravel(), minlength=dataset.n) / c.size
                         for c in cubes]).astype(np.float32)
    rows = [of_batch(kind, one_hot(torch.from_numpy(np.ascontiguousarray(c))[None], dataset.n,
                                   dims=c.ndim)) for c in cubes]
    return torch.cat(rows).float().numpy()


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

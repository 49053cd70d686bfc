"""A sampling request: what a user asks of a trained model, as one frozen dataclass.

Every field has its help text and, where it is a flag of ``mdiff-sample``, its flag; the
command line is made from these fields (``mdiff.cli``) and the Python API takes them by
keyword. ``None`` means "not given": the model's kind and the plan decide
(``mdiff.plan.make_plan``), so no rule compares a value with a default's literal.
"""
import argparse
from dataclasses import dataclass, field, fields, replace


def _f(default, help, flag=None, **argparse):
    """A field with its help and, when ``flag`` is given, how the command line takes it."""
    return field(default=default, metadata={"help": help, "flag": flag, "argparse": argparse})


@dataclass(frozen=True)
class SampleRequest:
    count: int = _f(4, "number of volumes", ("-n", "--count"), type=int)
    size: object = _f(None, "a cube side, or three sides Z Y X (default: the training cube "
                      "side, or patch side of a 2D model); any size, in memory bounded by "
                      "--windows (--slices for a 2D model)", "--size", type=int, nargs="+",
                      metavar="S")
    sampler: str = _f(None, "the sampler (mdiff.samplers.SAMPLERS); default: dpm++ "
                      "(DPM-Solver++(2M)) for 3D models, ddim with --eta 1 for 2D models",
                      "--sampler")
    steps: int = _f(None, "steps of a re-spaced sampler (default: dpm++ 30; ddim 50, 100 for "
                    "a 2D model); ddpm takes every step", "--steps", type=int)
    eta: float = _f(None, "DDIM noise: 0 deterministic (default of 3D models), 1 as noisy as "
                    "ancestral sampling (default of 2D models)", "--eta", type=float)
    seed: int = _f(None, "same seed -> same volumes (volume i depends on seed and i alone; "
                   "in the API, None draws one)", "--seed", type=int)
    batch: int = _f(None, "volumes per forward pass (default: for volumes of the training "
                    "size up to 8, on a CPU in equal batches whose feature maps stay under "
                    "glibc's 32 MiB heap ceiling; else 1)", "--batch", type=int)
    tiling: str = _f(None, "volumes larger than the training cube: whole = the network on the "
                     "whole volume, attention in training-size windows (faster, no seams; "
                     "memory grows with the volume); windows = overlapping training-size "
                     "windows fused at every step (memory bounded by --windows); auto "
                     "(default) = whole where it needs at most half the free memory, else "
                     "windows; a conditioned model's drawn compositions go by windows "
                     "(each window its own draw) unless whole is asked, which makes them "
                     "under a field of the same draws: 2.5-2.9x faster, finer and more "
                     "broken structure (docs/large-volumes.md)",
                     "--tiling", choices=("auto", "whole", "windows"))
    overlap: float = _f(None, "fraction of a window shared with its neighbour (--tiling "
                        "windows; default 0.25)", "--overlap", type=float)
    windows: int = _f(None, "windows per network call (--tiling windows; default 8): bounds "
                      "the memory", "--windows", type=int)
    periodic: bool = _f(False, "a volume that tiles space: opposite faces continue each other "
                        "(for simulations with periodic boundaries)", "--periodic",
                        action="store_true")
    fractions: tuple = _f(None, "target volume fraction of each phase, in label order (a model "
                          "trained with --condition fractions; normalised to sum 1). Without "
                          "it such a model draws each volume's fractions from its training "
                          "cubes", "--fractions", metavar="F0,F1,...", type="floats")
    fractions_along: tuple = _f(None, "graded target along an axis: AXIS POS:F0,F1,... "
                                "POS:F0,F1,... (positions 0 = first voxel to 1 = last; linear "
                                "in between), e.g. z 0:0.30,0.45,0.25 1:0.45,0.35,0.20; each "
                                "window is conditioned on the target at its centre. The API "
                                "also takes it parsed: (axis, [(position, fractions), ...])",
                                "--fractions-along", nargs="+", metavar="ARG")
    targets: str = _f(None, "targets by descriptor and phase label, NAME:LABEL=VALUE,...: phi "
                      "(volume fraction) and, for a model trained with --condition "
                      "connectivity, perc (percolating fraction), for --condition sizes, "
                      "thick (mean local thickness, voxels), e.g. perc:0=0.9,phi:0=0.2; "
                      "values not given come from the training cube nearest to those given. "
                      "Transport, for any model: deff (D_eff/D, the mean over z, y, x) and "
                      "tau (tortuosity factor), deff:0=0.05, deff:z:0=0.05, tau:z:0=3: "
                      "candidates are generated and those within --target-tolerance kept "
                      "(docs/composition.md)", "--targets", metavar="NAME:LABEL=V,...")
    target_tolerance: float = _f(None, "transport targets (deff, tau in --targets): a "
                                 "candidate volume meets a target within this share of its "
                                 "value (default 0.1)", "--target-tolerance", type=float,
                                 metavar="SHARE")
    max_candidates: int = _f(None, "transport targets: candidate volumes made at most, kept "
                             "or not (default 10 per volume asked, at least 16)",
                             "--max-candidates", type=int, metavar="N")
    guidance: float = _f(None, "classifier-free guidance scale of a conditioned model (1: the "
                         "conditional model alone, one network call a step; > 1 follows the "
                         "condition harder, at two). Default: 1.4 where each volume's "
                         "composition is drawn from the training cubes (at 1 the set varies "
                         "too little), 1 at a --fractions target and where a larger volume "
                         "draws its composition from place to place (at 1.4 the volumes vary "
                         "too much)",
                         "--guidance", type=float, metavar="W")
    hold_fractions: bool = _f(None, "a model conditioned on fractions (x0 objective): hold "
                              "each window's phase probabilities to its own condition's "
                              "fractions at every step, drawn or target (made whole under a "
                              "field: each cell's window to the field there; default: on for "
                              "such models; --no-hold-fractions turns it off)",
                              "--hold-fractions",
                              action=argparse.BooleanOptionalAction)
    fuse: str = _f(None, "a 2D model: cycle = the slices along one axis a step, z, y, x in "
                   "turn (default); mean = at every step the x0 estimates of the slices along "
                   "z, y and x averaged (three times the cost); geo = their phase "
                   "probabilities' normalised geometric mean", "--fuse",
                   choices=("cycle", "mean", "geo"))
    slices: int = _f(None, "a 2D model: 2D slices per network call (default 64; bounds the "
                     "memory)", "--slices", type=int)
    free_fractions: bool = _f(False, "a 2D model: do not hold the fused estimate to the "
                              "training images' phase fractions (without that hold the "
                              "planes' disagreement erodes the minority phases)",
                              "--free-fractions", action="store_true")
    variance: str = _f("beta_tilde", "ddpm's posterior variance: beta_tilde or beta")
    first: int = _f(0, "index of the first volume (volumes first, ..., first + count - 1): "
                    "how processes share a set")

    def but(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)


def cli_fields():
    """The fields that are flags of ``mdiff-sample``, in the order of the dataclass."""
    return [f for f in fields(SampleRequest) if f.metadata["flag"]]

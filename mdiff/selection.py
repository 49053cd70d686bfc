"""Transport targets: volumes whose measured D_eff/D or tortuosity factor of a phase lies
near a target, by generating candidates and keeping those that meet it.

``--targets deff:0=0.05`` asks for D_eff/D of the phase labelled 0 (the mean over z, y and x,
the judge's figure), ``deff:z:0=0.05`` for it along z alone, ``tau:0=3`` and ``tau:z:0=3``
for the tortuosity factor τ = φ·D/D_eff (TauFactor's definition; without an axis, from the mean
D_eff/D), beside any descriptor target of the model (``phi:0=0.2``) or ``--fractions``.

Why by measurement: no mdiff network reads transport from its condition. Conditioning on the
percolating fraction or on local thickness was ignored at every budget measured
(benchmarks/results/README.md, connectivity levers), and a D_eff/D descriptor costs about a
training step's time in diffusion solves. So candidates are generated a batch at a time, each
is solved (``mdiff.transport``), and those within the tolerance (a share of each target's
value) are kept, in the order made, until ``count`` are kept or ``max_candidates`` are made.

Steering: on a model conditioned on fractions whose volumes draw their composition (no
fraction target; a volume of the training cube's size), the first batch is the usual draws
from the training cubes; from then on the log of D_eff/D of every candidate so far is fitted
linear in its condition's fraction of the target's phase (least squares), and each candidate
of the next batch is conditioned at the fraction where the fit meets the target, spread by the
fit's residual over its slope (the other values from the nearest training cube). A kept volume
is a draw of the model at its condition that happens to meet the target: selection never edits
a volume. Candidate j has the noise of volume j of an ordinary run with the seed, so the kept
set is a function of the seed, the request and the checkpoint.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import conditioning, descriptors, transport
from .errors import MdiffError

KINDS = {"deff": "D_eff/D, effective diffusivity over the free diffusivity (0 < value <= 1)",
         "tau": "tortuosity factor tau = phi D / D_eff (TauFactor's; value >= 1)"}
TOLERANCE = 0.1  # a candidate meets a target within this share of the target's value
CANDIDATES_PER_VOLUME = 10  # the default --max-candidates, per volume asked
FLOOR = 1e-3  # D_eff/D of a candidate that does not percolate, in the steering fit's log


@dataclass(frozen=True)
class TransportTarget:
    """One transport target: ``kind`` deff or tau of the phase ``label``, along ``axis`` (z,
    y, x; None: from the mean D_eff/D over the three)."""

    kind: str
    label: int
    value: float
    axis: str = None

    def __str__(self):
        return f"{self.kind}:{self.axis + ':' if self.axis else ''}{self.label}={self.value:g}"

    def measure(self, figures, fraction):
        """This target's figure of a volume from ``transport.phase_transport``'s {axis: entry}
        of its phase and the phase's volume fraction: D_eff/D, or τ (inf: nothing conducts)."""
        d_eff = self.d_eff(figures)
        if self.kind == "deff":
            return d_eff
        return fraction / d_eff if d_eff > 0 else math.inf

    def d_eff(self, figures):
        axes = [self.axis] if self.axis else list(transport.AXES)
        return float(np.mean([figures[a]["effective_diffusivity"] or 0.0 for a in axes]))

    def meets(self, value, tolerance):
        return abs(value - self.value) <= tolerance * self.value


def split_targets(text, labels=None):
    """"deff:0=0.05,phi:0=0.2" → ("phi:0=0.2", (TransportTarget, ...)): the descriptor targets
    as text (None when there are none) and the transport targets; ValueError saying what is
    wrong. ``labels``: the model's phase labels, checked where given."""
    if text is None:
        return None, ()
    rest, found = [], []
    for item in str(text).split(","):
        key, sep, value = item.strip().partition("=")
        name, *middle = key.split(":")
        if name not in KINDS:
            rest.append(item)
            continue
        axis = middle[0] if len(middle) == 2 else None
        try:
            label, value = int(middle[-1]), float(value)
        except (ValueError, IndexError):
            sep = ""
        if not sep or len(middle) not in (1, 2) or (len(middle) == 2 and axis not in "zyx"):
            raise ValueError(f"{item!r}: expected {name}:LABEL=VALUE or {name}:AXIS:LABEL=VALUE "
                             f"(AXIS z, y or x), e.g. {name}:0=" + ("0.05" if name == "deff"
                                                                     else "3"))
        if labels is not None and label not in labels:
            raise ValueError(f"label {label} is not a phase of this model (labels "
                             f"{', '.join(map(str, labels))})")
        if not (0 < value <= 1 if name == "deff" else 1 <= value < math.inf):
            raise ValueError(f"{item!r}: {KINDS[name]}")
        found.append(TransportTarget(name, label, value, axis or None))
    return (",".join(rest) if rest else None), tuple(found)


def check(plan_count, tolerance, max_candidates, targets):
    """(tolerance, max_candidates) with their defaults, or one line for values that make no
    sense; both flags without a transport target are one line too."""
    if not targets:
        if tolerance is not None or max_candidates is not None:
            raise MdiffError("--target-tolerance and --max-candidates are for transport "
                             "targets (--targets deff:LABEL=V or tau:LABEL=V)")
        return None, None
    tolerance = TOLERANCE if tolerance is None else float(tolerance)
    if not 0 < tolerance < 1:
        raise MdiffError(f"--target-tolerance is a share of the target, in (0, 1); got "
                         f"{tolerance:g}")
    if max_candidates is None:
        max_candidates = max(CANDIDATES_PER_VOLUME * plan_count, 16)
    if max_candidates < plan_count:
        raise MdiffError(f"--max-candidates {max_candidates} is fewer than the {plan_count} "
                         f"volumes asked")
    return tolerance, int(max_candidates)


class Selection:
    """The candidates of one plan with transport targets, and what was kept of them.
    ``batches`` yields (index of the batch's first kept volume, its kept volumes) as they are
    kept; afterwards ``kept`` holds each kept volume's record and ``summary()`` the run's."""

    def __init__(self, gen, plan, log=None):
        self.gen, self.plan, self.log = gen, plan, log or (lambda text: None)
        self.targets = plan.transport
        self.labels = [int(v) for v in gen.phase_map.labels]
        self.phase = self.labels.index(self.targets[0].label)
        self.steered = (plan.drawn == "per volume"
                        and descriptors.leads_with_fractions(gen.condition))
        self.made = []  # per candidate: {"candidate", "condition", "values", "fraction"}
        self.kept = []

    def _conditions(self, start, count):
        """The conditions of candidates start, ...: the plan's (its draws or its target), or,
        once the fit allows it, steered to the target (see the module doc)."""
        plan, gen = self.plan, self.gen
        drawn = conditioning.for_batch(plan, gen.record.descriptors, gen.model.factor,
                                       gen.patch, start, count)
        fit = self._fit() if self.steered else None
        if fit is None:
            return drawn
        centre, spread, low, high = fit
        from .plan import target_vector

        rows = []
        for j in range(start, start + count):
            g = torch.Generator().manual_seed(plan.seed * 1_000_003 + plan.first + j + 29)
            x = float(np.clip(centre + spread * torch.randn((), generator=g).item(), low, high))
            rows.append(target_vector(gen.facts, {self.phase: x}))
        return descriptors.condition(torch.tensor(rows))

    def _fit(self):
        """(fraction where the fit meets the target, its spread, the training cubes' range of
        the fraction), or None while the candidates cannot say (fewer than three, one
        fraction, or D_eff/D not rising with the fraction)."""
        x = np.array([m["condition"][self.phase] for m in self.made])
        if len(x) < 3 or np.ptp(x) < 1e-6:
            return None
        y = np.log(np.maximum([m["d_eff"] for m in self.made], FLOOR))
        slope, intercept = np.polyfit(x, y, 1)
        if not slope > 0:
            return None
        recorded = self.gen.record.descriptors[:, self.phase].numpy()
        low, high = float(recorded.min()), float(recorded.max())
        grid = np.linspace(low, high, 512)
        target = self.targets[0]
        want = (np.log(np.full_like(grid, target.value)) if target.kind == "deff"
                else np.log(np.maximum(grid, 1e-6) / target.value))  # D = φ / τ
        centre = float(grid[np.argmin(np.abs(intercept + slope * grid - want))])
        residual = float(np.std(y - (intercept + slope * x)))
        spread = min(max(residual / slope, 0.005), (high - low) / 4)
        return centre, spread, low, high

    def _measure(self, volume):
        """{target: figure}, the D_eff/D the fit uses, and the phase's fraction of a volume."""
        gen, plan = self.gen, self.plan
        values, d_eff, fraction = {}, None, None
        lut = gen.phase_map.lut(volume.dtype)
        for phase in sorted({self.labels.index(t.label) for t in self.targets}):
            mine = [t for t in self.targets if t.label == self.labels[phase]]
            axes = sorted({a for t in mine for a in (t.axis or transport.AXES)},
                          key=transport.AXES.index)
            figures = transport.phase_transport(volume, gen.phase_map, phase, "".join(axes),
                                                periodic=plan.periodic,
                                                voxel_size=gen.voxel_size)
            phi = float(np.count_nonzero(lut[volume] == phase)) / volume.size
            for t in mine:
                values[str(t)] = t.measure(figures, phi)
            if phase == self.phase:
                d_eff, fraction = self.targets[0].d_eff(figures), phi
        return values, d_eff, fraction

    def batches(self, progress=None):
        plan = self.plan
        while len(self.kept) < plan.count and len(self.made) < plan.max_candidates:
            start = len(self.made)
            b = min(plan.batch, plan.max_candidates - start)
            cond = self._conditions(start, b)
            volumes = self.gen.make(plan, start, b, cond, progress, total=plan.max_candidates)
            rows = None if not isinstance(cond, torch.Tensor) else cond[:, :-1].tolist()
            keep = []
            for k, volume in enumerate(volumes):
                values, d_eff, fraction = self._measure(volume)
                record = {"candidate": start + k, "condition": None if rows is None
                          else rows[k], "values": values, "d_eff": d_eff, "fraction": fraction}
                self.made.append(record)
                if len(self.kept) < plan.count and all(
                        t.meets(values[str(t)], plan.tolerance) for t in self.targets):
                    keep.append(k)
                    self.kept.append(record)
            self.log(self._line(start, b))
            if keep:
                yield len(self.kept) - len(keep), volumes[keep]

    def _line(self, start, count):
        t = self.targets[0]
        figures = [m["values"][str(t)] for m in self.made[start:start + count]]
        return (f"  candidates {start + 1}-{start + count}: {t.kind} {min(figures):.4g}-"
                f"{max(figures):.4g} (target {t.value:g} ± {self.plan.tolerance:.0%}); kept "
                f"{len(self.kept)} of {self.plan.count}")

    def conditions(self):
        """Each kept volume's condition vector, or None where the volumes have none of their
        own (an unconditioned model, a condition per window)."""
        rows = [m["condition"] for m in self.kept]
        return None if not rows or rows[0] is None else rows

    def summary(self):
        """What samples.json records of the selection."""
        return {"targets": [str(t) for t in self.targets], "tolerance": self.plan.tolerance,
                "max_candidates": self.plan.max_candidates, "candidates": len(self.made),
                "kept": len(self.kept), "asked": self.plan.count, "steered": self.steered,
                "kept_candidates": [m["candidate"] for m in self.kept],
                "made": [{k: m[k] for k in ("candidate", "condition", "values", "fraction")}
                         for m in self.made]}

    def shortfall(self):
        """One line where fewer volumes met the targets than were asked, else None."""
        if len(self.kept) >= self.plan.count:
            return None
        t = self.targets[0]
        figures = [m["values"][str(t)] for m in self.made]
        return (f"{len(self.kept)} of {self.plan.count} volumes met "
                f"{', '.join(map(str, self.targets))} (± {self.plan.tolerance:.0%}) in "
                f"{len(self.made)} candidates, whose {t.kind} ran {min(figures):.4g}-"
                f"{max(figures):.4g}: ask a target in that range, a wider --target-tolerance "
                f"or more --max-candidates")

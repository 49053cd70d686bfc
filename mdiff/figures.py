"""The table of per-phase figures: what ``mdiff-metrics`` prints and ``mdiff-evaluate`` judges.

A row says a figure's key in a phase entry of ``metrics.describe``, its short name and number
format in tables, its unit (in voxel units; physical units scale it by the voxel size), whether
it gets a verdict, whether it needs ``--transport``, and which way is "better" where one is
(None: neither, as for most structure figures). Figures that ``describe`` does not compute
itself carry a ``measure(volume, phase_map, index, periodic)``; ``describe`` calls it for
every phase. A new figure is one ``register`` call.

The triple-phase boundary density is a figure of the whole volume, not of a phase: it has its
own entry (``tpb_density``) and verdict.
"""
from dataclasses import dataclass

import numpy as np

from .io import spacing_triple


@dataclass(frozen=True)
class Figure:
    """A row of ``FIGURES``."""

    key: str  # the key in a phase entry
    short: str  # its name in tables and plots
    fmt: str  # its number format
    unit: str = ""  # "" (a pure number), "length", "1/length", "1/volume"
    judged: bool = True  # mdiff-evaluate gives it a verdict
    transport: bool = False  # measured with --transport only (per axis; a cube's value is
    # the mean over the axes, and 0 for a phase that is absent)
    higher_is_better: object = None  # True, False or None (no direction)
    measure: object = None  # measure(volume, phase_map, i, periodic, spacing=None) -> float
    # (voxel units; in the spacing's unit for non-cubic voxels (z, y, x)), or None
    extra: str = ""  # "sizes": measured only when asked (describe(sizes=True), mdiff-metrics
    # --sizes; mdiff-evaluate always, on its small cubes), "" always
    help: str = ""

    def value(self, phase):
        """This figure of a phase entry (``metrics.describe``)."""
        if self.key in phase:
            return phase[self.key]
        return float(np.mean([t[self.key] or 0.0 for t in phase["transport"].values()]))


FIGURES = {}


def register(key, short, fmt, **fields):
    """Add a row to the table (``Figure``'s fields by keyword)."""
    FIGURES[key] = Figure(key, short, fmt, **fields)
    return FIGURES[key]


def table(transport=False, judged=None):
    """The rows in order: without the transport rows unless ``transport``; only those that
    get a verdict with ``judged=True``."""
    return [f for f in FIGURES.values() if (transport or not f.transport)
            and (judged is None or f.judged == judged)]


def of_phase(phase, judged=None):
    """The rows present in a phase entry or a summary row (transport only when measured)."""
    moved = "transport" in phase or any(f.key in phase for f in FIGURES.values() if f.transport)
    per_axis = [t for t in phase.get("transport", {}).values()]
    return [f for f in table(moved, judged)
            if f.key in phase or (f.transport and any(f.key in t for t in per_axis))]


POWERS = {"": 0, "length": 1, "1/length": -1, "1/volume": -3}  # of the voxel size, per unit


def measured(volume, phase_map, periodic, voxel_size=1.0, extras=()):
    """The figures with their own ``measure`` (those with an ``extra`` only when it is in
    ``extras``): {key: [value of each phase]}. On cubic voxels (``voxel_size`` one number or
    three equal) measured in voxel units and scaled by their unit; on non-cubic voxels (z, y,
    x) measured in physical lengths by the measure itself."""
    spacing = spacing_triple(voxel_size)
    cubic = spacing[0] == spacing[1] == spacing[2]
    rows = [f for f in FIGURES.values() if f.measure is not None and f.extra in ("", *extras)]
    if cubic:
        return {f.key: [f.measure(volume, phase_map, i, periodic) * spacing[0] ** POWERS[f.unit]
                        for i in range(phase_map.n)] for f in rows}
    return {f.key: [f.measure(volume, phase_map, i, periodic, spacing=spacing)
                    for i in range(phase_map.n)] for f in rows}


def _thickness(volume, phase_map, i, periodic, spacing=None):
    from . import sizes

    return sizes.mean_thickness(volume, phase_map, i, periodic, spacing)


def _chord(volume, phase_map, i, periodic, spacing=None):
    from . import sizes

    return sizes.mean_chord(volume, phase_map, i, periodic, spacing)


def _thick_percolation(volume, phase_map, i, periodic, spacing=None):
    from . import transport

    return transport.thick_percolating_fraction(volume, phase_map, i, periodic, spacing)


register("volume_fraction", "phi", "{:.4f}", help="volume fraction")
register("specific_surface_area", "S_V", "{:.4g}", unit="1/length",
         help="specific surface area, discrete Crofton formula over 13 directions")
register("specific_surface_area_faces", "S_V faces", "{:.4g}", unit="1/length", judged=False,
         help="specific surface area by voxel-face count (~1.5x a smooth surface)")
register("euler_density", "chi_V", "{:.3e}", unit="1/volume",
         help="Euler characteristic per volume (26-connected phase)")
register("local_thickness", "thick.", "{:.3g}", unit="length", measure=_thickness, extra="sizes",
         help="mean local thickness over the phase's voxels, as a radius: the largest ball "
              "inside the phase that holds the voxel (PoreSpy's local_thickness; mdiff.sizes)")
register("mean_chord_length", "chord", "{:.3g}", unit="length", measure=_chord, extra="sizes",
         help="mean length of the phase's chords along z, y and x that end inside the window "
              "(PoreSpy's chords with trim_edges)")
register("percolating_fraction", "perc.", "{:.4f}", transport=True, higher_is_better=None,
         help="share of the phase in 6-connected clusters touching both faces of an axis")
register("isolated_fraction", "isol.", "{:.4f}", transport=True,
         help="share of the phase in 6-connected clusters touching no face of the window")
register("largest_cluster_fraction", "largest", "{:.4f}", transport=True,
         help="share of the phase in its largest 6-connected cluster (the cluster-size "
              "distribution is in each phase's \"clusters\")")
register("thick_percolating_fraction", "thick perc", "{:.4f}", judged=False,
         measure=_thick_percolation, extra="sizes",
         help="percolating fraction of the phase's thick channels: what an opening by the "
              "face-neighbour cross twice over keeps (parts ~5 voxels across and more); "
              "where real ones percolate and generated ones do not, mdiff-evaluate advises")
register("effective_diffusivity", "D_eff/D", "{:.4g}", transport=True,
         help="effective diffusivity over the free diffusivity (steady diffusion)")

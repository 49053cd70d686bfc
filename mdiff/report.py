"""``mdiff-metrics``: measure volumes, compare them with a reference, print tables, JSON, plots.

The figures come from ``mdiff.metrics.describe``; this module only arranges them: the union of
labels across files (a label missing from a volume reads as φ = 0, with a warning), sub-volume
statistics (mean ± std over non-overlapping S³ cubes, the way generated 64³ samples must be
compared with real 64³ cubes), relative differences, effect sizes and mean |ΔS2|.
"""
import json
import sys

import numpy as np

from . import metrics
from ._version import __version__
from .errors import MdiffError
from .figures import of_phase
from .grid import grid_cubes
from .io import compact_spacing, read_volume, same_spacing, spacing_text
from .phases import MAX_PHASES, PhaseMap, check_labels, label_counts
from .stats import effect_size

def subvolumes(volume, size):
    """Views (no copies) of the non-overlapping size³ cubes that fit in the volume."""
    if min(volume.shape) < size:
        raise MdiffError(f"--subvolume {size} is larger than the volume {volume.shape}")
    return grid_cubes(volume, size)


def summarise(entries):
    """Mean, std and per-cube values of every figure over cube entries:
    {"count", "phases": [...], "tpb_density"}; S2 as the mean curves."""
    out = {"count": len(entries), "phases": []}
    for i, phase in enumerate(entries[0]["phases"]):
        row = {"label": phase["label"]}
        for f in of_phase(phase):
            row[f.key] = _mean_std([f.value(e["phases"][i]) for e in entries])
        if "transport" in phase:
            row["effective_diffusivity_axes"] = {
                axis: _mean_std([e["phases"][i]["transport"][axis]["effective_diffusivity"]
                                 or 0.0 for e in entries]) for axis in phase["transport"]}
        row["s2"] = {axis: np.mean([e["phases"][i]["s2"][axis] for e in entries], axis=0).tolist()
                     for axis in "zyx"}
        out["phases"].append(row)
    tpb = [e["tpb_density"] for e in entries]
    out["tpb_density"] = None if tpb[0] is None else _mean_std(tpb)
    return out


def _mean_std(values):
    """{"mean", "std" (ddof 1; 0 for one value), "values"}: the per-cube values are kept so
    that sets can be compared as distributions (``mdiff.stats``), not only by their means."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "values": values.tolist()}


def file_spacing(paths, metas, voxel_size=None, unit=None):
    """The voxel size (and its unit) the figures are measured in: ``voxel_size`` where given,
    else what the files record (ImageJ, OME or VTK spacing), else None (voxel units). One
    number for cubic voxels, a (z, y, x) tuple for non-cubic ones. MdiffError for files of
    different recorded spacing."""
    if voxel_size is None:
        if not all(same_spacing(m["voxel_size"], metas[0]["voxel_size"]) for m in metas):
            listed = "; ".join(f"{p}: {m['voxel_size'] or 'none recorded'}"
                               for p, m in zip(paths, metas))
            raise MdiffError(f"the files record different voxel sizes ({listed}); give one "
                             "with --voxel-size to compare them, or resample")
        voxel_size = metas[0]["voxel_size"]
        units = {m["unit"] for m in metas if m["unit"]}
        unit = unit or (units.pop() if len(units) == 1 else None)
        source = f"{paths[0]}'s recorded voxel size"
    else:
        source = "--voxel-size"
    if voxel_size is None:
        return None, None
    try:
        return compact_spacing(voxel_size), unit
    except MdiffError as exc:
        raise MdiffError(f"{source}: {exc}; give --voxel-size") from None


def measure(paths, s2_max=64, boundary="closed", subvolume=None, voxel_size=None, warn=None,
            transport=False, transport_tol=None, device="cpu", sizes=False, unit=None):
    """Read and describe every file with one shared phase map; the ``--json`` object.
    ``voxel_size`` (a number, or a (z, y, x) triple) and ``unit`` override what the files
    record (``file_spacing``); with neither, lengths are in voxels."""
    warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
    volumes, metas = [], []
    for p in paths:
        volume, meta = read_volume(p, with_meta=True)
        volumes.append(volume)
        metas.append(meta)
    voxel_size, unit = file_spacing(paths, metas, voxel_size, unit)
    label_sets = [set(label_counts(v)) for v in volumes]
    for path, labels in zip(paths, label_sets):
        if len(labels) > MAX_PHASES or len(paths) == 1:
            check_labels(labels, name=str(path))
    union = sorted(set().union(*label_sets))
    for path, labels in zip(paths, label_sets):
        missing = sorted(set(union) - labels)
        if missing and len(paths) > 1:
            warn(f"{path}: labels {missing} do not occur (their phase reads as empty)")
    check_labels(union, name=" + ".join(map(str, paths)))
    phase_map = PhaseMap(union)
    result = {"mdiff_version": __version__, "boundary": boundary, "volumes": []}
    if voxel_size is not None:
        result["voxel_size"] = voxel_size if np.isscalar(voxel_size) else list(voxel_size)
        result["unit"] = unit
    kw = {"sizes": sizes}
    if transport:
        from .transport import DEFAULT_TOL

        kw.update(transport=True, transport_tol=transport_tol or DEFAULT_TOL, device=device,
                  log=lambda text: print(text, file=sys.stderr, flush=True))
        result["transport"] = {"connectivity": 6, "tolerance": kw["transport_tol"],
                               "criterion": "relative spread of the flux through planes",
                               "device": str(device),
                               "lateral": "periodic" if boundary == "periodic" else "closed"}
    for path, volume in zip(paths, volumes):
        entry = metrics.describe(volume, phase_map, s2_max, boundary, voxel_size, path=path,
                                 distributions=sizes, **kw)
        if subvolume:
            cubes = [metrics.describe(c, phase_map, s2_max, boundary, voxel_size,
                                      **{**kw, "log": None})
                     for c in subvolumes(volume, subvolume)]
            entry["subvolumes"] = {"size": subvolume, **summarise(cubes)}
        result["volumes"].append(entry)
    if len(paths) > 1:
        result["comparison"] = [compare(result["volumes"][0], other, subvolume)
                                for other in result["volumes"][1:]]
    return result


def _relative(value, reference):
    return None if reference == 0 else (value - reference) / abs(reference)


def _relative_or_none(value, reference):
    return None if value is None or reference is None else _relative(value, reference)


TRANSPORT_KEYS = ("percolating_fraction", "isolated_fraction", "effective_diffusivity",
                  "tortuosity_factor")


def compare(ref, other, subvolume=None):
    """Per phase and figure: reference, value, relative difference (and effect size d)."""
    out = {"path": other["path"], "reference": ref["path"], "phases": []}
    if subvolume:  # the sub-volumes as two sets of cubes: the one comparison of sets
        from .verdict import compare_sets

        sets = compare_sets(ref["subvolumes"], other["subvolumes"])
    for i, (rp, op) in enumerate(zip(ref["phases"], other["phases"])):
        row = {"label": rp["label"]}
        for key in (f.key for f in of_phase(rp) if not f.transport):
            cell = {"reference": rp[key], "value": op[key],
                    "relative_difference": _relative(op[key], rp[key])}
            if subvolume:
                rs = ref["subvolumes"]["phases"][i][key]
                os_ = other["subvolumes"]["phases"][i][key]
                cell.update(sets["phases"][i][key],
                            relative_difference_of_means=_relative(os_["mean"], rs["mean"]))
            row[key] = cell
        row["s2_mean_abs_difference"] = {
            axis: mean_abs_difference(rp["s2"][axis], op["s2"][axis]) for axis in "zyx"}
        if "transport" in rp and "transport" in op:
            row["transport"] = {axis: {key: {
                "reference": rp["transport"][axis][key], "value": op["transport"][axis][key],
                "relative_difference": _relative_or_none(op["transport"][axis][key],
                                                         rp["transport"][axis][key])}
                for key in TRANSPORT_KEYS} for axis in rp["transport"]}
        out["phases"].append(row)
    if ref["tpb_density"] is not None and other["tpb_density"] is not None:
        out["tpb_density"] = {"reference": ref["tpb_density"], "value": other["tpb_density"],
                              "relative_difference": _relative(other["tpb_density"],
                                                               ref["tpb_density"])}
    return out


def mean_abs_difference(a, b):
    """Mean |a(r) − b(r)| over the r both curves have."""
    k = min(len(a), len(b))
    return float(np.mean(np.abs(np.subtract(a[:k], b[:k]))))


# ---------------------------------------------------------------------------------------------
# Text output


def _pct(x):
    return "" if x is None else f"{100 * x:+.1f}%"


def format_report(result):
    """The human-readable tables: one file alone, or files side by side with the first."""
    vols = result["volumes"]
    size = result.get("voxel_size")
    shown = "" if size is None else (format(size, "g") if np.isscalar(size)
                                     else spacing_text(size) + " (z, y, x)")
    unit = "voxel units" if size is None else \
        f"voxel size {shown} {result.get('unit') or '(no unit recorded)'}"
    lines = []
    for v in vols:
        lines.append(f"{v['path']}: {'x'.join(map(str, v['shape']))} voxels, "
                     f"{len(v['phases'])} phases")
    lines.append("")
    names = short_names([v["path"] for v in vols])
    w = max(14, *(len(n) for n in names))
    sub = "subvolumes" in vols[0]
    head = f"{'figure':<10} {'label':>5}  " + "  ".join(
        f"{n:>{w}}" + ("" if i == 0 else f" {'diff':>8}") for i, n in enumerate(names))
    lines.append(head)
    lines.append("-" * len(head))
    for i, phase in enumerate(vols[0]["phases"]):
        lines += _phase_rows(vols, i, w)
        if "transport" in phase:
            lines += _transport_rows(vols, i, w)
        lines.append("")
    if vols[0]["tpb_density"] is not None:
        cells = []
        for j, v in enumerate(vols):
            t = v["tpb_density"]
            cells.append(f"{t:>{w}.4g}" + ("" if j == 0 else
                                          f" {_pct(_relative(t, vols[0]['tpb_density'])):>8}"))
        lines.append(f"{'TPB':<10} {'':>5}  " + "  ".join(cells))
        lines.append("")
    if len(vols) == 1:
        lines.append("Euler counts (V - E + F - C = chi):")
        for p in vols[0]["phases"]:
            e = p["euler"]
            lines.append(f"  label {p['label']:>5}: {e['vertices']} - {e['edges']} + "
                         f"{e['faces']} - {e['cubes']} = {e['chi']}")
        lines.append("")
    if sub:
        lines += _format_subvolumes(result)
    for comp in result.get("comparison", []):
        worst = max((d for p in comp["phases"] for d in p["s2_mean_abs_difference"].values()),
                    default=0.0)
        lines.append(f"S2: largest mean |dS2| over phases and axes, {_short(comp['path'])} vs "
                     f"{_short(comp['reference'])}: {worst:.4f}")
    lines.append(
        f"Conventions: boundary {result['boundary']}; {unit}; phi = voxel fraction; S_V = "
        "surface per volume, Crofton 13 directions (faces = voxel-face count, ~1.5x a smooth "
        "surface); chi = V-E+F-C of the union of closed voxels (26-connected phase), chi_V = "
        "chi/N; TPB = lattice edges touching 3+ phases per voxel; diff = relative to the first "
        "file.")
    if "transport" in result:
        t = result["transport"]
        lines.append(
            "Transport (per axis; 6-connected clusters, unlike chi's 26): perc. = share of the "
            "phase's voxels in clusters touching both faces normal to the axis, isolated = in "
            "clusters touching no face; largest = in the largest cluster, clusters = their "
            "number (the size distribution is in --json); D_eff/D from steady diffusion in "
            "the phase with unit concentration difference between those faces (half a voxel beyond the end "
            "voxels) and "
            + ("the other faces periodic (clusters and flow wrap across them; isolated = "
               "touching neither face of the axis)" if t.get("lateral") == "periodic"
               else "no flux elsewhere")
            + "; tau = tortuosity factor = phi D / D_eff "
            "(TauFactor's convention, inf: no path). Solved by preconditioned CG to a flux "
            f"spread of {t['tolerance']:g} on {t['device']}; * = not converged to it.")
    return "\n".join(lines)


def _phase_rows(vols, i, w=14):
    """Every figure of the table and χ of phase i in every volume, with differences."""
    phase, lines = vols[0]["phases"][i], []
    rows = [(f.key, f.short, f.fmt) for f in of_phase(phase) if not f.transport]
    for key, short, fmt in rows + [("chi", "chi", "{:d}")]:
        cells = []
        for j, v in enumerate(vols):
            p = v["phases"][i]
            value = p["euler"]["chi"] if key == "chi" else p[key]
            ref = phase["euler"]["chi"] if key == "chi" else phase[key]
            cells.append(f"{fmt.format(value):>{w}}" + ("" if j == 0 else
                                                        f" {_pct(_relative(value, ref)):>8}"))
        lines.append(f"{short:<10} {phase['label']:>5}  " + "  ".join(cells))
    return lines


def _transport_rows(vols, i, w=14):
    """Per axis: percolating fraction, D_eff/D, τ (inf: no path) of phase i in every volume."""
    lines = []
    for key, short in (("percolating_fraction", "perc."), ("isolated_fraction", "isolated"),
                       ("effective_diffusivity", "D_eff/D"), ("tortuosity_factor", "tau")):
        for axis in vols[0]["phases"][i]["transport"]:
            cells = []
            ref = vols[0]["phases"][i]["transport"][axis]
            for j, v in enumerate(vols):
                t = v["phases"][i]["transport"][axis]
                x = t[key]
                if x is None:
                    text = "inf" if key == "tortuosity_factor" and "note" not in t else "-"
                else:
                    text = f"{x:.4g}" + ("" if t["converged"] else "*")
                diff = "" if j == 0 else f" {_pct(_relative_or_none(x, ref[key])):>8}"
                cells.append(f"{text:>{w}}{diff}")
            lines.append(f"{short + ' ' + axis:<10} {vols[0]['phases'][i]['label']:>5}  "
                         + "  ".join(cells))
    label = vols[0]["phases"][i]["label"]
    for short, get, fmt in (("largest", lambda p: p["largest_cluster_fraction"], "{:.4g}"),
                            ("clusters", lambda p: p["clusters"]["count"], "{:d}")):
        if all("clusters" in v["phases"][i] for v in vols):
            values = [get(v["phases"][i]) for v in vols]
            lines.append(f"{short:<10} {label:>5}  " + "  ".join(
                f"{fmt.format(x):>{w}}" + ("" if j == 0 else
                                           f" {_pct(_relative(x, values[0])):>8}")
                for j, x in enumerate(values)))
    for v in vols:
        notes = {t["note"] for t in v["phases"][i]["transport"].values() if t.get("note")}
        for note in sorted(notes):
            lines.append(f"  note, {_short(v['path'])}, label {v['phases'][i]['label']}: {note}")
    return lines


def _format_subvolumes(result):
    vols = result["volumes"]
    size = vols[0]["subvolumes"]["size"]
    lines = [f"Sub-volumes of {size}^3: mean ± std over cubes "
             f"({', '.join(str(v['subvolumes']['count']) for v in vols)} cubes); "
             "d = |mean - mean_ref| / std_ref"]
    for i, phase in enumerate(vols[0]["subvolumes"]["phases"]):
        for key, short, fmt in ((f.key, f.short, f.fmt) for f in of_phase(phase)):
            cells = []
            r = phase[key]
            for j, v in enumerate(vols):
                c = v["subvolumes"]["phases"][i][key]
                text = f"{fmt.format(c['mean'])} ± {fmt.format(c['std'])}"
                if j:
                    d = effect_size(c["mean"], r["mean"], r["std"])
                    text += f" (d {d:.2f})" if d is not None else " (d -)"
                cells.append(f"{text:>28}")
            lines.append(f"  {short:<10} {phase['label']:>5}  " + "  ".join(cells))
    lines.append("")
    return lines


def _short(path):
    text = str(path)
    return text if len(text) <= 14 else "…" + text[-13:]


def short_names(paths, width=14):
    """Column headers for paths: each cut from the left to ``width`` characters, or only as
    far as keeps them distinct (``a/sample_000.tif`` and ``b/sample_000.tif`` stay apart)."""
    texts = [str(p) for p in paths]
    keep = width - 1
    while keep < max(map(len, texts)):
        cut = [t if len(t) <= keep + 1 else "…" + t[-keep:] for t in texts]
        if len(set(cut)) == len(set(texts)):
            return cut
        keep += 1
    return texts


def to_json(result):
    return json.dumps(result, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Plot


def plot(result, path):
    """S2 curves per phase and axis for every volume, and sub-volume distributions if any."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MdiffError("--plot needs matplotlib: pip install 'mdiff[plot]' "
                         "(or pip install matplotlib)") from None
    vols = result["volumes"]
    n = len(vols[0]["phases"])
    sub = "subvolumes" in vols[0]
    moves = "transport" in vols[0]["phases"][0]
    sized = "thickness_distribution" in vols[0]["phases"][0]
    rows = 1 + sub + moves + sized
    first = vols[0]["subvolumes"]["phases"][0] if sub else {}
    judged = [(f.key, f.short) for f in of_phase(first, judged=True) if not f.transport]
    cols = max(n, 3, len(judged))  # a sub-volume panel per judged figure
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    styles = {"z": "-", "y": "--", "x": ":"}
    for i in range(n):
        ax = axes[0, i]
        for j, v in enumerate(vols):
            src = v["subvolumes"]["phases"][i] if sub else v["phases"][i]
            step = v.get("s2_step", {"z": 1.0, "y": 1.0, "x": 1.0})
            for axis, style in styles.items():
                curve = src["s2"][axis]
                ax.plot(np.arange(len(curve)) * step[axis], curve, style, color=f"C{j}",
                        label=f"{_short(v['path'])} {axis}" if i == 0 else None)
        ax.set_title(f"S2, label {vols[0]['phases'][i]['label']}")
        ax.set_xlabel(f"r ({result.get('unit') or 'length'})" if "voxel_size" in result
                      else "r (voxels)")
    axes[0, 0].legend(fontsize=7)
    for k in range(n, axes.shape[1]):
        axes[0, k].axis("off")
    if sub:
        for k, (key, short) in enumerate(judged):
            ax = axes[1, k]
            for j, v in enumerate(vols):
                for i in range(n):
                    c = v["subvolumes"]["phases"][i][key]
                    ax.errorbar(i + 0.15 * j, c["mean"], yerr=c["std"], fmt="o", color=f"C{j}",
                                capsize=3, label=_short(v["path"]) if i == 0 and k == 0 else None)
            ax.set_xticks(range(n), [str(p["label"]) for p in vols[0]["phases"]])
            ax.set_title(f"{short} per sub-volume (mean ± std)")
        axes[1, 0].legend(fontsize=7)
        for k in range(len(judged), axes.shape[1]):
            axes[1, k].axis("off")
    if moves:
        _plot_transport(axes[1 + sub], vols)
    if sized:
        _plot_sizes(axes[rows - 1], vols)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _plot_transport(axes, vols):
    """One panel per phase: D_eff/D along z, y, x of every volume (bars; 0 = no path)."""
    n = len(vols[0]["phases"])
    width = 0.8 / len(vols)
    for i in range(n):
        ax = axes[i]
        for j, v in enumerate(vols):
            t = v["phases"][i]["transport"]
            ax.bar(np.arange(3) + (j - (len(vols) - 1) / 2) * width,
                   [t[a]["effective_diffusivity"] or 0.0 for a in "zyx"], width,
                   color=f"C{j}", label=_short(v["path"]))
        ax.set_xticks(range(3), ["z", "y", "x"])
        ax.set_title(f"D_eff/D, label {vols[0]['phases'][i]['label']}")
    axes[0].legend(fontsize=7)
    for k in range(n, len(axes)):
        axes[k].axis("off")


def _plot_sizes(axes, vols):
    """One panel per phase: the share of the phase's volume whose local thickness is at most
    r, for every volume (a pore- or particle-size distribution, cumulative)."""
    n = len(vols[0]["phases"])
    for i in range(n):
        ax = axes[i]
        for j, v in enumerate(vols):
            dist = v["phases"][i]["thickness_distribution"]
            if dist and dist["radius"]:
                ax.step(dist["radius"], np.cumsum(dist["share"]), where="post", color=f"C{j}",
                        label=_short(v["path"]))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("local thickness r (radius)")
        ax.set_title(f"share of label {vols[0]['phases'][i]['label']} at thickness ≤ r",
                     fontsize=9)
    axes[0].legend(fontsize=7)
    for k in range(n, len(axes)):
        axes[k].axis("off")


def _save_figure(fig, path, dpi=110):
    from .io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=(str(path).rsplit(".", 1)[-1].lower()
                                          if "." in str(path) else "png"))

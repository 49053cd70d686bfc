"""The report of ``mdiff-evaluate``: the verdict tables in markdown, the figure (S2 with the
real band, per-cube box plots, D_eff/D per axis) and the picture of the material itself
(mid-depth slices of real and generated cubes side by side), and the report folder they are
written to as one set (``report_staging``, ``write_report``)."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .figures import FIGURES, table
from .io import spacing_text
from .verdict import verdict_line


def _fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


def _units(result):
    """The sentence that says in which unit the table's lengths are."""
    size = result.get("voxel_size")
    if size is None:
        return "Lengths in voxels."
    shown = f"{size:g}" if np.isscalar(size) else spacing_text(size) + " (z, y, x)"
    unit = result.get("unit") or "(no unit recorded)"
    return f"Lengths in {unit} (voxel size {shown} {unit}): S_V per length, χ_V per volume."


def format_markdown(result, title=None):
    """The verdict line, then one table per set: real and generated mean ± std, d, spread
    ratio, W1/σ against its floor, KS p-value and the verdict with how it differs."""
    real = result["real"]
    where = (f" from `{result['real_path']}` z {result['real_region'][0]}:"
             f"{result['real_region'][1]}" if "real_path" in result else "")
    size = result.get("cube")
    lines = [f"**{verdict_line(result)}**", ""]
    if title:
        lines += [title, ""]
    lines += [f"Real: {real['count']} cubes" + (f" of {size}³" if size else "") + where
              + ". " + ", ".join(f"`{s['name']}`: {s['count']} cubes" for s in result["sets"])
              + ". d = |Δmean| / sd_real; spread = sd_gen / sd_real; W1/sd = Wasserstein-1 "
              "distance between the sets' per-cube values over sd_real, against the "
              f"{100 * result['level']:.0f}th percentile of the same over "
              + ("random re-labellings of the set's and the real cubes pooled"
                 if result.get("test") == "permutation" else
                 "random parts of the real cubes") +
              " (floor); KS p = two-sample Kolmogorov–Smirnov p-value. S2: "
              "NRMSE of the mean curves (z, y, x) over φ(1 − φ), against its floor. "
              + _units(result), ""]
    formats = {f.key: f.fmt for f in FIGURES.values()}
    formats["tpb_density"] = "{:.4g}"
    shorts = {f.key: f.short for f in FIGURES.values()}
    shorts.update(tpb_density="TPB density", s2="S2")
    for s in result["sets"]:
        e = s.get("expected_as_real")
        beside = "" if e is None else (f" (a set of real cubes of its size: {e['mean']:.1f} "
                                       f"± {e['sd']:.1f})")
        lines += [f"### `{s['name']}`: {s['as_real']} of {s['figures']} figures as real"
                  + beside, "",
                  "| phase | figure | real mean ± sd | generated mean ± sd | d | spread | "
                  "W1/sd (floor) | KS p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for v in (v for v in result["verdicts"] if v["set"] == s["name"]):
            if v["figure"] == "s2":
                mad = v["mean_abs_difference"]
                cells = ["", f"mean abs ΔS2 {np.mean(list(mad.values())):.4f}", "", "",
                         f"NRMSE {_fmt(v['nrmse'], '{:.3f}')} ({v['floor_nrmse_95']:.3f})", ""]
            else:
                f = formats[v["figure"]]
                cells = [f"{f.format(v['reference_mean'])} ± {f.format(v['reference_std'])}",
                         f"{f.format(v['mean'])} ± {f.format(v['std'])}", _fmt(v["d"]),
                         _fmt(v["spread_ratio"], "{:.2f}×"),
                         f"{_fmt(v['w1_over_sd'])} ({v['floor_w1_95']:.2f})",
                         _fmt(v["ks_p"], "{:.2g}")]
            verdict = v["verdict"] + (f": {v['why']}" if v["verdict"] == "differs" else "")
            lines.append(f"| {v['phase']} | {shorts[v['figure']]} | " + " | ".join(cells)
                         + f" | {verdict} |")
        lines.append("")
        lines += [f"Advice: {a['text']}." for a in s.get("advice", ())]
        if s.get("advice"):
            lines.append("")
    memo = result.get("memorisation")
    if memo:
        lines += [f"Memorisation: best voxel agreement of each cube with any cube of "
                  f"`{memo['training']}` (stride {memo['stride']}, 48 symmetries); generated "
                  "cubes should sit near real cubes from a region never trained on, not near "
                  "1.0.", "", "| set | cubes | mean | max |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['cubes']} | {v['mean']:.3f} | {v['max']:.3f} |"
                  for k, v in memo["sets"].items()]
        lines.append("")
    return "\n".join(lines)


def plot_result(path, result, dpi=110):
    """PNG of a ``judge`` result: per phase the mean S2 curve of the real cubes with the band
    of real half-sets and every set's curve; box plots of each judged figure's per-cube
    values per phase and set; with transport, D_eff/D per axis. Returns False (writing
    nothing) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .report import _save_figure

    real = result["real"]["summary"]
    labels = [p["label"] for p in real["phases"]]
    sets = {"real": real, **{s["name"]: s["summary"] for s in result["sets"]}}
    moves = "effective_diffusivity" in real["phases"][0]
    keys = [(f.key, f.short) for f in table(moves, judged=True)
            if f.key in real["phases"][0] or f.transport]
    cols = max(len(labels), len(keys), 3)
    rows = 2 + moves
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), squeeze=False)
    _plot_s2(axes[0], result["s2_band"], labels, sets)
    width = 0.8 / len(sets)
    for k, (key, short) in enumerate(keys):
        ax = axes[1, k]
        for j, (name, summ) in enumerate(sets.items()):
            data = [summ["phases"][i][key]["values"] for i in range(len(labels))]
            pos = np.arange(len(labels)) + (j - (len(sets) - 1) / 2) * width
            box = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True,
                             showfliers=True, flierprops={"markersize": 2})
            for patch in box["boxes"]:
                patch.set_facecolor("0.6" if j == 0 else f"C{j - 1}")
        ax.set_xticks(range(len(labels)), [str(v) for v in labels])
        ax.set_xlabel("label")
        ax.set_title(f"{short} per cube")
    if moves:
        for i, label in enumerate(labels):
            ax = axes[2, i]
            for j, (name, summ) in enumerate(sets.items()):
                axis_means = summ["phases"][i]["effective_diffusivity_axes"]
                ax.bar(np.arange(3) + (j - (len(sets) - 1) / 2) * width,
                       [axis_means[a]["mean"] for a in "zyx"], width,
                       yerr=[axis_means[a]["std"] for a in "zyx"], capsize=2,
                       color="0.6" if j == 0 else f"C{j - 1}", label=_short(name))
            ax.set_xticks(range(3), ["z", "y", "x"])
            ax.set_title(f"D_eff/D per axis, label {label}")
        axes[2, 0].legend(fontsize=7)
    for r, used in ((0, len(labels)), (1, len(keys)), (2, len(labels))):
        if r < rows:
            for k in range(used, cols):
                axes[r, k].axis("off")
    fig.tight_layout()
    _save_figure(fig, path, dpi)
    plt.close(fig)
    return True


def _plot_s2(axes, band, labels, sets):
    """One panel per phase: the real band of half-sets and every set's mean S2 curve."""
    for i, label in enumerate(labels):
        ax = axes[i]
        lo, hi = band["phases"][str(label)]["lo"], band["phases"][str(label)]["hi"]
        ax.fill_between(range(len(lo)), lo, hi, color="0.8",
                        label=f"real, {band['cubes']}-cube parts")
        for j, (name, summ) in enumerate(sets.items()):
            curve = np.mean([summ["phases"][i]["s2"][a] for a in "zyx"], axis=0)
            ax.plot(curve, color="k" if j == 0 else f"C{j - 1}", lw=2 if j == 0 else 1.3,
                    label=_short(name))
        ax.set_title(f"S2 (mean of z, y, x), label {label}")
        ax.set_xlabel("r (voxels)")
    axes[0].legend(fontsize=7)


def _short(name, width=28):
    text = str(name)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def plot_slices(path, sets, labels, count=4, dpi=110):
    """PNG of the material itself: the mid-depth z slice of the first ``count`` cubes of each
    set (``sets``: {name: cubes}, the real set first), one row a set, one grey level a phase
    (darkest the first label). People judge a microstructure by looking at it first. Returns
    False (writing nothing) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .report import _save_figure

    lut = np.zeros(max(labels) + 1, dtype=float)
    lut[list(labels)] = np.linspace(0, 1, len(labels))
    cols = max(1, min(count, max(len(c) for c in sets.values())))
    fig, axes = plt.subplots(len(sets), cols, figsize=(2.2 * cols, 2.4 * len(sets)),
                             squeeze=False)
    for r, (name, cubes) in enumerate(sets.items()):
        for k in range(cols):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(cubes):
                cube = np.asarray(cubes[k])
                ax.imshow(lut[cube[cube.shape[0] // 2]], cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(_short(name, 18), fontsize=8)
    fig.suptitle(f"mid-depth slices (labels {', '.join(map(str, labels))}: dark to light)",
                 fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path, dpi)
    plt.close(fig)
    return True


# What a report folder holds besides report.json, which is written last and names them
REPORT_FILES = ("report.md", "report.png", "slices.png")


def report_staging(out):
    """Where a report for the folder ``out`` is made before it replaces the old one:
    ``out/.partial`` (what a killed run left there is ours and is cleared)."""
    staging = Path(out) / ".partial"
    if staging.is_dir():
        shutil.rmtree(staging)
    return staging


def write_report(out, result, text, plot=None):
    """The report of ``result`` into the folder ``out`` as one set: report.md and report.png
    (and slices.png, already made there during the measurement) are made in
    ``report_staging(out)``; then the old report.json goes, the new files replace the old
    (a file this run has none of is removed), and report.json comes last, naming each file
    with its SHA-256. A report.json therefore always belongs to the files beside it, however
    the run ends (a run killed between leaves no report.json, and its files are replaced by
    the next). ``plot(path, result)`` draws report.png (False where it cannot).
    Returns the names written."""
    out = Path(out)
    staging = out / ".partial"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        return _commit(out, staging, result, text, plot)
    finally:  # what a failed run staged is of no use to the next
        shutil.rmtree(staging, ignore_errors=True)


def _commit(out, staging, result, text, plot):
    (staging / "report.md").write_text(f"`{result['command']}`\n\n{text}\n")
    if plot is not None:
        plot(staging / "report.png", result)
    made = [name for name in REPORT_FILES if (staging / name).is_file()]
    digests = {name: hashlib.sha256((staging / name).read_bytes()).hexdigest()
               for name in made}
    from .io import atomic_path, flush_to_disk

    for name in made:
        flush_to_disk(staging / name)
    manifest = out / "report.json"
    if manifest.exists():
        manifest.unlink()
    for name in REPORT_FILES:
        if name in made:
            os.replace(staging / name, out / name)
        elif (out / name).is_file():
            (out / name).unlink()

    with atomic_path(manifest) as tmp:
        Path(tmp).write_text(json.dumps({**result, "files": digests}, indent=1,
                                        allow_nan=False) + "\n")
    return made + ["report.json"]


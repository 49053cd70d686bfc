"""Comparing sets of cubes, the way the paper's §4 judges generated volumes.

Generated 64³ (or 32³) samples are compared with real cubes of the same size, never with the
whole real volume: boundary effects on χ_V alone are 15–20 % at 64³. Per phase and figure:
mean ± std over each set, the relative error of the means, the effect size
d = |mean_gen − mean_real| / std_real, and the mean |ΔS2| between the mean S2 curves.
"""
import numpy as np
import torch

from . import metrics, synth
from .data import SYMMETRIES, apply_symmetry
from .phases import one_hot
from .report import effect_size, mean_abs_difference, summarise, summary_figures


def grid_cubes(volume, size, z_range=None, stride=None):
    """Views of the size³ cubes of volume[z0:z1] on a grid of ``stride`` (default ``size``:
    non-overlapping), no copies."""
    z0, z1 = z_range or (0, volume.shape[0])
    stride = stride or size
    return [volume[a:a + size, b:b + size, c:c + size]
            for a in range(z0, z1 - size + 1, stride)
            for b in range(0, volume.shape[1] - size + 1, stride)
            for c in range(0, volume.shape[2] - size + 1, stride)]


def describe_set(cubes, phase_map, s2_max, boundary="closed", transport=False):
    """Mean ± std of every figure over cubes (``transport``: also the percolating fraction
    and D_eff/D, each the mean over the three axes of a cube)."""
    return summarise([metrics.describe(c, phase_map, s2_max, boundary, threads=1,
                                       transport=transport) for c in cubes])


def compare_sets(reference, other):
    """Per phase: each figure's means, stds, relative error of means, effect size; mean |ΔS2|."""
    rows = []
    for rp, op in zip(reference["phases"], other["phases"]):
        row = {"label": rp["label"]}
        for key, _, _ in summary_figures(rp):
            r, o = rp[key], op[key]
            row[key] = {"reference_mean": r["mean"], "reference_std": r["std"],
                        "mean": o["mean"], "std": o["std"],
                        "relative_error": None if r["mean"] == 0 else
                        abs(o["mean"] - r["mean"]) / abs(r["mean"]),
                        "effect_size": effect_size(o["mean"], r["mean"], r["std"])}
        row["s2_mean_abs_difference"] = float(np.mean(
            [mean_abs_difference(rp["s2"][a], op["s2"][a]) for a in "zyx"]))
        rows.append(row)
    out = {"phases": rows}
    if reference["tpb_density"] is not None:
        r, o = reference["tpb_density"], other["tpb_density"]
        out["tpb_density"] = {"reference_mean": r["mean"], "reference_std": r["std"],
                              "mean": o["mean"], "std": o["std"],
                              "relative_error": abs(o["mean"] - r["mean"]) / abs(r["mean"])
                              if r["mean"] else None,
                              "effect_size": effect_size(o["mean"], r["mean"], r["std"])}
    return out


def format_comparisons(reference, others, title="real"):
    """Markdown table: rows per phase and figure, columns per set (mean ± std, rel. err, d)."""
    names = list(others)
    head = (f"| phase | figure | {title} (mean ± std) | "
            + " | ".join(f"{n} (mean ± std) | rel. err | d" for n in names) + " |")
    lines = [head, "|" + "---|" * (2 + 1 + 3 * len(names))]
    for i, rp in enumerate(reference["phases"]):
        for key, short, fmt in summary_figures(rp):
            r = rp[key]
            cells = [f"{fmt.format(r['mean'])} ± {fmt.format(r['std'])}"]
            for n in names:
                c = others[n]["phases"][i][key]
                cells += [f"{fmt.format(c['mean'])} ± {fmt.format(c['std'])}",
                          _fmt_pct(c["relative_error"]), _fmt(c["effect_size"])]
            lines.append(f"| {rp['label']} | {short} | " + " | ".join(cells) + " |")
        cells = [""] + sum(([f"{others[n]['phases'][i]['s2_mean_abs_difference']:.4f}", "", ""]
                            for n in names), [])
        lines.append(f"| {rp['label']} | mean abs dS2 | " + " | ".join(cells) + " |")
    first = others[names[0]]
    if "tpb_density" in first:
        t = first["tpb_density"]
        cells = [f"{t['reference_mean']:.4g} ± {t['reference_std']:.4g}"]
        for n in names:
            c = others[n]["tpb_density"]
            cells += [f"{c['mean']:.4g} ± {c['std']:.4g}", _fmt_pct(c["relative_error"]),
                      _fmt(c["effect_size"])]
        lines.append("| all | TPB density | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x):
    return "–" if x is None else f"{x:.2f}"


def _fmt_pct(x):
    return "–" if x is None else f"{100 * x:.1f} %"


def fit_baseline(cubes, phase_map, s2_max, lengths=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
                 seed=0):
    """Truncated-Gaussian model fitted to real cubes: their mean fractions, and the smoothing
    length whose S2 curves (mean |ΔS2| over phases and axes) come closest."""
    size = cubes[0].shape[0]
    real = describe_set(cubes, phase_map, s2_max)
    fractions = [p["volume_fraction"]["mean"] for p in real["phases"]]
    best = None
    for length in lengths:
        trial = [synth.generate((size,) * 3, fractions, phase_map.labels, length, seed + k)
                 for k in range(4)]
        got = describe_set(trial, phase_map, s2_max)
        err = np.mean([compare_sets(real, got)["phases"][i]["s2_mean_abs_difference"]
                       for i in range(phase_map.n)])
        if best is None or err < best[0]:
            best = (err, length)
    return {"fractions": fractions, "length": best[1]}


def nearest_training_agreement(samples, volume, phase_map, patch, stride, z_range,
                               device="cpu"):
    """For each sample cube: the highest voxel agreement with any training cube (grid of
    ``stride`` in volume[z0:z1]) under any of the 48 cube symmetries.

    A 3D cross-correlation of one-hot fields (conv3d), slab by slab: never a one-hot copy of
    the whole volume. Agreement 1.0 means the sample is a (rotated) copy of a training cube."""
    n = phase_map.n
    lut = phase_map.lut()
    z0, z1 = z_range
    best = np.zeros(len(samples))
    weights = []
    for s in samples:
        idx = lut[s]
        sym = np.stack([np.ascontiguousarray(apply_symmetry(idx, k))
                        for k in range(len(SYMMETRIES))])
        weights.append(one_hot(torch.from_numpy(sym), n).add_(1).mul_(0.5))  # {0, 1}
    weights = torch.cat(weights).to(device)  # (samples * 48, n, P, P, P)
    with torch.no_grad():
        for a in range(z0, z1 - patch + 1, stride):
            slab = torch.from_numpy(np.ascontiguousarray(lut[volume[a:a + patch]]))
            x = one_hot(slab[None].to(device), n).add_(1).mul_(0.5)
            agree = torch.nn.functional.conv3d(x, weights, stride=stride)
            per = agree.reshape(len(samples), len(SYMMETRIES), -1).amax(dim=(1, 2))
            best = np.maximum(best, per.cpu().numpy() / patch ** 3)
    return best


def plot_sets(path, reference, sets, labels, title="real"):
    """PNG of the comparison: per phase the S2 curves (mean of the z, y, x curves) of the
    reference and every set, and per figure (φ, S_V, χ_V) mean ± std per phase.

    ``reference`` and the values of ``sets`` are ``describe_set`` results. Returns False
    (writing nothing) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .report import _save_figure

    n = len(labels)
    shown = [("volume_fraction", "phi"), ("specific_surface_area", "S_V (Crofton)"),
             ("euler_density", "chi_V")]
    cols = max(n, len(shown))
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 7), squeeze=False)
    everything = {f"{title} (reference)": reference, **sets}
    for i in range(n):
        ax = axes[0, i]
        for j, (name, got) in enumerate(everything.items()):
            curve = np.mean([got["phases"][i]["s2"][a] for a in "zyx"], axis=0)
            ax.plot(curve, color="k" if j == 0 else f"C{j - 1}", lw=2 if j == 0 else 1.2,
                    label=name)
        ax.set_title(f"S2, label {labels[i]}")
        ax.set_xlabel("r (voxels)")
    axes[0, 0].legend(fontsize=7)
    width = 0.8 / len(everything)
    for k, (key, short) in enumerate(shown):
        ax = axes[1, k]
        for j, (name, got) in enumerate(everything.items()):
            means = [got["phases"][i][key]["mean"] for i in range(n)]
            stds = [got["phases"][i][key]["std"] for i in range(n)]
            ax.errorbar(np.arange(n) + (j - (len(everything) - 1) / 2) * width, means,
                        yerr=stds, fmt="o", capsize=3,
                        color="k" if j == 0 else f"C{j - 1}", label=name)
        ax.set_xticks(range(n), [str(label) for label in labels])
        ax.set_xlabel("label")
        ax.set_title(f"{short} per cube (mean ± std)")
    for row, start in ((0, n), (1, len(shown))):
        for k in range(start, cols):
            axes[row, k].axis("off")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True

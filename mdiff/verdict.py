"""The calibrated verdict on generated sets of cubes (``judge``) and the comparison of two
sets that it rests on (``compare_sets``).

Generated cubes are compared with real cubes of the same size, never with a whole real volume
(boundary effects on χ_V alone are 15–20 % at 64³), and on the distribution of their per-cube
values, not only on the mean: per phase and figure of the table (``mdiff.figures``, the rows
that get a verdict) the effect size d of the means, the spread ratio std_gen / std_real, W1/σ
(Wasserstein-1 between the two sets over std_real) and the Kolmogorov–Smirnov test
(``mdiff.stats``). The verdict is calibrated on the real cubes themselves: they are split at
random into two parts many times, and a figure is "as real" when the generated set's W1/σ
lies within the 95th percentile of the real-vs-real W1/σ carried to the sizes compared. S2 is
judged the same way on the normalised RMS difference of the mean curves.
"""
import numpy as np

from ._version import __version__
from .errors import MdiffError
from .figures import FIGURES, of_phase
from .report import mean_abs_difference, summarise
from .stats import compare_values, size_scale, wasserstein1

MIN_REAL_CUBES = 8


def compare_sets(reference, other):
    """Per phase: each figure's statistics (``stats.compare_values``); mean |ΔS2|; TPB.

    ``reference`` and ``other`` are ``report.summarise`` summaries (they carry per-cube
    values): the one comparison of two sets, which ``judge`` adds its verdicts to and
    ``mdiff-metrics --subvolume`` prints."""
    rows = []
    for rp, op in zip(reference["phases"], other["phases"]):
        row = {"label": rp["label"]}
        for f in of_phase(rp):
            row[f.key] = compare_values(rp[f.key]["values"], op[f.key]["values"])
        row["s2_mean_abs_difference"] = float(np.mean(
            [mean_abs_difference(rp["s2"][a], op["s2"][a]) for a in "zyx"]))
        rows.append(row)
    out = {"phases": rows}
    if reference["tpb_density"] is not None:
        out["tpb_density"] = compare_values(reference["tpb_density"]["values"],
                                            other["tpb_density"]["values"])
    return out



def judge(real, sets, permutations=200, seed=0, level=0.95):
    """Verdicts of generated sets of cubes against real cubes of the same size.

    ``real``: ``metrics.describe`` entries of the real cubes; ``sets``: {name: entries}. For
    every figure (φ, S_V, χ_V and, when measured, percolating fraction and D_eff/D per phase;
    TPB density; S2 per phase) the statistics of ``stats.compare_values`` and a verdict: "as
    real" when W1/σ (S2: NRMSE of the mean curves) is within the ``level`` quantile of the
    same figure between two random parts of the real cubes, ``permutations`` times, carried
    to the sizes compared (``stats.size_scale``); else "differs", with how.

    Returns a JSON-able dict: ``verdicts`` (one object per set, phase and figure), ``as_real``
    and ``figures`` (counts over all of them), ``sets`` (per set: counts and the summary with
    per-cube values), ``real`` (its summary) and ``s2_band`` (per phase, the spread of the
    mean S2 curve of half the real cubes: what a real set of that size may show)."""
    n = len(real)
    if n < MIN_REAL_CUBES:
        raise MdiffError(f"only {n} real cubes to judge against; at least {MIN_REAL_CUBES} "
                         "are needed (a smaller cube size or a larger real region)")
    if not 0.5 <= level < 1:
        raise MdiffError(f"the verdict level must lie in [0.5, 1), got {level}")
    if permutations < 20:
        raise MdiffError(f"at least 20 permutations are needed for a floor, got {permutations}")
    rv = _per_cube(real)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(permutations)]
    floors = {}
    real_summary = summarise(real)
    result = {"mdiff_version": __version__, "permutations": permutations, "seed": seed,
              "level": level, "real": {"count": n, "summary": real_summary}, "sets": [],
              "verdicts": []}
    for name, entries in sets.items():
        if not entries:
            raise MdiffError(f"{name}: no cubes to judge")
        gv = _per_cube(entries)
        if gv["s2"].shape[1:] != rv["s2"].shape[1:]:
            raise MdiffError(f"{name}: its cubes do not match the real cubes (phases or size)")
        m = len(entries)
        a = min(m, n // 2)
        if a not in floors:
            floors[a] = _floors(rv, perms, a)
        scale = size_scale(m, n, a, n - a)
        summary = summarise(entries)
        stats = compare_sets(real_summary, summary)
        verdicts = _verdicts(name, rv, gv, stats, floors[a], scale, level)
        result["verdicts"] += verdicts
        good = sum(v["verdict"] == "as real" for v in verdicts)
        result["sets"].append({"name": name, "count": m, "as_real": good,
                               "figures": len(verdicts), "summary": summary})
    result["as_real"] = sum(s["as_real"] for s in result["sets"])
    result["figures"] = sum(s["figures"] for s in result["sets"])
    half = n // 2
    bands = {}
    for i, label in enumerate(rv["labels"]):
        curves = np.array([rv["s2"][p[:half], i].mean(axis=(0, 1)) for p in perms])
        bands[str(label)] = {"lo": np.quantile(curves, 1 - level, axis=0).tolist(),
                             "hi": np.quantile(curves, level, axis=0).tolist()}
    result["s2_band"] = {"cubes": half, "level": level, "phases": bands}
    return result


def _per_cube(entries):
    """Arrays of per-cube values: figures[(i, key)] (cubes,), tpb (cubes,) or None, s2
    (cubes, phases, 3, r + 1)."""
    phases = entries[0]["phases"]
    keys = [f.key for f in of_phase(phases[0], judged=True)]
    figures = {(i, k): np.array([FIGURES[k].value(e["phases"][i]) for e in entries])
               for i in range(len(phases)) for k in keys}
    tpb = (None if entries[0]["tpb_density"] is None
           else np.array([e["tpb_density"] for e in entries]))
    s2 = np.array([[[p["s2"][a] for a in "zyx"] for p in e["phases"]] for e in entries])
    return {"labels": [p["label"] for p in phases], "keys": keys, "figures": figures,
            "tpb": tpb, "s2": s2}


def _s2_scale(rv, i):
    """What NRMSE divides by: φ(1 − φ) of the real phase, the drop of S2 from r = 0 to ∞."""
    phi = float(rv["figures"][(i, "volume_fraction")].mean())
    return phi * (1 - phi) or None


def _nrmse(curve, reference, norm):
    return None if norm is None else float(np.sqrt(np.mean((curve - reference) ** 2)) / norm)


def _floors(rv, perms, a):
    """Real-vs-real distances for parts of a and n − a cubes, per figure, one per split:
    W1 in units of the whole real set's std, and NRMSE of the mean S2 curves."""
    out = {}
    for (i, key), vals in rv["figures"].items():
        sd = vals.std(ddof=1)
        out[(i, key)] = np.array([wasserstein1(vals[p[:a]], vals[p[a:]]) for p in perms]) / (
            sd if sd > 0 else 1.0)
    if rv["tpb"] is not None:
        sd = rv["tpb"].std(ddof=1)
        out["tpb"] = np.array([wasserstein1(rv["tpb"][p[:a]], rv["tpb"][p[a:]])
                               for p in perms]) / (sd if sd > 0 else 1.0)
    for i in range(len(rv["labels"])):
        norm = _s2_scale(rv, i)
        out[("s2", i)] = np.array([
            _nrmse(rv["s2"][p[:a], i].mean(0), rv["s2"][p[a:], i].mean(0), norm) or 0.0
            for p in perms])
    return out


def _verdicts(name, rv, gv, stats, floor, scale, level):
    """Every figure's verdict: its statistics (``compare_sets``) against its floor."""
    out = []
    for i, label in enumerate(rv["labels"]):
        for key in rv["keys"]:
            stat = stats["phases"][i][key]
            out.append(_verdict(name, label, key, stat, floor[(i, key)] * scale, level))
        norm = _s2_scale(rv, i)
        r_curve, g_curve = rv["s2"][:, i].mean(0), gv["s2"][:, i].mean(0)
        nrmse = _nrmse(g_curve, r_curve, norm)
        f95 = float(np.quantile(floor[("s2", i)] * scale, level))
        good = nrmse is None or nrmse <= f95
        out.append({"set": name, "phase": label, "figure": "s2", "d": None,
                    "spread_ratio": None, "w1_over_sd": None, "ks": None, "ks_p": None,
                    "floor_w1_95": None, "nrmse": nrmse, "floor_nrmse_95": f95,
                    "mean_abs_difference": {a: mean_abs_difference(r_curve[k], g_curve[k])
                                            for k, a in enumerate("zyx")},
                    "verdict": "as real" if good else "differs",
                    "why": ("" if nrmse is None else
                            f"NRMSE {nrmse:.3f} (real parts up to {f95:.3f})")})
    if rv["tpb"] is not None:
        out.append(_verdict(name, "all", "tpb_density", stats["tpb_density"],
                            floor["tpb"] * scale, level))
    return out


def _verdict(name, label, key, stat, floor, level):
    f95 = float(np.quantile(floor, level))
    if stat["reference_std"] == 0:  # every real cube alike: only an identical set is as real
        good = stat["w1"] == 0
    else:
        good = stat["w1_over_sd"] <= f95
    return {"set": name, "phase": label, "figure": key, "d": stat["effect_size"],
            "spread_ratio": stat["spread_ratio"], "w1_over_sd": stat["w1_over_sd"],
            "ks": stat["ks"], "ks_p": stat["ks_p"], "floor_w1_95": f95,
            "reference_mean": stat["reference_mean"], "reference_std": stat["reference_std"],
            "mean": stat["mean"], "std": stat["std"], "relative_error": stat["relative_error"],
            "verdict": "as real" if good else "differs", "why": _how(stat)}


def _how(stat):
    """How a set's values differ from the real ones, in words: mean shift and spread."""
    r_mean, r_std = stat["reference_mean"], stat["reference_std"]
    shift = stat["mean"] - r_mean
    if r_mean != 0 and abs(r_mean) > r_std:
        mean = f"mean {100 * shift / abs(r_mean):+.0f} %"
    elif r_std > 0:
        mean = f"mean {shift / r_std:+.2f} sd"
    else:
        mean = f"mean {shift:+.3g}"
    if stat["spread_ratio"] is None:
        return mean
    return f"{mean}, spread {stat['spread_ratio']:.2f}x real"


def verdict_line(result):
    """The one line that leads every report: how many figures are as real, per set."""
    counts = ", ".join(f"{s['name']} {s['as_real']} of {s['figures']}" for s in result["sets"])
    return (f"as real: {counts} figures (W1/sd within the {100 * result['level']:.0f}th "
            f"percentile of {result['permutations']} real-vs-real splits of "
            f"{result['real']['count']} real cubes)")



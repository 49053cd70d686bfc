"""The calibrated verdict on generated sets of cubes (``judge``) and the comparison of two
sets that it rests on (``compare_sets``).

Generated cubes are compared with real cubes of the same size, never with a whole real volume
(boundary effects on χ_V alone are 15–20 % at 64³), and on the distribution of their per-cube
values, not only on the mean: per phase and figure of the table (``mdiff.figures``, the rows
that get a verdict) the effect size d of the means, the spread ratio std_gen / std_real, W1/σ
(Wasserstein-1 between the two sets over std_real) and the Kolmogorov–Smirnov test
(``mdiff.stats``). The verdict is a permutation test at the compared sizes: the generated and
real cubes are pooled and re-labelled at random into sets of the same two sizes many times,
and a figure is "as real" unless its W1 is among the largest 5 % (``level`` 0.95) of the
re-labellings' — so a set drawn like the real cubes is called "differs" on at most 5 % of
figures whatever the set sizes (the earlier floor, real-vs-real splits carried to the compared
sizes by √(1/m + 1/n), let 6–12 % through at small sets). S2 is judged the same way on the RMS
difference of the mean curves. The same re-labellings, counted over all figures at once, give
what a set of real cubes of that size would score: the expectation a headline count stands
beside.
"""
import numpy as np

from ._version import __version__
from .errors import MdiffError
from .figures import FIGURES, of_phase
from .report import mean_abs_difference, summarise
from .stats import (compare_values, membership, null_ranks, permutation_p,
                    permuted_rms, permuted_w1)

MIN_REAL_CUBES = 8
# ``advice``: a phase connects through thick channels where the real cubes' thick channels
# percolate at least this much (``thick_percolating_fraction``) ...
THICK_REAL = 0.25
# ... and a set lacks their joins where its own percolate below this share of the real figure
THICK_SHORT = 0.6
# a set whose phase lies in isolated clusters this many times the real share, and by at least
# ISOLATED_MIN of the phase more, is advised to train longer
ISOLATED_EXCESS = 3.0
ISOLATED_MIN = 0.005


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
    real" when the permutation p-value of W1 (S2: of the RMS difference of the mean curves)
    over ``permutations`` random re-labellings of the pooled cubes exceeds 1 − ``level``; else
    "differs", with how. Each verdict carries its p-value and its floor (the ``level``
    quantile of the re-labellings' W1/σ or NRMSE).

    Returns a JSON-able dict: ``verdicts`` (one object per set, phase and figure), ``as_real``
    and ``figures`` (counts over all of them), ``sets`` (per set: counts, ``expected_as_real``
    — the mean and sd of the count over the re-labellings, what real cubes would score — and
    the summary with per-cube values), ``real`` (its summary) and ``s2_band`` (per phase, the
    spread of the mean S2 curve of half the real cubes: what a real set of that size may
    show)."""
    n = len(real)
    if n < MIN_REAL_CUBES:
        raise MdiffError(f"only {n} real cubes to judge against; at least {MIN_REAL_CUBES} "
                         "are needed (a smaller cube size or a larger real region)")
    if not 0.5 <= level < 1:
        raise MdiffError(f"the verdict level must lie in [0.5, 1), got {level}")
    if permutations < 20:
        raise MdiffError(f"at least 20 permutations are needed for a verdict, got "
                         f"{permutations}")
    rv = _per_cube(real)
    real_summary = summarise(real)
    result = {"mdiff_version": __version__, "test": "permutation", "permutations": permutations,
              "seed": seed, "level": level, "real": {"count": n, "summary": real_summary},
              "sets": [], "verdicts": []}
    for name, entries in sets.items():
        if not entries:
            raise MdiffError(f"{name}: no cubes to judge")
        gv = _per_cube(entries)
        if gv["s2"].shape[1:] != rv["s2"].shape[1:]:
            raise MdiffError(f"{name}: its cubes do not match the real cubes (phases or size)")
        m = len(entries)
        summary = summarise(entries)
        stats = compare_sets(real_summary, summary)
        null = _null(rv, gv, permutations, seed)
        verdicts = _verdicts(name, rv, gv, stats, null, level)
        result["verdicts"] += verdicts
        good = sum(v["verdict"] == "as real" for v in verdicts)
        result["sets"].append({"name": name, "count": m, "as_real": good,
                               "figures": len(verdicts),
                               "expected_as_real": _expected(null, verdicts, level),
                               "advice": advice(real_summary, summary), "summary": summary})
    result["as_real"] = sum(s["as_real"] for s in result["sets"])
    result["figures"] = sum(s["figures"] for s in result["sets"])
    half = n // 2
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(permutations)]
    bands = {}
    for i, label in enumerate(rv["labels"]):
        curves = np.array([rv["s2"][p[:half], i].mean(axis=(0, 1)) for p in perms])
        bands[str(label)] = {"lo": np.quantile(curves, 1 - level, axis=0).tolist(),
                             "hi": np.quantile(curves, level, axis=0).tolist()}
    result["s2_band"] = {"cubes": half, "level": level, "phases": bands}
    return result


def advice(real_summary, summary):
    """What to try, per phase, where the judge sees a failure it knows a lever for; rules
    from the connectivity levers' measurements (benchmarks/results/README.md):

    - the real thick channels percolate (``thick_percolating_fraction`` at least
      ``THICK_REAL``) and the set's far less (under ``THICK_SHORT`` of it): the flag that joins
      thick bodies in training (``--throat-weight``). It connected the phase that fails so (a
      sandstone's pore) and cost verdicts or did nothing elsewhere;
    - the phase lies in isolated clusters far more than the real one (``isolated_fraction``,
      with --transport, over ``ISOLATED_EXCESS`` times the real share and ``ISOLATED_MIN``
      above it): longer training, which cleared isolated bits on both structures measured."""
    key = "thick_percolating_fraction"
    out = []
    for rp, gp in zip(real_summary["phases"], summary["phases"]):
        if "isolated_fraction" in rp and "isolated_fraction" in gp:
            real, got = rp["isolated_fraction"]["mean"], gp["isolated_fraction"]["mean"]
            if got > ISOLATED_EXCESS * real and got - real > ISOLATED_MIN:
                out.append({"phase": rp["label"], "figure": "isolated_fraction", "real": real,
                            "generated": got, "flag": "--resume --steps",
                            "text": f"label {rp['label']}: {100 * got:.1f} % of it lies in "
                                    f"isolated clusters against {100 * real:.1f} % in the real "
                                    "cubes; training longer clears them (`mdiff-train --resume "
                                    "--out RUN --steps` two to four times the steps; "
                                    "docs/judging.md, advice)"})
        if key not in rp or key not in gp:
            continue
        real, got = rp[key]["mean"], gp[key]["mean"]
        if real >= THICK_REAL and got < THICK_SHORT * real:
            out.append({"phase": rp["label"], "figure": key, "real": real, "generated": got,
                        "flag": "--throat-weight 10",
                        "text": f"label {rp['label']}: its thick channels (~5 voxels across "
                                f"and more) percolate {got:.2f} against {real:.2f} in the real "
                                "cubes, so the joins between its thick bodies are missing; a "
                                "model trained with `--throat-weight 10` joins more of them "
                                "(docs/model.md, connectivity levers)"})
    return out


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


def _null(rv, gv, permutations, seed):
    """Each figure's statistic over ``permutations`` random re-labellings of the generated
    and real cubes pooled, the first m of each re-labelling standing for the generated set:
    W1 per figure and TPB, the RMS difference of the mean S2 curves per phase. The
    re-labellings depend on the seed and the two sizes alone, so a set's verdicts do not
    depend on the other sets judged with it."""
    m, n = len(gv["s2"]), len(rv["s2"])
    rng = np.random.default_rng([seed, m, n])
    inside = membership(np.stack([rng.permutation(m + n) for _ in range(permutations)]), m)
    out = {key: permuted_w1(np.concatenate([gv["figures"][key], vals]), inside)
           for key, vals in rv["figures"].items()}
    if rv["tpb"] is not None:
        out["tpb"] = permuted_w1(np.concatenate([gv["tpb"], rv["tpb"]]), inside)
    for i in range(len(rv["labels"])):
        out[("s2", i)] = permuted_rms(np.concatenate([gv["s2"][:, i], rv["s2"][:, i]]), inside)
    return out


def _expected(null, verdicts, level):
    """Mean and sd, over the re-labellings, of how many figures a set drawn like the real
    cubes gets "as real" (a figure whose real cubes never vary counts as real: such a set
    would repeat that value)."""
    keys = [v["null_key"] for v in verdicts]
    varying = [k for k, v in zip(keys, verdicts) if not v.pop("constant_real")]
    for v in verdicts:
        del v["null_key"]
    fixed = len(keys) - len(varying)
    if not varying:
        return {"mean": float(fixed), "sd": 0.0}
    counts = (null_ranks(np.stack([null[k] for k in varying])) > 1 - level).sum(axis=0) + fixed
    return {"mean": float(counts.mean()), "sd": float(counts.std(ddof=1))}


def _verdicts(name, rv, gv, stats, null, level):
    """Every figure's verdict: its statistics (``compare_sets``) against its re-labellings."""
    out = []
    for i, label in enumerate(rv["labels"]):
        for key in rv["keys"]:
            stat = stats["phases"][i][key]
            out.append(_verdict(name, label, key, stat, null[(i, key)], level, (i, key)))
        norm = _s2_scale(rv, i)
        r_curve, g_curve = rv["s2"][:, i].mean(0), gv["s2"][:, i].mean(0)
        rms = float(np.sqrt(np.mean((g_curve - r_curve) ** 2)))
        p = permutation_p(rms, null[("s2", i)])
        f95 = float(np.quantile(null[("s2", i)], level)) / (norm or 1.0)
        good = norm is None or p > 1 - level
        out.append({"set": name, "phase": label, "figure": "s2", "d": None,
                    "spread_ratio": None, "w1_over_sd": None, "ks": None, "ks_p": None,
                    "floor_w1_95": None, "nrmse": _nrmse(g_curve, r_curve, norm),
                    "floor_nrmse_95": f95, "p": p,
                    "mean_abs_difference": {a: mean_abs_difference(r_curve[k], g_curve[k])
                                            for k, a in enumerate("zyx")},
                    "verdict": "as real" if good else "differs",
                    "why": ("" if norm is None else
                            f"NRMSE {rms / norm:.3f} (re-labellings up to {f95:.3f}, "
                            f"p = {p:.3f})"),
                    "null_key": ("s2", i), "constant_real": norm is None})
    if rv["tpb"] is not None:
        out.append(_verdict(name, "all", "tpb_density", stats["tpb_density"], null["tpb"],
                            level, "tpb"))
    return out


def _verdict(name, label, key, stat, null, level, null_key):
    sd = stat["reference_std"]
    f95 = float(np.quantile(null, level)) / (sd if sd > 0 else 1.0)
    p = permutation_p(stat["w1"], null)
    if sd == 0:  # every real cube alike: only an identical set is as real
        good = stat["w1"] == 0
    else:
        good = p > 1 - level
    return {"set": name, "phase": label, "figure": key, "d": stat["effect_size"],
            "spread_ratio": stat["spread_ratio"], "w1_over_sd": stat["w1_over_sd"],
            "ks": stat["ks"], "ks_p": stat["ks_p"], "floor_w1_95": f95, "p": p,
            "reference_mean": stat["reference_mean"], "reference_std": stat["reference_std"],
            "mean": stat["mean"], "std": stat["std"], "relative_error": stat["relative_error"],
            "verdict": "as real" if good else "differs", "why": _how(stat),
            "null_key": null_key, "constant_real": sd == 0}


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
    """The one line that leads every report: how many figures are as real, per set, beside
    what a set of real cubes of its size scores."""
    counts = ", ".join(f"{s['name']} {s['as_real']} of {s['figures']}" + _beside(s)
                       for s in result["sets"])
    how = (f"permutation test at the {100 * (1 - result['level']):.0f} % level, "
           f"{result['permutations']} re-labellings of each set pooled with the "
           f"{result['real']['count']} real cubes"
           if result.get("test") == "permutation" else
           f"W1/sd within the {100 * result['level']:.0f}th percentile of "
           f"{result['permutations']} real-vs-real splits of {result['real']['count']} "
           "real cubes")
    return f"as real: {counts} figures ({how})"


def _beside(s):
    e = s.get("expected_as_real")
    return "" if e is None else f" (real cubes: {e['mean']:.1f} ± {e['sd']:.1f})"

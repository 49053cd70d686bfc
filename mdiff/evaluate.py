"""Judging sets of cubes against real cubes: the fidelity verdict of ``mdiff-evaluate``.

Generated cubes are compared with real cubes of the same size, never with a whole real
volume (boundary effects on χ_V alone are 15–20 % at 64³), and on the distribution of their
per-cube values, not only on the mean: per phase and figure the effect size d of the means,
the spread ratio std_gen / std_real, W1/σ (Wasserstein-1 between the two sets over std_real)
and the Kolmogorov–Smirnov test (``mdiff.stats``). The verdict is calibrated on the real cubes
themselves: they are split at random into two parts many times, and a figure is "as real"
when the generated set's W1/σ lies within the 95th percentile of the real-vs-real W1/σ
carried to the sizes compared. S2 is judged the same way on the normalised RMS difference of
the mean curves. ``judge`` is the one place that does this; ``mdiff-evaluate``,
``benchmarks/fidelity.py`` and ``mdiff-demo`` all call it.
"""
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import metrics, synth
from ._version import __version__
from .errors import MdiffError
from .report import mean_abs_difference, summarise, summary_figures, value
from .stats import compare_values, size_scale, wasserstein1

# the per-phase figures that get a verdict (key, short name, format); S_V by faces and χ
# itself are in the summaries but would only repeat S_V and χ_V
JUDGED = [("volume_fraction", "phi", "{:.4f}"), ("specific_surface_area", "S_V", "{:.4g}"),
          ("euler_density", "chi_V", "{:.3e}")]
JUDGED_TRANSPORT = [("percolating_fraction", "perc.", "{:.4f}"),
                    ("effective_diffusivity", "D_eff/D", "{:.4g}")]
MIN_REAL_CUBES = 8


def grid_cubes(volume, size, z_range=None, stride=None):
    """Views of the size³ cubes of volume[z0:z1] on a grid of ``stride`` (default ``size``:
    non-overlapping), no copies."""
    z0, z1 = z_range or (0, volume.shape[0])
    stride = stride or size
    return [volume[a:a + size, b:b + size, c:c + size]
            for a in range(z0, z1 - size + 1, stride)
            for b in range(0, volume.shape[1] - size + 1, stride)
            for c in range(0, volume.shape[2] - size + 1, stride)]


# flux spread at which the per-cube diffusion solves stop: TauFactor's default. On 64³ NMC
# cubes D_eff/D then differs from a solve to 1e-3 by at most 0.02 % (median 0.004 %), far
# below the spread between cubes, in 62 % of the time
TRANSPORT_TOL = 1e-2


def describe_cubes(cubes, phase_map, s2_max, transport=False, progress=None, device="cpu",
                   transport_tol=TRANSPORT_TOL):
    """``metrics.describe`` of every cube (closed boundary), in cube order.

    The cubes are spread over the CPU's threads (the kernels release the GIL, and so do
    torch's; the diffusion solves of ``transport`` then run with one torch thread each, which
    beat one cube at a time on all threads by 10 % on 64³ cubes); on a GPU they run one at a
    time. ``progress(done, total)`` is called as cubes finish."""
    import contextlib

    def one(cube):
        return metrics.describe(cube, phase_map, s2_max, "closed", threads=1,
                                transport=transport, transport_tol=transport_tol,
                                device=device)

    workers = 1 if transport and str(device) != "cpu" else metrics.default_threads()
    out = []
    with contextlib.ExitStack() as stack:
        if transport and workers > 1:
            stack.enter_context(_torch_threads(1))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers))
        for entry in pool.map(one, cubes):
            out.append(entry)
            if progress:
                progress(len(out), len(cubes))
    return out


@contextlib.contextmanager
def _torch_threads(n):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe_set(cubes, phase_map, s2_max, transport=False):
    """Mean ± std (and the per-cube values) of every figure over cubes (``transport``: also
    the percolating fraction and D_eff/D, each the mean over the three axes of a cube)."""
    return summarise(describe_cubes(cubes, phase_map, s2_max, transport))


def compare_sets(reference, other):
    """Per phase: each figure's statistics (``stats.compare_values``); mean |ΔS2|; TPB.

    ``reference`` and ``other`` are ``describe_set`` summaries (they carry per-cube values)."""
    rows = []
    for rp, op in zip(reference["phases"], other["phases"]):
        row = {"label": rp["label"]}
        for key, _, _ in summary_figures(rp):
            row[key] = compare_values(rp[key]["values"], op[key]["values"])
        row["s2_mean_abs_difference"] = float(np.mean(
            [mean_abs_difference(rp["s2"][a], op["s2"][a]) for a in "zyx"]))
        rows.append(row)
    out = {"phases": rows}
    if reference["tpb_density"] is not None:
        out["tpb_density"] = compare_values(reference["tpb_density"]["values"],
                                            other["tpb_density"]["values"])
    return out


# ---------------------------------------------------------------------------------------------
# The calibrated verdict


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
    result = {"mdiff_version": __version__, "permutations": permutations, "seed": seed,
              "level": level, "real": {"count": n, "summary": summarise(real)}, "sets": [],
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
        verdicts = _verdicts(name, rv, gv, floors[a], scale, level)
        result["verdicts"] += verdicts
        good = sum(v["verdict"] == "as real" for v in verdicts)
        result["sets"].append({"name": name, "count": m, "as_real": good,
                               "figures": len(verdicts), "summary": summarise(entries)})
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
    keys = [k for k, _, _ in JUDGED + (JUDGED_TRANSPORT if "transport" in phases[0] else [])]
    figures = {(i, k): np.array([value(e["phases"][i], k) for e in entries])
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


def _verdicts(name, rv, gv, floor, scale, level):
    out = []
    for i, label in enumerate(rv["labels"]):
        for key in rv["keys"]:
            stat = compare_values(rv["figures"][(i, key)], gv["figures"][(i, key)])
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
        stat = compare_values(rv["tpb"], gv["tpb"])
        out.append(_verdict(name, "all", "tpb_density", stat, floor["tpb"] * scale, level))
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


# ---------------------------------------------------------------------------------------------
# Reading files into cubes, and the whole evaluation


def parse_region(text, depth):
    """"z0:z1" (either end may be empty) → (z0, z1) within [0, depth]."""
    if text is None:
        return 0, depth
    lo, sep, hi = str(text).partition(":")
    try:
        z0 = int(lo) if lo.strip() else 0
        z1 = int(hi) if hi.strip() else depth
    except ValueError:
        z0 = z1 = None
    if not sep or z0 is None or not 0 <= z0 < z1 <= depth:
        raise MdiffError(f"--real-region {text!r}: expected Z0:Z1 with 0 <= Z0 < Z1 <= {depth} "
                         "(a slab along z, e.g. 192:256)")
    return z0, z1


def parse_map(text):
    """"0:0,1:127,2:255" → {0: 0, 1: 127, 2: 255} (another tool's labels → the real ones)."""
    mapping = {}
    for part in str(text).split(","):
        src, sep, dst = part.partition(":")
        try:
            src, dst = int(src), int(dst)
        except ValueError:
            src = None
        if not sep or src is None or not (0 <= src <= 65535 and 0 <= dst <= 65535):
            raise MdiffError(f"--map {text!r}: expected FROM:TO pairs of labels in 0..65535, "
                             "e.g. 0:0,1:127,2:255")
        mapping[src] = dst
    return mapping


def _sets_of_files(generated):
    """{name: [files]}: a folder is one set (its volumes in natural order), a file another."""
    from .io import volume_files

    sets = {}
    for arg in generated:
        path = Path(arg)
        if path.is_dir():
            sets[str(arg)] = volume_files(path)
        elif path.exists():
            sets[str(arg)] = [path]
        else:
            raise MdiffError(f"{arg}: no such file or folder")
    return sets


def cube_size(shapes):
    """Default cube side: the smallest side of the generated volumes (so that samples of the
    training size are used whole and larger volumes beside them are cut to match), or 64 when
    that is above 128."""
    side = min(min(shape) for shape in shapes)
    return side if side <= 128 else 64


class Progress:
    """Lines on stderr at most every 2 s while cubes are measured: done, rate, ETA."""

    def __init__(self, what, log):
        self.what, self.log = what, log
        self.start = self.last = time.perf_counter()

    def __call__(self, done, total):
        now = time.perf_counter()
        if now - self.last >= 2.0 or (done == total and now - self.start >= 2.0):
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            self.log(f"  {self.what}: {done}/{total} cubes, {rate:.1f}/s, "
                     f"ETA {int((total - done) / max(rate, 1e-9))} s")


def evaluate_files(real_path, generated, size=None, real_region=None, mapping=None,
                   training=None, transport=False, permutations=200, seed=0, s2_max=None,
                   memorisation_cubes=16, device="cpu", log=None, transport_tol=TRANSPORT_TOL,
                   near=None, near_tol=0.03):
    """``mdiff-evaluate`` as a function: judge each generated set (a folder of volumes or one
    volume file) against the real volume's cubes; returns ``judge``'s dict with the inputs
    described (and ``memorisation`` with ``training``).

    Volumes of the cube size are used whole; larger ones are cut into non-overlapping
    ``size``³ cubes, as is ``real_region`` (z0, z1) of the real volume. ``mapping`` maps the
    generated volumes' labels onto the real ones. Files are read one at a time, twice:
    every label is checked before any work, then the cubes are measured.
    ``near``: fractions (label order) of a conditioned model's target: only the real cubes
    whose every phase fraction lies within ``near_tol`` of it are the reference."""
    from .io import read_volume, volume_shape
    from .phases import PhaseMap, label_counts

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    files = _sets_of_files(generated)
    shapes = {f: volume_shape(f) for fs in files.values() for f in fs}
    size = size or cube_size(list(shapes.values()))
    if size < 4:
        raise MdiffError(f"--size {size}: cubes need a side of at least 4")
    small = [f for f, shape in shapes.items() if min(shape) < size]
    if small:
        raise MdiffError(f"{small[0]}: the volume {shapes[small[0]]} is smaller than the cube "
                         f"size {size}; give a smaller --size")
    volume = read_volume(real_path)
    phase_map = PhaseMap.from_volume(volume, name=str(real_path))
    z0, z1 = parse_region(real_region, volume.shape[0])
    if min(z1 - z0, *volume.shape[1:]) < size:
        raise MdiffError(f"{real_path}: the real region {z0}:{z1} of {volume.shape} holds no "
                         f"cube of {size}^3; give a smaller --size or a larger region")
    real_cubes = grid_cubes(volume, size, (z0, z1))
    if len(real_cubes) < MIN_REAL_CUBES:
        raise MdiffError(f"{real_path}: the real region {z0}:{z1} holds only {len(real_cubes)} "
                         f"cubes of {size}^3; at least {MIN_REAL_CUBES} are needed (a smaller "
                         "--size or a larger --real-region)")
    s2_max = size // 2 if s2_max is None else min(int(s2_max), size - 1)
    lut = _label_lut(mapping)
    for name, paths in files.items():  # every label checked before any work
        lost = _check_set_labels(name, paths, lut, phase_map)
        if lost and log:
            log(f"mdiff-evaluate: {name}: no voxel of label(s) {lost} in its volumes; judged "
                "as a phase the generator lost (give --map if its labels differ instead)")
    if training is not None:
        train_volume = read_volume(training)
        strange = sorted(set(label_counts(train_volume)) - set(phase_map.labels))
        if strange:
            raise MdiffError(f"{training}: labels {strange} are not the real volume's labels "
                             f"{list(phase_map.labels)}")
        if min(train_volume.shape) < size:
            raise MdiffError(f"{training}: the training volume {train_volume.shape} is smaller "
                             f"than the cube size {size}")
    log(f"mdiff-evaluate: {len(real_cubes)} real cubes of {size}^3 from {real_path} "
        f"z {z0}:{z1}, labels {list(phase_map.labels)}; "
        + ", ".join(f"{k}: {len(v)} volume(s)" for k, v in files.items()))
    real = describe_cubes(real_cubes, phase_map, s2_max, transport, Progress("real", log),
                          device, transport_tol)
    if near is not None:
        if len(near) != phase_map.n:
            raise MdiffError(f"--near: {len(near)} fractions for {phase_map.n} phases")
        target = np.asarray(near, float) / sum(near)
        real = [e for e in real if max(abs(p["volume_fraction"] - f)
                                       for p, f in zip(e["phases"], target)) <= near_tol]
        if len(real) < MIN_REAL_CUBES:
            raise MdiffError(f"--near: only {len(real)} real cubes lie within {near_tol} of "
                             f"the target in every phase; at least {MIN_REAL_CUBES} are needed "
                             "(a larger --near-tol or region)")
        log(f"  {len(real)} real cubes lie within {near_tol} of the target")
    sets, kept, inputs = {}, {}, []
    for name, paths in files.items():
        entries, keep = [], []
        total = sum(np.prod([s // size for s in shapes[f]]) for f in paths)
        progress = Progress(name, log)  # one line every 2 s over the whole set, not per file
        for path in paths:
            vol = read_volume(path)
            cubes = [vol] if vol.shape == (size,) * 3 else grid_cubes(vol, size)
            if lut is not None:  # labels checked above: the mapped ones fit the real dtype
                cubes = [lut[c].astype(volume.dtype) for c in cubes]
            keep += [np.array(c) for c in cubes[:max(0, memorisation_cubes - len(keep))]]
            entries += describe_cubes(cubes, phase_map, s2_max, transport,
                                      lambda k, _, before=len(entries): progress(before + k,
                                                                                  total),
                                      device, transport_tol)
            inputs.append({"set": name, "path": str(path), "shape": list(vol.shape),
                           "cubes": len(cubes)})
            del vol, cubes
        sets[name], kept[name] = entries, keep
    result = judge(real, sets, permutations, seed)
    result.update(real_path=str(real_path), real_region=[z0, z1], cube=size, s2_max=s2_max,
                  transport=transport, transport_tol=transport_tol if transport else None,
                  near=None if near is None else {"fractions": list(near), "tolerance": near_tol},
                  inputs=inputs,
                  mapping=None if mapping is None else {str(k): v for k, v in mapping.items()})
    if training is not None:
        result["memorisation"] = memorisation(train_volume, kept,
                                              real_cubes[:memorisation_cubes], phase_map, size,
                                              str(training), log=log)
    return result


def _check_set_labels(name, paths, lut, phase_map):
    """MdiffError, one line, unless every volume's labels (mapped by ``lut``) are real labels
    and the set holds two at least; returns the real labels the set never holds (a phase the
    generator lost is a result to report, φ = 0, not an error)."""
    from .io import read_volume
    from .phases import label_counts

    seen = set()
    for path in paths:
        labels = set(label_counts(read_volume(path)))
        got = {int(lut[v]) for v in labels} if lut is not None else labels
        strange = sorted(got - set(phase_map.labels))
        if strange:
            raise MdiffError(
                f"{path}: labels {sorted(labels)}"
                + (f" (mapped: {sorted(got)})" if lut is not None else "")
                + f" are not the real volume's labels {list(phase_map.labels)}; map them with "
                "--map FROM:TO,... (e.g. --map "
                + ",".join(f"{a}:{b}" for a, b in zip(sorted(labels), phase_map.labels)) + ")")
        seen |= got
    if len(seen) < 2:  # one label: nothing to judge, or another tool's labels unmapped
        raise MdiffError(f"{name}: its volumes hold labels {sorted(seen)} but the real volume "
                         f"has {list(phase_map.labels)} ({len(seen)} phases against "
                         f"{phase_map.n}); map them with --map FROM:TO,...")
    return sorted(set(phase_map.labels) - seen)  # phases the generator lost: judged as absent


def _label_lut(mapping):
    """uint16 table label → mapped label (identity outside the mapping), or None."""
    if not mapping:
        return None
    lut = np.arange(65536, dtype=np.uint16)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def memorisation(volume, kept, real_cubes, phase_map, size, name, z_range=None, log=None):
    """Each kept generated cube's best voxel agreement with any cube of the training volume
    (``volume[z0:z1]``, stride size/4, 48 symmetries), beside the same for real cubes (which,
    when they come from a region never trained on, show what a new cube's agreement is).
    ``kept``: {set name: cubes}; ``name`` says what the training volume is."""
    z_range = z_range or (0, volume.shape[0])
    stride = max(size // 4, 1)
    out = {}
    for set_name, cubes in {**kept, "real": list(real_cubes)}.items():
        if log:
            log(f"  memorisation: {set_name}, {len(cubes)} cubes against {name}")
        best = nearest_training_agreement(cubes, volume, phase_map, size, stride, z_range)
        out[set_name] = {"cubes": len(cubes), "mean": float(best.mean()),
                         "max": float(best.max()), "values": best.tolist()}
    return {"training": name, "stride": stride, "sets": out}


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
                               device="cpu", max_bytes=2**28):
    """For each sample cube: the highest voxel agreement with any training cube (grid of
    ``stride`` in volume[z0:z1]) under any of the 48 cube symmetries.

    A 3D cross-correlation of one-hot fields (conv3d), slab by slab: never a one-hot copy of
    the whole volume; the 48 rotated one-hot copies of the samples are built a few samples at
    a time (at most ``max_bytes``). Agreement 1.0 means the sample is a (rotated) copy of a
    training cube."""
    import torch

    from .data import SYMMETRIES, apply_symmetry
    from .phases import one_hot

    n = phase_map.n
    lut = phase_map.lut(volume.dtype)
    z0, z1 = z_range
    per_sample = len(SYMMETRIES) * n * patch ** 3 * 4
    chunk = max(1, max_bytes // per_sample)
    best = np.zeros(len(samples))
    for s0 in range(0, len(samples), chunk):
        weights = []
        for s in samples[s0:s0 + chunk]:
            idx = lut[s]
            sym = np.stack([np.ascontiguousarray(apply_symmetry(idx, k))
                            for k in range(len(SYMMETRIES))])
            weights.append(one_hot(torch.from_numpy(sym), n).add_(1).mul_(0.5))  # {0, 1}
        weights = torch.cat(weights).to(device)  # (samples * 48, n, P, P, P)
        count = len(weights) // len(SYMMETRIES)
        with torch.no_grad():
            for a in range(z0, z1 - patch + 1, stride):
                slab = torch.from_numpy(np.ascontiguousarray(lut[volume[a:a + patch]]))
                x = one_hot(slab[None].to(device), n).add_(1).mul_(0.5)
                agree = torch.nn.functional.conv3d(x, weights, stride=stride)
                per = agree.reshape(count, len(SYMMETRIES), -1).amax(dim=(1, 2))
                best[s0:s0 + count] = np.maximum(best[s0:s0 + count],
                                                 per.cpu().numpy() / patch ** 3)
    return best


# ---------------------------------------------------------------------------------------------
# Reports


def _fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


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
              f"{100 * result['level']:.0f}th percentile of the same between random parts of "
              "the real cubes (floor); KS p = two-sample Kolmogorov–Smirnov p-value. S2: "
              "NRMSE of the mean curves (z, y, x) over φ(1 − φ), against its floor.", ""]
    formats = {k: f for k, _, f in JUDGED + JUDGED_TRANSPORT}
    formats["tpb_density"] = "{:.4g}"
    shorts = {k: s for k, s, _ in JUDGED + JUDGED_TRANSPORT}
    shorts.update(tpb_density="TPB density", s2="S2")
    for s in result["sets"]:
        lines += [f"### `{s['name']}`: {s['as_real']} of {s['figures']} figures as real", "",
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


def plot_result(path, result):
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
    keys = JUDGED + (JUDGED_TRANSPORT if moves else [])
    cols = max(len(labels), len(keys), 3)
    rows = 2 + moves
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), squeeze=False)
    band = result["s2_band"]
    for i, label in enumerate(labels):
        ax = axes[0, i]
        lo, hi = band["phases"][str(label)]["lo"], band["phases"][str(label)]["hi"]
        ax.fill_between(range(len(lo)), lo, hi, color="0.8",
                        label=f"real, {band['cubes']}-cube parts")
        for j, (name, summ) in enumerate(sets.items()):
            curve = np.mean([summ["phases"][i]["s2"][a] for a in "zyx"], axis=0)
            ax.plot(curve, color="k" if j == 0 else f"C{j - 1}", lw=2 if j == 0 else 1.3,
                    label=_short(name))
        ax.set_title(f"S2 (mean of z, y, x), label {label}")
        ax.set_xlabel("r (voxels)")
    axes[0, 0].legend(fontsize=7)
    width = 0.8 / len(sets)
    for k, (key, short, _) in enumerate(keys):
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
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _short(name, width=28):
    text = str(name)
    return text if len(text) <= width else "…" + text[-(width - 1):]

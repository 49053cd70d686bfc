"""``mdiff-evaluate`` as a function: files and folders in, cubes cut and measured, the verdict
of ``mdiff.verdict.judge`` out (``evaluate_files``).

The parts live in their own modules: the statistics and verdicts in ``mdiff.verdict``, the
report (markdown, plots, slices) in ``mdiff.evaluate_report``, memorisation in
``mdiff.memorisation``; their public names are importable from here too (``mdiff.evaluate.
judge``), as before the split. ``judge`` is the one place that gives verdicts;
``mdiff-evaluate``, ``benchmarks/fidelity.py`` and ``mdiff-demo`` all call it.
"""
import contextlib
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import metrics, synth
from .errors import MdiffError
from .figures import FIGURES
from .evaluate_report import (format_markdown, plot_result, plot_slices,  # noqa: F401
                              report_staging, write_report)
from .grid import grid_cubes  # noqa: F401  (mdiff.evaluate.grid_cubes, as before)
from .memorisation import memorisation, nearest_training_agreement  # noqa: F401
from .report import summarise
from .verdict import (MIN_REAL_CUBES, THICK_REAL, THICK_SHORT, advice, compare_sets,  # noqa: F401
                      judge, verdict_line)


# flux spread at which the per-cube diffusion solves stop: TauFactor's default; the error it
# leaves in D_eff/D is far below the spread between cubes (docs/judging.md), in less time
TRANSPORT_TOL = 1e-2


def describe_cubes(cubes, phase_map, s2_max, transport=False, progress=None, device="cpu",
                   transport_tol=TRANSPORT_TOL, voxel_size=None):
    """``metrics.describe`` of every cube (closed boundary), in cube order; in the length unit
    of ``voxel_size`` (one number, or (z, y, x)) where given.

    The cubes are spread over the CPU's threads (the kernels release the GIL, and so do
    torch's; the diffusion solves of ``transport`` then run with one torch thread each, which
    beats one cube at a time on all threads); on a GPU they run one at a time.
    ``progress(done, total)`` is called as cubes finish."""

    def one(cube):
        return _judged_part(metrics.describe(cube, phase_map, s2_max, "closed",
                                             voxel_size=voxel_size, threads=1,
                                             transport=transport, transport_tol=transport_tol,
                                             device=device, sizes=True))

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


def _judged_part(entry):
    """What the judge and the report read of a cube's entry: each phase's figures (the
    transport figures per axis), its S2 curves, the TPB density, as a ``CubeRecord`` (a few
    arrays). The solver's details, the cluster-size bins and the raw counts are dropped: a set
    of thousands of cubes holds one of these a cube."""
    keep = set(FIGURES)
    phases = []
    for phase in entry["phases"]:
        row = {k: v for k, v in phase.items() if k in keep or k == "label"}
        row["s2"] = {axis: np.asarray(curve, dtype=float) for axis, curve in phase["s2"].items()}
        if "transport" in phase:
            row["transport"] = {axis: {k: v for k, v in t.items() if k in keep}
                                for axis, t in phase["transport"].items()}
        phases.append(row)
    judged = {"path": entry.get("path"), "shape": entry.get("shape"),
              "tpb_density": entry["tpb_density"], "phases": phases}
    return CubeRecord.pack(judged) or judged


class CubeRecord(Mapping):
    """A judged cube entry held as three float arrays (figures, S2 curves, per-axis transport
    figures) and a layout shared by every cube measured alike; reading it (``record["phases"]``)
    gives back the same dicts ``_judged_part`` packed, None values included. Arrays instead of
    dicts of Python floats keep a judge of thousands of cubes flat in memory
    (benchmarks/long_runs.py)."""

    __slots__ = ("_layout", "_path", "_shape", "_tpb", "_values", "_s2", "_transport", "_none")
    _layouts = {}  # one tuple per way of measuring, shared by its cubes

    @classmethod
    def pack(cls, judged):
        """The record of a ``_judged_part`` dict, or None when its phases are not measured
        alike (then the dict is kept as it is)."""
        phases = judged["phases"]
        first = phases[0]
        keys = tuple(k for k in first if k not in ("label", "s2", "transport"))
        axes = tuple(first["s2"])
        moved = tuple(first["transport"]) if "transport" in first else ()
        tkeys = tuple(first["transport"][moved[0]]) if moved else ()
        for p in phases:
            if (tuple(k for k in p if k not in ("label", "s2", "transport")) != keys
                    or tuple(p["s2"]) != axes or len({len(p["s2"][a]) for a in axes}) != 1
                    or tuple(p.get("transport", ())) != moved
                    or any(tuple(p["transport"][a]) != tkeys for a in moved)):
                return None
        layout = (tuple(p["label"] for p in phases), keys, axes, moved, tkeys)
        self = cls()
        self._layout = cls._layouts.setdefault(layout, layout)
        self._path, self._shape, self._tpb = judged["path"], judged["shape"], judged["tpb_density"]
        values = [[p[k] for k in keys] for p in phases]
        trans = [[[p["transport"][a][k] for k in tkeys] for a in moved] for p in phases]
        flat = [v for row in values for v in row] + [v for p in trans for a in p for v in a]
        self._none = tuple(i for i, v in enumerate(flat) if v is None)
        self._values = np.array([[np.nan if v is None else v for v in row] for row in values],
                                dtype=float)
        self._transport = (np.array([[[np.nan if v is None else v for v in a] for a in p]
                                     for p in trans], dtype=float) if moved else None)
        self._s2 = np.array([[p["s2"][a] for a in axes] for p in phases], dtype=float)
        self._s2.flags.writeable = False  # the curves read back are views of it
        return self

    def _phases(self):
        labels, keys, axes, moved, tkeys = self._layout
        none, count = set(self._none), self._values.size
        out = []
        for i, label in enumerate(labels):
            row = {"label": label}
            for j, k in enumerate(keys):
                row[k] = None if i * len(keys) + j in none else float(self._values[i, j])
            row["s2"] = {a: self._s2[i, j] for j, a in enumerate(axes)}
            if moved:
                base = count + i * len(moved) * len(tkeys)
                row["transport"] = {
                    a: {k: None if base + j * len(tkeys) + q in none
                        else float(self._transport[i, j, q]) for q, k in enumerate(tkeys)}
                    for j, a in enumerate(moved)}
            out.append(row)
        return out

    def __getitem__(self, key):
        if key == "phases":
            return self._phases()
        if key == "path":
            return self._path
        if key == "shape":
            return self._shape
        if key == "tpb_density":
            return self._tpb
        raise KeyError(key)

    def __iter__(self):
        return iter(("path", "shape", "tpb_density", "phases"))

    def __len__(self):
        return 4


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
                   near=None, near_tol=0.03, slices=None, voxel_size=None, unit=None):
    """``mdiff-evaluate`` as a function: judge each generated set (a folder of volumes or one
    volume file) against the real volume's cubes; returns ``judge``'s dict with the inputs
    described (and ``memorisation`` with ``training``).

    Volumes of the cube size are used whole; larger ones are cut into non-overlapping
    ``size``³ cubes, as is ``real_region`` (z0, z1) of the real volume. ``mapping`` maps the
    generated volumes' labels onto the real ones. Files are read one at a time, twice:
    every label is checked before any work, then the cubes are measured.
    ``near``: fractions (label order) of a conditioned model's target: only the real cubes
    whose every phase fraction lies within ``near_tol`` of it are the reference.
    ``slices``: a PNG path for the picture of real and generated cubes' mid-depth slices.
    Figures are in the length unit of the voxel size the real volume records (ImageJ, OME or
    VTK spacing), or of ``voxel_size`` (one number, or (z, y, x)) and ``unit`` where given,
    else in voxels; a generated file recording another spacing is refused in one line
    (verdicts compare cubes voxel by voxel, so both must be of one spacing)."""
    from .io import volume_shape

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
    volume, phase_map, (z0, z1), real_cubes, real_meta = _real_cubes(real_path, real_region,
                                                                     size)
    s2_max = size // 2 if s2_max is None else min(int(s2_max), size - 1)
    lut = _label_lut(mapping)
    metas = {}
    for name, paths in files.items():  # every label checked before any work
        lost = _check_set_labels(name, paths, lut, phase_map, metas)
        if lost and log:
            log(f"mdiff-evaluate: {name}: no voxel of label(s) {lost} in its volumes; judged "
                "as a phase the generator lost (give --map if its labels differ instead)")
    voxel_size, unit = _judged_spacing(real_path, real_meta, metas, voxel_size, unit)
    train_volume = None if training is None else _training_volume(training, phase_map, size)
    log(f"mdiff-evaluate: {len(real_cubes)} real cubes of {size}^3 from {real_path} "
        f"z {z0}:{z1}, labels {list(phase_map.labels)}; "
        + ", ".join(f"{k}: {len(v)} volume(s)" for k, v in files.items()))
    measure = dict(phase_map=phase_map, s2_max=s2_max, transport=transport, device=device,
                   transport_tol=transport_tol, voxel_size=voxel_size)
    real = describe_cubes(real_cubes, progress=Progress("real", log), **measure)
    if near is not None:
        real = _near(real, near, near_tol, phase_map, log)
    sets, kept, inputs = {}, {}, []
    for name, paths in files.items():
        sets[name], kept[name], more = _measure_set(
            name, paths, shapes, size, lut, volume.dtype, max(memorisation_cubes, 4), log,
            measure)
        inputs += more
    result = judge(real, sets, permutations, seed)
    result.update(real_path=str(real_path), real_region=[z0, z1], cube=size, s2_max=s2_max,
                  transport=transport, transport_tol=transport_tol if transport else None,
                  near=None if near is None else {"fractions": list(near), "tolerance": near_tol},
                  inputs=inputs,
                  mapping=None if mapping is None else {str(k): v for k, v in mapping.items()})
    if voxel_size is not None:
        result.update(voxel_size=voxel_size if np.isscalar(voxel_size) else list(voxel_size),
                      unit=unit)
    _memorisation_and_slices(result, train_volume, training, kept, real_cubes, phase_map,
                             size, memorisation_cubes, slices, log)
    return result


def _memorisation_and_slices(result, train_volume, training, kept, real_cubes, phase_map,
                             size, memorisation_cubes, slices, log):
    """What comes after the verdict: memorisation against the training volume, and the
    picture of real and generated slices (all is measured: its folder may be made now)."""
    if train_volume is not None:
        result["memorisation"] = memorisation(
            train_volume, {k: v[:memorisation_cubes] for k, v in kept.items()},
            real_cubes[:memorisation_cubes], phase_map, size, str(training), log=log)
    if slices is not None:
        Path(slices).parent.mkdir(parents=True, exist_ok=True)
        if not plot_slices(slices, {"real": real_cubes[:4],
                                    **{k: v[:4] for k, v in kept.items()}}, phase_map.labels):
            log("mdiff-evaluate: no slices picture without matplotlib (pip install "
                "'mdiff[plot]')")


def _judged_spacing(real_path, real_meta, metas, voxel_size, unit):
    """(voxel size, unit) of the figures: the given one, else the real volume's recorded one
    (one number for cubic voxels, else (z, y, x)); MdiffError, one line, for a generated file
    that records another spacing than the real volume (without a given ``voxel_size``)."""
    from .io import compact_spacing, same_spacing, spacing_text

    if voxel_size is None:
        voxel_size = real_meta["voxel_size"]
        unit = unit or real_meta["unit"]
        for path, meta in metas.items():
            if voxel_size is not None and meta["voxel_size"] is not None and \
                    not same_spacing(meta["voxel_size"], voxel_size):
                raise MdiffError(
                    f"{path} records a voxel size of {spacing_text(meta['voxel_size'])} where "
                    f"{real_path} records {spacing_text(voxel_size)}; the verdicts compare "
                    "cubes voxel by voxel, so generate at the real spacing (or resample), or "
                    "give --voxel-size to judge both in one")
    voxel_size = compact_spacing(voxel_size)
    return (None, None) if voxel_size is None else (voxel_size, unit)


def _real_cubes(real_path, real_region, size):
    """(volume, phase map, (z0, z1), cubes, its voxel-size meta) of the real volume's region;
    one line if it holds too few cubes of ``size``."""
    from .io import read_volume
    from .phases import PhaseMap

    volume, meta = read_volume(real_path, with_meta=True)
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
    return volume, phase_map, (z0, z1), real_cubes, meta


def _training_volume(training, phase_map, size):
    """The training volume (for memorisation), checked against the real labels and size."""
    from .io import read_volume
    from .phases import label_counts

    train_volume = read_volume(training)
    strange = sorted(set(label_counts(train_volume)) - set(phase_map.labels))
    if strange:
        raise MdiffError(f"{training}: labels {strange} are not the real volume's labels "
                         f"{list(phase_map.labels)}")
    if min(train_volume.shape) < size:
        raise MdiffError(f"{training}: the training volume {train_volume.shape} is smaller "
                         f"than the cube size {size}")
    return train_volume


def _near(real, near, near_tol, phase_map, log):
    """The real cubes whose every phase fraction lies within ``near_tol`` of ``near``."""
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
    return real


def _measure_set(name, paths, shapes, size, lut, dtype, keep_count, log, measure):
    """(entries, the first ``keep_count`` cubes as copies, input rows) of one set, its files
    read one at a time; one progress line every 2 s over the whole set."""
    from .io import read_volume

    entries, keep, inputs = [], [], []
    total = sum(np.prod([s // size for s in shapes[f]]) for f in paths)
    progress = Progress(name, log)
    for path in paths:
        vol = read_volume(path)
        cubes = [vol] if vol.shape == (size,) * 3 else grid_cubes(vol, size)
        if lut is not None:  # labels checked before: the mapped ones fit the real dtype
            cubes = [lut[c].astype(dtype) for c in cubes]
        keep += [np.array(c) for c in cubes[:max(0, keep_count - len(keep))]]
        entries += describe_cubes(cubes, progress=lambda k, _, before=len(entries): progress(
            before + k, total), **measure)
        inputs.append({"set": name, "path": str(path), "shape": list(vol.shape),
                       "cubes": len(cubes)})
        del vol, cubes
    return entries, keep, inputs


def _check_set_labels(name, paths, lut, phase_map, metas=None):
    """MdiffError, one line, unless every volume's labels (mapped by ``lut``) are real labels
    and the set holds two at least; returns the real labels the set never holds (a phase the
    generator lost is a result to report, φ = 0, not an error). ``metas`` gets each file's
    voxel-size meta."""
    from .io import read_volume
    from .phases import label_counts

    seen = set()
    for path in paths:
        volume, meta = read_volume(path, with_meta=True)
        if metas is not None:
            metas[str(path)] = meta
        labels = set(label_counts(volume))
        del volume
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



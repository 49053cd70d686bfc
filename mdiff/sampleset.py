"""Writing a set of samples to a folder: ``mdiff-sample`` as a function.

A folder never holds two sets: one that holds samples is refused unless ``overwrite``, and then
the old set is replaced as a whole once the new one is complete (it is written to
OUT_DIR/.partial first, so a failed run leaves the old set as it was). Under torchrun the
volumes are shared out: process r of N makes volumes [r·n/N, (r+1)·n/N) (volume i is still a
function of the seed and i alone), and rank 0 writes samples.json once all are written.
"""
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from . import distributed
from ._version import __version__
from .errors import MdiffError
from .io import atomic_path, flush_to_disk, write_volume
from .request import SampleRequest
from .runtime import busy_warning, resolve_device


FORMATS = ("tif", "npy", "vti", "h5")  # TIFF (ImageJ), numpy, VTK ImageData (ParaView), HDF5
SAMPLE_NAME = re.compile(r"sample_\d{3,}\.(" + "|".join(FORMATS) + ")")


def sample_set(folder):
    """The files of a sample set in a folder: sample_NNN.tif (or another of ``FORMATS``) and
    samples.json."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name == "samples.json" or SAMPLE_NAME.fullmatch(p.name)))


def check_folder(out_dir, overwrite=False):
    """One line (MdiffError) unless ``out_dir`` is new, empty, or holds a set mdiff-sample
    wrote (replaced only with ``overwrite``): it never writes among, or deletes, files it did
    not write, whatever the flag."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MdiffError(f"{out_dir} exists and is not a folder; give a folder for the samples")
    if not out_dir.exists():
        return
    ours = set(sample_set(out_dir)) | {out_dir / ".partial"}
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if p not in ours and not p.name.startswith("."))  # hidden: left alone
    if foreign:
        raise MdiffError(f"{out_dir} holds {len(foreign)} file(s) mdiff-sample did not write "
                         f"(e.g. {foreign[0]}); it writes only into a new or empty folder, or "
                         "over a set of its own: choose another folder")
    old = sample_set(out_dir)
    swapped = (out_dir / ".partial").is_dir()  # a run killed while it swapped the sets
    if old and not (out_dir / "samples.json").is_file() and not swapped:
        raise MdiffError(f"{out_dir} holds sample files but no samples.json: not a set "
                         "mdiff-sample wrote, so it is left alone; choose another folder")
    if old and not overwrite:
        raise MdiffError(f"{out_dir} already holds {len(old)} sample file(s) of another run; "
                         "choose another folder, or --overwrite to replace that set")


def write_samples(ckpt, out_dir, request, device="auto", precision="auto", use_ema=True,
                  overwrite=False, log=None, fmt="tif"):
    """Write OUT_DIR/sample_000.tif, ... (``fmt``: tif, npy, vti or h5) and
    OUT_DIR/samples.json for ``request`` (a ``SampleRequest``); returns the paths."""
    from .sampling import load

    if fmt not in FORMATS:
        raise MdiffError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "h5":  # before any volume is made, not after the first
        from .h5 import _h5py

        _h5py(Path(out_dir) / "sample_000.h5", "writing")
    out_dir = Path(out_dir)
    ctx, device, log = _processes(request, device, log)
    n = int(request.count)
    if n < 1:
        raise MdiffError(f"-n {n}: nothing to generate; give at least 1 volume")
    check_folder(out_dir, overwrite)
    gen = load(ckpt, device, use_ema, precision)
    # fewer volumes than processes, by windows: every process makes every volume, sharing
    # each step's windows; else each makes its block of the volumes
    whole = gen.plan(request)
    if whole.transport and ctx.world > 1:
        raise MdiffError("transport targets (deff, tau in --targets) keep candidates as they "
                         "are measured, in one process: run mdiff-sample without torchrun")
    windows = ctx.world > n and whole.tiling == "windows"
    share = range(n) if windows else range(n * ctx.rank // ctx.world,
                                           n * (ctx.rank + 1) // ctx.world)
    plan = gen.plan(request.but(count=max(len(share), 1), first=share.start))
    partial = out_dir / ".partial"
    if ctx.main:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run that was stopped
        partial.mkdir(parents=True)
    distributed.barrier()
    started = time.perf_counter()
    log(_announce(gen, plan, n, ctx.world, len(share), windows))
    busy = gen.device.type == "cpu" and ctx.world == 1 and busy_warning("mdiff-sample")
    if busy:
        log(busy)
    try:
        # each batch written as it comes: memory of one batch, whatever the count; sharing
        # windows, every process makes every volume and the first alone writes them
        writes = ctx.main or not windows
        chosen = gen.selection(plan, log) if plan.transport else None
        made = chosen.batches(_Progress(log)) if chosen else \
            gen.batches(plan, _Progress(log), windows) if len(share) else ()
        for start, volumes in made:
            for k, volume in enumerate(volumes if writes else ()):
                write_volume(partial / f"sample_{share[start + k]:03d}.{fmt}", volume,
                             voxel_size=gen.voxel_size, unit=gen.unit)
    except BaseException:
        if ctx.world == 1:  # nothing half-made stays behind (ranks may still be writing)
            shutil.rmtree(partial, ignore_errors=True)
        raise
    distributed.barrier()
    distributed.cleanup()
    if chosen:  # the volumes that met the transport targets, maybe fewer than asked
        n = len(chosen.kept)
        if chosen.shortfall():
            log(f"mdiff-sample: {chosen.shortfall()}")
    paths = [out_dir / f"sample_{i:03d}.{fmt}" for i in range(n)]
    if not ctx.main:
        return paths
    info = samples_json(gen, plan, request, ckpt, n, ctx.world, use_ema, gen.precision,
                        time.perf_counter() - started, [p.name for p in paths],
                        "windows" if windows else "volumes", chosen)
    with atomic_path(partial / "samples.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    # the new set is complete: the old one goes as a whole, its samples.json first, and the
    # new samples.json comes last, so a samples.json always names a complete set; a run
    # killed in between leaves no samples.json and its .partial, which the next run takes
    # as its own folder (check_folder) and replaces
    old_json = out_dir / "samples.json"
    if old_json.exists():
        old_json.unlink()
    for old in sample_set(out_dir):
        old.unlink()
    for path in sorted(partial.iterdir(), key=lambda p: p.name == "samples.json"):
        if path.name == "samples.json":
            flush_to_disk(out_dir)  # the volumes' renames last before the file that names them
        os.replace(path, out_dir / path.name)
    partial.rmdir()
    flush_to_disk(out_dir)
    log(f"mdiff-sample: wrote {n} volume(s) to {out_dir} in {info['seconds']:.1f} s")
    return paths


def _processes(request, device, log):
    """(context, device, log) of this process: under torchrun it joins the group, takes its
    GPU, and only rank 0 logs."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    ctx = distributed.context()
    if ctx.world > 1:
        if request.seed is None:
            raise MdiffError("give a --seed when sampling with several processes")
        kind = resolve_device(device).type
        distributed.setup(kind)
        device = f"cuda:{ctx.local_rank}" if kind == "cuda" else "cpu"
        if not ctx.main:
            log = lambda text: None  # noqa: E731
    return ctx, device, log


def samples_json(gen, plan, request, ckpt, n, processes, use_ema, precision, seconds, files,
                 shared="volumes", chosen=None):
    """What samples.json records: the model, the plan, the conditions and the files;
    ``shared``: what the processes shared out (whole volumes, or each step's windows);
    ``chosen``: the ``Selection`` of transport targets, whose kept volumes these are."""
    condition = None
    if gen.condition != "none":
        profile = plan.profile
        condition = {
            "kind": gen.condition,
            "target": None if request.fractions is None else list(request.fractions),
            "graded": None if profile is None else {
                "axis": profile[0], "points": [[p, list(v)] for p, v in profile[1]]},
            "guidance": plan.guidance if plan.baked_guidance is None else plan.baked_guidance,
            "drawn": plan.drawn, "hold_fractions": plan.hold,
            "per_volume": chosen.conditions() if chosen else
            gen.per_volume_conditions(plan.but(first=0), n)}
        if plan.drawn == "per field":  # the windows whose draws the field blends, its cells
            condition["field"] = {"window": plan.window, "overlap": plan.overlap,
                                  "cell": gen.model.factor}
        if gen.condition != "fractions" or request.targets is not None:
            # the request's --targets and the whole vector each volume was conditioned on
            condition.update(targets=request.targets, vector=None if plan.target is None
                             else list(plan.target))
    import numpy
    import torch

    return {"mdiff_version": __version__, "torch_version": torch.__version__,
            "numpy_version": numpy.__version__, "threads": torch.get_num_threads(),
            "checkpoint": str(Path(ckpt).resolve()) if Path(ckpt).exists() else str(ckpt),
            "checkpoint_step": gen.step, "objective": gen.diffusion.objective,
            "student": None if gen.student is None else {
                k: gen.student[k] for k in ("method", "steps", "guidance", "teacher",
                                            "teacher_step", "teacher_sha256", "iterations")},
            "count": n,
            "processes": processes, "processes_share": shared, "size": list(plan.shape), "training_size": gen.patch,
            **{k: v for k, v in plan.layout().items()},
            "sampler": plan.sampler, "steps": plan.steps, "eta": plan.eta, "seed": plan.seed,
            "ema": use_ema, "precision": precision, "device": str(gen.device),
            "labels": list(gen.phase_map.labels), "condition": condition,
            **({"selection": chosen.summary()} if chosen else {}),
            "seconds": seconds, "files": files}


def _announce(gen, plan, n, world, here, windows=False):
    """The first line of a sampling run: what, how, where."""
    if plan.tiling == "windows":
        how = (f"{plan.windows} windows of {plan.window}^3 a step (overlap "
               f"{plan.overlap:g})")
    elif plan.tiling == "planes":
        turn = {"cycle": "one axis a step, in turn", "mean": "the three axes fused",
                "geo": "the three axes' probabilities multiplied"}[plan.fuse]
        how = f"a 2D model, multi-plane denoising ({turn}, {plan.slices} slices a call)"
    elif plan.drawn == "per field":
        how = ("the whole volume at once, its composition drawn as a field (the draws of "
               f"windows of {plan.window}^3, overlap {plan.overlap:g})")
    else:
        how = "the whole volume at once"
    student = gen.student
    return (f"mdiff-sample: {n} volume(s) of {'x'.join(map(str, plan.shape))} with "
            + (f"a distilled student ({student['method']}, {plan.steps} steps, guidance "
               f"{student['guidance']:g} in its weights)"
               if student else
               f"{plan.sampler}{f' ({plan.steps} steps)' if plan.respaced else ''}")
            + f" on "
            f"{gen.device} ({gen.precision}), checkpoint step {gen.step}; {how}"
            f"{', periodic' if plan.periodic else ''}"
            + (f", guidance {plan.guidance:g}" if gen.condition != "none" and not student
               else "")
            + (f", {world} processes sharing each step's windows" if windows else
               f", {world} processes ({here} volumes here)" if world > 1 else ""))


class _Progress:
    """A line at most every 2 s: volume-steps done, rate and ETA."""

    def __init__(self, log):
        self.log, self.started, self.last = log, time.perf_counter(), [0.0, 0]

    def __call__(self, done, total):
        now = time.perf_counter()
        if now - self.last[0] >= 2.0 or (done == total and self.last[1] != total):
            self.last = [now, done]
            rate = done / max(now - self.started, 1e-9)
            self.log(f"  {done:.1f}/{total} volume-steps  {rate:.2f}/s  "
                     f"ETA {int((total - done) / max(rate, 1e-9))}s")


def sample_to_dir(ckpt, out_dir, n=4, size=None, sampler=None, steps=None, seed=0, batch=None,
                  eta=None, device="auto", precision="auto", use_ema=True, log=None,
                  overwrite=False, fmt="tif", **fields):
    """``write_samples`` with the request's fields as keywords (the API before
    ``SampleRequest``; ``fractions_along`` as on the command line, [AXIS, "POS:F0,...", ...],
    or parsed)."""
    request = SampleRequest(count=n, size=size, sampler=sampler, steps=steps, seed=seed,
                            batch=batch, eta=eta, **fields)
    return write_samples(ckpt, out_dir, request, device, precision, use_ema, overwrite, log,
                         fmt)

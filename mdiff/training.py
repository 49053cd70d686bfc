"""Training loop (Algorithm 1): AdamW with warm-up, gradient clipping, EMA, mixed precision,
``torch.compile``, atomic checkpoints and bit-for-bit resume.

The random state of sample i of step k is derived from (seed, k, i) alone: its cube position
and symmetry from a numpy generator seeded with [seed, k, i], its timestep, noise and
self-conditioning draw from a torch generator seeded from that. A run resumed from the
checkpoint of step k therefore continues exactly as an uninterrupted run, with no generator
state to carry (the checkpoint holds seed and step), and the batch of a step is the same
whatever the number of processes it is split over (``mdiff.distributed``): ``batch_size`` is
the effective batch, each of N data-parallel processes draws its N-th of it, and
DistributedDataParallel averages their gradients.
"""
import copy
import functools
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, descriptors, distributed, synth
from .config import OBJECTIVES, PADDINGS, PRESETS, PRESETS_2D, TrainConfig, UNetConfig, \
    override
from .data import PLANES, SYMMETRIES, CubeDataset, ImageDataset, spacing_symmetries, volume_slices
from .diffusion import GaussianDiffusion
from .errors import MdiffError
from .io import atomic_path, check_image, check_volume, read_labels, same_spacing, \
    spacing_text
from .phases import PhaseMap, check_labels, label_counts
from .runtime import autocast, busy_warning, check_precision, resolve_device, resolve_precision
from .unet import UNet

CHECKPOINT = "checkpoint.pt"


def load_volumes(paths, phases=None, example=False, planes=None):
    """(arrays, phase_map, meta, names, tags) of the training data: 3D volumes and/or 2D
    images (a folder of slices is a volume); all must share labels. ``planes``: {"xy": [...],
    "xz": [...], "yz": [...]} images of an anisotropic material, one list per orientation;
    their arrays come after those of ``paths``, tagged with their plane's index in ``PLANES``
    (None for the others)."""
    if example:
        volume = synth.example()
        counts = label_counts(volume)
        return [volume], PhaseMap(check_labels(counts, phases, "example")), {
            "voxel_size": None, "unit": None, "label_counts": counts}, ["built-in example"], [None]
    named = [(p, None) for p in paths] + [(p, plane) for plane in PLANES
                                          for p in (planes or {}).get(plane, [])]
    if not named:
        raise MdiffError("no training data: give one or more volumes or images, or --example")
    arrays, metas, maps, names, totals = [], [], [], [], {}
    for k, (path, plane) in enumerate(named):
        if isinstance(path, np.ndarray):  # an array handed over by a pipeline
            array = (check_image(path, f"array {k}") if path.ndim == 2
                     else check_volume(path, f"array {k}"))
            meta, name = {"voxel_size": None, "unit": None}, f"array {k}"
        else:
            array, meta = read_labels(path)
            name = str(path)
        if plane is not None and array.ndim != 2:
            raise MdiffError(f"{name}: --{plane} takes 2D images; this is a volume of shape "
                             f"{array.shape}")
        counts = label_counts(array.reshape(-1, *array.shape[-2:]))  # the one pass over it
        maps.append(PhaseMap(check_labels(counts, phases, name)))
        for label, count in counts.items():
            totals[label] = totals.get(label, 0) + count
        arrays.append(array)
        metas.append(meta)
        names.append(name if plane is None else f"{name} ({plane})")
    for name, pm in zip(names[1:], maps[1:]):
        if pm.labels != maps[0].labels:
            raise MdiffError(f"{name}: labels {list(pm.labels)} differ from {names[0]}'s "
                             f"{list(maps[0].labels)}; all training data need the same phases")
    spaced = [(name, meta) for name, meta, a in zip(names, metas, arrays) if a.ndim == 3]
    for name, meta in spaced[1:]:
        if not same_spacing(meta["voxel_size"], spaced[0][1]["voxel_size"]):
            raise MdiffError(f"{name}: voxel size {meta['voxel_size']} differs from "
                             f"{spaced[0][0]}'s {spaced[0][1]['voxel_size']}; resample the "
                             "volumes to one spacing first")
    tags = [None if plane is None else PLANES.index(plane) for _, plane in named]
    return arrays, maps[0], {**metas[0], "label_counts": totals}, names, tags


def image_data(arrays, tags, planes, log):
    """The (image, plane) pairs a 2D model trains on, and the number of planes it tells
    apart: the slices of each volume along every axis, each 2D image as it is. When some
    images came tagged with their plane (``tags``) or ``planes`` is 3, every image keeps its
    plane (untagged images count as xy), and a missing xz or yz borrows the other's images
    (the material is then taken as transversely isotropic about z)."""
    images = []
    for array, tag in zip(arrays, tags):
        images += volume_slices(array) if array.ndim == 3 else [(array, tag or 0)]
    if planes == 1 and all(tag is None for tag in tags):
        return images, 1
    have = {plane for _, plane in images}
    if 0 not in have or not have & {1, 2}:
        raise MdiffError("an anisotropic 2D model needs xy images and xz or yz images (--xy "
                         "and --xz/--yz); for an isotropic material give the images without "
                         "--xy/--xz/--yz")
    for missing, other in ((1, 2), (2, 1)):
        if missing not in have:
            log(f"mdiff-train: no {PLANES[missing]} images: the {PLANES[other]} images stand "
                f"for them (a material transversely isotropic about z)")
            images += [(image, missing) for image, plane in images if plane == other]
    return images, 3


def _step_seed(seed, step):
    return (seed * 1_000_003 + step) % 2**63


HIGH_NOISE_FROM = 0.8  # --high-noise-share draws t from [HIGH_NOISE_FROM · T, T)


def _timestep(g, timesteps, high_share):
    """One training timestep: uniform over the chain, or with probability ``high_share`` over
    its top part (t >= HIGH_NOISE_FROM · T). With no share the generator is used as before,
    so runs without it draw the same timesteps as ever."""
    low = 0
    if high_share > 0 and torch.rand(1, generator=g).item() < high_share:
        low = int(HIGH_NOISE_FROM * timesteps)
    return torch.randint(low, timesteps, (1,), generator=g)


def _draws(dataset, timesteps, seed, step, samples, device, high_share=0.0):
    """Cubes (n, phases, P, P, P) (or 2D patches), timesteps (n,), noise like the cubes,
    uniforms (n,) for the self-conditioning coin and the patches' planes (None for cubes), of
    the given sample indices of a step (see the module doc)."""
    rngs = [np.random.default_rng([seed, step, i]) for i in samples]
    x_start, planes = dataset.draw(rngs, device)
    gens = [torch.Generator().manual_seed(int(rng.integers(2**62))) for rng in rngs]
    t = torch.cat([_timestep(g, timesteps, high_share) for g in gens])
    noise = torch.stack([torch.randn(x_start.shape[1:], generator=g) for g in gens])
    coin = torch.cat([torch.rand(1, generator=g) for g in gens])
    return x_start, t.to(device), noise.to(device), coin.to(device), planes


def _lr(cfg, step):
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


def _stderr(text):
    print(text, file=sys.stderr, flush=True)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message that says what is saved and how to go on."""


def _duration(seconds):
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


@dataclass
class Run:
    """A training run as prepared: its configs, its data and the folder it writes."""

    ucfg: UNetConfig
    dcfg: object  # DiffusionConfig
    tcfg: TrainConfig
    state: dict  # the checkpoint resumed from, or None for a new run
    resumed: object  # its checkpoint.RunRecord, or None
    dataset: object  # CubeDataset or ImageDataset
    phase_map: PhaseMap
    meta: dict
    names: list
    data: list
    planes: dict
    example: bool
    preset: str
    out: Path


@dataclass
class Batch:
    """What one training step consumes (``draw_batch``)."""

    x_start: torch.Tensor  # (n, phases, P, P, P) one-hot in [-1, 1] (or 2D patches)
    t: torch.Tensor  # (n,) timesteps
    noise: torch.Tensor  # like x_start
    coin: torch.Tensor  # (n,) uniforms: the self-conditioning coin
    kwargs: dict  # what the network takes besides x_t and t: cond=..., plane=...


class TrainStep:
    """``loss = step(batch)``: one step of Algorithm 1 — forward, backward, gradient
    clipping, the optimiser (learning rate of the step: linear warm-up), the EMA."""

    def __init__(self, model, ema, forward, optimizer, scaler, process, tcfg, device, step=0):
        self.model, self.ema, self.forward = model, ema, forward
        self.optimizer, self.scaler, self.process = optimizer, scaler, process
        self.tcfg, self.device, self.step = tcfg, device, step
        self.params = list(model.parameters())
        self.ema_params = list(ema.parameters())

    def __call__(self, batch):
        for group in self.optimizer.param_groups:
            group["lr"] = _lr(self.tcfg, self.step)
        model_fn = functools.partial(self.forward, **batch.kwargs) if batch.kwargs \
            else self.forward
        with autocast(self.device, self.tcfg.precision):
            loss = self.process.training_losses(model_fn, batch.x_start, batch.t, batch.noise,
                                                batch.coin).mean()
        self.scaler.scale(loss).backward()
        if self.tcfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.tcfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.tcfg.ema_decay)
        self.step += 1
        return loss.detach()


def draw_batch(run, timesteps, step, samples, device):
    """The ``Batch`` of the given sample indices of a step (see the module doc): cubes,
    timesteps, noise, the coin, and the condition (dropped where its draw falls below
    ``cond_drop``) or the patches' planes."""
    ucfg, tcfg = run.ucfg, run.tcfg
    x_start, t, noise, coin, planes = _draws(run.dataset, timesteps, tcfg.seed, step, samples,
                                             device, tcfg.high_noise_share)
    kwargs = {}
    if ucfg.planes > 1:
        kwargs["plane"] = planes
    if ucfg.condition != "none":
        keep = torch.tensor([np.random.default_rng([tcfg.seed, step, i, 1]).random()
                             >= tcfg.cond_drop for i in samples])
        kwargs["cond"] = descriptors.condition(descriptors.of_batch(ucfg.condition, x_start),
                                               keep)
    return Batch(x_start, t, noise, coin, kwargs)


def train(data=(), phases=None, example=False, preset="small", out="runs/mdiff", resume=False,
          unet=None, diffusion=None, train=None, log=_stderr, procs=1, overwrite=False,
          planes=None):
    """Train a 3D DDPM on label volumes; returns the path of the final checkpoint.

    2D label images in ``data`` (or ``unet={"dims": 2}`` on volumes: their slices along every
    axis) train a 2D model, which ``mdiff-sample`` turns into 3D volumes by multi-plane
    denoising; ``planes`` = {"xy": [...], "xz": [...], "yz": [...]} gives the images of an
    anisotropic material per orientation (the model then tells the planes apart).

    ``unet``, ``diffusion`` and ``train`` are dicts of field overrides of the preset's configs
    (``None`` values ignored). With ``resume=True`` the run in ``out`` continues from its
    checkpoint (its configs are kept; ``train={"steps": N}`` may extend it).

    ``procs`` > 1 launches that many data-parallel processes on this machine (one thread each
    on a CPU) and returns when they are done; under torchrun each process calls ``train``
    itself (``procs`` is then ignored).

    A run folder that holds a checkpoint is never started over unless ``overwrite=True``:
    without ``resume`` that is refused, so no run is lost by reusing its ``out``."""
    check_run_folder(out)
    if not resume and not overwrite and (Path(out) / CHECKPOINT).exists():
        raise MdiffError(f"{out} already holds a run ({Path(out) / CHECKPOINT}); go on with "
                         f"--resume, start it over with --overwrite, or choose another --out")
    if procs > 1 and distributed.context().world == 1:
        kwargs = dict(data=[str(p) if not isinstance(p, np.ndarray) else p for p in data],
                      phases=phases, example=example, preset=preset, out=str(out),
                      resume=resume, unet=unet, diffusion=diffusion, train=train,
                      log=_stderr if log is _stderr else None, overwrite=overwrite,
                      planes=planes)
        try:
            return Path(distributed.launch(int(procs), _worker, kwargs))
        except distributed.ProcessDied as exc:  # say what is saved and how to go on
            raise MdiffError(f"{exc}{_saved_hint(out)}") from None
    log = (log or (lambda text: None)) if distributed.context().main else (lambda text: None)
    run = prepare(data, phases, example, preset, out, resume, unet, diffusion, train, planes,
                  log)
    device = resolve_device(run.tcfg.device)
    # "auto" is settled once, where the run starts, and recorded: a resume keeps it
    run.tcfg = override(run.tcfg, {"precision": resolve_precision(run.tcfg.precision, device)})
    ctx = distributed.setup(device.type)
    if device.type == "cuda" and ctx.world > 1:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if run.tcfg.batch_size % ctx.world:
        raise MdiffError(f"--batch-size {run.tcfg.batch_size} (the effective batch) must be a "
                         f"multiple of the {ctx.world} processes")
    trainer = build(run, device, ctx, log)
    path = _loop(run, trainer, ctx, log)
    distributed.cleanup()
    return path


RUN_FILES = (CHECKPOINT, "config.json", "loss.jsonl", "loss.csv", "loss.png", "previews")


def check_run_folder(out):
    """One line (MdiffError) unless ``out`` is new, empty or a run folder: mdiff-train never
    writes among files it did not write (nor replaces them with --overwrite)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MdiffError(f"--out {out}: exists and is not a folder")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES
                     and not p.name.startswith("."))  # hidden (a killed save's): left alone
    if foreign:
        raise MdiffError(f"--out {out} holds {len(foreign)} file(s) mdiff-train did not write "
                         f"(e.g. {foreign[0]}); give a new or empty folder for the run")


def prepare(data, phases, example, preset, out, resume, unet, diffusion, train, planes, log):
    """The ``Run``: configs from the preset and overrides (or from the checkpoint of a run
    resumed), the data read and checked, the dataset of cubes or 2D patches."""
    out = Path(out)
    state = record = None
    if resume:
        state, record, tcfg = _resumed(out, train)
        ucfg, dcfg, example = record.unet, record.diffusion, record.example
        if not data and not planes and not example:
            data, planes = record.paths, record.planes
            if not data and not planes:
                raise MdiffError("--resume: this run was trained on in-memory arrays; pass "
                                 "them again as data")
    else:
        if preset not in PRESETS:
            raise MdiffError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        ucfg, dcfg = override(PRESETS[preset].unet, unet or {}), override(
            PRESETS[preset].diffusion, diffusion or {})
    arrays, phase_map, meta, names, tags = load_volumes(list(data), phases, example, planes)
    if record is not None and record.labels != phase_map.labels:
        raise MdiffError(f"--resume: the data's labels {list(phase_map.labels)} differ from the "
                         f"checkpoint's {list(record.labels)}")
    if any(a.ndim == 2 for a in arrays) and ucfg.dims == 3:
        if state is not None or (unet or {}).get("dims") == 3:
            raise MdiffError("2D images train a 2D model (--dims 2); this run is 3D: give 3D "
                             "volumes (a folder of slices is one)")
        ucfg = override(ucfg, {"dims": 2})
    if state is None:  # a 2D model has its own patch and batch defaults (config.PRESETS_2D)
        tcfg = override(PRESETS[preset].train, {
            **(PRESETS_2D[preset] if ucfg.dims == 2 else {}),
            **{k: v for k, v in (train or {}).items() if v is not None}})
        if ucfg.dims == 2 and (unet or {}).get("condition") is None:
            ucfg = override(ucfg, {"condition": "none"})  # the presets' default is for 3D
    run = Run(ucfg, dcfg, tcfg, state, record, None, phase_map, meta, names, list(data), planes,
              example, preset, out)
    run.dataset = _dataset(run, arrays, tags, log)
    return run


def _resumed(out, train):
    """(state, its RunRecord, the training config with the overrides a resume takes) of the
    run in ``out``."""
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.exists():
        raise MdiffError(f"--resume: no checkpoint at {ckpt_path}")
    state = checkpoint.load(ckpt_path)
    if state.get("student") is not None:
        raise MdiffError(f"{ckpt_path} is a distilled student; go on with its distillation "
                         f"by mdiff-distill --resume --out {out}")
    record = checkpoint.run_record(state)
    tcfg = override(record.train, {
        k: v for k, v in (train or {}).items() if k in ("steps", "save_every", "log_every",
                                                         "preview_every", "device",
                                                         "compile")})
    if tcfg.steps < record.step:
        raise MdiffError(f"--steps {tcfg.steps}: the run in {out} is already at step "
                         f"{record.step}; give --steps above that to go on")
    return state, record, tcfg


def _dataset(run, arrays, tags, log):
    """The dataset of the run (2D patches of a 2D model, else cubes); settles the configs'
    phases and planes and checks them."""
    if run.ucfg.dims == 2:
        if run.state is None and any(tag is not None for tag in tags) and run.tcfg.augment:
            run.tcfg = override(run.tcfg, {"augment": False})
            log("mdiff-train: images given per orientation: no symmetries (a reflection "
                "would turn an xz image upside down)")
        images, n_planes = image_data(arrays, tags, run.ucfg.planes if run.state is not None
                                      else (3 if not run.tcfg.augment
                                            and any(a.ndim == 3 for a in arrays) else 1), log)
        run.ucfg = override(run.ucfg, {"phases": run.phase_map.n, "planes": n_planes})
        _check(run.ucfg, run.dcfg, run.tcfg)
        log(f"mdiff-train: a 2D model on {len(images)} image(s)"
            + (", xy/xz/yz told apart" if n_planes > 1 else "")
            + "; mdiff-sample makes 3D volumes from it by multi-plane denoising")
        return ImageDataset(images, run.phase_map, run.tcfg.patch, run.tcfg.stride,
                            run.tcfg.augment)
    run.ucfg = override(run.ucfg, {"phases": run.phase_map.n})
    _check(run.ucfg, run.dcfg, run.tcfg)
    spacing = run.meta["voxel_size"]
    symmetries = spacing_symmetries(spacing)
    if run.tcfg.augment and len(symmetries) < len(SYMMETRIES):
        kept = "the 8 reflections only" if len(symmetries) == 8 else (
            f"{len(symmetries)} (the reflections, and swaps of the axes of equal spacing)")
        log(f"mdiff-train: voxel size {spacing_text(spacing)} (z, y, x) is not "
            f"cubic: of the 48 cube symmetries, training keeps {kept}")
    return CubeDataset(arrays, run.phase_map, run.tcfg.patch, run.tcfg.stride, run.tcfg.augment,
                       run.names, symmetries)


def build(run, device, ctx, log):
    """The model, its EMA, the optimiser and grad scaler (restored when resuming), wrapped
    for data parallelism and compiled as asked: the ``TrainStep``."""
    ucfg, tcfg = run.ucfg, run.tcfg
    torch.manual_seed(tcfg.seed)
    model = UNet(ucfg, tcfg.patch, run.dcfg.self_condition).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
    step = 0
    if run.state is not None:
        step, before = checkpoint.restore(run.state, model, ema, opt, scaler)
        if before != ctx.world:
            log(f"mdiff-train: resuming with {ctx.world} process(es) where the run had "
                f"{before}: the same batches, but gradients are summed in another order, so "
                "it continues the run without being bit-for-bit equal to it")
    forward = model
    if ctx.world > 1:
        # the U-Net has no buffers (GroupNorm, no BatchNorm), so DDP syncs nothing in forward
        # and self-conditioning may run its extra no-grad pass on some ranks only
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        # under bf16 autocast a 1x1x1 convolution's weight gradient comes with other strides
        # on its size-1 dimensions: the same memory as the bucket's, which DDP warns of anyway
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    if tcfg.compile:
        forward = torch.compile(forward)
    return TrainStep(model, ema, forward, opt, scaler, GaussianDiffusion.from_config(run.dcfg),
                     tcfg, device, step)


def _static(run):
    """What every checkpoint of the run records besides the weights (``checkpoint``)."""
    return checkpoint.static_record(run.ucfg, run.dcfg, run.tcfg, run.phase_map.labels,
                                    run.meta["voxel_size"], run.meta["unit"], run.data,
                                    run.example, run.planes)


def _recorded(run):
    """What sampling reads of the training data: a 2D model's images' composition (held in
    multi-plane sampling), a conditioned model's training cubes' descriptors (drawn from)."""
    recorded = {}
    if run.ucfg.dims == 2:
        counts = np.array([run.meta["label_counts"][label] for label in run.phase_map.labels],
                          float)
        recorded["image_fractions"] = torch.tensor(counts / counts.sum(), dtype=torch.float32)
    if run.ucfg.condition != "none":
        recorded["descriptors"] = {"kind": run.ucfg.condition, "values": torch.from_numpy(
            descriptors.training_distribution(run.dataset, run.ucfg.condition))}
    return recorded


def _loop(run, trainer, ctx, log):
    """Steps until ``tcfg.steps``, with progress lines, the loss log, saves, the NaN guard
    and Ctrl-C (which says what is saved and how to go on); returns the checkpoint path."""
    tcfg, out, device = run.tcfg, run.out, trainer.device
    ckpt_path = out / CHECKPOINT
    static, recorded = _static(run), _recorded(run)
    loss_log = out / "loss.jsonl"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.json") as tmp:
            Path(tmp).write_text(json.dumps({**static, "preset": run.preset}, indent=2) + "\n")
        _truncate_log(loss_log, trainer.step, log)
        for name in RUN_FILES:  # a write killed half-way leaves its temporary file
            for stale in out.glob(f".{name}.tmp.*"):
                stale.unlink()
        _drop_previews(out, trainer.step)
    saved = [None if run.resumed is None else run.resumed.step]  # the step the file holds

    def save(loss):
        """Rank 0 writes; the others wait for it at the barrier."""
        if ctx.main:
            checkpoint.save(ckpt_path, checkpoint.training_state(
                static, recorded, trainer.step, tcfg.seed, loss, ctx.world, tcfg.batch_size,
                trainer.model, trainer.ema, trainer.optimizer, trainer.scaler))
        saved[0] = trainer.step  # before the curve: a Ctrl-C there names this checkpoint
        if ctx.main:
            _write_curve(loss_log, log)
        distributed.barrier()

    log(_opening_line(run, trainer, device, ctx))
    busy = device.type == "cpu" and ctx.world == 1 and busy_warning("mdiff-train")
    if busy:
        log(busy)
    per_rank = tcfg.batch_size // ctx.world
    mine = range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    meter = _Meter(run, loss_log if ctx.main else None, log)
    trainer.model.train()
    try:
        while trainer.step < tcfg.steps:
            torch.manual_seed(_step_seed(tcfg.seed, trainer.step) + ctx.rank)  # dropout
            batch = draw_batch(run, trainer.process.num_timesteps, trainer.step, mine, device)
            meter.add(trainer(batch))
            step = trainer.step
            if step % tcfg.log_every == 0 or step % tcfg.save_every == 0 or step == tcfg.steps:
                loss = meter.report(step, ckpt_path)
                if step % tcfg.save_every == 0 or step == tcfg.steps:
                    save(loss)
            if ctx.main and tcfg.preview_every and step % tcfg.preview_every == 0:
                _preview(run, trainer, static, recorded, log)
    except KeyboardInterrupt:
        held = (f"{ckpt_path} holds step {saved[0]}" if saved[0] is not None
                else "no checkpoint was saved yet")
        raise TrainingInterrupted(
            f"interrupted at step {trainer.step}; {held}"
            + (f"; go on with: mdiff-train --resume --out {out}" if saved[0] is not None
               else "")) from None
    if run.resumed is not None and trainer.step == run.resumed.step:
        log(f"mdiff-train: {ckpt_path} is already at step {trainer.step}; raise --steps to go on")
    log(f"mdiff-train: checkpoint {ckpt_path} (step {trainer.step})")
    return ckpt_path


def _drop_previews(out, step):
    """Remove the previews of steps after ``step`` (all of them when a run starts over): they
    came from a run that went on past its checkpoint, or from the run replaced."""
    from .preview import FOLDER

    folder = out / FOLDER
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        stem = path.name.split(".")[0] if path.name.startswith("step_") else ""
        if path.name.startswith(".step_") or (stem[5:].isdigit() and int(stem[5:]) > step):
            path.unlink()


def _preview(run, trainer, static, recorded, log):
    """previews/step_N.png from the EMA weights as they are now (``mdiff.preview``); a picture
    that cannot be made is one line, and training goes on."""
    from .preview import write_preview

    state = checkpoint.training_state(
        static, recorded, trainer.step, run.tcfg.seed, None, 1, run.tcfg.batch_size,
        trainer.model, trainer.ema, trainer.optimizer, trainer.scaler)
    start = time.perf_counter()
    try:
        path = write_preview(run.out, state, trainer.device, trainer.step)
    except (MdiffError, OSError, RuntimeError) as exc:
        log(f"mdiff-train: no preview at step {trainer.step} ({str(exc).splitlines()[0]}); "
            "training goes on")
        return
    log(f"mdiff-train: preview {path} ({time.perf_counter() - start:.1f} s)")


def _opening_line(run, trainer, device, ctx):
    tcfg, ucfg = run.tcfg, run.ucfg
    n_params = sum(p.numel() for p in trainer.params)
    return (f"mdiff-train: {n_params / 1e6:.2f} M parameters, {len(run.dataset) or 'random'} "
            + (f"patches of {tcfg.patch}^2" if ucfg.dims == 2 else f"cubes of {tcfg.patch}^3")
            + f" from {', '.join(run.names)}, labels {list(run.phase_map.labels)}, "
            f"{device}, {tcfg.precision}{', compiled' if tcfg.compile else ''}; batch "
            f"{tcfg.batch_size}" + (f" over {ctx.world} processes" if ctx.world > 1 else "")
            + f"; steps {trainer.step} -> {tcfg.steps}; run dir {run.out}")


class _Meter:
    """The running loss of the steps since the last line; each line's rate, ETA and log row."""

    def __init__(self, run, loss_log, log):
        self.tcfg, self.loss_log, self.log = run.tcfg, loss_log, log
        self.voxels = run.tcfg.batch_size * run.tcfg.patch ** run.ucfg.dims
        self.running = None
        self.window, self.started = 0, time.perf_counter()

    def add(self, loss):
        self.running = loss.float() if self.running is None else self.running + loss.float()
        self.window += 1

    def report(self, step, ckpt_path):
        """The mean loss since the last report (over the processes), logged; MdiffError for
        a loss that is no longer finite (nothing saved: the checkpoint keeps the last good
        state)."""
        tcfg = self.tcfg
        mean = distributed.mean(self.running).item() / self.window  # every rank sees a NaN
        if not math.isfinite(mean):
            raise MdiffError(
                f"the loss became {mean} by step {step}; stopped without saving, so "
                f"{ckpt_path} still holds the last good state. Try a lower --lr, "
                "--precision fp32 or --grad-clip 1")
        rate = self.window / (time.perf_counter() - self.started)
        self.log(f"step {step:>7}/{tcfg.steps}  loss {mean:.5f}  lr {_lr(tcfg, step - 1):.2e}  "
                 f"{rate:.2f} steps/s  {rate * self.voxels / 1e6:.2f} Mvox/s  "
                 f"ETA {_duration((tcfg.steps - step) / rate)}")
        if self.loss_log is not None:
            with open(self.loss_log, "a") as f:
                f.write(json.dumps({"step": step, "loss": mean, "lr": _lr(tcfg, step - 1),
                                    "steps_per_s": rate,
                                    "processes": distributed.context().world}) + "\n")
        self.running, self.window, self.started = None, 0, time.perf_counter()
        return mean


def _worker(kwargs):
    """The entry point of each process that ``train(procs=N)`` launches."""
    return str(train(**kwargs))


def _check(ucfg, dcfg, tcfg):
    levels = len(ucfg.channel_mult)
    if tcfg.patch % 2 ** (levels - 1):
        raise MdiffError(f"--patch {tcfg.patch} must be divisible by 2^{levels - 1} = "
                         f"{2 ** (levels - 1)} for {levels} U-Net levels")
    if ucfg.base_channels * min(ucfg.channel_mult) % ucfg.heads:
        raise MdiffError(f"--heads {ucfg.heads} must divide the channel counts")
    check_precision(tcfg.precision)
    if dcfg.schedule not in ("cosine", "linear"):
        raise MdiffError(f"--schedule must be cosine or linear, got {dcfg.schedule!r}")
    if dcfg.objective not in OBJECTIVES:
        raise MdiffError(f"--objective must be one of {', '.join(OBJECTIVES)}, "
                         f"got {dcfg.objective!r}")
    if ucfg.condition not in descriptors.kinds():
        raise MdiffError(f"--condition must be one of {', '.join(descriptors.kinds())}, "
                         f"got {ucfg.condition!r}")
    if ucfg.dims not in (2, 3):
        raise MdiffError(f"--dims must be 2 or 3, got {ucfg.dims}")
    if ucfg.padding not in PADDINGS:
        raise MdiffError(f"--padding must be one of {', '.join(PADDINGS)}, "
                         f"got {ucfg.padding!r}")
    if ucfg.dims == 2 and ucfg.condition != "none":
        raise MdiffError("--condition is for 3D models; a 2D model (2D images or --dims 2) "
                         "trains without it")
    if not 0 <= tcfg.cond_drop < 1:
        raise MdiffError(f"--cond-drop must be in [0, 1), got {tcfg.cond_drop}")
    if not 0 <= tcfg.high_noise_share <= 1:
        raise MdiffError(f"--high-noise-share must be in [0, 1], got {tcfg.high_noise_share}")
    if dcfg.snr_gamma < 0 or not dcfg.snr_shift > 0:
        raise MdiffError("--snr-gamma must be >= 0 and --snr-shift > 0")
    if dcfg.snr_gamma > 0 and dcfg.objective == "x0":
        raise MdiffError("--snr-gamma weighs the eps and v losses; the x0 objective's "
                         "cross-entropy has no SNR weight (use --objective eps or v)")
    # the x0 loss's terms
    for name in ("topology_weight", "thin_weight", "span_weight", "throat_weight"):
        weight = getattr(dcfg, name)
        if weight < 0 or (weight > 0 and dcfg.objective != "x0"):
            raise MdiffError(f"--{name.replace('_', '-')} must be >= 0, and it weighs a term "
                             "of the x0 objective's loss (use --objective x0)")
    if dcfg.span_radius < 0:
        raise MdiffError(f"--span-radius must be >= 0, got {dcfg.span_radius}")
    for name in ("steps", "batch_size", "save_every", "log_every", "timesteps"):
        cfg = dcfg if name == "timesteps" else tcfg
        if getattr(cfg, name) < 1:
            raise MdiffError(f"--{name.replace('_', '-')} must be at least 1")
    if tcfg.preview_every < 0:
        raise MdiffError("--preview-every must be >= 0 (0: no previews)")


def _write_curve(loss_log, log):
    """loss.csv and loss.png of the run so far; a picture that cannot be made is one line,
    never the end of a training."""
    from .losscurve import write_curve

    try:
        write_curve(loss_log)
    except Exception as exc:  # matplotlib and the disk raise many types; the run goes on
        text = str(exc).strip().splitlines()
        why = text[0] if text else type(exc).__name__
        log(f"mdiff-train: loss.png/loss.csv not written ({why}); training goes on")


def _saved_hint(out):
    """What a stopped multi-process run leaves: its checkpoint's step and how to go on."""
    try:
        step = int(checkpoint.load(Path(out) / CHECKPOINT)["step"])
    except (MdiffError, OSError, KeyError):
        return ""
    return (f"; {Path(out) / CHECKPOINT} holds step {step}: go on with mdiff-train --resume "
            f"--out {out}")


def _truncate_log(path, step, log):
    """Drop loss-log lines past ``step`` (left by a run that stopped after its checkpoint) and
    lines that are not rows (one cut short by a kill), saying how many; rewritten whole
    through a temporary file, so a kill here leaves the old log or the new one."""
    from .losscurve import parse_log

    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    rows, unreadable = parse_log(path.read_text(errors="replace"))
    if unreadable:
        log(f"{path}: {unreadable} unreadable line(s) dropped (a run killed while "
            "it wrote, or a damaged file); the checkpoint is what resumes")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))

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
import contextlib
import copy
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, descriptors, distributed, synth
from .config import (OBJECTIVES, PRESETS, PRESETS_2D, TrainConfig, UNetConfig, diffusion_config, from_dict,
                     override, to_dict)
from .data import PLANES, CubeDataset, ImageDataset, volume_slices
from .diffusion import GaussianDiffusion
from .errors import MdiffError
from .io import check_image, check_volume, read_labels
from .phases import PhaseMap, check_labels, label_counts
from .unet import UNet

CHECKPOINT = "checkpoint.pt"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MdiffError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


def autocast(device, precision):
    """bf16/fp16 autocast on the device, or nothing for fp32 (nanoGPT's three lines)."""
    if precision not in PRECISIONS:
        raise MdiffError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_volumes(paths, phases=None, example=False, planes=None):
    """(arrays, phase_map, meta, names, tags) of the training data: 3D volumes and/or 2D
    images (a folder of slices is a volume); all must share labels. ``planes``: {"xy": [...],
    "xz": [...], "yz": [...]} images of an anisotropic material, one list per orientation;
    their arrays come after those of ``paths``, tagged with their plane's index in ``PLANES``
    (None for the others)."""
    if example:
        volume = synth.generate()
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


def _draws(dataset, timesteps, seed, step, samples, device):
    """Cubes (n, phases, P, P, P) (or 2D patches), timesteps (n,), noise like the cubes,
    uniforms (n,) for the self-conditioning coin and the patches' planes (None for cubes), of
    the given sample indices of a step (see the module doc)."""
    rngs = [np.random.default_rng([seed, step, i]) for i in samples]
    x_start, planes = dataset.draw(rngs, device)
    gens = [torch.Generator().manual_seed(int(rng.integers(2**62))) for rng in rngs]
    t = torch.cat([torch.randint(0, timesteps, (1,), generator=g) for g in gens])
    noise = torch.stack([torch.randn(x_start.shape[1:], generator=g) for g in gens])
    coin = torch.cat([torch.rand(1, generator=g) for g in gens])
    return x_start, t.to(device), noise.to(device), coin.to(device), planes


def _lr(cfg, step):
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


def _stderr(text):
    print(text, file=sys.stderr, flush=True)


def busy_warning(prog, threads=None):
    """A warning line when this process would use several threads on a machine whose cores
    are already all busy (its 1-minute load at least 90 % of them), else None. Two jobs that
    each use every core stall each other far beyond 2× (measured: 0.54 → 0.044 steps/s); a
    job on one thread (``--threads 1``, or pinned by taskset beside another) is not warned."""
    threads = torch.get_num_threads() if threads is None else threads
    try:
        load = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        threads = min(threads, len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):
        return None
    if threads <= 1 or load < 0.9 * cores:
        return None
    return (f"{prog}: warning: this machine is busy (load {load:.1f} on {cores} cores); two "
            "jobs that each use every core stall each other far beyond 2x: give each "
            "--threads 1 (or OMP_NUM_THREADS=1), or wait for the other to end")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message that says what is saved and how to go on."""


def _duration(seconds):
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


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
    if not resume and not overwrite and (Path(out) / CHECKPOINT).exists():
        raise MdiffError(f"{out} already holds a run ({Path(out) / CHECKPOINT}); go on with "
                         f"--resume, start it over with --overwrite, or choose another --out")
    if procs > 1 and distributed.context().world == 1:
        kwargs = dict(data=[str(p) if not isinstance(p, np.ndarray) else p for p in data],
                      phases=phases, example=example, preset=preset, out=str(out),
                      resume=resume, unet=unet, diffusion=diffusion, train=train,
                      log=_stderr if log is _stderr else None, overwrite=overwrite,
                      planes=planes)
        return Path(distributed.launch(int(procs), _worker, kwargs))
    ctx = distributed.context()
    log = (log or (lambda text: None)) if ctx.main else (lambda text: None)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.exists():
            raise MdiffError(f"--resume: no checkpoint at {ckpt_path}")
        state = checkpoint.load(ckpt_path)
        ucfg = from_dict(UNetConfig, state["unet"])
        dcfg = diffusion_config(state["diffusion"])
        tcfg = override(from_dict(TrainConfig, state["train"]), {
            k: v for k, v in (train or {}).items() if k in ("steps", "save_every", "log_every",
                                                             "device", "compile")})
        if tcfg.steps < state["step"]:
            raise MdiffError(f"--steps {tcfg.steps}: the run in {out} is already at step "
                             f"{state['step']}; give --steps above that to go on")
        example = state["data"]["example"]
        if not data and not planes and not example:
            data = state["data"]["paths"]
            planes = state["data"].get("planes")
            if not data and not planes:
                raise MdiffError("--resume: this run was trained on in-memory arrays; pass "
                                 "them again as data")
    else:
        if preset not in PRESETS:
            raise MdiffError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        ucfg, dcfg = override(PRESETS[preset].unet, unet or {}), override(
            PRESETS[preset].diffusion, diffusion or {})
    arrays, phase_map, meta, names, tags = load_volumes(list(data), phases, example, planes)
    if state is not None and tuple(state["labels"]) != phase_map.labels:
        raise MdiffError(f"--resume: the data's labels {list(phase_map.labels)} differ from the "
                         f"checkpoint's {state['labels']}")
    if any(a.ndim == 2 for a in arrays) and ucfg.dims == 3:
        if state is not None or (unet or {}).get("dims") == 3:
            raise MdiffError("2D images train a 2D model (--dims 2); this run is 3D: give 3D "
                             "volumes (a folder of slices is one)")
        ucfg = override(ucfg, {"dims": 2})
    if state is None:  # a 2D model has its own patch and batch defaults (config.PRESETS_2D)
        tcfg = override(PRESETS[preset].train, {
            **(PRESETS_2D[preset] if ucfg.dims == 2 else {}),
            **{k: v for k, v in (train or {}).items() if v is not None}})
    if ucfg.dims == 2 and state is None and (unet or {}).get("condition") is None:
        ucfg = override(ucfg, {"condition": "none"})  # the presets' default is for 3D runs
    if ucfg.dims == 2:
        if state is None and any(tag is not None for tag in tags) and tcfg.augment:
            tcfg = override(tcfg, {"augment": False})
            log("mdiff-train: images given per orientation: no symmetries (a reflection "
                "would turn an xz image upside down)")
        images, n_planes = image_data(arrays, tags, ucfg.planes if state is not None else (
            3 if not tcfg.augment and any(a.ndim == 3 for a in arrays) else 1), log)
        ucfg = override(ucfg, {"phases": phase_map.n, "planes": n_planes})
        _check(ucfg, dcfg, tcfg)
        log(f"mdiff-train: a 2D model on {len(images)} image(s)"
            + (", xy/xz/yz told apart" if n_planes > 1 else "")
            + "; mdiff-sample makes 3D volumes from it by multi-plane denoising")
        dataset = ImageDataset(images, phase_map, tcfg.patch, tcfg.stride, tcfg.augment)
    else:
        ucfg = override(ucfg, {"phases": phase_map.n})
        _check(ucfg, dcfg, tcfg)
        dataset = CubeDataset(arrays, phase_map, tcfg.patch, tcfg.stride, tcfg.augment, names)
    device = resolve_device(tcfg.device)
    ctx = distributed.setup(device.type)
    if device.type == "cuda" and ctx.world > 1:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if tcfg.batch_size % ctx.world:
        raise MdiffError(f"--batch-size {tcfg.batch_size} (the effective batch) must be a "
                         f"multiple of the {ctx.world} processes")
    per_rank = tcfg.batch_size // ctx.world
    mine = range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)

    torch.manual_seed(tcfg.seed)
    model = UNet(ucfg, tcfg.patch, dcfg.self_condition).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
    process = GaussianDiffusion.from_config(dcfg)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
        before = state.get("world_size", 1)
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
    if tcfg.compile:
        forward = torch.compile(forward)

    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    static = {"unet": to_dict(ucfg), "diffusion": to_dict(dcfg), "train": to_dict(tcfg),
              "labels": list(phase_map.labels), "patch": tcfg.patch,
              "voxel_size": None if meta["voxel_size"] is None else list(meta["voxel_size"]),
              "unit": meta["unit"],
              "data": {"paths": [str(Path(p).resolve()) for p in data
                                 if not isinstance(p, np.ndarray)], "example": example,
                       "planes": {k: [str(Path(p).resolve()) for p in v
                                      if not isinstance(p, np.ndarray)]
                                  for k, v in (planes or {}).items() if v}}}
    loss_log = out / "loss.jsonl"
    if ctx.main:
        (out / "config.json").write_text(json.dumps({**static, "preset": preset}, indent=2)
                                         + "\n")
        _truncate_log(loss_log, step)

    saved = [None if state is None else state["step"]]  # the step the checkpoint holds
    recorded = {}
    if ucfg.dims == 2:  # the composition multi-plane sampling holds its volumes to
        counts = np.array([meta["label_counts"][label] for label in phase_map.labels], float)
        recorded["image_fractions"] = torch.tensor(counts / counts.sum(), dtype=torch.float32)
    if ucfg.condition != "none":  # what sampling draws each volume's descriptors from
        recorded["descriptors"] = {"kind": ucfg.condition, "values": torch.from_numpy(
            descriptors.training_distribution(dataset))}

    def save(loss):
        """Rank 0 writes; the others wait for it at the barrier."""
        if ctx.main:
            checkpoint.save(ckpt_path, {
                **static, **recorded, "step": step, "seed": tcfg.seed, "loss": loss,
                "world_size": ctx.world, "effective_batch": tcfg.batch_size,
                "model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict()})
        saved[0] = step
        distributed.barrier()

    params = list(model.parameters())
    ema_params = list(ema.parameters())
    n_params = sum(p.numel() for p in params)
    log(f"mdiff-train: {n_params / 1e6:.2f} M parameters, {len(dataset) or 'random'} "
        + (f"patches of {tcfg.patch}^2" if ucfg.dims == 2 else f"cubes of {tcfg.patch}^3")
        + f" from {', '.join(names)}, labels {list(phase_map.labels)}, "
        f"{device}, {tcfg.precision}{', compiled' if tcfg.compile else ''}; batch "
        f"{tcfg.batch_size}" + (f" over {ctx.world} processes" if ctx.world > 1 else "")
        + f"; steps {step} -> {tcfg.steps}; run dir {out}")
    busy = device.type == "cpu" and ctx.world == 1 and busy_warning("mdiff-train")
    if busy:
        log(busy)
    model.train()
    running = torch.zeros((), device=device)
    window, last_loss = 0, None
    t_window = time.perf_counter()
    voxels = tcfg.batch_size * tcfg.patch ** ucfg.dims
    try:
        while step < tcfg.steps:
            torch.manual_seed(_step_seed(tcfg.seed, step) + ctx.rank)  # dropout
            x_start, t, noise, coin, planes_of = _draws(dataset, process.num_timesteps, tcfg.seed,
                                                        step, mine, device)
            model_fn = forward
            if ucfg.planes > 1:
                model_fn = functools.partial(forward, plane=planes_of)
            if ucfg.condition != "none":
                keep = torch.tensor([np.random.default_rng([tcfg.seed, step, i, 1]).random()
                                     >= tcfg.cond_drop for i in mine])
                model_fn = functools.partial(forward, cond=descriptors.condition(
                    descriptors.fractions(x_start), keep))
            for group in opt.param_groups:
                group["lr"] = _lr(tcfg, step)
            with autocast(device, tcfg.precision):
                loss = process.training_losses(model_fn, x_start, t, noise, coin).mean()
            scaler.scale(loss).backward()
            if tcfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - tcfg.ema_decay)
            running += loss.detach().float()
            window += 1
            step += 1
            if step % tcfg.log_every == 0 or step % tcfg.save_every == 0 or step == tcfg.steps:
                mean = distributed.mean(running).item() / window  # every rank sees a NaN
                if not math.isfinite(mean):
                    raise MdiffError(
                        f"the loss became {mean} by step {step}; stopped without saving, so "
                        f"{ckpt_path} still holds the last good state. Try a lower --lr, "
                        "--precision fp32 or --grad-clip 1")
                elapsed = time.perf_counter() - t_window
                rate = window / elapsed
                log(f"step {step:>7}/{tcfg.steps}  loss {mean:.5f}  lr {_lr(tcfg, step - 1):.2e}  "
                    f"{rate:.2f} steps/s  {rate * voxels / 1e6:.2f} Mvox/s  "
                    f"ETA {_duration((tcfg.steps - step) / rate)}")
                if ctx.main:
                    with open(loss_log, "a") as f:
                        f.write(json.dumps({"step": step, "loss": mean, "lr": _lr(tcfg, step - 1),
                                            "steps_per_s": rate, "processes": ctx.world}) + "\n")
                last_loss = mean
                running.zero_()
                window = 0
                t_window = time.perf_counter()
                if step % tcfg.save_every == 0 or step == tcfg.steps:
                    save(last_loss)
    except KeyboardInterrupt:
        held = (f"{ckpt_path} holds step {saved[0]}" if saved[0] is not None
                else "no checkpoint was saved yet")
        raise TrainingInterrupted(
            f"interrupted at step {step}; {held}"
            + (f"; go on with: mdiff-train --resume --out {out}" if saved[0] is not None
               else "")) from None
    if state is not None and step == state["step"]:
        log(f"mdiff-train: {ckpt_path} is already at step {step}; raise --steps to go on")
    log(f"mdiff-train: checkpoint {ckpt_path} (step {step})")
    distributed.cleanup()
    return ckpt_path


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
    if tcfg.precision not in PRECISIONS:
        raise MdiffError(f"--precision must be one of {list(PRECISIONS)}")
    if dcfg.schedule not in ("cosine", "linear"):
        raise MdiffError(f"--schedule must be cosine or linear, got {dcfg.schedule!r}")
    if dcfg.objective not in OBJECTIVES:
        raise MdiffError(f"--objective must be one of {', '.join(OBJECTIVES)}, "
                         f"got {dcfg.objective!r}")
    if ucfg.condition not in descriptors.KINDS:
        raise MdiffError(f"--condition must be one of {', '.join(descriptors.KINDS)}, "
                         f"got {ucfg.condition!r}")
    if ucfg.dims not in (2, 3):
        raise MdiffError(f"--dims must be 2 or 3, got {ucfg.dims}")
    if ucfg.dims == 2 and ucfg.condition != "none":
        raise MdiffError("--condition is for 3D models; a 2D model (2D images or --dims 2) "
                         "trains without it")
    if not 0 <= tcfg.cond_drop < 1:
        raise MdiffError(f"--cond-drop must be in [0, 1), got {tcfg.cond_drop}")
    if dcfg.snr_gamma < 0 or not dcfg.snr_shift > 0:
        raise MdiffError("--snr-gamma must be >= 0 and --snr-shift > 0")
    if dcfg.snr_gamma > 0 and dcfg.objective == "x0":
        raise MdiffError("--snr-gamma weighs the eps and v losses; the x0 objective's "
                         "cross-entropy has no SNR weight (use --objective eps or v)")
    for name in ("steps", "batch_size", "save_every", "log_every", "timesteps"):
        cfg = dcfg if name == "timesteps" else tcfg
        if getattr(cfg, name) < 1:
            raise MdiffError(f"--{name.replace('_', '-')} must be at least 1")


def _truncate_log(path, step):
    """Drop loss-log lines past ``step`` (left by a run that stopped after its checkpoint)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))

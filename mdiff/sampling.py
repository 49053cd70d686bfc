"""Generating volumes from a checkpoint: ``mdiff.load(ckpt).sample(...)`` and ``mdiff-sample``."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, distributed
from ._version import __version__
from .config import UNetConfig, diffusion_config, from_dict
from .diffusion import GaussianDiffusion
from .errors import MdiffError
from .io import atomic_path, write_volume
from .phases import PhaseMap
from .samplers import ddim_sample, ddpm_sample
from .training import autocast, resolve_device
from .unet import UNet

SAMPLERS = ("ddim", "ddpm")


class Generator:
    """A trained model ready to sample: built from a checkpoint dict alone."""

    def __init__(self, state, device="auto", use_ema=True, precision="fp32", path=None):
        self.path = path
        self.device = resolve_device(device)
        self.precision = precision
        self.unet_config = from_dict(UNetConfig, state["unet"])
        self.diffusion_config = diffusion_config(state["diffusion"])
        self.diffusion = GaussianDiffusion.from_config(self.diffusion_config)
        self.phase_map = PhaseMap(state["labels"])
        self.patch = int(state["patch"])
        self.step = int(state["step"])
        self.voxel_size = state.get("voxel_size")
        self.unit = state.get("unit")
        self.model = UNet(self.unet_config, self.patch, self.diffusion_config.self_condition)
        try:
            self.model.load_state_dict(state["ema" if use_ema else "model"])
        except (RuntimeError, KeyError) as exc:
            raise MdiffError(f"{path or 'checkpoint'}: weights do not match the model "
                             f"configuration ({str(exc).splitlines()[0][:160]})") from None
        self.model.to(self.device).eval()

    def _model_fn(self, x, t, *cond):
        with autocast(self.device, self.precision):
            return self.model(x, t, *cond)

    def sample(self, n, size=None, sampler="ddim", steps=50, seed=None, eta=0.0, batch=None,
               variance="beta_tilde", progress=None, first=0):
        """n volumes as a uint8/uint16 label array (n, S, S, S) with the training labels.

        ``sampler`` ddim (``steps`` re-spaced steps, ``eta``) or ddpm (ancestral, all T steps);
        volume i depends only on (seed, i), not on ``batch``; the volumes are i = first, ...,
        first + n − 1 (how processes share a job). ``progress(done, total)`` is called after
        every denoising step of every batch."""
        size = int(size or self.patch)
        if size < 1 or size % self.model.factor:
            raise MdiffError(f"--size {size} must be a positive multiple of {self.model.factor}")
        if sampler not in SAMPLERS:
            raise MdiffError(f"--sampler must be one of {SAMPLERS}, got {sampler!r}")
        n = int(n)
        batch = int(batch or min(n, 8))
        if n < 1 or batch < 1:
            raise MdiffError("the number of volumes and the batch size must be at least 1")
        if sampler == "ddim":
            process = self.diffusion.respace(min(int(steps), self.diffusion.num_timesteps))
        else:
            process = self.diffusion
        seed = int(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        shape = (self.phase_map.n, size, size, size)
        out = []
        total = n * process.num_timesteps
        for start in range(0, n, batch):
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + first + i)
                    for i in range(start, min(n, start + batch))]
            done = start * process.num_timesteps
            report = progress and (lambda i, _t, d=done, b=len(gens): progress(d + i * b, total))
            if sampler == "ddim":
                x = ddim_sample(self._model_fn, process, shape, gens, self.device, eta=eta,
                                progress=report)
            else:
                x = ddpm_sample(self._model_fn, process, shape, gens, self.device,
                                variance=variance, progress=report)
            out.append(self.phase_map.decode(x))
        self.seed = seed
        return np.concatenate(out)


def load(path, device="auto", use_ema=True, precision="fp32"):
    """A Generator from a checkpoint file (read with ``weights_only=True``)."""
    return Generator(checkpoint.load(path), device, use_ema, precision, path=str(path))


def sample_to_dir(ckpt, out_dir, n=4, size=None, sampler="ddim", steps=50, seed=0, batch=None,
                  eta=0.0, device="auto", precision="fp32", use_ema=True, log=None):
    """Write OUT_DIR/sample_000.tif, ... and OUT_DIR/samples.json; returns the paths.

    Under torchrun the volumes are shared out: process r of N makes volumes
    [r·n/N, (r+1)·n/N) (volume i is still a function of seed and i alone), rank 0 logs and
    writes samples.json once all are written."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    ctx = distributed.context()
    if ctx.world > 1:
        if seed is None:
            raise MdiffError("give a --seed when sampling with several processes")
        kind = resolve_device(device).type
        distributed.setup(kind)
        device = f"cuda:{ctx.local_rank}" if kind == "cuda" else "cpu"
        if not ctx.main:
            log = lambda text: None  # noqa: E731
    share = range(n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world)
    gen = load(ckpt, device, use_ema, precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last = [0.0]

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] >= 2.0 or done == total:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            log(f"  {done}/{total} volume-steps  {rate:.1f}/s  "
                f"ETA {int((total - done) / max(rate, 1e-9))}s")

    log(f"mdiff-sample: {n} volume(s) of {size or gen.patch}^3 with {sampler}"
        f"{f' ({steps} steps)' if sampler == 'ddim' else ''} on {gen.device}, "
        f"checkpoint step {gen.step}"
        + (f", {ctx.world} processes ({len(share)} volumes here)" if ctx.world > 1 else ""))
    volumes = (gen.sample(len(share), size, sampler, steps, seed, eta, batch,
                          progress=progress, first=share.start) if len(share) else [])
    for i, volume in zip(share, volumes):
        write_volume(out_dir / f"sample_{i:03d}.tif", volume, voxel_size=gen.voxel_size,
                     unit=gen.unit)
    distributed.barrier()
    distributed.cleanup()
    paths = [out_dir / f"sample_{i:03d}.tif" for i in range(n)]
    if not ctx.main:
        return paths
    info = {"mdiff_version": __version__, "checkpoint": str(Path(ckpt).resolve()),
            "checkpoint_step": gen.step, "objective": gen.diffusion.objective, "count": n,
            "processes": ctx.world, "size": int(size or gen.patch),
            "sampler": sampler, "steps": steps if sampler == "ddim" else
            gen.diffusion.num_timesteps, "eta": eta if sampler == "ddim" else None,
            "seed": getattr(gen, "seed", seed), "ema": use_ema, "precision": precision,
            "device": str(gen.device),
            "labels": list(gen.phase_map.labels), "seconds": time.perf_counter() - started,
            "files": [p.name for p in paths]}
    with atomic_path(out_dir / "samples.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    log(f"mdiff-sample: wrote {n} volume(s) to {out_dir} in {info['seconds']:.1f} s")
    return paths

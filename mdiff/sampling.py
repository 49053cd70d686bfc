"""Generating volumes from a checkpoint: ``mdiff.load(ckpt).sample(...)`` and ``mdiff-sample``."""
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, descriptors, distributed
from ._version import __version__
from .config import UNetConfig, diffusion_config, from_dict
from .diffusion import GaussianDiffusion
from .errors import MdiffError
from .io import atomic_path, check_memory, free_memory, write_volume
from .descriptors import profile_at
from .phases import PhaseMap
from .samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample
from .multiplane import FUSIONS, multiplane_denoiser
from .tiling import Tiling, bump, tiled_denoiser
from .training import autocast, busy_warning, resolve_device
from .unet import UNet

SAMPLERS = ("dpm++", "ddim", "ddpm")
# Network calls by default: DPM-Solver++(2M) at 30 steps matched DDIM-50's fidelity figures within
# the noise of 16 volumes (benchmarks/results/sampler_steps_nmc_3phase_256.md).
DEFAULT_STEPS = {"dpm++": 30, "ddim": 50}
# What a model of each kind samples with when not told (one place; ``Generator.defaults``).
# 2D models (multi-plane denoising): a deterministic solver leaves the planes' disagreement as
# voxel-scale roughness (the slices of fused NMC volumes had 1.5x the boundary length of the
# training slice, whose own 2D samples match it); DDIM with eta = 1 lets the later steps mend it
# (1.25x), and one axis a step (cycle) did as well as fusing all three at a third of the cost:
# README "From 2D images", benchmarks/results/from_2d/.
SAMPLING_DEFAULTS = {
    3: {"sampler": "dpm++", "eta": 0.0, "steps": DEFAULT_STEPS},
    2: {"sampler": "ddim", "eta": 1.0, "fuse": "cycle", "steps": {"dpm++": 30, "ddim": 100}},
}
TILINGS = ("auto", "whole", "windows")


GOLDEN = (math.sqrt(5) - 1) / 2  # the step of the low-discrepancy draws of conditions
# The guidance a conditioned model samples with by default where each volume's composition is
# drawn (no target): at 1 the generated fractions follow the drawn ones with a slope of 0.59-0.74
# (NMC, Berea, a coarse synthetic) and the set varies too little; at 1.4 the slope is 0.92-0.99
# and the spread of phi 0.79-1.10 (README, Composition). At a target 1 is already on it.
DRAWN_GUIDANCE = 1.4


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
        self.condition = self.unet_config.condition
        self.dims = self.unet_config.dims
        fractions = state.get("image_fractions")  # a 2D model's training images' composition
        self.image_fractions = None if fractions is None else fractions.float()
        recorded = state.get("descriptors")
        self.recorded = None if recorded is None else recorded["values"].float()

    def defaults(self, sampler=None, steps=None, eta=None):
        """(sampler, steps, eta) with this kind of model's ``SAMPLING_DEFAULTS`` where not
        given (steps None for ddpm, which takes every step); MdiffError for a bad one. (The
        fusion of a 2D model is settled by ``plan``.)"""
        kind = SAMPLING_DEFAULTS[self.dims]
        sampler = sampler or kind["sampler"]
        if sampler not in SAMPLERS:
            raise MdiffError(f"--sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "ddpm":
            if steps is not None:
                raise MdiffError("--steps does not apply to --sampler ddpm, which takes every "
                                 "step of the schedule; use --sampler dpm++ or ddim for fewer "
                                 "steps")
        else:
            steps = int(steps or kind["steps"][sampler])
        return sampler, steps, kind["eta"] if eta is None else float(eta)

    def _model_fn(self, x, t, *extra, cond=None, plane=None):
        with autocast(self.device, self.precision):
            return self.model(x, t, *extra, cond=cond, plane=plane)

    def conditions(self, n, seed, first=0, fractions=None):
        """(n, phases + 1) conditions of volumes first, ..., first + n − 1: the target
        ``fractions`` for all, or each volume's drawn from the training cubes' recorded
        fractions by (seed, i) alone; None for an unconditioned model."""
        if self.condition == "none":
            if fractions is not None:
                raise MdiffError("this checkpoint was trained without --condition fractions, so "
                                 "it cannot generate at target fractions; train with it")
            return None
        if fractions is not None:
            try:
                target = descriptors.normalise_target(fractions, self.phase_map.n)
            except ValueError as exc:
                raise MdiffError(f"--fractions: {exc}") from None
            return descriptors.condition(torch.tensor([target] * n))
        # a golden-ratio sequence over the training cubes ranked by their first phase's
        # fraction, started at a point drawn from the seed: volume i's draw depends on (seed,
        # i) alone, and any n consecutive volumes cover that fraction's quantiles evenly
        # (independent draws left 32 volumes of a coarse structure 0.08 above the training
        # cubes' mean pore fraction)
        start = torch.rand((), generator=torch.Generator().manual_seed(seed + 7)).item()
        return self._at_quantiles(torch.tensor([(start + (first + i) * GOLDEN) % 1.0
                                                for i in range(n)], dtype=torch.float64))

    def _at_quantiles(self, quantiles):
        """The conditions of the training cubes at ``quantiles`` (in [0, 1]) of the first
        phase's fraction."""
        ranked = torch.argsort(self.recorded[:, 0], stable=True)
        picks = ranked[(quantiles * len(ranked)).long().clamp(0, len(ranked) - 1)]
        return descriptors.condition(self.recorded[picks])

    def guided(self, cond, guidance=1.0):
        """The model callable for a batch of volumes with conditions ``cond`` (one row per
        volume; the network may see k windows of each, window-major, as ``mdiff.tiling``
        batches them; or a list with one condition per window for each network call of a
        step, in ``Tiling.batches`` order: graded targets): conditional, or with
        classifier-free guidance out = out_uncond + w (out_cond − out_uncond), both branches
        in one call."""
        if cond is None:
            return self._model_fn
        per_call = cond if isinstance(cond, list) else [cond]  # graded: one per window group
        calls = [0]

        def model_fn(x, t, *extra):
            c = per_call[calls[0] % len(per_call)].to(x.device)
            calls[0] += 1
            c = c.repeat(len(x) // len(c), 1)
            if guidance == 1:
                return self._model_fn(x, t, *extra, cond=c)
            both = [None if e is None else torch.cat([e, e]) for e in extra]
            out = self._model_fn(torch.cat([x, x]), torch.cat([t, t]), *both,
                                 cond=torch.cat([c, torch.zeros_like(c)]))
            cond_out, plain = out.chunk(2)
            return plain + guidance * (cond_out - plain)

        return model_fn

    def shape(self, size=None):
        """(d, h, w) of a sample: ``size`` None (the training cube), an int (a cube) or three
        sides; every side a positive multiple of the U-Net's down-sampling factor."""
        if size is None:
            size = self.patch
        sides = (int(size),) * 3 if np.ndim(size) == 0 else tuple(int(s) for s in size)
        if len(sides) != 3 or any(s < 1 or s % self.model.factor for s in sides):
            raise MdiffError(f"--size {' '.join(map(str, sides))}: give one side or three, each "
                             f"a positive multiple of {self.model.factor}")
        return sides

    def plan(self, size=None, tiling="auto", overlap=0.25, periodic=False, windows=8, n=1,
             batch=None, fuse=None, slices=64, free_fractions=False):
        """How n samples of ``size`` are denoised: a dict (shape, tiling, window, overlap,
        stride, windows, periodic, batch); "whole" when the volume is no larger than the
        training cube and not periodic (the network sees it as in training); "auto": "whole"
        where it needs at most half the free memory, else "windows". A 2D model: "planes",
        multi-plane denoising (``mdiff.multiplane``) with ``fuse`` and ``slices`` images a
        network call. MdiffError if the request is malformed or needs more memory than is
        free."""
        shape = self.shape(size)
        if tiling not in TILINGS:
            raise MdiffError(f"--tiling must be one of {TILINGS}, got {tiling!r}")
        if self.dims == 2:
            return self._plan_planes(shape, tiling, overlap, windows, n, batch, periodic, fuse,
                                     slices, free_fractions)
        if fuse is not None or slices != 64 or free_fractions:
            raise MdiffError("--fuse, --slices and --free-fractions are for 2D models "
                             "(multi-plane denoising); this checkpoint is a 3D model")
        if not 0 <= overlap < 1:
            raise MdiffError(f"--overlap must be in [0, 1), got {overlap}")
        if int(windows) < 1:
            raise MdiffError("--windows must be at least 1")
        if max(shape) <= self.patch and not periodic:
            tiling = "whole"
        if self.unet_config.mean_input and max(shape) > self.patch:
            if tiling == "whole":
                raise MdiffError(f"this model reads each cube's mean composition (mean_input), "
                                 f"learned on cubes of {self.patch}: a larger volume needs "
                                 f"--tiling windows (or auto)")
            tiling = "windows"
        if tiling == "auto":
            need = self.memory_needed(int(batch or 1), {"shape": shape, "tiling": "whole"})
            free = free_memory(self.device)
            tiling = "whole" if free is None or need <= free / 2 else "windows"
        plan = {"shape": list(shape), "tiling": tiling, "periodic": bool(periodic)}
        if tiling == "windows":
            if periodic and min(shape) < self.patch:
                raise MdiffError(f"--periodic with windows needs every side at least the "
                                 f"training cube's {self.patch}; use --tiling whole")
            t = Tiling(shape, self.patch, overlap, periodic, self.model.factor)
            plan.update(window=self.patch, overlap=overlap, stride=t.stride, windows=len(t),
                        windows_per_call=int(windows))
        small = plan["tiling"] == "whole" and math.prod(shape) <= self.patch ** 3
        plan["batch"] = int(batch or min(int(n), 8 if small else 1))
        if int(n) < 1 or plan["batch"] < 1:
            raise MdiffError("the number of volumes and the batch size must be at least 1")
        self.check_plan_memory(plan)
        return plan

    def check_plan_memory(self, plan, guidance=1.0):
        """One line (MdiffError) where a 3D ``plan`` would not fit the device's free memory;
        guidance ≠ 1 runs both branches in one network call, twice the activations."""
        check_memory(self.memory_needed(plan["batch"], plan, 1 if guidance == 1 else 2),
                     self.device, "give a smaller --size or --batch"
                     + (", or --tiling windows" if plan["tiling"] == "whole" else ""),
                     what=f"sampling {'x'.join(map(str, plan['shape']))} voxels")

    def draws(self, fractions=None, fractions_along=None):
        """True where a request draws its compositions from the training cubes: a
        conditioned model given no target."""
        return self.condition != "none" and fractions is None and fractions_along is None

    def tiling_for(self, size, tiling="auto", fractions=None, fractions_along=None):
        """The tiling a request needs before memory has its say: a graded target conditions
        each window on its place, and a conditioned model without a target draws each
        window's composition (``_drawn_windows``) in a volume larger than the training cube,
        so both go by windows under "auto"."""
        if fractions_along is not None:
            if fractions is not None:
                raise MdiffError("give --fractions or --fractions-along, not both")
            if tiling == "whole":
                raise MdiffError("--fractions-along conditions each window on its place: use "
                                 "--tiling windows (or auto)")
            return "windows"
        if (self.draws(fractions) and tiling == "auto" and self.dims == 3
                and max(self.shape(size)) > self.patch):
            return "windows"
        return tiling

    def drawn_as(self, plan, fractions=None, fractions_along=None):
        """How a request planned as ``plan`` draws its compositions from the training cubes:
        None (a target, or an unconditioned model), "per volume" (a volume of the training
        cube's size made whole), "per window" (by windows: ``_drawn_windows``) or
        "unconditional" (a larger volume made whole runs the unconditional model, trained
        with dropout)."""
        if not self.draws(fractions, fractions_along):
            return None
        if plan["tiling"] == "windows":
            return "per window"
        return "unconditional" if max(plan["shape"]) > self.patch else "per volume"

    @staticmethod
    def guidance_for(guidance=None, drawn=None):
        """The guidance scale a request samples with: ``guidance`` if given, else
        ``DRAWN_GUIDANCE`` where each volume's composition is drawn (``drawn_as``), and 1
        at a target, for an unconditioned model, where a conditioned model runs
        unconditioned, and where it draws each window's composition: there 1.4 made 8 NMC
        volumes of 64³ vary 1.6× as much as real 64³ cubes, 1 made them vary 1.2× (and costs
        one network call a step instead of two)."""
        if guidance is not None:
            return float(guidance)
        return DRAWN_GUIDANCE if drawn == "per volume" else 1.0

    def check_2d(self, fractions=None, guidance=None, fractions_along=None):
        """MdiffError for a request a 2D model cannot serve (it has no condition)."""
        if self.dims == 2 and (fractions is not None or fractions_along is not None
                               or guidance not in (None, 1)):
            raise MdiffError("this is a 2D model: --fractions, --fractions-along and "
                             "--guidance need a 3D model trained with --condition fractions")

    def _plan_planes(self, shape, tiling, overlap, windows, n, batch, periodic, fuse, slices,
                     free_fractions=False):
        if tiling != "auto" or overlap != 0.25 or int(windows) != 8:
            raise MdiffError("this is a 2D model: it makes 3D volumes by multi-plane denoising, "
                             "slice by slice, so --tiling, --overlap and --windows do not apply "
                             "(--slices sets the images per network call)")
        fuse = fuse or SAMPLING_DEFAULTS[2]["fuse"]
        if fuse not in FUSIONS:
            raise MdiffError(f"--fuse must be one of {', '.join(FUSIONS)}, got {fuse!r}")
        if fuse == "geo" and self.diffusion.objective != "x0":
            raise MdiffError("--fuse geo multiplies phase probabilities, which only the x0 "
                             "objective predicts; use --fuse cycle or mean")
        if int(slices) < 1:
            raise MdiffError("--slices must be at least 1")
        plan = {"shape": list(shape), "tiling": "planes", "periodic": bool(periodic),
                "fuse": fuse, "slices": int(slices), "batch": int(batch or 1),
                "match_fractions": None if free_fractions or self.image_fractions is None
                or self.diffusion.objective != "x0" else
                [round(float(f), 6) for f in self.image_fractions]}
        if int(n) < 1 or plan["batch"] < 1:
            raise MdiffError("the number of volumes and the batch size must be at least 1")
        check_memory(self.memory_needed(plan["batch"], plan), self.device,
                     "give a smaller --size, --batch or --slices",
                     what=f"sampling {'x'.join(map(str, shape))} voxels")
        return plan

    def memory_needed(self, n, plan, branches=1):
        """Bytes a batch of n volumes needs beyond the model: the samplers' volume-sized
        buffers (x_t, x̂_0, ε̂, the next x_t, noise), the fused x̂_0 and its weights with
        windows, and the network's activations on what it sees at once (``branches`` times:
        2 under classifier-free guidance)."""
        voxels = math.prod(plan["shape"])
        c = self.phase_map.n
        if plan["tiling"] == "planes":  # the network sees ``slices`` of the largest slices
            d, h, w = plan["shape"]
            seen = max(plan["slices"], n) * max(d * h, d * w, h * w)
            return (n * voxels * c * 4 * 7 + seen * c * 4 * 3
                    + seen * self.model.activation_bytes_per_voxel())
        buffers = n * voxels * c * 4 * (6 if plan["tiling"] == "windows" else 5) + voxels * 4
        seen = (n * min(plan.get("windows_per_call", 1), plan.get("windows", 1))
                * self.patch ** 3 if plan["tiling"] == "windows" else n * voxels)
        return buffers + branches * seen * self.model.activation_bytes_per_voxel()

    def _graded(self, plan, profile, volumes):
        """Per network call of a step over windows, the conditions of its windows (window-
        major, ``volumes`` alike): the graded target at each window's centre."""
        axis, points = profile
        k = "zyx".index(axis)
        tiling = Tiling(plan["shape"], plan["window"], plan["overlap"], plan["periodic"],
                        self.model.factor)
        out = []
        for group in tiling.batches(plan["windows_per_call"]):
            rows = []
            for corner in group:
                # the window's centre voxel as a position from 0 (first voxel) to 1 (last)
                length = plan["shape"][k]
                centre = (corner[k] + (tiling.sides[k] - 1) / 2) % length / max(length - 1, 1)
                rows += [profile_at(points, centre)] * volumes
            out.append(descriptors.condition(torch.tensor(rows)))
        return out

    def _drawn_windows(self, plan, seed, volumes):
        """Per network call of a step over windows, the conditions of its windows (window-
        major, then ``volumes`` — their indices — in order): each window its own draw from the
        training cubes, neighbouring windows' draws correlated as the voxels they share in the
        fused volume. A volume is a field of white noise on cells of a quarter of the training
        cube's side (by (seed, i) alone); a window's value is that noise summed over its
        voxels with its fusion weights (``bump``) and normalised, a standard normal, and picks
        the training cube at that quantile of the first phase's fraction. So each window's
        composition follows the training cubes', and a larger volume's whole composition
        varies between volumes about as a real volume of its size does when cubes that do not
        overlap are independent (real 64³ NMC and Berea cubes vary with sd 0.035 and 0.040,
        as 0.10/√8 and 0.11/√8 would). Drawing a volume's windows from one low-discrepancy
        block, as before, pinned its whole composition to the training mean (0.24× the real
        spread of 64³ cubes); summing the noise over the windows' voxels unweighted made 8
        volumes of 64³ vary 1.9× as much as real cubes (at guidance 1.4; weighted, 1.6×, and
        1.2× at the guidance 1 that ``guidance_for`` gives drawn windows)."""
        tiling = Tiling(plan["shape"], plan["window"], plan["overlap"], plan["periodic"],
                        self.model.factor)
        grain = max(1, self.patch // 4)
        sums = []  # per axis: (window positions, cells) fusion weights, each row of norm 1
        for k, length in enumerate(plan["shape"]):
            counts = torch.zeros(len(tiling.starts[k]), math.ceil(length / grain))
            for j, start in enumerate(tiling.starts[k]):
                voxels = (torch.arange(tiling.sides[k]) + start) % length
                counts[j].index_add_(0, voxels // grain, bump(tiling.sides[k]))
            sums.append(counts / counts.norm(dim=1, keepdim=True))
        draws = {}
        for i in volumes:
            noise = torch.randn([m.shape[1] for m in sums], generator=torch.Generator()
                                .manual_seed(seed * 1_000_003 + i + 11))
            z = torch.einsum("ai,bj,ck,ijk->abc", *sums, noise).reshape(-1)  # corners() order
            draws[i] = self._at_quantiles(0.5 * (1 + torch.erf(z / math.sqrt(2))))
        out, w = [], 0
        for group in tiling.batches(plan["windows_per_call"]):
            rows = []
            for _ in group:
                rows += [draws[i][w] for i in volumes]
                w += 1
            out.append(torch.stack(rows))
        return out

    def denoiser(self, process, plan, on_windows=None, model_fn=None):
        """The denoiser of ``plan`` over ``model_fn`` (default: the plain model);
        ``on_windows(k, K)`` after each network call of a step over windows."""
        model_fn = model_fn or self._model_fn
        if plan["tiling"] == "whole":
            self.model.set_periodic(plan["periodic"])
            return process.denoiser(model_fn)
        if plan["tiling"] == "planes":
            self.model.set_periodic(plan["periodic"])
            return multiplane_denoiser(process, model_fn, plan["fuse"], plan["slices"],
                                       self.unet_config.planes > 1, progress=on_windows,
                                       fractions=plan["match_fractions"])
        self.model.set_periodic(False)
        return tiled_denoiser(process, model_fn, plan["shape"], plan["window"],
                              plan["overlap"], plan["periodic"], plan["windows_per_call"],
                              self.model.factor, progress=on_windows)

    def sample(self, n, size=None, sampler=None, steps=None, seed=None, eta=None, batch=None,
               variance="beta_tilde", progress=None, first=0, tiling="auto", overlap=0.25,
               periodic=False, windows=8, fractions=None, guidance=None, fractions_along=None,
               fuse=None, slices=64, free_fractions=False):
        """n volumes as a uint8/uint16 label array (n, d, h, w) with the training labels.

        ``size``: None (the training cube), a side or three sides. Volumes larger than the
        training cube are denoised by ``tiling``: "whole" (the network on the whole volume,
        attention within training-size windows: faster, no seams, memory grows with the
        volume), "windows" (overlapping training-size windows whose x̂_0 are fused, ``overlap``
        of a window shared with the next, ``windows`` of them per network call: memory bounded
        by that, not by the volume) or "auto" (whole where it fits in half the free memory).
        ``periodic``: the volume tiles space (windows wrap round / circular padding).
        ``sampler`` dpm++ (DPM-Solver++(2M), ``steps`` re-spaced steps, default 30), ddim
        (``steps``, default 50, ``eta``) or ddpm (ancestral, all T steps); None: the model
        kind's default (``SAMPLING_DEFAULTS``: dpm++ for 3D, DDIM-100 with eta 1 for 2D models);
        volume i depends
        only on (seed, i), not on ``batch``; the volumes are i = first, ..., first + n − 1 (how
        processes share a job).
        ``progress(done, total)`` is called after every denoising step of every batch (and
        every network call over windows: ``done`` then counts fractions of a step).
        A model trained with ``condition="fractions"`` generates at the target ``fractions``
        (one per phase, label order; normalised) or, without one, each volume at fractions
        drawn from its training cubes (a volume larger than the training cube: each window
        its own draw, so it goes by windows; with ``tiling="whole"`` the unconditional model);
        ``guidance`` is the classifier-free guidance scale (1: the conditional model alone,
        one network call a step; else two; None: ``guidance_for``, 1.4 for drawn
        compositions of volumes of the training size, 1 at a target and for drawn windows).
        ``fractions_along`` = (axis, [(position, fractions), ...]) (``descriptors.
        parse_profile``) grades the target along an axis: each window is conditioned on the
        target at its centre, so it needs windows (``tiling`` auto or windows).
        A 2D model makes 3D volumes by multi-plane denoising (``mdiff.multiplane``): ``fuse``
        "cycle" (one axis a step, the default), "mean" (x̂_0 of the three axes averaged every
        step) or "geo" (their phase probabilities' normalised geometric mean), ``slices``
        images a network call; tiling, overlap and windows do not apply. Every step's fused
        x̂_0 is held to the training images' phase fractions (``multiplane.match_fractions``;
        the fused planes otherwise lose the minority phases) unless ``free_fractions``."""
        self.check_2d(fractions, guidance, fractions_along)
        sampler, steps, eta = self.defaults(sampler, None if sampler == "ddpm" else steps, eta)
        tiling = self.tiling_for(size, tiling, fractions, fractions_along)
        plan = self.plan(size, tiling, overlap, periodic, windows, n, batch, fuse, slices,
                         free_fractions)
        draw = self.drawn_as(plan, fractions, fractions_along)
        guidance = self.guidance_for(guidance, draw)
        if guidance != 1:  # plan() checked one branch
            self.check_plan_memory(plan, guidance)
        if fractions_along is not None and plan["tiling"] != "windows":
            raise MdiffError("--fractions-along needs a volume larger than the training cube")
        if guidance != 1 and self.condition == "none":
            raise MdiffError("--guidance needs a model trained with --condition fractions")
        n, batch = int(n), plan["batch"]
        if sampler == "ddpm":
            process = self.diffusion
        else:
            process = self.diffusion.respace(min(steps, self.diffusion.num_timesteps))
        seed = int(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        conds = self.conditions(n, seed, first, fractions if fractions_along is None
                                else profile_at(fractions_along[1], 0.5))
        shape = (self.phase_map.n, *plan["shape"])
        out = []
        total = n * process.num_timesteps
        for start in range(0, n, batch):
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + first + i)
                    for i in range(start, min(n, start + batch))]
            done = start * process.num_timesteps
            step = [0]

            def report(i, _total, d=done, b=len(gens)):
                step[0] = i
                progress(d + i * b, total)

            def on_windows(k, count, d=done, b=len(gens)):
                progress(d + (step[0] + k / count) * b, total)

            report, on_windows = (report, on_windows) if progress else (None, None)
            if fractions_along is not None:
                cond = self._graded(plan, fractions_along, len(gens))
            elif draw == "per window":
                cond = self._drawn_windows(plan, seed, range(first + start,
                                                             first + start + len(gens)))
            elif draw == "unconditional":
                cond = None
            else:
                cond = None if conds is None else conds[start:start + len(gens)]
            model_fn = self.guided(cond, guidance)
            denoise = self.denoiser(process, plan, on_windows, model_fn)
            if sampler == "ddim":
                x = ddim_sample(denoise, process, shape, gens, self.device, eta=eta,
                                progress=report)
            elif sampler == "dpm++":
                x = dpmpp_2m_sample(denoise, process, shape, gens, self.device, progress=report)
            else:
                x = ddpm_sample(denoise, process, shape, gens, self.device, variance=variance,
                                progress=report)
            out.append(self.phase_map.decode(x))
            del x, denoise
        self.seed = seed
        self.last_plan = plan
        self.last_guidance = guidance
        self.last_draw = draw
        self.last_conditions = (conds[:, :-1].tolist() if conds is not None
                                and fractions_along is None
                                and draw in (None, "per volume") else None)
        return np.concatenate(out)


def _sample_set(folder):
    """The files of a sample set in a folder: sample_*.tif and samples.json."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name == "samples.json" or (p.name.startswith("sample_") and p.suffix == ".tif")))


def load(path, device="auto", use_ema=True, precision="fp32"):
    """A Generator from a checkpoint file (read with ``weights_only=True``)."""
    return Generator(checkpoint.load(path), device, use_ema, precision, path=str(path))


def sample_to_dir(ckpt, out_dir, n=4, size=None, sampler=None, steps=None, seed=0, batch=None,
                  eta=None, device="auto", precision="fp32", use_ema=True, log=None,
                  tiling="auto", overlap=0.25, periodic=False, windows=8, overwrite=False,
                  fractions=None, guidance=None, fractions_along=None, fuse=None, slices=64,
                  free_fractions=False):
    """Write OUT_DIR/sample_000.tif, ... and OUT_DIR/samples.json; returns the paths.
    ``size``, ``tiling``, ``overlap``, ``periodic``, ``windows``, ``fractions``,
    ``guidance``, ``sampler``, ``steps``, ``eta``, ``fuse``, ``slices``, ``free_fractions``: see
    ``Generator.sample``; ``fractions_along`` as on the command line: [AXIS, "POS:F0,F1,...",
    ...].

    A folder never holds two sets: one that holds samples is refused unless ``overwrite``,
    and then the old set is replaced as a whole, once the new one is complete (it is written
    to OUT_DIR/.partial first, so a failed run leaves the old set as it was).

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
    if n < 1:
        raise MdiffError(f"-n {n}: nothing to generate; give at least 1 volume")
    old_set = _sample_set(out_dir)
    if old_set and not overwrite:
        raise MdiffError(f"{out_dir} already holds {len(old_set)} sample file(s) of another "
                         "run; choose another folder, or --overwrite to replace that set")
    share = range(n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world)
    gen = load(ckpt, device, use_ema, precision)
    sampler, steps, eta = gen.defaults(sampler, steps, eta)
    gen.check_2d(fractions, guidance, fractions_along)
    plan = gen.plan(size, gen.tiling_for(size, tiling, fractions, fractions_along), overlap,
                    periodic, windows, max(len(share), 1), batch, fuse, slices, free_fractions)
    scale = gen.guidance_for(guidance, gen.drawn_as(plan, fractions, fractions_along))
    if scale != 1:  # plan() checked one branch
        gen.check_plan_memory(plan, scale)
    gen.conditions(1, 0, fractions=fractions)  # a bad target is one line before any work
    if fractions_along is not None:  # the command line's AXIS POS:F0,F1,... POS:...
        try:
            fractions_along = descriptors.parse_profile(fractions_along[0], fractions_along[1:],
                                                        gen.phase_map.n)
        except ValueError as exc:
            raise MdiffError(f"--fractions-along: {exc}") from None
        gen.conditions(1, 0, fractions=fractions_along[1][0][1])
    if guidance not in (None, 1) and gen.condition == "none":
        raise MdiffError("--guidance needs a model trained with --condition fractions")
    partial = out_dir / ".partial"
    if ctx.main:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run that was stopped
        partial.mkdir(parents=True)
    distributed.barrier()
    started = time.perf_counter()
    last = [0.0, 0]  # time and volume-steps of the last line

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] >= 2.0 or (done == total and last[1] != total):
            last[:] = [now, done]
            rate = done / max(now - started, 1e-9)
            log(f"  {done:.1f}/{total} volume-steps  {rate:.2f}/s  "
                f"ETA {int((total - done) / max(rate, 1e-9))}s")

    how = (f"{plan['windows']} windows of {plan['window']}^3 a step (overlap {overlap:g})"
           if plan["tiling"] == "windows" else "the whole volume at once")
    if plan["tiling"] == "planes":
        turn = {"cycle": "one axis a step, in turn", "mean": "the three axes fused",
                "geo": "the three axes' probabilities multiplied"}[plan["fuse"]]
        how = f"a 2D model, multi-plane denoising ({turn}, {plan['slices']} slices a call)"
    log(f"mdiff-sample: {n} volume(s) of {'x'.join(map(str, plan['shape']))} with {sampler}"
        f"{f' ({steps} steps)' if sampler != 'ddpm' else ''} on {gen.device}, "
        f"checkpoint step {gen.step}; {how}{', periodic' if periodic else ''}"
        + (f", guidance {scale:g}" if gen.condition != "none" else "")
        + (f", {ctx.world} processes ({len(share)} volumes here)" if ctx.world > 1 else ""))
    busy = gen.device.type == "cpu" and ctx.world == 1 and busy_warning("mdiff-sample")
    if busy:
        log(busy)
    try:
        volumes = (gen.sample(len(share), size, sampler, steps, seed, eta, batch,
                              progress=progress, first=share.start, tiling=tiling,
                              overlap=overlap, periodic=periodic, windows=windows,
                              fractions=fractions, guidance=guidance,
                              fractions_along=fractions_along, fuse=fuse, slices=slices,
                              free_fractions=free_fractions)
                   if len(share) else [])
        for i, volume in zip(share, volumes):
            write_volume(partial / f"sample_{i:03d}.tif", volume, voxel_size=gen.voxel_size,
                         unit=gen.unit)
    except BaseException:
        if ctx.world == 1:  # nothing half-made stays behind (ranks may still be writing)
            shutil.rmtree(partial, ignore_errors=True)
        raise
    distributed.barrier()
    distributed.cleanup()
    paths = [out_dir / f"sample_{i:03d}.tif" for i in range(n)]
    if not ctx.main:
        return paths
    info = {"mdiff_version": __version__, "checkpoint": str(Path(ckpt).resolve()),
            "checkpoint_step": gen.step, "objective": gen.diffusion.objective, "count": n,
            "processes": ctx.world, "size": plan["shape"], "training_size": gen.patch,
            **{k: v for k, v in plan.items() if k != "shape"},
            "sampler": sampler, "steps": steps if sampler != "ddpm" else
            gen.diffusion.num_timesteps, "eta": eta if sampler == "ddim" else None,
            "seed": getattr(gen, "seed", seed), "ema": use_ema, "precision": precision,
            "device": str(gen.device),
            "labels": list(gen.phase_map.labels),
            "condition": None if gen.condition == "none" else {
                "kind": gen.condition, "target": None if fractions is None else list(fractions),
                "graded": None if fractions_along is None else {
                    "axis": fractions_along[0],
                    "points": [[p, list(v)] for p, v in fractions_along[1]]},
                "guidance": getattr(gen, "last_guidance", guidance),
                "drawn": getattr(gen, "last_draw", None),
                "per_volume": getattr(gen, "last_conditions", None)},
            "seconds": time.perf_counter() - started,
            "files": [p.name for p in paths]}
    with atomic_path(partial / "samples.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    for old in _sample_set(out_dir):  # the new set is complete: the old one goes as a whole
        old.unlink()
    for path in sorted(partial.iterdir()):
        os.replace(path, out_dir / path.name)
    partial.rmdir()
    log(f"mdiff-sample: wrote {n} volume(s) to {out_dir} in {info['seconds']:.1f} s")
    return paths

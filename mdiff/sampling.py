"""A trained model ready to sample: ``mdiff.load(ckpt)`` gives a ``Generator``.

``Generator.generate(request)`` makes the volumes of a ``SampleRequest`` and returns them with
the plan they were made by and their conditions (``Samples``); ``sample(n, size, ...)`` is the
same with the request's fields as keywords, returning the volumes alone. The plan
(``mdiff.plan``) decides everything; this module builds the model, wraps it (conditions and
guidance from ``mdiff.conditioning``, windows from ``mdiff.tiling``, planes from
``mdiff.multiplane``) and runs the sampler of ``mdiff.samplers.SAMPLERS``.
"""
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint, conditioning, plan as planning
from .diffusion import GaussianDiffusion
from .errors import MdiffError
from .multiplane import multiplane_denoiser
from .phases import PhaseMap
from .plan import DRAWN_GUIDANCE, KIND_DEFAULTS, ModelFacts  # noqa: F401  (API names)
from .request import SampleRequest
from .runtime import autocast, resolve_device, resolve_precision
from .samplers import SAMPLERS
from .tiling import tiled_denoiser
from .unet import UNet


@dataclass(frozen=True)
class Samples:
    """What ``Generator.generate`` returns."""

    volumes: np.ndarray  # (n, d, h, w) with the training labels
    plan: planning.Plan
    conditions: list = None  # per volume, its composition condition (drawn or a target)
    selection: dict = None  # transport targets: the candidates made and kept (Selection.summary)


class Generator:
    """A model rebuilt from a checkpoint's record, on a device, ready to sample."""

    def __init__(self, state, device="auto", use_ema=True, precision="auto", path=None):
        self.path = path
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        record = checkpoint.model_record(state, use_ema, path)
        self.record = record
        self.unet_config, self.diffusion_config = record.unet, record.diffusion
        self.diffusion = GaussianDiffusion.from_config(record.diffusion)
        self.phase_map = PhaseMap(record.labels)
        self.patch, self.step = record.patch, record.step
        self.voxel_size, self.unit = record.voxel_size, record.unit
        self.condition, self.dims = record.unet.condition, record.unet.dims
        self.model = UNet(record.unet, self.patch, record.diffusion.self_condition)
        try:
            self.model.load_state_dict(record.weights)
        except (RuntimeError, KeyError) as exc:
            raise MdiffError(f"{path or 'checkpoint'}: weights do not match the model "
                             f"configuration ({str(exc).splitlines()[0][:160]})") from None
        self.model.to(self.device).eval()
        fractions = record.image_fractions
        self.facts = ModelFacts(
            dims=self.dims, phases=self.phase_map.n, patch=self.patch,
            factor=self.model.factor, condition=self.condition,
            mean_input=record.unet.mean_input, objective=self.diffusion.objective,
            timesteps=self.diffusion.num_timesteps,
            activation_bytes=self.model.activation_bytes_per_voxel(),
            feature_bytes=self.model.feature_bytes_per_voxel(),
            image_fractions=None if fractions is None else tuple(fractions.tolist()),
            device=str(self.device), labels=tuple(int(v) for v in self.phase_map.labels),
            recorded=record.descriptors, student=record.student)
        self.student = record.student

    def model_fn(self, x, t, *extra, cond=None, plane=None):
        """The network as the samplers call it: ``model(x_t, t)`` under the precision."""
        with autocast(self.device, self.precision):
            return self.model(x, t, *extra, cond=cond, plane=plane)

    def plan(self, request=None, **fields):
        """The ``Plan`` of a ``SampleRequest`` (or of its fields as keywords)."""
        if not isinstance(request, SampleRequest):
            request = SampleRequest(**({} if request is None else {"size": request}), **fields)
        return planning.make_plan(self.facts, request)

    def conditions(self, n, seed, first=0, fractions=None, targets=None):
        """(n, k + 1) per-volume conditions: the target (``fractions``, ``targets`` as
        ``--targets`` takes them) for all, or each volume's drawn from the training cubes by
        (seed, i) alone; None for an unconditioned model."""
        request = SampleRequest(count=n, fractions=fractions, targets=targets)
        target, _ = planning.check_conditions(self.facts, request)
        if self.condition == "none":
            return None
        return conditioning.per_volume(self.record.descriptors, n, seed, first, target)

    def denoiser(self, process, plan, model_fn, on_windows=None, share=None):
        """``denoise(x_t, t)`` of ``plan`` over ``model_fn``: whole, by windows or by planes;
        ``on_windows(k, K)`` after each network call of a step over windows or planes;
        ``share`` (rank, world, gather) shares each step's windows out over processes."""
        if plan.tiling == "whole":
            self.model.set_periodic(plan.periodic)
            return process.denoiser(model_fn)
        if plan.tiling == "planes":
            self.model.set_periodic(plan.periodic)
            return multiplane_denoiser(process, model_fn, plan.fuse, plan.slices,
                                       self.unet_config.planes > 1, progress=on_windows,
                                       fractions=plan.match_fractions)
        self.model.set_periodic(False)
        return tiled_denoiser(process, model_fn, plan.shape, plan.window, plan.overlap,
                              plan.periodic, plan.windows_per_call, self.model.factor,
                              progress=on_windows, share=share)

    def process(self, plan):
        """The process the sampler walks: a distilled student's own timesteps, the schedule
        re-spaced to the plan's steps, or the whole schedule (ddpm)."""
        if self.student is not None:
            return self.diffusion.at_timesteps(self.student["timesteps"])
        if plan.respaced:
            return self.diffusion.respace(min(plan.steps, self.diffusion.num_timesteps))
        return self.diffusion

    def generate(self, request, progress=None, share_windows=False):
        """The volumes of ``request`` (a ``SampleRequest``, or a ``Plan`` made from one),
        with the plan and their conditions. ``progress(done, total)`` after every denoising
        step of every batch, in volume-steps (fractions of a step over windows).

        ``share_windows``: every process of an initialised process group (torchrun) calls this
        with the same request; each step's windows are shared out over them and every one
        returns the same volumes, those one process makes (a volume too large for one
        process's time; ``mdiff-sample`` under torchrun does this for fewer volumes than
        processes, and shares whole volumes out otherwise)."""
        plan = request if isinstance(request, planning.Plan) else self.plan(request)
        if plan.transport:
            chosen = self.selection(plan)
            parts = [volumes for _, volumes in chosen.batches(progress)]
            empty = self.phase_map.from_index(np.zeros((0, *plan.shape), np.uint8))
            return Samples(np.concatenate(parts) if parts else empty, plan,
                           chosen.conditions(), chosen.summary())
        parts = [volumes for _, volumes in self.batches(plan, progress, share_windows)]
        return Samples(np.concatenate(parts), plan, self.per_volume_conditions(plan))

    def selection(self, plan, log=None):
        """The ``selection.Selection`` of a plan with transport targets (``--targets deff:...``):
        its ``batches`` yields the volumes that meet them as they are kept."""
        from .selection import Selection

        return Selection(self, plan, log)

    def batches(self, request, progress=None, share_windows=False):
        """``generate``'s volumes a batch at a time: yields (index of the batch's first volume
        in the request, its volumes). A caller that writes each batch as it comes (what
        ``mdiff-sample`` does) makes a set of any count in the memory of one batch."""
        plan = request if isinstance(request, planning.Plan) else self.plan(request)
        share = None
        if share_windows:
            from . import distributed

            if plan.tiling != "windows":
                raise MdiffError("sharing a volume's windows over processes needs --tiling "
                                 "windows (a larger volume than the training cube)")
            ctx = distributed.context()
            share = (ctx.rank, ctx.world, distributed.gather)
        for start in range(0, plan.count, plan.batch):
            b = min(plan.batch, plan.count - start)
            cond = conditioning.for_batch(plan, self.record.descriptors, self.model.factor,
                                          self.patch, start, b)
            yield start, self.make(plan, start, b, cond, progress, share)

    def make(self, plan, start, count, cond, progress=None, share=None, total=None):
        """Volumes plan.first + start, ... (``count`` of them, (count, d, h, w) labels), each
        from the noise of (seed, its index), under ``cond`` (what ``conditioning.for_batch``
        gives). ``progress`` counts volume-steps of ``total`` volumes (default the plan's)."""
        process = self.process(plan)
        spec = SAMPLERS[plan.sampler]
        options = {"eta": plan.eta, "variance": plan.variance}
        gens = [torch.Generator().manual_seed(plan.seed * 1_000_003 + plan.first + i)
                for i in range(start, start + count)]
        report, on_windows = _progress(progress, start, count, total or plan.count,
                                       process.num_timesteps)
        model_fn = conditioning.guided(self.model_fn, cond, plan.guidance, plan.hold)
        denoise = self.denoiser(process, plan, model_fn, on_windows, share)
        x = spec.fn(denoise, process, (self.phase_map.n, *plan.shape), gens, self.device,
                    progress=report, **{k: options[k] for k in spec.options})
        return self.phase_map.decode(x)

    def per_volume_conditions(self, plan, count=None):
        """The composition condition of each of ``count`` (default: the plan's) volumes from
        plan.first where it is one per volume (a target or a per-volume draw), else None."""
        if self.condition == "none" or plan.profile is not None \
                or plan.drawn not in (None, "per volume"):
            return None
        conds = conditioning.per_volume(self.record.descriptors, count or plan.count,
                                        plan.seed, plan.first, plan.target)
        return conds[:, :-1].tolist()

    def sample(self, n, size=None, sampler=None, steps=None, seed=None, eta=None, batch=None,
               variance="beta_tilde", progress=None, first=0, **fields):
        """n volumes as a uint8/uint16 label array (n, d, h, w) with the training labels:
        ``generate`` with the fields of ``SampleRequest`` as keywords (``tiling``,
        ``overlap``, ``periodic``, ``windows``, ``fractions``, ``fractions_along``,
        ``guidance``, ``fuse``, ``slices``, ``free_fractions``; see its help). ``steps`` is
        ignored for ddpm, which takes every step."""
        if sampler is not None and sampler in SAMPLERS and SAMPLERS[sampler].steps is None:
            steps = None
        request = SampleRequest(count=n, size=size, sampler=sampler, steps=steps, seed=seed,
                                eta=eta, batch=batch, variance=variance, first=first, **fields)
        return self.generate(request, progress).volumes


def _progress(progress, start, count, total_volumes, steps):
    """(after each step, after each network call over windows) callbacks for a batch of
    ``count`` volumes from ``start``: both report volume-steps done of the whole set."""
    if progress is None:
        return None, None
    done, total, step = start * steps, total_volumes * steps, [0]

    def report(i, _total):
        step[0] = i
        progress(done + i * count, total)

    def on_windows(k, calls):
        progress(done + (step[0] + k / calls) * count, total)

    return report, on_windows


def load(path, device="auto", use_ema=True, precision="auto"):
    """A Generator from a checkpoint file (read with ``weights_only=True``)."""
    return Generator(checkpoint.load(path), device, use_ema, precision, path=str(path))


from .sampleset import sample_to_dir, write_samples  # noqa: E402,F401  (the API's names)

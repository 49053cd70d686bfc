"""Few-step students of a trained model: ``mdiff-distill TEACHER.pt --out DIR``.

A student is the teacher's U-Net, started from the teacher's EMA weights and trained to make in
K network calls (deterministic DDIM over its own K timesteps, ``student_timesteps``) what the
teacher makes by its default sampling: DPM-Solver++ at 30 steps, classifier-free guidance at
``guidance`` (both branches of it), each volume's fractions held. The guidance is then in the
student's weights: it runs one branch a call. Two methods (``METHODS``):

- ``endpoint``: knowledge distillation along the teacher's own solutions (Luhman & Luhman 2021,
  taken to K steps): the teacher solves the probability-flow ODE from noise for
  ``trajectories`` seeds, its state at each of the student's timesteps is kept, and the student
  learns to predict the teacher's final phase probabilities from each of those states
  (cross-entropy with soft targets), under a random cube symmetry of state and target alike.
  It needs no training data: the conditions are drawn from the teacher's record of its cubes.
- ``progressive``: progressive distillation (Salimans & Ho 2022, Algorithm 2): in rounds, a
  student learns to make in one DDIM step what its teacher makes in two, on noised training
  cubes; its x̂_0 is pulled to the x̃_0 that makes one step land where the teacher's two do,
  with the truncated-SNR weight max(ᾱ/(1 − ᾱ), 1). Each round's student teaches the next, from
  ``teacher_steps`` = K·2^r DDIM steps down to K.

The student's file is the teacher's checkpoint layout with the student's weights and a
``student`` record (method, calls, timesteps, guidance, the teacher's path, step and
checksum); sampling reads it as one more model kind (``plan.KIND_DEFAULTS["student"]``).
"""
import copy
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, conditioning, descriptors
from .config import _f, to_dict
from .data import SYMMETRIES, CubeDataset
from .errors import MdiffError
from .io import atomic_path
from .plan import DRAWN_GUIDANCE
from .runtime import autocast, check_memory
from .samplers import dpmpp_2m_sample
from .training import _duration, _truncate_log

METHODS = ("endpoint", "progressive")
CHECKPOINT = "checkpoint.pt"
TRAJECTORIES = "trajectories.pt"
RUN_FILES = (CHECKPOINT, TRAJECTORIES, "distill.jsonl")


@dataclass(frozen=True)
class DistillConfig:
    method: str = _f("endpoint", "endpoint (learn the teacher's solutions from its states "
                                 "along them; no training data) or progressive (halve the "
                                 "teacher's DDIM steps round by round, on training cubes)")
    steps: int = _f(4, "network calls per volume the student makes; must divide the "
                       "teacher's timesteps")
    iterations: int = _f(300, "optimisation steps of the student (progressive: over all its "
                              "rounds)")
    batch_size: int = _f(4, "states (endpoint) or cubes (progressive) per step")
    lr: float = _f(1e-4, "AdamW learning rate")
    ema_decay: float = _f(0.99, "EMA decay of the student's weights used for sampling")
    guidance: float = _f(None, "classifier-free guidance put into the student (default: what "
                               "the teacher samples drawn compositions with, 1.4; 1 for an "
                               "unconditioned teacher)")
    trajectories: int = _f(48, "endpoint: the teacher's solutions the student learns from "
                               "(solved first, kept in the run folder)")
    teacher_steps: int = _f(None, "endpoint: DPM-Solver++ steps of the teacher's solutions "
                                  "(default 30, its sampling default); progressive: DDIM "
                                  "steps of the first round's teacher, a power-of-2 multiple "
                                  "of --steps (default: the first at or above 16)")
    cond_drop: float = _f(0.1, "share of states (or cubes) distilled without a condition, so "
                               "the student keeps its unconditional branch")
    seed: int = _f(0, "seed of the solutions' noise and conditions and of the batches")
    save_every: int = _f(100, "write the student every this many steps")
    log_every: int = _f(10, "progress line every this many steps")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _f("fp32", "fp32, bf16 (autocast) or fp16 (autocast)")


def student_timesteps(timesteps, steps, exact=True):
    """The student's K model timesteps, ascending: round(T·j/K) − 1 for j = 1..K (K = 4, T =
    1000: 249, 499, 749, 999). Those of K are every other one of 2K's, so progressive rounds
    nest (rounded alike where K does not divide T, as a progressive round's teacher may not:
    ``exact`` False); a student's K must divide T."""
    steps = int(steps)
    if steps < 1 or steps > timesteps or (exact and timesteps % steps):
        divisors = [k for k in range(1, min(timesteps, 64) + 1) if timesteps % k == 0]
        raise MdiffError(f"--steps {steps} does not divide the teacher's {timesteps} timesteps; "
                         f"choose one of {', '.join(map(str, divisors[:10]))}")
    return [round(timesteps * j / steps) - 1 for j in range(1, steps + 1)]


def check_teacher(state, path):
    """The teacher's ModelRecord, or one line for a file that cannot teach."""
    if state.get("student") is not None:
        raise MdiffError(f"{path} is a distilled student, not a teacher; distil the model it "
                         f"was distilled from ({state['student'].get('teacher')})")
    record = checkpoint.model_record(state, True, path)
    if record.unet.dims != 3:
        raise MdiffError(f"{path} is a 2D model; distilling a 2D model (multi-plane sampling) "
                         "is not supported yet: distil a 3D model")
    if record.diffusion.objective != "x0":
        raise MdiffError(f"{path} predicts {record.diffusion.objective}; mdiff-distill takes a "
                         "model with the x0 objective (mdiff-train's default)")
    if record.diffusion.self_condition:
        raise MdiffError(f"{path} uses self-conditioning, which mdiff-distill does not take")
    return record


def _settle(cfg, record):
    """The config with its defaults made concrete for this teacher, checked."""
    if cfg.method not in METHODS:
        raise MdiffError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    for name in ("iterations", "batch_size", "trajectories", "save_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise MdiffError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= cfg.cond_drop < 1:
        raise MdiffError(f"--cond-drop must be in [0, 1), got {cfg.cond_drop}")
    timesteps = record.diffusion.timesteps
    student_timesteps(timesteps, cfg.steps)
    guidance = cfg.guidance
    if guidance is None:
        guidance = DRAWN_GUIDANCE if record.unet.condition != "none" else 1.0
    if record.unet.condition == "none" and guidance != 1:
        raise MdiffError("--guidance needs a teacher trained with --condition")
    teacher_steps = cfg.teacher_steps
    if cfg.method == "endpoint":
        teacher_steps = teacher_steps or 30
    else:
        teacher_steps = teacher_steps or cfg.steps * 2 ** max(
            1, math.ceil(math.log2(16 / cfg.steps)))
        ratio = teacher_steps // cfg.steps
        if teacher_steps % cfg.steps or ratio < 2 or ratio & (ratio - 1):
            raise MdiffError(f"--teacher-steps {teacher_steps}: progressive distillation "
                             f"halves the steps each round, so it must be --steps ({cfg.steps}) "
                             "times a power of 2 (at least 2)")
        student_timesteps(timesteps, teacher_steps, exact=False)
    if teacher_steps < 1 or teacher_steps > timesteps:
        raise MdiffError(f"--teacher-steps must be in 1..{timesteps}")
    from dataclasses import replace

    return replace(cfg, guidance=float(guidance), teacher_steps=int(teacher_steps))


def _symmetry(x, index):
    """One of the 48 cube symmetries applied to the spatial axes of (N, C, D, H, W)."""
    perm, flips = SYMMETRIES[index]
    x = x.permute(0, 1, *(2 + p for p in perm))
    dims = [2 + k for k, f in enumerate(flips) if f]
    return x.flip(dims) if dims else x


class _Teacher:
    """The teacher as its default sampling calls it: the network under guidance (both
    branches), each volume's fractions held where the default plan holds them."""

    def __init__(self, gen, guidance):
        self.gen, self.guidance = gen, guidance
        self.hold = (descriptors.leads_with_fractions(gen.condition)
                     and gen.diffusion.objective == "x0")

    def model_fn(self, cond, guidance=None):
        """The callable ``model(x_t, t)`` for a batch of conditions (rows of zeros: not
        given), or for no condition."""
        w = self.guidance if guidance is None else guidance
        return conditioning.guided(self.gen.model_fn, cond, w, self.hold)


class _Student:
    """The student network, its EMA and optimiser; ``update(loss)`` is one step."""

    def __init__(self, gen, cfg, weights):
        self.gen, self.cfg = gen, cfg
        self.model = copy.deepcopy(gen.model)
        self.model.load_state_dict(weights)
        self.model.train().requires_grad_(True)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        self.params, self.ema_params = list(self.model.parameters()), list(self.ema.parameters())

    def model_fn(self, cond, hold):
        def call(x, t, *extra, cond=None, plane=None):
            with autocast(self.gen.device, self.cfg.precision):
                return self.model(x, t, *extra, cond=cond, plane=plane)
        return conditioning.guided(call, cond, 1.0, hold)

    def update(self, loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.cfg.ema_decay)


def _conditions(gen, cfg, indices, salt):
    """(n, k + 1) conditions of the given indices: each drawn from the teacher's training
    cubes by (seed, i) (``conditioning.per_volume``), dropped (zeros) where its draw falls
    below ``cond_drop``; None for an unconditioned teacher."""
    if gen.condition == "none":
        return None
    rows = torch.cat([conditioning.per_volume(gen.record.descriptors, 1, cfg.seed + salt, i)
                      for i in indices])
    keep = torch.tensor([np.random.default_rng([cfg.seed, i, salt]).random() >= cfg.cond_drop
                         for i in indices])
    return rows * keep[:, None].float()


# ---------------------------------------------------------------------------------------------
# endpoint: the teacher's solutions


def solve(gen, teacher, cfg, path, log):
    """The teacher's ``trajectories`` solutions, solved in batches and saved to ``path`` after
    each (a run stopped here goes on where it stopped): {"x": (N, K, C, P, P, P) the states at
    the student's timesteps (float16), "target": (N, C, P, P, P) the final phase
    probabilities (float16), "cond": (N, k + 1) or None, "done": solutions made}."""
    n, c, p = cfg.trajectories, gen.phase_map.n, gen.patch
    keep = student_timesteps(gen.diffusion.num_timesteps, cfg.steps)
    shape = (c, p, p, p)
    # the solutions are held in memory (float16) and saved whole after each batch
    check_memory(2 * 2 * n * (len(keep) + 1) * math.prod(shape), "cpu",
                 "give fewer --trajectories", what=f"{n} teacher solutions")
    made = None
    if Path(path).is_file():
        made = torch.load(path, map_location="cpu", weights_only=True)
        if made.get("key") != _solutions_key(gen, cfg):
            raise MdiffError(f"{path} holds solutions of another teacher or setting; give a "
                             "new --out (or --overwrite)")
    if made is None:
        made = {"key": _solutions_key(gen, cfg), "done": 0,
                "x": torch.zeros((n, len(keep), *shape), dtype=torch.float16),
                "target": torch.zeros((n, *shape), dtype=torch.float16),
                "cond": _conditions(gen, cfg, range(n), 0)}
    grid = gen.diffusion.respace(cfg.teacher_steps).timestep_map.tolist()
    union = sorted(set(grid) | set(keep))
    process = gen.diffusion.at_timesteps(union)
    wanted = {union.index(t): k for k, t in enumerate(keep)}
    batch, started, first = 8, time.perf_counter(), made["done"]
    while made["done"] < n:
        i0 = made["done"]
        rows = list(range(i0, min(n, i0 + batch)))
        cond = None if made["cond"] is None else made["cond"][rows]
        denoise = process.denoiser(teacher.model_fn(cond))
        states = made["x"]

        def record(x_t, t, denoise=denoise, rows=rows):
            k = wanted.get(int(t[0]))
            if k is not None:
                states[rows, k] = x_t.to("cpu", torch.float16)
            return denoise(x_t, t)

        gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in rows]
        x0 = dpmpp_2m_sample(record, process, shape, gens, gen.device)
        probs = ((x0.float() + 1) / 2).clamp_min(0)
        made["target"][rows] = (probs / probs.sum(1, keepdim=True).clamp_min(1e-8)).cpu().half()
        made["done"] = rows[-1] + 1
        with atomic_path(path) as tmp:
            torch.save(made, tmp)
        rate = (made["done"] - first) / (time.perf_counter() - started)
        log(f"teacher solutions {made['done']:>5}/{n}  {rate * 60:.1f}/min  "
            f"ETA {_duration((n - made['done']) / max(rate, 1e-9))}")
    return made


def _solutions_key(gen, cfg):
    """What the saved solutions depend on: a resumed run must find the same."""
    return {"teacher_step": gen.step, "steps": cfg.steps, "teacher_steps": cfg.teacher_steps,
            "guidance": cfg.guidance, "seed": cfg.seed, "cond_drop": cfg.cond_drop,
            "trajectories": cfg.trajectories}


def endpoint_loss(student, process, made, cfg, step, hold, device):
    """The cross-entropy of the student's phase logits at a batch of teacher states against
    the teacher's final probabilities, each (state, target) pair under one cube symmetry."""
    n, k_count = made["x"].shape[:2]
    rngs = [np.random.default_rng([cfg.seed, step, i, 2]) for i in range(cfg.batch_size)]
    picks = [(int(r.integers(n)), int(r.integers(k_count)), int(r.integers(len(SYMMETRIES))))
             for r in rngs]
    x = torch.cat([_symmetry(made["x"][j, k][None].float(), s) for j, k, s in picks])
    target = torch.cat([_symmetry(made["target"][j][None].float(), s) for j, _, s in picks])
    t = torch.tensor([k for _, k, _ in picks], device=device)
    cond = None if made["cond"] is None else made["cond"][[j for j, _, _ in picks]].to(device)
    logits = process.model_output(student.model_fn(cond, hold), x.to(device), t)
    return F.cross_entropy(logits, target.to(device))


# ---------------------------------------------------------------------------------------------
# progressive: one step for the teacher's two


def _ddim_step(process, denoise, x_t, index):
    """x at the index below ``index`` of ``process`` by one deterministic DDIM step (Song et al.
    2021, eq. 12 with η = 0), and the x̂_0 it took."""
    t = torch.full((x_t.shape[0],), index, dtype=torch.long, device=x_t.device)
    x_start, eps = denoise(x_t, t)
    abar_prev = float(process.alphas_cumprod_prev[index])
    return abar_prev ** 0.5 * x_start + (1 - abar_prev) ** 0.5 * eps, x_start


def progressive_target(teacher_fn, coarse, fine, x_t, j):
    """x̃_0 at student index ``j`` of ``coarse`` (``fine`` has twice its steps, every other one
    coarse's): the teacher's two DDIM steps from x_t give x_t'', and x̃_0 =
    (x_t'' − (σ''/σ) x_t) / (α'' − (σ''/σ) α) is what one step must predict to land there
    (Salimans & Ho 2022, Algorithm 2; x_t'' itself where t'' is the end)."""
    with torch.no_grad():
        teach = fine.denoiser(teacher_fn)
        mid, _ = _ddim_step(fine, teach, x_t, 2 * j + 1)
        end, _ = _ddim_step(fine, teach, mid, 2 * j)
        abar, abar_end = float(coarse.alphas_cumprod[j]), float(coarse.alphas_cumprod_prev[j])
        if abar_end >= 1.0:
            return end
        ratio = ((1 - abar_end) / (1 - abar)) ** 0.5
        return (end - ratio * x_t) / (abar_end ** 0.5 - ratio * abar ** 0.5)


def progressive_loss(student, teacher_fn, coarse, fine, x_start, cond, j, hold, noise):
    """max(SNR, 1)·‖x̂_0 − x̃_0‖² of the student at x_t = q(x_start) at index ``j`` of
    ``coarse`` (``progressive_target``; the truncated-SNR weight of Salimans & Ho 2022)."""
    t = torch.full((x_start.shape[0],), j, dtype=torch.long, device=x_start.device)
    x_t = coarse.q_sample(x_start, t, noise)
    target = progressive_target(teacher_fn, coarse, fine, x_t, j)
    x_hat, _ = coarse.predict(student.model_fn(cond, hold), x_t, t)
    abar = float(coarse.alphas_cumprod[j])
    return max(abar / (1 - abar), 1.0) * (x_hat - target).pow(2).mean()


def _cubes(state, record, data, log):
    """The teacher's training cubes: its recorded data (or ``data`` given again)."""
    from .training import load_volumes

    recorded = state.get("data", {})
    paths = list(data) if data else list(recorded.get("paths") or [])
    example = not data and bool(recorded.get("example"))
    if not paths and not example:
        raise MdiffError("progressive distillation trains on cubes: the teacher records no "
                         "training files; give them with --data")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise MdiffError(f"the teacher's training data {missing[0]} is not there; give it "
                         "with --data")
    arrays, phase_map, _, names, _ = load_volumes(paths, None, example)
    if phase_map.labels != record.labels:
        raise MdiffError(f"--data: labels {list(phase_map.labels)} differ from the teacher's "
                         f"{list(record.labels)}")
    train = state.get("train", {})
    log(f"mdiff-distill: cubes of {record.patch}^3 from {', '.join(names)}")
    return CubeDataset(arrays, phase_map, record.patch, int(train.get("stride", 8)),
                       bool(train.get("augment", True)), names)


# ---------------------------------------------------------------------------------------------


def distill(teacher_path, out="runs/fast", config=None, data=(), resume=False,
            overwrite=False, log=None):
    """Distil the model of ``teacher_path`` into a student of ``config.steps`` calls in
    OUT/checkpoint.pt (saved every ``save_every`` steps; ``resume`` goes on from it bit for
    bit); returns its path. ``config``: a DistillConfig or a dict of its fields."""
    from .sampling import Generator

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(out)
    _check_folder(out, resume, overwrite)
    resumed = None
    if resume:
        resumed = checkpoint.load(out / CHECKPOINT)
        record = resumed.get("distill")
        if record is None:
            raise MdiffError(f"{out / CHECKPOINT} is not a distillation run")
        teacher_path = teacher_path or record["teacher"]
        cfg = DistillConfig(**{**record["config"], **_extend(config)})
    else:
        if teacher_path is None:
            raise MdiffError("give the teacher's checkpoint (TEACHER.pt)")
        cfg = config if isinstance(config, DistillConfig) else DistillConfig(
            **{k: v for k, v in (config or {}).items()
               if k in {f.name for f in fields(DistillConfig)} and v is not None})
    state = checkpoint.load(teacher_path)
    record = check_teacher(state, teacher_path)
    digest = state["checksum"]["tensors"] if isinstance(state.get("checksum"), dict) else None
    if resumed is not None and resumed["distill"]["teacher_sha256"] != digest:
        raise MdiffError(f"{teacher_path} is not the teacher this run was distilled from (its "
                         "weights differ)")
    cfg = _settle(cfg, record)
    dataset = _cubes(state, record, data, log) if cfg.method == "progressive" else None
    gen = Generator(state, cfg.device, True, cfg.precision, path=str(teacher_path))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp.*"):  # a save killed half-way
        stale.unlink()
    teacher = _Teacher(gen, cfg.guidance)
    hold = teacher.hold
    keep = student_timesteps(gen.diffusion.num_timesteps, cfg.steps)
    weights = (resumed["model"] if resumed is not None
               else {k: v.clone() for k, v in record.weights.items()})
    student = _Student(gen, cfg, weights)
    step, round_ = 0, 0
    if resumed is not None:
        student.ema.load_state_dict(resumed["ema"])
        student.optimizer.load_state_dict(resumed["distill"]["optimizer"])
        step, round_ = int(resumed["distill"]["step"]), int(resumed["distill"]["round"])
        if step >= cfg.iterations:
            log(f"mdiff-distill: {out / CHECKPOINT} is already at step {step}; raise "
                "--iterations to go on")
    _truncate_log(out / "distill.jsonl", step, log)  # lines written after the last save
    log(f"mdiff-distill: {cfg.method} distillation of {teacher_path} (step {gen.step}) into "
        f"{cfg.steps} call(s) a volume, guidance {cfg.guidance:g} in the weights; "
        f"{gen.device}, {cfg.precision}; steps {step} -> {cfg.iterations}; run dir {out}")

    def save():
        _save(out / CHECKPOINT, state, student, cfg, keep, teacher_path, digest, step,
              round_, round_teacher)

    if cfg.method == "endpoint":
        try:
            made = solve(gen, teacher, cfg, out / TRAJECTORIES, log) \
                if step < cfg.iterations else None
        except KeyboardInterrupt:
            raise KeyboardInterrupt(_interrupted(out, step)) from None
        process = gen.diffusion.at_timesteps(keep)
        round_teacher = None

        def loss_at(step):
            return endpoint_loss(student, process, made, cfg, step, hold, gen.device)
    else:
        rounds = int(math.log2(cfg.teacher_steps // cfg.steps))
        per_round = math.ceil(cfg.iterations / rounds)
        round_teacher = None if resumed is None else resumed["distill"].get("round_teacher")
        teacher_net = [None]

        def teacher_fn_for(cond):
            if round_ == 0:
                return teacher.model_fn(cond)
            if teacher_net[0] is None:
                teacher_net[0] = copy.deepcopy(gen.model).eval()
                teacher_net[0].load_state_dict(round_teacher)

            def call(x, t, *extra, cond=None, plane=None):
                with autocast(gen.device, cfg.precision):
                    return teacher_net[0](x, t, *extra, cond=cond, plane=plane)
            return conditioning.guided(call, cond, 1.0, hold)

        def loss_at(step):
            nonlocal round_, round_teacher
            if step // per_round > round_:  # the student so far teaches the next round
                round_ = step // per_round
                round_teacher = {k: v.detach().clone() for k, v in
                                 student.ema.state_dict().items()}
                teacher_net[0] = None
                log(f"mdiff-distill: round {round_ + 1} of {rounds}: "
                    f"{cfg.teacher_steps >> round_} -> {cfg.teacher_steps >> (round_ + 1)} steps")
            n_coarse = cfg.teacher_steps >> (round_ + 1)
            coarse = gen.diffusion.at_timesteps(student_timesteps(
                gen.diffusion.num_timesteps, n_coarse, exact=False))
            fine = gen.diffusion.at_timesteps(student_timesteps(
                gen.diffusion.num_timesteps, 2 * n_coarse, exact=False))
            rngs = [np.random.default_rng([cfg.seed, step, i, 3]) for i in range(cfg.batch_size)]
            x_start, _ = dataset.draw(rngs, gen.device)
            j = int(np.random.default_rng([cfg.seed, step, 4]).integers(n_coarse))
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            noise = torch.randn(x_start.shape, generator=g).to(gen.device)
            cond = None
            if gen.condition != "none":
                given = torch.tensor([r.random() >= cfg.cond_drop for r in rngs])
                cond = descriptors.condition(descriptors.of_batch(gen.condition, x_start.cpu()),
                                             given).to(gen.device)
            return progressive_loss(student, teacher_fn_for(cond), coarse, fine, x_start, cond,
                                    j, hold, noise)

    started, window, running = time.perf_counter(), 0, 0.0
    try:
        while step < cfg.iterations:
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            loss = loss_at(step)
            if not torch.isfinite(loss):
                raise MdiffError(f"the distillation loss became {loss.item()} at step {step}; "
                                 f"stopped without saving; try a lower --lr")
            student.update(loss)
            step += 1
            running, window = running + loss.item(), window + 1
            if step % cfg.log_every == 0 or step == cfg.iterations:
                rate = window / (time.perf_counter() - started)
                log(f"step {step:>6}/{cfg.iterations}  loss {running / window:.5f}  "
                    f"{rate:.2f} steps/s  ETA {_duration((cfg.iterations - step) / rate)}")
                with open(out / "distill.jsonl", "a") as f:
                    f.write(f'{{"step": {step}, "loss": {running / window:.6g}, '
                            f'"steps_per_s": {rate:.4g}}}\n')
                started, window, running = time.perf_counter(), 0, 0.0
            if step % cfg.save_every == 0 or step == cfg.iterations:
                save()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(out, step)) from None
    log(f"mdiff-distill: student {out / CHECKPOINT} ({cfg.steps} call(s) a volume)")
    return out / CHECKPOINT


def _interrupted(out, step):
    """What Ctrl-C says: what is saved and how to go on."""
    if (out / CHECKPOINT).exists():
        return (f"interrupted at step {step}; {out / CHECKPOINT} holds the last save; go on "
                f"with: mdiff-distill --resume --out {out}")
    return (f"interrupted at step {step}, before the first save; the teacher's solutions made "
            f"so far are kept in {out / TRAJECTORIES}: run the same command again to go on")


def _extend(config):
    """What a resumed run takes of a new config: more iterations, other save and log rates."""
    values = config if isinstance(config, dict) else ({} if config is None else to_dict(config))
    return {k: v for k, v in values.items()
            if k in ("iterations", "save_every", "log_every", "device") and v is not None}


def _save(path, state, student, cfg, keep, teacher_path, digest, step, round_, round_teacher):
    """The student's checkpoint: the teacher's record with the student's weights, what
    sampling reads of it (``student``) and what resuming reads (``distill``)."""
    skip = ("model", "ema", "optimizer", "scaler", "checksum", "format", "format_version",
            "mdiff_version", "student", "distill")
    out = {k: v for k, v in state.items() if k not in skip}
    out.update(model=student.model.state_dict(), ema=student.ema.state_dict(), student={
        "method": cfg.method, "steps": cfg.steps, "timesteps": list(keep),
        "guidance": cfg.guidance, "teacher": str(Path(teacher_path).resolve()),
        "teacher_step": int(state["step"]), "teacher_sha256": digest, "iterations": step},
        distill={"config": to_dict(cfg), "teacher": str(Path(teacher_path).resolve()),
                 "teacher_sha256": digest, "step": step, "round": round_,
                 "optimizer": student.optimizer.state_dict(),
                 **({"round_teacher": round_teacher} if round_teacher is not None else {})})
    checkpoint.save(path, out)


def _check_folder(out, resume, overwrite):
    """One line unless ``out`` is new, empty, or a distillation run (replaced only with
    ``overwrite``, resumed only with ``resume``)."""
    if out.exists() and not out.is_dir():
        raise MdiffError(f"--out {out}: exists and is not a folder")
    if not out.is_dir():
        if resume:
            raise MdiffError(f"--resume: no distillation run in {out}")
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES
                     and not p.name.startswith("."))
    if foreign:
        raise MdiffError(f"--out {out} holds {len(foreign)} file(s) mdiff-distill did not "
                         f"write (e.g. {foreign[0]}); give a new or empty folder")
    if resume:
        if not (out / CHECKPOINT).exists():
            raise MdiffError(f"--resume: no student checkpoint in {out} yet; start it again "
                             "without --resume (the teacher's solutions already made are kept)")
        return
    if (out / CHECKPOINT).exists() and not overwrite:
        raise MdiffError(f"{out} already holds a student; go on with --resume, start over with "
                         "--overwrite, or choose another --out")
    if overwrite:
        for name in RUN_FILES:
            if (out / name).exists():
                (out / name).unlink()

"""How a sampling request is served: one ``Plan``, made once from what the model is
(``ModelFacts``) and what was asked (``SampleRequest``), checked there and nowhere else.

Every rule of a request lives here: the model kind's sampler defaults, which tiling a volume
takes (``tiling_for``), how drawn compositions enter (``drawn_as``), the guidance scale
(``guidance_for``), a 2D model's multi-plane settings, and the memory the plan needs
(``memory_needed``), refused in one line where it is more than is free.
"""
import math
from dataclasses import asdict, dataclass, field, replace

from . import descriptors, runtime, selection
from .errors import MdiffError
from .multiplane import FUSIONS
from .samplers import SAMPLERS

# What a model of each kind samples with when not told. 2D models (multi-plane denoising): a
# deterministic solver leaves the planes' disagreement as voxel-scale roughness; DDIM with
# eta = 1 lets the later steps mend it, and one axis a step (cycle) did as well as fusing all
# three at a third of the cost (docs/from-2d.md).
# A distilled student (``mdiff.distill``) walks its own timesteps by deterministic DDIM, as it
# was distilled to, with the guidance in its weights: its steps and guidance are fixed.
KIND_DEFAULTS = {3: {"sampler": "dpm++", "eta": 0.0}, 2: {"sampler": "ddim", "eta": 1.0,
                                                          "fuse": "cycle"},
                 "student": {"sampler": "ddim", "eta": 0.0}}
TILINGS = ("auto", "whole", "windows")
OVERLAP, WINDOWS, SLICES = 0.25, 8, 64  # defaults of the request's None
# The guidance where each volume's composition is drawn (no target): at 1 the generated
# fractions follow the drawn ones with a slope of 0.59-0.74 and the set varies too little
# (docs/composition.md); with fractions held, 1 was re-measured and still judged a little worse
# (benchmarks/results/README.md, "Guidance 1 for drawn compositions"). At a target, and for
# drawn windows, 1.
DRAWN_GUIDANCE = 1.4


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know of a model (``Generator.facts``)."""

    dims: int  # 3: cubes; 2: a 2D model sampled by multi-plane denoising
    phases: int
    patch: int  # side of the training cube (or square)
    factor: int  # every side a multiple of this (the U-Net's down-sampling)
    condition: str  # "none" or a descriptor of descriptors.kinds()
    mean_input: bool
    objective: str
    timesteps: int
    activation_bytes: int  # per voxel the network sees at once
    feature_bytes: int = 0  # per voxel of one full-resolution feature map (fp32)
    image_fractions: tuple = None  # a 2D model's training images' composition
    device: str = "cpu"
    labels: tuple = None  # the phases' labels (what --targets names them by)
    # (K, k) descriptors of the training cubes a conditioned model draws from
    recorded: object = field(default=None, compare=False, repr=False)
    student: dict = field(default=None, compare=False)  # a distilled student's record


@dataclass(frozen=True)
class Plan:
    """A request as it will run. ``layout()`` is what samples.json records of the tiling."""

    count: int
    shape: tuple
    tiling: str  # whole, windows or planes
    periodic: bool
    batch: int
    sampler: str
    steps: int  # network-call steps (every step of the schedule for ddpm)
    eta: float  # None unless the sampler takes it
    variance: str
    seed: int
    first: int
    guidance: float
    drawn: str = None  # None, "per volume", "per window" or "per field"
    target: tuple = None  # the target descriptor vector (fractions first, normalised)
    profile: tuple = None  # (axis, [(position, fractions), ...]) of a graded target
    window: int = None  # by windows, and the windows a field's draws are made on
    overlap: float = None
    stride: int = None  # between window starts
    windows: int = None
    windows_per_call: int = None
    fuse: str = None
    slices: int = None
    match_fractions: list = None
    respaced: bool = True  # a re-spaced process of ``steps`` (False: the whole schedule)
    hold: bool = False  # each window's phase probabilities held to its condition's fractions
    transport: tuple = ()  # selection.TransportTarget of --targets deff/tau, met by selection
    tolerance: float = None  # a candidate meets a transport target within this share of it
    max_candidates: int = None  # candidates made at most for the transport targets
    baked_guidance: float = None  # a distilled student's guidance, in its weights (one branch)

    def but(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def layout(self):
        """The tiling and its geometry, as samples.json names them."""
        keys = {"whole": ("tiling", "periodic", "batch"),
                "windows": ("tiling", "periodic", "window", "overlap", "stride", "windows",
                            "windows_per_call", "batch"),
                "planes": ("tiling", "periodic", "fuse", "slices", "batch", "match_fractions")}
        values = asdict(self)
        return {k: values[k] for k in keys[self.tiling]}


def shape_of(facts, size):
    """(d, h, w): ``size`` None (the training cube), an int or three sides, each a positive
    multiple of the U-Net's down-sampling factor."""
    if size is None:
        size = facts.patch
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    sides = (int(size),) * 3 if not isinstance(size, (list, tuple)) else tuple(map(int, size))
    if len(sides) != 3 or any(s < 1 or s % facts.factor for s in sides):
        raise MdiffError(f"--size {' '.join(map(str, sides))}: give one side or three, each "
                         f"a positive multiple of {facts.factor}")
    return sides


def sampler_settings(facts, request):
    """(sampler, steps, eta) with the model kind's defaults where not given."""
    if facts.student is not None:
        return student_settings(facts, request)
    name = request.sampler or KIND_DEFAULTS[facts.dims]["sampler"]
    if name not in SAMPLERS:
        raise MdiffError(f"--sampler must be one of {tuple(SAMPLERS)}, got {name!r}")
    spec = SAMPLERS[name]
    if spec.steps is None:
        if request.steps is not None:
            raise MdiffError(f"--steps does not apply to --sampler {name}, which takes every "
                             "step of the schedule; use --sampler dpm++ or ddim for fewer "
                             "steps")
        steps = facts.timesteps
    else:
        steps = int(request.steps or spec.default_steps(facts.dims))
        if steps < 1:
            raise MdiffError("--steps must be at least 1")
    eta = None
    if "eta" in spec.options:
        eta = KIND_DEFAULTS[facts.dims]["eta"] if request.eta is None else float(request.eta)
    return name, steps, eta


def student_settings(facts, request):
    """A distilled student's (sampler, steps, eta): its own, and one line for another."""
    kind, steps = KIND_DEFAULTS["student"], int(facts.student["steps"])
    if request.sampler not in (None, kind["sampler"]):
        raise MdiffError(f"this is a distilled student: it samples with {kind['sampler']} over "
                         f"its own {steps} step(s), not --sampler {request.sampler}")
    if request.steps is not None and int(request.steps) != steps:
        raise MdiffError(f"this student was distilled to {steps} step(s); --steps "
                         f"{request.steps} needs another distillation (mdiff-distill --steps "
                         f"{request.steps})")
    if request.eta not in (None, 0, 0.0):
        raise MdiffError("a distilled student samples deterministically (--eta 0)")
    return kind["sampler"], steps, kind["eta"]


def draws_from_training(facts, request):
    """True where a request draws its compositions from the training cubes: a conditioned
    model given no target."""
    return (facts.condition != "none" and request.fractions is None
            and request.fractions_along is None and request.targets is None)


def tiling_for(facts, request, shape):
    """The tiling a request needs before memory has its say: a graded target conditions each
    window on its place, and a conditioned model without a target draws each window's
    composition in a volume larger than the training cube: both go by windows under auto.
    (Made whole, drawn compositions enter as a field of the windows' draws, at 2.5-2.9x the
    speed but with finer, more broken structure: benchmarks/results, "Drawn compositions
    made whole".)"""
    tiling = request.tiling or "auto"
    if tiling not in TILINGS:
        raise MdiffError(f"--tiling must be one of {TILINGS}, got {tiling!r}")
    if request.fractions_along is not None:
        if request.fractions is not None:
            raise MdiffError("give --fractions or --fractions-along, not both")
        if tiling == "whole":
            raise MdiffError("--fractions-along conditions each window on its place: use "
                             "--tiling windows (or auto)")
        return "windows"
    if draws_from_training(facts, request) and tiling == "auto" and facts.dims == 3 \
            and max(shape) > facts.patch:
        return "windows"
    return tiling


def drawn_as(facts, request, tiling, shape):
    """How drawn compositions enter: None (a target, or an unconditioned model), "per
    volume" (a volume of the training cube's size made whole), "per window" (each window of a
    larger volume its own draw) or "per field" (a larger volume made whole, its condition a
    field that blends the draws its windows would take: ``conditioning.drawn_field``)."""
    if not draws_from_training(facts, request):
        return None
    if tiling == "windows":
        return "per window"
    return "per field" if max(shape) > facts.patch else "per volume"


def guidance_for(request, drawn, facts=None):
    """The guidance scale the network calls apply: the request's, else DRAWN_GUIDANCE for
    per-volume draws, else 1; 1 for a distilled student, whose guidance is in its weights (one
    other than its own is refused)."""
    if facts is not None and facts.student is not None:
        baked = float(facts.student["guidance"])
        if request.guidance is not None and float(request.guidance) != baked:
            raise MdiffError(f"this student was distilled at guidance {baked:g}, which is in "
                             f"its weights; --guidance {request.guidance:g} needs another "
                             f"distillation (mdiff-distill --guidance {request.guidance:g})")
        return 1.0
    if request.guidance is not None:
        return float(request.guidance)
    return DRAWN_GUIDANCE if drawn == "per volume" else 1.0


def hold_for(facts, request):
    """Whether each window's phase probabilities are held to its condition's fractions (over
    a field, each cell's window to the field there): by default for a model conditioned on
    fractions with the x0 objective wherever a condition is given: on NMC, Berea and a coarse
    synthetic it brought the composition to the condition and won 4 verdicts over the three
    at no measurable cost (benchmarks/results/README.md, connectivity levers).
    ``hold_fractions`` False turns it off; True on a model that cannot is one line."""
    able = descriptors.leads_with_fractions(facts.condition) and facts.objective == "x0"
    if request.hold_fractions and not able:
        raise MdiffError("--hold-fractions needs a 3D model conditioned on fractions with the "
                         "x0 objective")
    return bool(able and request.hold_fractions is not False)


def split_transport(facts, request):
    """(the request with its descriptor targets alone, its transport targets): deff and tau
    in --targets are measured on candidates (``mdiff.selection``), not conditioned on."""
    try:
        rest, found = selection.split_targets(request.targets, facts.labels)
    except ValueError as exc:
        raise MdiffError(f"--targets: {exc}") from None
    return request.but(targets=rest), found


def check_conditions(facts, request):
    """One line for a condition the model cannot take; the target descriptor vector (the
    fractions normalised, values not given completed from the nearest training cube:
    ``descriptors.complete``) and the parsed profile."""
    target = profile = None
    kind = facts.condition
    composition = request.fractions is not None or request.fractions_along is not None
    if facts.dims == 2 and (composition or request.targets is not None
                            or request.guidance not in (None, 1)):
        raise MdiffError("this is a 2D model: --fractions, --fractions-along, --targets and "
                         "--guidance need a 3D model trained with --condition")
    if kind == "none" and (composition or request.targets is not None):
        raise MdiffError("this checkpoint was trained without --condition, so it cannot "
                         "generate at a target; train with --condition fractions (or "
                         "connectivity)")
    if request.guidance not in (None, 1) and kind == "none":
        raise MdiffError("--guidance needs a model trained with --condition fractions (or "
                         "connectivity)")
    if composition and not descriptors.leads_with_fractions(kind):
        raise MdiffError(f"--fractions and --fractions-along need a model conditioned on "
                         f"fractions; this one is conditioned on {kind}")
    given = {}
    if request.targets is not None:
        if request.fractions_along is not None:
            raise MdiffError("--targets with --fractions-along is not supported: a graded "
                             "volume's windows take the rest of their condition from the "
                             "training cubes nearest to their fractions")
        try:
            given = descriptors.parse_targets(request.targets, kind, facts.labels or ())
        except ValueError as exc:
            raise MdiffError(f"--targets: {exc}") from None
    if request.fractions is not None:
        try:
            fractions = descriptors.normalise_target(request.fractions, facts.phases)
        except ValueError as exc:
            raise MdiffError(f"--fractions: {exc}") from None
        if any(c < facts.phases for c in given):
            raise MdiffError("give the fractions by --fractions or by phi: in --targets, not "
                             "both")
        given.update(enumerate(fractions))
    if given:
        target = target_vector(facts, given)
    if request.fractions_along is not None:
        profile = request.fractions_along
        if all(isinstance(p, str) for p in profile):  # the command line's AXIS POS:F0,...
            try:
                profile = descriptors.parse_profile(profile[0], profile[1:], facts.phases)
            except ValueError as exc:
                raise MdiffError(f"--fractions-along: {exc}") from None
    return target, profile


def target_vector(facts, given):
    """The full target vector of {column: value}: the rest from the nearest training cube,
    the fractions not given scaled so that all of them sum to 1."""
    n = facts.phases
    k = descriptors.size(facts.condition, n)
    vector = list(descriptors.complete(facts.recorded, given) if len(given) < k
                  else (given[c] for c in range(k)))
    free = [c for c in range(n) if c not in given]
    rest = 1 - sum(vector[c] for c in range(n) if c in given)
    if not free:
        vector[:n] = descriptors.normalise_target(vector[:n], n)
    elif rest < 0:
        raise MdiffError("--targets: the fractions given sum to more than 1")
    else:
        total = sum(vector[c] for c in free)
        for c in free:
            vector[c] = rest * (vector[c] / total if total > 0 else 1 / len(free))
    return tuple(float(v) for v in vector)


def make_plan(facts, request, seed=None):
    """The one plan of ``request`` on a model of ``facts``; MdiffError, one line, for a
    request that is malformed or needs more memory than is free. ``seed`` None draws one
    when the request has none."""
    request, transport = split_transport(facts, request)
    target, profile = check_conditions(facts, request)
    sampler, steps, eta = sampler_settings(facts, request)
    count = int(request.count)
    if count < 1:
        raise MdiffError(f"-n {count}: nothing to generate; give at least 1 volume")
    shape = shape_of(facts, request.size)
    tiling = tiling_for(facts, request, shape)
    if facts.dims == 2:
        geometry = _planes(facts, request, tiling)
    else:
        geometry = _volume_geometry(facts, request, shape, tiling)
    tiling = geometry["tiling"]
    if profile is not None and tiling != "windows":
        raise MdiffError("--fractions-along needs a volume larger than the training cube")
    drawn = drawn_as(facts, request, tiling, shape) if facts.dims == 3 else None
    guidance = guidance_for(request, drawn, facts)
    small = tiling == "whole" and math.prod(shape) <= facts.patch ** 3
    batch = int(request.batch or default_batch(facts, count, shape, small,
                                               1 if guidance == 1 else 2))
    if batch < 1:
        raise MdiffError("the number of volumes and the batch size must be at least 1")
    if drawn == "per field":  # the windows whose draws the field blends
        geometry.update(window=facts.patch, overlap=OVERLAP if request.overlap is None
                        else float(request.overlap))
    if seed is None:
        seed = request.seed
    if seed is None:
        import torch

        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    plan = Plan(count=count, shape=shape, batch=batch, sampler=sampler, steps=steps, eta=eta,
                variance=request.variance, seed=int(seed), first=int(request.first),
                guidance=guidance, drawn=drawn, target=target,
                profile=profile, respaced=SAMPLERS[sampler].steps is not None,
                hold=hold_for(facts, request), transport=transport,
                **dict(zip(("tolerance", "max_candidates"), selection.check(
                    count, request.target_tolerance, request.max_candidates, transport))),
                baked_guidance=None if facts.student is None
                else float(facts.student["guidance"]), **geometry)
    check_plan_memory(facts, plan)
    return plan


def default_batch(facts, count, shape, small, branches):
    """Volumes a network call takes where the request names no batch: one for a volume
    larger than the training cube (its windows or whole pass fill the device), else up to 8.
    On a CPU fewer, split into equal batches, where a batch's full-resolution feature maps
    (``branches`` of them a volume under guidance) would reach glibc's heap ceiling: each map
    would then come from a fresh mapping, and refilling its pages costs kernel time on every
    layer of every step (benchmarks/results/README.md, "Speed at the default precision")."""
    if not small:
        return 1
    most = 8
    if facts.device == "cpu" and facts.feature_bytes:
        per_volume = branches * math.prod(shape) * facts.feature_bytes
        most = max(1, min(most, (runtime.HEAP_CEILING - 1) // per_volume))
        return -(-count // -(-count // most))
    return min(count, most)


def _volume_geometry(facts, request, shape, tiling):
    """The tiling of a 3D model's volume and, by windows, the windows' geometry."""
    from .tiling import Tiling

    if request.fuse is not None or request.slices is not None or request.free_fractions:
        raise MdiffError("--fuse, --slices and --free-fractions are for 2D models "
                         "(multi-plane denoising); this checkpoint is a 3D model")
    overlap = OVERLAP if request.overlap is None else float(request.overlap)
    windows = WINDOWS if request.windows is None else int(request.windows)
    if not 0 <= overlap < 1:
        raise MdiffError(f"--overlap must be in [0, 1), got {overlap}")
    if windows < 1:
        raise MdiffError("--windows must be at least 1")
    periodic = bool(request.periodic)
    if max(shape) <= facts.patch and not periodic:
        tiling = "whole"
    if facts.mean_input and max(shape) > facts.patch:
        if tiling == "whole":
            raise MdiffError(f"this model reads each cube's mean composition (mean_input), "
                             f"learned on cubes of {facts.patch}: a larger volume needs "
                             f"--tiling windows (or auto)")
        tiling = "windows"
    if tiling == "auto":
        need = memory_needed(facts, {"shape": shape, "tiling": "whole"}, int(request.batch
                                                                              or 1))
        free = runtime.free_memory(facts.device)
        tiling = "whole" if free is None or need <= free / 2 else "windows"
    geometry = {"tiling": tiling, "periodic": periodic}
    if tiling == "windows":
        if periodic and min(shape) < facts.patch:
            raise MdiffError(f"--periodic with windows needs every side at least the "
                             f"training cube's {facts.patch}; use --tiling whole")
        t = Tiling(shape, facts.patch, overlap, periodic, facts.factor)
        geometry.update(window=facts.patch, overlap=overlap, stride=t.stride, windows=len(t),
                        windows_per_call=windows)
    return geometry


def _planes(facts, request, tiling):
    """A 2D model's multi-plane settings (``mdiff.multiplane``)."""
    if tiling != "auto" or request.overlap is not None or request.windows is not None:
        raise MdiffError("this is a 2D model: it makes 3D volumes by multi-plane denoising, "
                         "slice by slice, so --tiling, --overlap and --windows do not apply "
                         "(--slices sets the images per network call)")
    fuse = request.fuse or KIND_DEFAULTS[2]["fuse"]
    if fuse not in FUSIONS:
        raise MdiffError(f"--fuse must be one of {', '.join(FUSIONS)}, got {fuse!r}")
    if fuse == "geo" and facts.objective != "x0":
        raise MdiffError("--fuse geo multiplies phase probabilities, which only the x0 "
                         "objective predicts; use --fuse cycle or mean")
    slices = SLICES if request.slices is None else int(request.slices)
    if slices < 1:
        raise MdiffError("--slices must be at least 1")
    hold = not request.free_fractions and facts.image_fractions is not None \
        and facts.objective == "x0"
    return {"tiling": "planes", "periodic": bool(request.periodic), "fuse": fuse,
            "slices": slices,
            "match_fractions": [round(float(f), 6) for f in facts.image_fractions]
            if hold else None}


def memory_needed(facts, plan, n, branches=1):
    """Bytes a batch of n volumes needs beyond the model: the samplers' volume-sized buffers
    (x_t, x̂_0, ε̂, the next x_t, noise), the fused x̂_0 and its weights with windows, and the
    network's activations on what it sees at once (``branches`` times: 2 under guidance).
    ``plan``: a Plan or a dict with its shape, tiling (and windows, slices)."""
    get = plan.get if isinstance(plan, dict) else lambda k, d=None: getattr(plan, k, d)
    shape, tiling = get("shape"), get("tiling")
    voxels, c = math.prod(shape), facts.phases
    if tiling == "planes":  # the network sees ``slices`` of the largest slices
        d, h, w = shape
        seen = max(get("slices"), n) * max(d * h, d * w, h * w)
        return n * voxels * c * 4 * 7 + seen * c * 4 * 3 + seen * facts.activation_bytes
    buffers = n * voxels * c * 4 * (6 if tiling == "windows" else 5) + voxels * 4
    seen = (n * min(get("windows_per_call") or 1, get("windows") or 1) * facts.patch ** 3
            if tiling == "windows" else n * voxels)
    return buffers + branches * seen * facts.activation_bytes


def check_plan_memory(facts, plan):
    """One line (MdiffError) where ``plan`` would not fit the device's free memory; guidance
    ≠ 1 runs both branches in one network call, twice the activations."""
    branches = 1 if plan.guidance == 1 else 2
    if plan.tiling == "planes":
        advice = "give a smaller --size, --batch or --slices"
    else:
        advice = "give a smaller --size or --batch" + (
            ", or --tiling windows" if plan.tiling == "whole" else "")
    runtime.check_memory(memory_needed(facts, plan, plan.batch, branches), facts.device,
                         advice, what=f"sampling {'x'.join(map(str, plan.shape))} voxels")

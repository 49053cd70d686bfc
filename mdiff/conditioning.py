"""What a conditioned model is conditioned on while it samples, and guidance.

A condition is what ``mdiff.descriptors.condition`` makes: (N, k + 1), the descriptor vector
and a 1 that says it is given. Here: a target for every volume, each volume's draw from the
descriptors recorded over the training cubes (``per_volume``), each window's draw in a volume
larger than the training cube (``drawn_windows``), a graded target at each window's place
(``graded``), the same windows' draws blended into one field over a volume made whole
(``drawn_field``), and classifier-free guidance (Ho & Salimans 2022) as a wrapper of the model
callable (``guided``). ``for_batch`` picks among them from the plan.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import descriptors
from .multiplane import hold_probabilities
from .tiling import Tiling, bump

GOLDEN = (math.sqrt(5) - 1) / 2  # the step of the low-discrepancy draws of conditions


def at_quantiles(recorded, quantiles):
    """The conditions of the training cubes at ``quantiles`` (in [0, 1]) of their descriptors
    ranked by the first column."""
    ranked = torch.argsort(recorded[:, 0], stable=True)
    picks = ranked[(quantiles * len(ranked)).long().clamp(0, len(ranked) - 1)]
    return descriptors.condition(recorded[picks])


def per_volume(recorded, n, seed, first=0, target=None):
    """(n, k + 1) conditions of volumes first, ..., first + n − 1: the ``target`` for all, or
    each volume's drawn from the training cubes by (seed, i) alone.

    The draws follow a golden-ratio sequence over the training cubes ranked by their first
    descriptor, started at a point drawn from the seed: any n consecutive volumes cover its
    quantiles evenly (independent draws left small sets off the training mean)."""
    if target is not None:
        return descriptors.condition(torch.tensor([target] * n))
    start = torch.rand((), generator=torch.Generator().manual_seed(seed + 7)).item()
    return at_quantiles(recorded, torch.tensor([(start + (first + i) * GOLDEN) % 1.0
                                                for i in range(n)], dtype=torch.float64))


def _tiling(plan, factor):
    return Tiling(plan.shape, plan.window, plan.overlap, plan.periodic, factor)


def graded(plan, factor, volumes, recorded=None):
    """Per network call of a step over windows, the conditions of its windows (window-major,
    ``volumes`` alike): the graded target at each window's centre voxel, placed from 0 (the
    axis's first voxel) to 1 (its last). A descriptor beyond fractions takes its other values
    from the training cube (a row of ``recorded``) nearest to each window's fractions."""
    axis, points = plan.profile
    k = "zyx".index(axis)
    tiling = _tiling(plan, factor)
    length = plan.shape[k]
    out = []
    for group in tiling.batches(plan.windows_per_call):
        rows = []
        for corner in group:
            centre = (corner[k] + (tiling.sides[k] - 1) / 2) % length / max(length - 1, 1)
            row = descriptors.profile_at(points, centre)
            if recorded is not None and recorded.shape[1] > len(row):
                row = descriptors.complete(recorded, dict(enumerate(row)))
            rows += [row] * volumes
        out.append(descriptors.condition(torch.tensor(rows)))
    return out


def _window_weights(tiling):
    """Per axis, (windows, voxels) fusion weights of each window's position along it."""
    out = []
    for k, length in enumerate(tiling.shape):
        w = torch.zeros(len(tiling.starts[k]), length)
        for j, start in enumerate(tiling.starts[k]):
            w[j, (torch.arange(tiling.sides[k]) + start) % length] = bump(tiling.sides[k])
        out.append(w)
    return out


def window_draws(tiling, recorded, patch, seed, i):
    """(windows, k + 1) conditions of volume i's windows, in ``Tiling.corners()`` order: white
    noise on cells of a quarter of the training cube's side (by (seed, i) alone), summed over
    each window's voxels with its fusion weights and normalised to a standard normal, picks
    the training cube at that quantile."""
    grain = max(1, patch // 4)
    sums = []  # per axis: (window positions, cells) fusion weights, each row of norm 1
    for k, length in enumerate(tiling.shape):
        counts = torch.zeros(len(tiling.starts[k]), math.ceil(length / grain))
        for j, start in enumerate(tiling.starts[k]):
            voxels = (torch.arange(tiling.sides[k]) + start) % length
            counts[j].index_add_(0, voxels // grain, bump(tiling.sides[k]))
        sums.append(counts / counts.norm(dim=1, keepdim=True))
    noise = torch.randn([m.shape[1] for m in sums], generator=torch.Generator()
                        .manual_seed(seed * 1_000_003 + i + 11))
    z = torch.einsum("ai,bj,ck,ijk->abc", *sums, noise).reshape(-1)  # corners() order
    return at_quantiles(recorded, 0.5 * (1 + torch.erf(z / math.sqrt(2))))


def drawn_windows(plan, factor, recorded, patch, volumes):
    """Per network call of a step over windows, the conditions of its windows (window-major,
    then ``volumes`` — their indices — in order): each window its own draw from the training
    cubes, neighbouring windows' draws correlated as the voxels they share in the fused volume.

    A volume is a field of white noise on cells of a quarter of the training cube's side (by
    (seed, i) alone); a window's value is that noise summed over its voxels with its fusion
    weights (``tiling.bump``), normalised to a standard normal, and picks the training cube at
    that quantile. Each window's composition then follows the training cubes', and the whole
    volume's varies as a real volume of its size does where cubes that do not overlap are
    independent (docs/composition.md)."""
    tiling = _tiling(plan, factor)
    draws = {i: window_draws(tiling, recorded, patch, plan.seed, i) for i in volumes}
    out, w = [], 0
    for group in tiling.batches(plan.windows_per_call):
        rows = []
        for _ in group:
            rows += [draws[i][w] for i in volumes]
            w += 1
        out.append(torch.stack(rows))
    return out


@dataclass(frozen=True)
class ConditionField:
    """Conditions that vary over a volume made whole: ``rows`` (N, A, B, C, k + 1), the
    conditions of each volume's windows (A, B, C along z, y, x), and ``weights``, per axis an
    (windows along it, cells) matrix whose columns sum to 1: a cell's condition is the mix of
    the windows' with the product of the three weights (the windows' fusion weights there).
    Cells are ``cell`` voxels wide (the U-Net's down-sampling factor, so that every level's
    side is a multiple of the grid's); ``window`` (in cells) and ``periodic`` are what holding
    its fractions needs."""

    rows: object
    weights: tuple
    cell: int
    window: int
    periodic: bool = False

    def mix(self, values):
        """(N, A, B, C, F) values of the windows → (N, F, X, Y, Z) mixed cell by cell, one
        axis at a time (the full (windows, cells) weights are never formed)."""
        w0, w1, w2 = (w.to(values.device, values.dtype) for w in self.weights)
        values = torch.einsum("nabcf,cz->nabzf", values, w2)
        values = torch.einsum("nabzf,by->nayzf", values, w1)
        return torch.einsum("nayzf,ax->nxyzf", values, w0).movedim(-1, 1)

    def embedded(self, embed):
        """What the U-Net reads (``UNet.forward``): ``embed`` ((M, k + 1) → (M, E)) of every
        window's condition, mixed into (N, E, X, Y, Z)."""
        rows = self.rows
        out = embed(rows.reshape(-1, rows.shape[-1]))
        return self.mix(out.reshape(*rows.shape[:-1], -1))

    def fractions(self, phases):
        """(N, phases, X, Y, Z): each cell's mix of the windows' fractions."""
        return self.mix(self.rows[..., :phases])

    def to(self, device):
        return replace(self, rows=self.rows.to(device))

    def with_unconditional(self):
        """The field over twice the volumes, the second half not given (the unconditional
        branch of guidance)."""
        return replace(self, rows=torch.cat([self.rows, torch.zeros_like(self.rows)]))

    def hold(self, p, rounds=3):
        """Phase probabilities p (N, C, D, H, W) scaled so that their mean over the window
        round each cell (sin² weights, the windows' fusion weights) is the field's fractions
        there, every voxel renormalised after each scaling: each window's hold
        (``multiplane.hold_probabilities``) made local."""
        from .unet import to_grid

        target = self.fractions(p.shape[1]).to(p.device, p.dtype)
        for _ in range(rounds):
            cells = F.avg_pool3d(p, self.cell)  # (N, C, *grid) cell means
            mean = self._around(cells).clamp_min(1e-8)
            p = p * to_grid(target / mean, p.shape[2:], self.periodic)
            p = p / p.sum(1, keepdim=True).clamp_min(1e-8)
        return p

    def _around(self, cells):
        """The sin²-weighted mean over the window round each cell, axis by axis; cut at
        the faces (the weights renormalised) unless periodic."""
        kernel = bump(self.window).to(cells.device, cells.dtype)[None, None]
        left, right = (self.window - 1) // 2, self.window // 2
        for axis in range(2, cells.ndim):
            n = cells.shape[axis]
            moved = cells.movedim(axis, -1)
            flat = moved.reshape(-1, 1, n)
            if self.periodic:
                out = F.conv1d(flat[..., torch.arange(-left, n + right) % n], kernel) \
                    / kernel.sum()
            else:
                ones = torch.ones_like(flat[:1])
                out = F.conv1d(F.pad(flat, (left, right)), kernel) \
                    / F.conv1d(F.pad(ones, (left, right)), kernel)
            cells = out.reshape(moved.shape).movedim(-1, axis)
        return cells


def drawn_field(plan, factor, recorded, patch, volumes):
    """A ``ConditionField`` for ``volumes`` (their indices) of a volume made whole: the draws
    the windows of ``plan.overlap`` would take (``window_draws``), mixed in each cell with
    each window's fusion weight there (its mean over the cell's voxels), so that the
    composition varies from place to place as it does by windows, in one network pass
    instead of one a window."""
    tiling = Tiling(plan.shape, patch, plan.overlap, plan.periodic, factor)
    weights = []
    for w in _window_weights(tiling):
        w = w.reshape(len(w), -1, factor).mean(2)
        weights.append(w / w.sum(0, keepdim=True))
    rows = [window_draws(tiling, recorded, patch, plan.seed, i)
            .reshape(*(len(s) for s in tiling.starts), -1) for i in volumes]
    return ConditionField(torch.stack(rows), tuple(weights), factor, max(1, patch // factor),
                          plan.periodic)


def for_batch(plan, recorded, factor, patch, start, count):
    """The conditions of volumes plan.first + start, ... (``count`` of them): None (no
    condition), a (count, k + 1) tensor, or a list of them, one per network call of a step
    over windows (``Tiling.batches`` order)."""
    if recorded is None and plan.target is None and plan.profile is None:
        return None  # an unconditioned model
    if plan.profile is not None:
        return graded(plan, factor, count, recorded)
    if plan.drawn == "per window":
        first = plan.first + start
        return drawn_windows(plan, factor, recorded, patch, range(first, first + count))
    if plan.drawn == "per field":
        first = plan.first + start
        return drawn_field(plan, factor, recorded, patch, range(first, first + count))
    return per_volume(recorded, count, plan.seed, plan.first + start, plan.target)


def guided(model_fn, cond, guidance=1.0, hold=False):
    """The model callable for a batch of volumes with conditions ``cond`` (one row per
    volume; the network may see k windows of each, window-major, as ``mdiff.tiling`` batches
    them; a list with one condition per window group, for each network call of a step in
    turn; or a ``ConditionField`` over volumes made whole): conditional, or with
    classifier-free guidance out = out_uncond + w (out_cond − out_uncond), both branches in
    one call.

    ``hold`` (x0 objective, a condition that leads with fractions): each window's phase
    probabilities are scaled to its own condition's fractions at every call
    (``multiplane.hold_probabilities``, the 3D form of a 2D model's fraction matching; over a
    field, each cell's window to the field there: ``ConditionField.hold``), returned as
    log-probabilities, which the x0 objective's softmax reads back as those probabilities."""
    if cond is None:
        return model_fn
    field = cond if isinstance(cond, ConditionField) else None
    per_call = cond if isinstance(cond, list) else [cond]
    calls = [0]

    def model(x, t, *extra, group=None):
        if group is None:
            group = calls[0]
            calls[0] += 1
        c = per_call[group % len(per_call)].to(x.device)
        if field is None:
            c = c.repeat(len(x) // len(c), 1)
        if guidance == 1:
            out = model_fn(x, t, *extra, cond=c)
        else:
            both = [None if e is None else torch.cat([e, e]) for e in extra]
            out = model_fn(torch.cat([x, x]), torch.cat([t, t]), *both,
                           cond=c.with_unconditional() if field is not None
                           else torch.cat([c, torch.zeros_like(c)]))
            cond_out, plain = out.chunk(2)
            out = plain + guidance * (cond_out - plain)
        if hold:
            p = torch.softmax(out.float(), dim=1)
            if field is not None:  # drawn: given everywhere
                p = c.hold(p)
            else:
                # rows whose condition is not given (dropped, as distillation feeds some)
                # keep their own probabilities: there are no fractions to hold them to
                given = c[:, -1] > 0
                if bool(given.all()):
                    p = hold_probabilities(p, c[:, :out.shape[1]])
                elif bool(given.any()):
                    p = p.clone()
                    p[given] = hold_probabilities(p[given], c[given, :out.shape[1]])
            out = torch.log(p.clamp_min(1e-12))
        return out

    # the callable of window group k of a step (``mdiff.tiling``), whatever was called before:
    # processes that share a step's windows out each call only their own groups
    model.for_group = lambda k: lambda x, t, *extra: model(x, t, *extra, group=k)
    return model

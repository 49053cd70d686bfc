"""Drawn compositions of a volume made whole: a field of conditions (``conditioning.
drawn_field``) read by the U-Net at every level (``unet.to_grid``), its fractions held window by
window round each cell (``ConditionField.hold``). Checked against brute-force sums."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mdiff
from mdiff import conditioning, descriptors
from mdiff.cli import sample_main
from mdiff.config import PRESETS
from mdiff.tiling import Tiling
from mdiff.unet import UNet, to_grid

PINNED = Path(__file__).parent / "pin" / "tiny3d.pt"


def _tiny(periodic=False):
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny"].unet, 16).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised outputs would hide the condition
            p.add_(0.05 * torch.randn_like(p))
    model.set_periodic(periodic)
    return model


def _field(rows, grid, periodic=False, cell=2, window=8):
    """A ConditionField of rows (N, A, B, C, k + 1) with random mixing weights."""
    gen = torch.Generator().manual_seed(1)
    weights = []
    for windows, cells in zip(rows.shape[1:4], grid):
        w = torch.rand(windows, cells, generator=gen)
        weights.append(w / w.sum(0, keepdim=True))
    return conditioning.ConditionField(rows, tuple(weights), cell, window, periodic)


@pytest.mark.parametrize("periodic", [False, True])
def test_a_field_of_one_condition_is_its_condition_vector(periodic):
    model = _tiny(periodic)
    x, t = torch.randn(2, 3, 32, 16, 24), torch.tensor([30, 80])
    cond = descriptors.condition(torch.tensor([[0.3, 0.5, 0.2], [0.6, 0.2, 0.2]]))
    with torch.no_grad():
        plain = model(x, t, cond=cond)
        for grid in ((16, 8, 12), (4, 2, 3)):  # the coarsest level's cells, or coarser
            rows = cond[:, None, None, None].expand(-1, 3, 2, 2, -1)
            assert torch.allclose(model(x, t, cond=_field(rows, grid)), plain, atol=1e-5)
        rows = cond[:, None, None, None].repeat(1, 2, 1, 1, 1)
        rows[:, 1] = descriptors.condition(
            torch.tensor([[0.1, 0.1, 0.8]] * 2))[:, None, None]
        assert not torch.allclose(model(x, t, cond=_field(rows, (16, 8, 12))), plain,
                                  atol=1e-3)


def test_a_field_mixes_the_embeddings_of_its_conditions_cell_by_cell():
    model = _tiny()
    rows = descriptors.condition(torch.from_numpy(
        np.random.default_rng(2).dirichlet((3, 2, 2), 2 * 3 * 2 * 4)).float())
    field = _field(rows.reshape(2, 3, 2, 4, 4), (5, 4, 6))
    with torch.no_grad():
        got = field.embedded(model.embed_condition)
        each = model.embed_condition(rows).reshape(2, 3, 2, 4, -1).double()
    w0, w1, w2 = (w.double() for w in field.weights)
    want = torch.einsum("ax,by,cz,nabce->nexyz", w0, w1, w2, each)
    assert got.shape == (2, each.shape[-1], 5, 4, 6)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_to_grid_keeps_constants_and_wraps_a_periodic_field():
    field = torch.rand(2, 3, 4, 5, 3, dtype=torch.float64)
    size = (8, 20, 6)
    wrapped = to_grid(field, size, periodic=True)
    # shifting the field by a cell shifts the periodic interpolation by a cell's voxels
    shifted = to_grid(torch.roll(field, 1, dims=3), size, periodic=True)
    assert torch.allclose(shifted, torch.roll(wrapped, 4, dims=3))
    closed = to_grid(field, size)
    # away from the faces both are the same trilinear interpolation
    assert torch.allclose(closed[:, :, 1:-1, 2:-2, 1:-1], wrapped[:, :, 1:-1, 2:-2, 1:-1])
    assert not torch.allclose(closed, wrapped)
    const = torch.full((1, 2, 3, 3, 3), 0.25)
    assert torch.allclose(to_grid(const, (12, 6, 9), periodic=True), torch.full((), 0.25))


def _brute_field(tiling, draws, factor):
    """Each cell's condition: the windows' draws weighted by the mean over the cell's voxels
    of each window's 3D fusion weight (its voxels wrapped round the faces)."""
    shape = tiling.shape
    grid = [s // factor for s in shape]
    weights = np.zeros((len(draws), *grid))
    for j, corner in enumerate(tiling.corners()):
        w = np.zeros(shape)
        block = tiling.weights.numpy().astype(np.float64)
        idx = np.ix_(*[(np.arange(side) + c) % s for c, side, s in
                       zip(corner, tiling.sides, shape)])
        w[idx] += block
        weights[j] = w.reshape(grid[0], factor, grid[1], factor, grid[2], factor).mean((1, 3, 5))
    total = weights.sum(0)
    return np.einsum("jxyz,jk->kxyz", weights, draws.numpy().astype(np.float64)) / total


@pytest.mark.parametrize("periodic", [False, True])
def test_the_field_blends_the_windows_draws_with_their_fusion_weights(periodic):
    recorded = torch.from_numpy(np.random.default_rng(1).dirichlet((4, 3, 2), 200)).float()
    shape, patch, factor = (24, 40, 32), 16, 2
    plan = mdiff.plan.Plan(count=2, shape=shape, tiling="whole", periodic=periodic, batch=2,
                           sampler="dpm++", steps=4, eta=None, variance="beta_tilde",
                           seed=3, first=5, guidance=1.0, drawn="per field", window=patch,
                           overlap=0.25)
    field = conditioning.for_batch(plan, recorded, factor, patch, 1, 2)
    assert isinstance(field, conditioning.ConditionField)
    tiling = Tiling(shape, patch, 0.25, periodic, factor)
    assert field.rows.shape == (2, *(len(s) for s in tiling.starts), 4)
    assert field.cell == factor and field.window == patch // factor
    assert field.periodic == periodic
    mixed = field.mix(field.rows)
    assert mixed.shape == (2, 4, 12, 20, 16)
    for k, i in enumerate((6, 7)):  # plan.first + start, ...: the windows' draws of volume i
        draws = conditioning.window_draws(tiling, recorded, patch, plan.seed, i)
        assert torch.equal(field.rows[k].reshape(-1, 4), draws)
        assert np.allclose(mixed[k].numpy(), _brute_field(tiling, draws, factor), atol=1e-5)
    # every cell's fractions are a blend of real training cubes': they sum to 1
    assert torch.allclose(field.fractions(3).sum(1), torch.ones(()), atol=1e-5)


def _brute_around(cells, window, periodic):
    """The sin²-weighted window mean round each cell, by loops."""
    from mdiff.tiling import bump

    w = bump(window).double().numpy()
    left = (window - 1) // 2
    out = np.zeros_like(cells)
    grid = cells.shape[2:]
    for cell in itertools.product(*map(range, grid)):
        num = np.zeros(cells.shape[:2])
        den = 0.0
        for offs in itertools.product(range(window), repeat=3):
            at = [c + o - left for c, o in zip(cell, offs)]
            if periodic:
                at = [a % g for a, g in zip(at, grid)]
            elif any(a < 0 or a >= g for a, g in zip(at, grid)):
                continue
            weight = w[offs[0]] * w[offs[1]] * w[offs[2]]
            num += weight * cells[(slice(None), slice(None), *at)]
            den += weight
        out[(slice(None), slice(None), *cell)] = num / den
    return out


@pytest.mark.parametrize("periodic", [False, True])
def test_holding_a_field_brings_each_window_round_a_cell_to_it(periodic):
    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(1, 2, 5, 3, 4, generator=gen, dtype=torch.float64)
    field = conditioning.ConditionField(None, (), 2, 4, periodic)
    assert np.allclose(field._around(cells).numpy(), _brute_around(cells.numpy(), 4, periodic))
    # a target smooth at the window's scale (wrapping round the faces), random probabilities
    z = torch.arange(6, dtype=torch.float32)
    target = (0.45 + 0.25 * torch.cos(2 * math.pi * z / 6))[:, None, None].expand(6, 6, 8)
    fractions = torch.stack([target, 0.6 * (1 - target), 0.4 * (1 - target)])[None]
    # one "window" a cell along z (identity weights), one along y and x
    rows = descriptors.condition(fractions[0, :, :, 0, 0].T).reshape(1, 6, 1, 1, 4)
    weights = (torch.eye(6), torch.ones(1, 6), torch.ones(1, 8))
    field = conditioning.ConditionField(rows, weights, 2, 4, periodic)
    assert torch.allclose(field.fractions(3), fractions)
    p = torch.softmax(torch.randn(1, 3, 12, 12, 16, generator=gen), 1)

    def error(rounds):
        held = field.hold(p, rounds)
        assert torch.allclose(held.sum(1), torch.ones(()), atol=1e-5)
        return float((field._around(F.avg_pool3d(held, 2)) - fractions).abs().max())

    errors = [error(r) for r in (0, 1, 3, 20)]
    assert errors[0] > 0.3 and errors == sorted(errors, reverse=True)
    assert errors[2] < 0.1 and errors[3] < 0.03  # a step's 3 rounds, and where they lead


def test_a_field_sets_the_composition_of_each_part_of_a_volume():
    # the pin's tiny model (400 steps): half a volume conditioned pore-rich, half pore-poor
    gen = mdiff.load(PINNED, device="cpu")
    plan = gen.plan(size=(16, 16, 64), count=1, steps=10, seed=1, tiling="whole")
    assert plan.drawn == "per field" and plan.hold
    rich, poor = (0.65, 0.2, 0.15), (0.15, 0.25, 0.6)
    rows = descriptors.condition(torch.tensor([rich, poor])).reshape(1, 1, 1, 2, 4)
    halves = torch.zeros(2, 32)
    halves[0, :16], halves[1, 16:] = 1, 1
    field = conditioning.ConditionField(rows, (torch.ones(1, 8), torch.ones(1, 8), halves),
                                        gen.model.factor, gen.patch // gen.model.factor)
    volumes = gen.make(plan, 0, 1, field)
    left, right = volumes[..., :24], volumes[..., 40:]  # away from the change of condition
    for part, want in ((left, rich), (right, poor)):
        got = [(part == label).mean() for label in (0, 127, 255)]
        assert np.abs(np.subtract(got, want)).max() < 0.1, (got, want)


def test_a_larger_volume_made_whole_draws_under_a_field(tmp_path):
    out = tmp_path / "big"
    assert sample_main([str(PINNED), str(out), "-n", "2", "--size", "32", "--steps", "3",
                        "--threads", "1", "--tiling", "whole"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["tiling"] == "whole" and info["condition"]["drawn"] == "per field"
    assert info["condition"]["field"] == {"window": 16, "overlap": 0.25, "cell": 2}
    assert info["condition"]["guidance"] == 1.0 and info["condition"]["hold_fractions"]
    gen = mdiff.load(PINNED, device="cpu")
    assert gen.plan(size=32).drawn == "per window"  # the default: by windows
    one = gen.sample(1, size=32, steps=3, seed=info["seed"], first=1, tiling="whole")
    made = mdiff.read_volume(out / info["files"][1])
    assert np.array_equal(one[0], made)  # volume i of a field: (seed, i) alone
    periodic = gen.sample(1, size=(32, 16, 32), steps=3, seed=0, periodic=True,
                          tiling="whole")
    assert periodic.shape == (1, 32, 16, 32)
    assert gen.plan(size=(32, 16, 32), periodic=True, tiling="whole").drawn == "per field"

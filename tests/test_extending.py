"""A new sampler, descriptor or figure is one row of a table: each is registered here, from the
test alone, and then works through the public commands and API (docs/extending.md)."""
import json

import numpy as np
import pytest
import torch

import mdiff
from mdiff import descriptors, figures, samplers, synth, write_volume
from mdiff.cli import metrics_main, sample_main
from mdiff.phases import PhaseMap
from mdiff.verdict import judge


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("ext") / "v.tif"
    write_volume(path, synth.generate((32, 32, 32), (0.5, 0.3, 0.2), (0, 127, 255), 2.0,
                                      seed=4))
    return path


@pytest.fixture(scope="module")
def ckpt(volume, tmp_path_factory):
    return mdiff.train([volume], preset="tiny", out=tmp_path_factory.mktemp("run"),
                       train={"steps": 3}, log=None)


@pytest.fixture
def registered():
    """Undo whatever a test adds to the tables."""
    before = (dict(samplers.SAMPLERS), dict(descriptors.DESCRIPTORS), dict(figures.FIGURES))
    yield
    for table, saved in zip((samplers.SAMPLERS, descriptors.DESCRIPTORS, figures.FIGURES),
                            before):
        table.clear()
        table.update(saved)


@torch.no_grad()
def first_order(denoise, diffusion, shape, generators, device="cpu", progress=None):
    """A toy sampler: the deterministic first-order step x_{t-1} = √ᾱ' x̂_0 + √(1 − ᾱ') ε̂,
    which is DDIM at η = 0 written out again."""
    x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    for i, step in enumerate(reversed(range(diffusion.num_timesteps))):
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x_start, eps = denoise(x, t)
        abar_prev = float(diffusion.alphas_cumprod_prev[step])
        x = abar_prev ** 0.5 * x_start + max(1 - abar_prev, 0.0) ** 0.5 * eps
        if progress:
            progress(i + 1, diffusion.num_timesteps)
    return x


def test_a_sampler_registered_from_outside_samples_through_api_and_cli(ckpt, tmp_path,
                                                                      registered):
    samplers.register("first-order", first_order, 7, help="a toy")
    gen = mdiff.load(ckpt, device="cpu")
    toy = gen.sample(2, sampler="first-order", seed=3, fractions=(0.5, 0.3, 0.2))
    ddim = gen.sample(2, sampler="ddim", steps=7, eta=0, seed=3, fractions=(0.5, 0.3, 0.2))
    assert np.array_equal(toy, ddim)  # its default steps came from its row
    assert sample_main([str(ckpt), str(tmp_path / "s"), "-n", "1", "--sampler",
                        "first-order"]) == 0
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["sampler"] == "first-order" and info["steps"] == 7 and info["eta"] is None


def test_a_descriptor_registered_from_outside_trains_draws_and_samples(volume, tmp_path,
                                                                      registered, capsys):
    descriptors.register("pore", lambda phases: 1,
                         lambda x: descriptors.fractions(x)[:, :1], help="phase 0's fraction")
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "run", train={"steps": 3},
                       unet={"condition": "pore"}, log=None)
    state = torch.load(ckpt, weights_only=True)
    assert state["descriptors"]["kind"] == "pore"
    values = state["descriptors"]["values"]
    vol = mdiff.read_volume(volume)
    assert values.shape[1] == 1 and values[0, 0] == pytest.approx((vol[:16, :16, :16] == 0)
                                                                  .mean(), abs=1e-6)
    gen = mdiff.load(ckpt, device="cpu")
    made = gen.generate(mdiff.SampleRequest(count=2, steps=2, seed=0))
    assert made.plan.drawn == "per volume" and len(made.conditions[0]) == 1
    assert any((values == torch.tensor(c)).all(1).any() for c in made.conditions)
    assert sample_main([str(ckpt), str(tmp_path / "o"), "--fractions", "0.5,0.3,0.2"]) == 2
    assert "conditioned on pore" in capsys.readouterr().err


def test_a_figure_registered_from_outside_is_measured_printed_and_judged(volume, registered,
                                                                        capsys):
    def pore_squared(vol, phase_map, i, periodic):
        return float((phase_map.lut(vol.dtype)[vol] == i).mean() ** 2)

    figures.register("phi_squared", "phi^2", "{:.4f}", measure=pore_squared,
                     help="the volume fraction squared")
    vol = mdiff.read_volume(volume)
    entry = mdiff.metrics.describe(vol)
    assert entry["phases"][0]["phi_squared"] == pytest.approx(
        entry["phases"][0]["volume_fraction"] ** 2)
    assert metrics_main([str(volume)]) == 0
    assert "phi^2" in capsys.readouterr().out
    pm = PhaseMap.from_volume(vol)
    cubes = [mdiff.metrics.describe(c, pm, 4) for c in mdiff.evaluate.grid_cubes(vol, 8)]
    result = judge(cubes[:32], {"half": cubes[32:]}, permutations=20)
    rows = [v for v in result["verdicts"] if v["figure"] == "phi_squared"]
    assert len(rows) == 3 and all(v["verdict"] in ("as real", "differs") for v in rows)

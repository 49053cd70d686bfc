"""Models conditioned on per-cube phase fractions (classifier-free guidance)."""
import json

import numpy as np
import pytest
import torch

import mdiff
from mdiff import descriptors, metrics, synth, write_volume
from mdiff.cli import sample_main, train_main
from mdiff.config import PRESETS, UNetConfig
from mdiff.phases import PhaseMap
from mdiff.request import SampleRequest

QUIET = {"log": None}


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("cond") / "v.tif"
    write_volume(path, synth.generate((32, 32, 32), (0.5, 0.3, 0.2), (0, 127, 255), 2.0,
                                      seed=4))
    return path


@pytest.fixture(scope="module")
def conditioned(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return mdiff.train([volume], preset="tiny", out=out, unet={"condition": "fractions"},
                       train={"steps": 4}, **QUIET)


def test_descriptors_equal_the_metrics_fractions(volume):
    vol = mdiff.read_volume(volume)
    pm = PhaseMap.from_volume(vol)
    cubes = [vol[:16, :16, :16], vol[16:, 8:24, 3:19]]
    x = torch.stack([pm.encode(c) for c in cubes])
    got = descriptors.fractions(x).numpy()
    for cube, row in zip(cubes, got):
        want = [p["volume_fraction"] for p in metrics.describe(cube, pm, 2)["phases"]]
        assert row == pytest.approx(want, abs=1e-6)


def test_condition_encoding_and_dropout_share(conditioned):
    cond = descriptors.condition(torch.tensor([[0.2, 0.8], [0.5, 0.5]]),
                                 torch.tensor([True, False]))
    assert cond.numpy() == pytest.approx(np.array([[0.2, 0.8, 1.0], [0.0, 0.0, 0.0]]))


def test_training_batches_drop_the_condition_at_the_cond_drop_share(volume):
    from mdiff.training import draw_batch, prepare

    run = prepare([volume], None, False, "tiny", "unused", False, None, None,
                  {"cond_drop": 0.25, "batch_size": 4}, None, lambda text: None)
    flags = torch.cat([draw_batch(run, 100, step, range(4), "cpu").kwargs["cond"][:, -1]
                       for step in range(300)])
    assert set(flags.tolist()) == {0.0, 1.0}
    assert (flags == 0).float().mean().item() == pytest.approx(0.25, abs=0.04)
    batch = draw_batch(run, 100, 7, range(4), "cpu")
    kept = batch.kwargs["cond"][:, -1] == 1
    assert torch.allclose(batch.kwargs["cond"][kept, :-1],
                          descriptors.fractions(batch.x_start)[kept])


def test_the_checkpoint_records_the_training_distribution(conditioned, volume):
    state = torch.load(conditioned, weights_only=True)
    values = state["descriptors"]["values"].numpy()
    assert state["descriptors"]["kind"] == "fractions" and values.shape[1] == 3
    assert values.sum(axis=1) == pytest.approx(np.ones(len(values)), abs=1e-5)
    vol = mdiff.read_volume(volume)
    assert values[0] == pytest.approx([(vol[:16, :16, :16] == v).mean() for v in (0, 127, 255)])


def test_drawn_conditions_depend_on_seed_and_index_and_cover_the_quantiles(conditioned):
    from mdiff.conditioning import per_volume

    recorded = torch.from_numpy(np.random.default_rng(0).dirichlet((4, 3, 2), 500)).float()
    every = per_volume(recorded, 40, seed=5)
    assert torch.equal(per_volume(recorded, 7, seed=5, first=11), every[11:18])
    assert not torch.equal(per_volume(recorded, 40, seed=6), every)
    assert torch.all(every[:, -1] == 1)  # "given" flag
    # the generator draws from its checkpoint's record the same way
    gen = mdiff.load(conditioned, device="cpu")
    assert torch.equal(gen.conditions(5, seed=5), per_volume(gen.record.descriptors, 5, 5))
    # any 20 consecutive draws: their first fractions' ranks among the training cubes within
    # 1.5/20 of evenly spread (a golden-ratio sequence's gaps are at most ~1.6/n; independent
    # draws miss by 0.2-0.3, the Kolmogorov distance of 20 uniforms)
    train = np.sort(recorded[:, 0].numpy())
    for first in (0, 13):
        drawn = per_volume(recorded, 20, seed=5, first=first)[:, 0].numpy()
        ranks = np.searchsorted(train, drawn) / len(train)
        assert np.abs(np.sort(ranks) - (np.arange(20) + 0.5) / 20).max() < 1.5 / 20


def test_conditioned_model_changes_its_output_with_the_condition(conditioned):
    gen = mdiff.load(conditioned, device="cpu")
    # the output layer of the condition embedding starts at zero: after training it is not
    assert gen.model.cond_embed[-1].weight.abs().sum() > 0
    x, t = torch.randn(2, 3, 16, 16, 16), torch.tensor([500, 500])
    a = gen.model(x, t, cond=descriptors.condition(torch.tensor([[0.8, 0.1, 0.1]] * 2)))
    b = gen.model(x, t, cond=descriptors.condition(torch.tensor([[0.1, 0.1, 0.8]] * 2)))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ddpm"])
def test_conditioned_sampling_with_every_sampler(conditioned, sampler):
    gen = mdiff.load(conditioned, device="cpu")
    steps = None if sampler == "ddpm" else 3
    drawn = gen.sample(2, sampler=sampler, steps=steps, seed=1)
    assert drawn.shape == (2, 16, 16, 16)
    again = gen.sample(2, sampler=sampler, steps=steps, seed=1, batch=1)
    assert np.array_equal(drawn, again)  # volume i depends on (seed, i) alone, condition too
    target = gen.sample(1, sampler=sampler, steps=steps, seed=1, fractions=(0.2, 0.3, 0.5),
                        guidance=2.0)
    assert set(np.unique(target)) <= {0, 127, 255}


def test_conditioned_sampling_in_windows_and_periodic(conditioned):
    gen = mdiff.load(conditioned, device="cpu")
    for tiling, periodic in (("windows", False), ("windows", True), ("whole", True)):
        vol = gen.sample(1, size=32, steps=2, seed=0, tiling=tiling, periodic=periodic,
                         fractions=(0.5, 0.3, 0.2), guidance=1.5)
        assert vol.shape == (1, 32, 32, 32)


def test_a_larger_volume_without_target_draws_each_window(conditioned, tmp_path):
    from mdiff.conditioning import drawn_windows

    gen = mdiff.load(conditioned, device="cpu")
    recorded = torch.from_numpy(np.random.default_rng(1).dirichlet((4, 3, 2), 300)).float()
    plan = gen.plan(size=32, tiling="windows", seed=4)

    def draws(plan, volumes):
        return torch.cat(drawn_windows(plan, gen.model.factor, recorded, gen.patch, volumes))

    rows = draws(plan, [2, 3])  # window-major: window w of volume 2, of volume 3, w + 1...
    assert rows.shape == (2 * plan.windows, 4)
    # every window's condition is a training cube's, and volume i's depend on (seed, i) alone
    assert all((recorded == row[:3]).all(1).any() and row[3] == 1 for row in rows)
    alone = draws(plan, [3])
    assert torch.equal(rows[1::2], alone) and not torch.equal(rows[0::2], alone)
    assert not torch.equal(alone, draws(plan.but(seed=5), [3]))
    both = gen.generate(SampleRequest(count=2, size=32, steps=2, seed=4, tiling="windows"))
    assert both.plan.tiling == "windows" and both.plan.drawn == "per window"
    assert both.conditions is None  # one per window, not per volume
    assert np.array_equal(gen.sample(1, size=32, steps=2, seed=4, first=1,
                                     tiling="windows")[0], both.volumes[1])
    assert gen.plan(size=32, tiling="whole").drawn == "per field"
    assert gen.plan(steps=2).drawn == "per volume"
    assert sample_main([str(conditioned), str(tmp_path / "o"), "-n", "1", "--size", "32",
                        "--steps", "2", "--tiling", "windows"]) == 0
    info = json.loads((tmp_path / "o" / "samples.json").read_text())
    assert info["tiling"] == "windows" and info["condition"]["drawn"] == "per window"


def test_drawn_windows_vary_like_cubes_and_whole_volumes_like_larger_cubes(conditioned):
    # each window's first-phase fraction follows the training cubes'; a volume four training
    # cubes long varies in its mean composition about as (1/4)^1.5 of a cube's sd (windows
    # that do not overlap are independent, neighbours correlate; 0.7 of it here, where the
    # windows' plain mean stands in for the fused volume's): drawing all of a volume's
    # windows from one low-discrepancy block (as before) gave 0.15 of it
    from mdiff.conditioning import drawn_windows

    gen = mdiff.load(conditioned, device="cpu")
    recorded = torch.from_numpy(np.random.default_rng(1).dirichlet((4, 3, 2), 500)).float()
    plan = gen.plan(size=64, tiling="windows", seed=0)
    volumes = 120
    rows = torch.cat(drawn_windows(plan, gen.model.factor, recorded, gen.patch,
                                   range(volumes)))[:, 0]
    rows = rows.view(-1, volumes)  # (windows, volumes)
    cubes = recorded[:, 0]
    assert rows.mean().item() == pytest.approx(cubes.mean().item(), abs=0.01)
    assert rows.std().item() == pytest.approx(cubes.std().item(), rel=0.1)
    ratio = rows.mean(0).std().item() / (cubes.std().item() * (16 / 64) ** 1.5)
    assert 0.5 < ratio < 1.5
    first, far = rows[0], rows[len(rows) - 1]  # corner windows 48 voxels apart
    assert abs(np.corrcoef(first, far)[0, 1]) < 0.3


def test_guidance_one_is_one_network_call_and_mixes_otherwise(conditioned):
    from mdiff.conditioning import guided

    gen = mdiff.load(conditioned, device="cpu")
    cond = descriptors.condition(torch.tensor([[0.6, 0.2, 0.2]]))
    calls = []
    plain = gen.model_fn

    def counted(x, t, *e, cond=None):
        calls.append(len(x))
        return plain(x, t, *e, cond=cond)

    x, t = torch.randn(1, 3, 16, 16, 16), torch.tensor([300])
    one = guided(counted, cond, 1.0)(x, t)
    assert calls == [1]
    w = guided(counted, cond, 3.0)(x, t)
    assert calls == [1, 2]  # both branches in one call
    uncond = plain(x, t, cond=torch.zeros(1, 4))
    assert torch.allclose(w, uncond + 3.0 * (one - uncond), atol=1e-5)


def test_sample_cli_targets_and_records_them(conditioned, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample_main([str(conditioned), str(out), "-n", "2", "--steps", "2",
                        "--fractions", "3,2,1", "--guidance", "2"]) == 0
    info = json.loads((out / "samples.json").read_text())["condition"]
    assert info["target"] == [3, 2, 1] and info["guidance"] == 2
    assert info["per_volume"][0] == pytest.approx([0.5, 1 / 3, 1 / 6])


@pytest.mark.parametrize("args,expected", [
    (["--fractions", "0.5,0.5"], "2 fractions for a model of 3 phases"),
    (["--fractions=-1,1,1"], "must be >= 0"),
])
def test_bad_fractions_are_one_line(conditioned, tmp_path, capsys, args, expected):
    assert sample_main([str(conditioned), str(tmp_path / "o")] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert not (tmp_path / "o").exists()


def test_an_unconditioned_checkpoint_refuses_targets_and_samples_as_before(volume, tmp_path,
                                                                            capsys):
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "plain", train={"steps": 2},
                       unet={"condition": "none"}, **QUIET)
    state = torch.load(ckpt, weights_only=True)
    assert "descriptors" not in state and state["unet"]["condition"] == "none"
    gen = mdiff.load(ckpt, device="cpu")
    assert gen.model.cond_embed is None
    a = gen.sample(1, steps=2, seed=3)
    del state["unet"]["condition"]  # a checkpoint from before conditioning existed
    torch.save(state, tmp_path / "old.pt")
    assert np.array_equal(mdiff.load(tmp_path / "old.pt", device="cpu").sample(1, steps=2,
                                                                              seed=3), a)
    for args in (["--fractions", "0.5,0.3,0.2"], ["--guidance", "2"]):
        assert sample_main([str(ckpt), str(tmp_path / "o")] + args) == 2
        assert "--condition fractions" in capsys.readouterr().err


def test_profiles_parse_and_interpolate():
    axis, points = descriptors.parse_profile("z", ["1:1,1,2", "0:3,1,0"], 3)
    assert axis == "z" and points[0] == (0.0, (0.75, 0.25, 0.0))
    assert descriptors.profile_at(points, 0.5) == pytest.approx((0.5, 0.25, 0.25))
    assert descriptors.profile_at(points, 2.0) == pytest.approx((0.25, 0.25, 0.5))
    for axis, pts, expected in (("q", ["0:1,1,1", "1:1,1,1"], "axis"),
                                ("z", ["0:1,1,1"], "two positions"),
                                ("z", ["2:1,1,1", "0:1,1,1"], r"in \[0, 1\]"),
                                ("z", ["0:1,1", "1:1,1,1"], "2 fractions")):
        with pytest.raises(ValueError, match=expected):
            descriptors.parse_profile(axis, pts, 3)


def test_graded_sampling_conditions_each_window_on_its_place(conditioned, tmp_path):
    from mdiff.conditioning import graded

    gen = mdiff.load(conditioned, device="cpu")
    profile = descriptors.parse_profile("z", ["0:0.8,0.1,0.1", "1:0.1,0.1,0.8"], 3)
    plan = gen.plan(size=(48, 16, 16), tiling="windows", overlap=0.5, windows=2,
                    fractions_along=profile)
    per_call = graded(plan, gen.model.factor, volumes=2)
    firsts = [float(c[0, 0]) for c in per_call]  # phase 0's target, window by window along z
    assert firsts == sorted(firsts, reverse=True) and firsts[0] > firsts[-1]
    assert all(len(c) == 2 * len(g) for c, g in zip(
        per_call, __import__("mdiff.tiling").tiling.Tiling(
            plan.shape, 16, 0.5).batches(2)))
    vol = gen.sample(1, size=(48, 16, 16), steps=2, seed=0, fractions_along=profile)
    assert vol.shape == (1, 48, 16, 16)
    with pytest.raises(mdiff.MdiffError, match="--tiling windows"):
        gen.sample(1, size=48, steps=2, tiling="whole", fractions_along=profile)
    assert sample_main([str(conditioned), str(tmp_path / "g"), "-n", "1", "--size", "32",
                        "--steps", "2", "--fractions-along", "x", "0:1,1,1", "1:1,1,4"]) == 0
    info = json.loads((tmp_path / "g" / "samples.json").read_text())["condition"]
    assert info["graded"]["axis"] == "x" and info["per_volume"] is None


def test_a_mean_input_model_samples_cubes_and_larger_volumes_in_windows(volume, tmp_path,
                                                                         capsys):
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "mean",
                       unet={"mean_input": True}, train={"steps": 2}, **QUIET)
    gen = mdiff.load(ckpt, device="cpu")
    assert gen.model.mean_embed is not None
    assert gen.sample(2, steps=2, seed=1).shape == (2, 16, 16, 16)
    assert gen.plan(size=16).tiling == "whole"
    assert gen.plan(size=16, periodic=True).tiling == "whole"
    assert gen.plan(size=32).tiling == "windows"  # the cube mean it learned is a window's
    assert gen.sample(1, size=(16, 32, 16), steps=2, seed=1).shape == (1, 16, 32, 16)
    assert sample_main([str(ckpt), str(tmp_path / "o"), "--size", "32", "--tiling",
                        "whole"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tiling windows" in err


def test_a_new_3d_run_is_conditioned_and_a_2d_run_is_not(volume, tmp_path, capsys):
    assert all(p.unet.condition == "fractions" for p in PRESETS.values())
    assert UNetConfig().condition == "none"  # what a checkpoint without the field means
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "3d", train={"steps": 1},
                       **QUIET)
    assert torch.load(ckpt, weights_only=True)["unet"]["condition"] == "fractions"
    ckpt = mdiff.train([volume], preset="tiny", out=tmp_path / "2d", unet={"dims": 2},
                       train={"steps": 1}, **QUIET)
    assert torch.load(ckpt, weights_only=True)["unet"]["condition"] == "none"
    assert train_main([str(volume), "--preset", "tiny", "--steps", "1", "--out",
                       str(tmp_path / "2d_cond"), "--dims", "2", "--condition",
                       "fractions"]) == 2
    assert "--condition is for 3D models" in capsys.readouterr().err


def test_default_guidance_is_1_4_for_drawn_compositions_and_1_at_a_target(conditioned,
                                                                         volume, tmp_path):
    from mdiff.sampling import DRAWN_GUIDANCE
    gen = mdiff.load(conditioned, device="cpu")
    assert gen.plan().guidance == DRAWN_GUIDANCE == 1.4
    assert gen.plan(fractions=(0.5, 0.3, 0.2)).guidance == 1.0
    drawn = gen.plan(size=24, tiling="windows")  # each window draws its own composition
    assert drawn.drawn == "per window" and drawn.guidance == 1.0
    field = gen.plan(size=32, tiling="whole")  # made whole under a field of those draws
    assert field.drawn == "per field" and field.guidance == 1.0
    assert gen.plan(guidance=2.0).guidance == 2.0
    plain = mdiff.train([volume], preset="tiny", out=tmp_path / "plain", train={"steps": 1},
                        unet={"condition": "none"}, **QUIET)
    assert mdiff.load(plain, device="cpu").plan().guidance == 1.0
    assert sample_main([str(conditioned), str(tmp_path / "o"), "-n", "1", "--steps", "2"]) == 0
    assert json.loads((tmp_path / "o" / "samples.json").read_text())["condition"][
        "guidance"] == 1.4


def test_guidance_counts_both_branches_against_free_memory(conditioned, monkeypatch):
    # guidance != 1 runs both branches in one network call: the request is refused in one
    # line where only one branch's activations would fit
    import mdiff.runtime
    from mdiff.errors import MdiffError
    from mdiff.plan import memory_needed
    gen = mdiff.load(conditioned, device="cpu")
    plan = gen.plan(tiling="whole", count=2)
    one, two = (memory_needed(gen.facts, plan, plan.batch, b) for b in (1, 2))
    assert two > one
    monkeypatch.setattr(mdiff.runtime, "free_memory", lambda device: (one + two) / 2)
    gen.sample(2, steps=2, seed=0, guidance=1.0)
    with pytest.raises(MdiffError, match="needs about"):
        gen.sample(2, steps=2, seed=0, guidance=2.0)


def test_holding_fractions_brings_each_volume_to_its_condition(conditioned, tmp_path, capsys):
    # the pin's tiny model has trained 400 steps (a 4-step model predicts near-uniform phase
    # probabilities, whose argmax no holding of their mean can steer)
    from pathlib import Path

    pinned = mdiff.load(Path(__file__).parent / "pin" / "tiny3d.pt", device="cpu")
    target = (0.6, 0.25, 0.15)

    def error(volumes):
        return np.mean([abs((v == label).mean() - f) for v in volumes
                        for label, f in zip((0, 127, 255), target)])

    free = pinned.sample(4, steps=10, seed=2, fractions=target, hold_fractions=False)
    held = pinned.sample(4, steps=10, seed=2, fractions=target)  # the default
    assert error(held) < 0.5 * error(free) and error(held) < 0.04
    gen = mdiff.load(conditioned, device="cpu")
    windows = gen.plan(size=32, tiling="windows")  # each window to its own draw
    assert windows.hold and windows.drawn == "per window"
    field = gen.plan(size=32, tiling="whole")  # each cell's window to the field there
    assert field.hold and field.drawn == "per field"
    assert not gen.plan(size=32, hold_fractions=False).hold
    assert sample_main([str(conditioned), str(tmp_path / "h"), "-n", "1", "--steps", "2"]) == 0
    info = json.loads((tmp_path / "h" / "samples.json").read_text())
    assert info["condition"]["hold_fractions"] is True
    assert sample_main([str(conditioned), str(tmp_path / "f"), "-n", "1", "--steps", "2",
                        "--no-hold-fractions"]) == 0
    info = json.loads((tmp_path / "f" / "samples.json").read_text())
    assert info["condition"]["hold_fractions"] is False


def test_holding_fractions_needs_a_fractions_conditioned_x0_model(volume, tmp_path, capsys):
    plain = mdiff.train([volume], preset="tiny", out=tmp_path / "plain", train={"steps": 1},
                        unet={"condition": "none"}, **QUIET)
    assert sample_main([str(plain), str(tmp_path / "o"), "--hold-fractions"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hold-fractions needs" in err

"""mdiff-distill: a tiny teacher distilled in seconds by each method, its student sampled
through every path a checkpoint takes, the calls it makes, resume, and the refusals."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mdiff
from mdiff import cli
from mdiff.diffusion import GaussianDiffusion, cosine_betas
from mdiff.distillation import _ddim_step, student_timesteps

TEACHER = Path(__file__).resolve().parent / "pin" / "tiny3d.pt"  # 3 phases, T = 100, 16^3
FAST = ["--batch-size", "2", "--log-every", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def endpoint_student(tmp_path_factory):
    out = tmp_path_factory.mktemp("endpoint") / "fast"
    assert cli.distill_main([str(TEACHER), "--out", str(out), "--iterations", "4",
                             "--trajectories", "3", *FAST]) == 0
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def training_volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "v.tif"
    volume = mdiff.synth.generate((24, 24, 24), (0.4, 0.35, 0.25), (0, 127, 255), length=3)
    mdiff.write_volume(path, volume)
    return path


def _counting(gen):
    """The generator's network calls, counted (each call sees a batch of windows)."""
    calls = [0]
    forward = gen.model.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    gen.model.forward = counted
    return calls


def test_student_timesteps_nest_and_the_process_keeps_their_alphas():
    assert student_timesteps(1000, 4) == [249, 499, 749, 999]
    assert student_timesteps(1000, 1) == [999]
    for k in (2, 4, 8):
        fine = student_timesteps(1000, 2 * k, exact=False)
        assert fine[1::2] == student_timesteps(1000, k, exact=False)
    full = GaussianDiffusion(cosine_betas(100), objective="x0")
    keep = student_timesteps(100, 4)
    process = full.at_timesteps(keep)
    assert np.allclose(process.alphas_cumprod, full.alphas_cumprod[keep])
    assert process.alphas_cumprod_prev[0] == 1.0
    assert process.timestep_map.tolist() == keep


def test_the_progressive_target_makes_one_step_land_where_two_teacher_steps_do():
    from mdiff.distillation import progressive_target

    full = GaussianDiffusion(cosine_betas(100), objective="x0")
    coarse = full.at_timesteps(student_timesteps(100, 2))
    fine = full.at_timesteps(student_timesteps(100, 4))
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3, generator=g)

    def teacher(x, t):  # any x0-objective network: logits from x_t and t
        scale = 1 + t.float().reshape(-1, 1, 1, 1, 1) / 100
        return torch.einsum("ij,njdhw->nidhw", weight, x) * scale

    x_t = torch.randn(2, 3, 4, 4, 4, generator=g)
    teach = fine.denoiser(teacher)
    for j in (0, 1):
        target = progressive_target(teacher, coarse, fine, x_t, j)
        end, _ = _ddim_step(fine, teach, _ddim_step(fine, teach, x_t, 2 * j + 1)[0], 2 * j)
        # one student step that predicts the target lands where the teacher's two did
        t = torch.full((2,), j)
        eps = coarse.predict_eps_from_xstart(x_t, t, target)
        landed = _ddim_step(coarse, lambda x, t: (target, eps), x_t, j)[0]
        assert torch.allclose(landed, end, atol=1e-4)
        assert not torch.allclose(target, teach(x_t, torch.full((2,), 2 * j + 1))[0],
                                  atol=1e-3)  # not the teacher's own one-step x̂_0


def test_the_student_samples_every_way_a_checkpoint_does_in_its_own_calls(endpoint_student,
                                                                         tmp_path):
    gen = mdiff.load(endpoint_student, device="cpu")
    assert gen.student["method"] == "endpoint" and gen.student["steps"] == 4
    calls = _counting(gen)
    whole = gen.sample(3, seed=1)
    assert whole.shape == (3, 16, 16, 16) and set(np.unique(whole)) <= {0, 127, 255}
    assert calls[0] == 4  # one batch, four calls, one branch each: guidance is in the weights
    assert np.array_equal(whole, gen.sample(3, seed=1, batch=1))  # volume i: (seed, i) alone
    calls[0] = 0
    windows = gen.sample(1, size=(16, 16, 32), seed=1, tiling="windows", windows=64)
    assert windows.shape == (1, 16, 16, 32) and calls[0] == 4
    calls[0] = 0
    field = gen.sample(1, size=(16, 16, 32), seed=1, tiling="whole")  # a field of draws
    assert field.shape == (1, 16, 16, 32) and calls[0] == 4
    assert gen.sample(1, size=32, periodic=True, seed=2).shape == (1, 32, 32, 32)
    target = gen.sample(2, fractions=(0.2, 0.3, 0.5), seed=3)
    assert target.shape == (2, 16, 16, 16)
    graded = gen.sample(1, size=(16, 16, 48), seed=4,
                        fractions_along=["x", "0:0.7,0.2,0.1", "1:0.1,0.2,0.7"])
    assert graded.shape == (1, 16, 16, 48)
    paths = mdiff.sampling.sample_to_dir(endpoint_student, tmp_path / "s", n=2, seed=0, device="cpu",
                                log=lambda text: None)
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert len(paths) == 2 and info["sampler"] == "ddim" and info["steps"] == 4
    assert info["student"]["method"] == "endpoint"
    assert info["student"]["teacher"] == str(TEACHER.resolve())
    assert info["condition"]["guidance"] == 1.4


def test_the_student_refuses_what_would_need_another_distillation(endpoint_student, tmp_path,
                                                                  capsys):
    for flags in (["--steps", "3"], ["--guidance", "2"], ["--sampler", "dpm++"]):
        assert cli.sample_main([str(endpoint_student), str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("distil" in err[0] or "student" in err[0]), err


def test_bad_teachers_and_steps_are_one_line(endpoint_student, training_volume, tmp_path,
                                            capsys):
    cases = [[str(training_volume)], [str(endpoint_student)], [str(TEACHER), "--steps", "3"],
             [str(TEACHER), "--method", "progressive", "--steps", "4", "--teacher-steps", "12"]]
    for k, args in enumerate(cases):
        assert cli.distill_main([*args, "--out", str(tmp_path / f"o{k}")]) == 2, args
        err = [line for line in capsys.readouterr().err.strip().splitlines()
               if "mdiff: note" not in line]
        assert len(err) == 1 and err[0].startswith("mdiff-distill: error:"), err


def test_a_progressive_student_from_the_cubes_given_again(training_volume, tmp_path):
    out = tmp_path / "p"
    assert cli.distill_main([str(TEACHER), "--out", str(out), "--method", "progressive",
                             "--steps", "2", "--teacher-steps", "8", "--iterations", "4",
                             "--data", str(training_volume), *FAST]) == 0
    gen = mdiff.load(out / "checkpoint.pt", device="cpu")
    calls = _counting(gen)
    volumes = gen.sample(2, seed=0)
    assert volumes.shape == (2, 16, 16, 16) and calls[0] == 2
    assert gen.student["method"] == "progressive"


def test_resume_is_bit_for_bit(tmp_path):
    args = ["--trajectories", "2", "--save-every", "2", *FAST]
    assert cli.distill_main([str(TEACHER), "--out", str(tmp_path / "a"), "--iterations", "4",
                             *args]) == 0
    assert cli.distill_main([str(TEACHER), "--out", str(tmp_path / "b"), "--iterations", "2",
                             *args]) == 0
    assert cli.distill_main(["--resume", "--out", str(tmp_path / "b"), "--iterations", "4",
                             "--threads", "1"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["distill"]["step"] == b["distill"]["step"] == 4
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    moved = any(not torch.equal(a["ema"][k], torch.load(TEACHER, weights_only=True)["ema"][k])
                for k in a["ema"])
    assert moved  # the student did learn something: the weights left the teacher's


def test_training_does_not_resume_a_student(endpoint_student, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(Path(endpoint_student).read_bytes())
    assert cli.train_main(["--resume", "--out", str(out)]) == 2
    assert "mdiff-distill --resume" in capsys.readouterr().err

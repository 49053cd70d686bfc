"""Training, checkpoints, resume and sampling on tiny configs (seconds on a CPU)."""
import json
import os

import numpy as np
import pytest
import torch

import mdiff
from mdiff import synth, write_volume
from mdiff.cli import sample_main, train_main
from mdiff.config import PRESETS
from mdiff.data import SYMMETRIES, CubeDataset, apply_symmetry, spacing_symmetries
from mdiff.diffusion import GaussianDiffusion
from mdiff.errors import MdiffError
from mdiff.phases import PhaseMap
from mdiff.unet import UNet

QUIET = {"log": None}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "three.tif"
    write_volume(path, synth.generate((24, 24, 24), (0.5, 0.3, 0.2), (3, 17, 200), 2.0, seed=1))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("run")
    ckpt = mdiff.train([data_file], phases=3, preset="tiny", out=out,
                       train={"steps": 6, "save_every": 3, "log_every": 3}, **QUIET)
    return ckpt


def test_symmetries_are_the_48_distinct_ones(rng):
    cube = rng.integers(0, 255, (4, 4, 4))
    images = {apply_symmetry(cube, k).tobytes() for k in range(len(SYMMETRIES))}
    assert len(SYMMETRIES) == 48 and len(images) == 48


@pytest.mark.parametrize("spacing, kept, fixed", [
    (None, 48, None), ((0.5, 0.5, 0.5), 48, None), ((2.0, 1.0, 1.0), 16, 0),
    ((1.0, 2.0, 1.0), 16, 1), ((3.0, 2.0, 1.0), 8, "all")])
def test_anisotropic_voxels_keep_only_the_symmetries_of_their_spacing(spacing, kept, fixed):
    ks = spacing_symmetries(spacing)
    assert len(ks) == kept
    for k in ks:
        perm, _ = SYMMETRIES[k]
        if fixed == "all":
            assert perm == (0, 1, 2)
        elif fixed is not None:
            assert perm[fixed] == fixed  # the odd axis stays where it is
            assert [spacing[p] for p in perm] == list(spacing)


def test_training_on_anisotropic_voxels_says_so_and_its_volumes_carry_the_spacing(tmp_path,
                                                                                   capsys):
    volume = synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, seed=3)
    write_volume(tmp_path / "fib.tif", volume, voxel_size=(0.03, 0.01, 0.01), unit="um")
    run = tmp_path / "run"
    assert train_main([str(tmp_path / "fib.tif"), "--phases", "2", "--preset", "tiny",
                       "--out", str(run), "--steps", "2"]) == 0
    assert "training keeps 16 (the reflections, and swaps of the axes of equal spacing)" \
        in capsys.readouterr().err
    out = tmp_path / "samples"
    assert sample_main([str(run / "checkpoint.pt"), str(out), "-n", "1", "--steps", "2"]) == 0
    _, meta = mdiff.read_volume(out / "sample_000.tif", with_meta=True)
    np.testing.assert_allclose(meta["voxel_size"], (0.03, 0.01, 0.01), rtol=1e-6)
    assert meta["unit"] == "um"


def test_the_dataset_draws_only_the_symmetries_it_is_given(rng):
    volume = rng.choice(np.array([0, 255], np.uint8), size=(8, 8, 8))
    keep = spacing_symmetries((2.0, 1.0, 1.0))
    ds = CubeDataset([volume], PhaseMap([0, 255]), patch=8, stride=6, symmetries=keep)
    allowed = {apply_symmetry(ds.cube_at((0, 0, 0, 0)), k).tobytes() for k in keep}
    drawn = {ds.cube(np.random.default_rng(s)).tobytes() for s in range(200)}
    assert drawn <= allowed and len(drawn) > 8


def test_volumes_of_different_spacing_are_refused_together(tmp_path, capsys):
    volume = synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, seed=3)
    write_volume(tmp_path / "a.tif", volume, voxel_size=1.0, unit="um")
    write_volume(tmp_path / "b.tif", volume, voxel_size=2.0, unit="um")
    assert train_main([str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--phases", "2",
                       "--preset", "tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "voxel size" in err[0] and "one spacing" in err[0]


def test_dataset_cuts_grid_cubes_without_whole_volume_copies(rng):
    volume = rng.choice(np.array([0, 255], np.uint8), size=(20, 21, 22))
    ds = CubeDataset([volume], PhaseMap([0, 255]), patch=8, stride=6, augment=False)
    assert len(ds) == 3 * 3 * 3
    batch = ds.batch([np.random.default_rng(k) for k in range(5)])
    assert batch.shape == (5, 2, 8, 8, 8) and batch.dtype == torch.float32


def test_one_batch_overfit():
    torch.manual_seed(0)
    p = PRESETS["tiny"]
    model = UNet(p.unet, 16)
    process = GaussianDiffusion.from_config(p.diffusion)
    volume = synth.generate((16, 16, 16), (0.5, 0.3, 0.2), (0, 1, 2), 2.0)
    x0 = PhaseMap([0, 1, 2]).encode(volume)[None].repeat(2, 1, 1, 1, 1)
    t = torch.tensor([20, 60])
    noise = torch.randn_like(x0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = process.training_losses(model, x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 10


def test_checkpoint_is_self_describing(trained):
    state = torch.load(trained, weights_only=True)
    assert state["format"] == "mdiff-checkpoint" and state["step"] == 6
    assert state["labels"] == [3, 17, 200] and state["patch"] == 16
    assert {"model", "ema", "optimizer", "scaler", "unet", "diffusion", "train"} <= set(state)
    log = [json.loads(line) for line in (trained.parent / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6]


def test_checkpoint_round_trip_same_outputs(trained, tmp_path):
    gen = mdiff.load(trained, device="cpu")
    x = torch.randn(1, 3, 16, 16, 16)
    t = torch.tensor([50])
    torch.save(torch.load(trained, weights_only=True), tmp_path / "copy.pt")
    again = mdiff.load(tmp_path / "copy.pt", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(gen.model(x, t), again.model(x, t), rtol=0, atol=0)


def test_resume_is_bit_for_bit(data_file, tmp_path):
    cfg = {"steps": 6, "save_every": 3, "log_every": 3}
    straight = mdiff.train([data_file], preset="tiny", out=tmp_path / "a", train=cfg, **QUIET)
    mdiff.train([data_file], preset="tiny", out=tmp_path / "b", train={**cfg, "steps": 3},
                **QUIET)
    resumed = mdiff.train(preset="tiny", out=tmp_path / "b", resume=True, train={"steps": 6},
                          **QUIET)
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["loss"] == b["loss"]


def test_sampling_seeded_and_labels(trained):
    gen = mdiff.load(trained, device="cpu")
    a = gen.sample(3, sampler="ddim", steps=5, seed=11, batch=2)
    b = gen.sample(3, sampler="ddim", steps=5, seed=11, batch=3)
    assert a.shape == (3, 16, 16, 16) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {3, 17, 200}
    c = gen.sample(1, size=32, sampler="ddpm", seed=1)  # tiny preset: T = 100
    assert c.shape == (1, 32, 32, 32)
    with pytest.raises(MdiffError, match="multiple of 2"):
        gen.sample(1, size=15)


def test_cli_train_and_sample(data_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([str(data_file), "--phases", "3", "--preset", "tiny", "--out", str(run),
                       "--steps", "4", "--log-every", "2", "--no-augment"]) == 0
    err = capsys.readouterr().err
    assert "steps/s" in err and "ETA" in err
    assert json.loads((run / "config.json").read_text())["train"]["augment"] is False
    out = tmp_path / "samples"
    assert sample_main([str(run / "checkpoint.pt"), str(out), "-n", "2", "--steps", "3",
                        "--seed", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.tif", "sample_001.tif",
                                                      "samples.json"]
    info = json.loads((out / "samples.json").read_text())
    assert info["seed"] == 4 and info["labels"] == [3, 17, 200]
    assert set(np.unique(mdiff.read_volume(out / "sample_000.tif"))) <= {3, 17, 200}


def test_cli_bad_inputs(data_file, tmp_path, capsys):
    def one_line(argv, main, expected):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err

    run = str(tmp_path / "run")
    one_line([str(data_file), "--phases", "2", "--preset", "tiny", "--out", run], train_main,
             "labels: 3, 17, 200")
    one_line([str(data_file), "--preset", "tiny", "--patch", "32", "--out", run], train_main,
             "smaller than the training cube side 32")
    one_line(["--preset", "tiny", "--out", run], train_main, "no training data")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a checkpoint at all")
    one_line([str(junk), str(tmp_path / "o")], sample_main, "not an mdiff checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    one_line([str(foreign), str(tmp_path / "o")], sample_main, "not an mdiff checkpoint")
    one_line([str(tmp_path / "none.pt"), str(tmp_path / "o")], sample_main, "no such")
    assert not (tmp_path / "o").exists()


def test_pickled_code_is_never_run(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("PWNED",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "mdiff-checkpoint", "x": Evil()}, path)
    assert sample_main([str(path), str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "PWNED" not in captured.out and "not an mdiff checkpoint" in captured.err
    assert "weights_only" not in captured.err


def test_files_that_are_not_checkpoints_say_so_in_one_line(data_file, tmp_path, capsys):
    ckpt = mdiff.train([data_file], preset="tiny", out=tmp_path / "run",
                       train={"steps": 1}, **QUIET)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (tmp_path / "c.json").write_text('{"format": "mdiff-checkpoint"}')
    cases = {data_file: "it is a TIFF image", tmp_path / "c.json": "looks like JSON",
             truncated: "truncated or damaged"}
    for path, expected in cases.items():
        assert sample_main([str(path), str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not an mdiff checkpoint" in err and expected in err
        assert "weights_only" not in err


def test_nan_loss_stops_and_keeps_checkpoint(data_file, tmp_path):
    from unittest import mock

    cfg = {"steps": 2, "save_every": 2, "log_every": 2}
    ckpt = mdiff.train([data_file], preset="tiny", out=tmp_path, train=cfg, **QUIET)
    before = ckpt.read_bytes()
    real = GaussianDiffusion.training_losses

    def diverged(self, *args, **kwargs):
        return real(self, *args, **kwargs) * float("nan")

    with mock.patch.object(GaussianDiffusion, "training_losses", diverged):
        with pytest.raises(MdiffError, match="loss became nan"):
            mdiff.train(preset="tiny", out=tmp_path, resume=True, train={"steps": 4}, **QUIET)
    assert ckpt.read_bytes() == before


def test_objectives_train_save_and_sample(data_file, tmp_path):
    """Every objective and option trains, is recorded in the checkpoint and samples with every
    sampler, and in windows."""
    for extra in ({"objective": "eps"}, {"objective": "v", "snr_gamma": 5.0},
                  {"objective": "x0", "self_condition": True, "snr_shift": 2.0}):
        out = tmp_path / extra["objective"]
        ckpt = mdiff.train([data_file], preset="tiny", out=out, diffusion=extra,
                           train={"steps": 2}, **QUIET)
        state = torch.load(ckpt, weights_only=True)
        assert {k: state["diffusion"][k] for k in extra} == extra
        gen = mdiff.load(ckpt, device="cpu")
        assert gen.diffusion.objective == extra["objective"]
        for sampler in ("ddim", "dpm++", "ddpm"):
            assert set(np.unique(gen.sample(1, sampler=sampler, steps=3, seed=0))) <= {3, 17, 200}
        big = gen.sample(1, size=(16, 16, 24), steps=2, seed=0, tiling="windows", overlap=0.5)
        assert big.shape == (1, 16, 16, 24)  # windows feed self-conditioning crops too


def test_default_objective_is_x0_and_old_checkpoints_load_as_eps(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    assert state["diffusion"]["objective"] == "x0"
    assert all(p.diffusion.objective == "x0" for p in PRESETS.values())
    del state["diffusion"]["objective"]  # as written before the objective was a field
    torch.save(state, tmp_path / "old.pt")
    assert mdiff.load(tmp_path / "old.pt", device="cpu").diffusion.objective == "eps"


def test_reflect_padding_is_recorded_and_sampled_with_every_tiling(data_file, trained, tmp_path,
                                                                    capsys):
    ckpt = mdiff.train([data_file], preset="tiny", out=tmp_path / "run",
                       unet={"padding": "reflect"}, train={"steps": 2}, **QUIET)
    assert torch.load(ckpt, weights_only=True)["unet"]["padding"] == "reflect"
    gen = mdiff.load(ckpt, device="cpu")
    modes = lambda: {m.padding_mode for m in gen.model.modules()
                     if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1}
    for fields, mode in (({}, "reflect"), ({"size": 24, "tiling": "whole"}, "reflect"),
                         ({"size": 24, "tiling": "windows"}, "reflect"),
                         ({"size": 16, "periodic": True}, "circular")):
        vol = gen.sample(1, steps=2, seed=0, **fields)
        assert set(np.unique(vol)) <= {3, 17, 200} and modes() == {mode}
    # a checkpoint written before padding was a field keeps zero padding
    state = torch.load(trained, weights_only=True)
    del state["unet"]["padding"]
    torch.save(state, tmp_path / "old.pt")
    assert mdiff.load(tmp_path / "old.pt", device="cpu").model.padding == "zeros"
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "bad"),
                       "--padding", "edge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--padding must be one of zeros, reflect" in err


def test_cli_objective_flags(data_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(run), "--steps", "2",
                       "--objective", "v", "--snr-gamma", "5"]) == 0
    assert json.loads((run / "config.json").read_text())["diffusion"]["objective"] == "v"
    assert sample_main([str(run / "checkpoint.pt"), str(tmp_path / "s"), "-n", "1",
                        "--steps", "2"]) == 0
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["objective"] == "v"
    capsys.readouterr()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r2"),
                       "--snr-gamma", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --objective eps or v" in err
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r3"),
                       "--objective", "eps", "--topology-weight", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --objective x0" in err
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r4"),
                       "--steps", "2", "--topology-weight", "0.1"]) == 0
    assert json.loads((tmp_path / "r4" / "config.json").read_text())["diffusion"][
        "topology_weight"] == 0.1
    capsys.readouterr()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r5"),
                       "--objective", "v", "--thin-weight", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--thin-weight" in err and not (tmp_path / "r5").exists()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r6"),
                       "--span-weight", "2", "--span-radius", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--span-radius" in err and not (tmp_path / "r6").exists()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r7"),
                       "--steps", "2", "--span-weight", "2", "--span-radius", "1"]) == 0
    recorded = json.loads((tmp_path / "r7" / "config.json").read_text())["diffusion"]
    assert (recorded["span_weight"], recorded["span_radius"]) == (2.0, 1)
    capsys.readouterr()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r8"),
                       "--objective", "eps", "--throat-weight", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--throat-weight" in err and not (tmp_path / "r8").exists()
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "r9"),
                       "--steps", "2", "--throat-weight", "10"]) == 0
    assert json.loads((tmp_path / "r9" / "config.json").read_text())["diffusion"][
        "throat_weight"] == 10.0


def test_busy_warning_only_for_a_many_thread_job_on_a_loaded_machine(monkeypatch):
    from mdiff import runtime
    from mdiff.training import busy_warning
    cores = os.cpu_count()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 0.0, 0.0))
    monkeypatch.setattr(runtime, "running_elsewhere", lambda: cores)
    assert busy_warning("x", threads=1) is None          # one thread (taskset beside another)
    if cores > 1:
        assert "busy" in busy_warning("x", threads=2)
    monkeypatch.setattr(runtime, "running_elsewhere", lambda: None)  # not Linux: load alone
    if cores > 1:
        assert "busy" in busy_warning("x", threads=2)
    monkeypatch.setattr(runtime, "running_elsewhere", lambda: 0)  # the load was this job's own
    assert busy_warning("x", threads=2) is None
    monkeypatch.setattr(runtime, "running_elsewhere", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5 * cores, 0.0, 0.0))
    assert busy_warning("x", threads=2) is None          # an idle machine


def test_running_elsewhere_counts_a_process_that_spins_now():
    import subprocess
    import sys
    import time

    from mdiff.runtime import running_elsewhere

    if running_elsewhere() is None:
        pytest.skip("no /proc/loadavg here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(running_elsewhere() for _ in range(20)) >= 1
    finally:
        spin.kill()
        spin.wait()


def test_a_high_noise_share_draws_that_share_from_the_top_of_the_chain(data_file, tmp_path,
                                                                       capsys):
    from mdiff.training import HIGH_NOISE_FROM, _timestep

    plain = [torch.Generator().manual_seed(k) for k in range(400)]
    same = [torch.Generator().manual_seed(k) for k in range(400)]
    # no share: the generator is used as it always was, so old runs draw the same timesteps
    assert [int(_timestep(g, 1000, 0.0)) for g in plain] == \
        [int(torch.randint(0, 1000, (1,), generator=g)) for g in same]
    top = [int(_timestep(torch.Generator().manual_seed(k), 1000, 1.0)) for k in range(400)]
    assert min(top) >= HIGH_NOISE_FROM * 1000 and max(top) <= 999
    half = np.array([int(_timestep(torch.Generator().manual_seed(k), 1000, 0.5))
                     for k in range(4000)])
    assert np.mean(half >= 800) == pytest.approx(0.5 + 0.5 * 0.2, abs=0.03)
    ckpt = mdiff.train([data_file], phases=3, preset="tiny", out=tmp_path / "run",
                       train={"steps": 2, "high_noise_share": 0.5}, **QUIET)
    assert torch.load(ckpt, weights_only=True)["train"]["high_noise_share"] == 0.5
    assert train_main([str(data_file), "--preset", "tiny", "--out", str(tmp_path / "bad"),
                       "--high-noise-share", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--high-noise-share must be in [0, 1]" in err


def test_a_run_from_before_the_high_noise_share_resumes_with_uniform_timesteps(trained,
                                                                              tmp_path):
    from mdiff.checkpoint import run_record

    state = torch.load(trained, weights_only=True)
    state["train"]["high_noise_share"] = 0.5
    assert run_record(state).train.high_noise_share == 0.5
    del state["train"]["high_noise_share"]  # as written before the field existed
    assert run_record(state).train.high_noise_share == 0.0

"""Volumes of any size: window tiling (MultiDiffusion), windowed attention, periodic volumes and
the DPM-Solver++(2M) sampler, on tiny configs."""
import json

import numpy as np
import pytest
import torch

import mdiff
from mdiff import synth, write_volume
from mdiff.cli import sample_main
from mdiff.config import PRESETS
from mdiff.diffusion import GaussianDiffusion, cosine_betas
from mdiff.errors import MdiffError
from mdiff.request import SampleRequest
from mdiff.samplers import ddim_sample, dpmpp_2m_sample
from mdiff.tiling import Tiling, tiled_denoiser, window_starts
from mdiff.unet import Attention, UNet


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "three.tif"
    write_volume(data, synth.generate((24, 24, 24), (0.5, 0.3, 0.2), (3, 17, 200), 2.0, seed=1))
    return mdiff.train([data], phases=3, preset="tiny", out=tmp_path_factory.mktemp("run"),
                       train={"steps": 4, "save_every": 4, "log_every": 4}, log=None)


@pytest.mark.parametrize("length,window,stride", [(64, 16, 8), (40, 16, 12), (16, 16, 8),
                                                  (8, 16, 8), (50, 16, 16)])
def test_closed_windows_cover_every_voxel_and_end_flush(length, window, stride):
    starts = window_starts(length, window, stride)
    side = min(window, length)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + side] += 1
    assert covered.min() >= 1 and starts[0] == 0 and starts[-1] + side == length
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_periodic_windows_cover_every_voxel_equally():
    t = Tiling((32, 16, 48), 16, overlap=0.5, periodic=True)
    count = torch.zeros(32 * 16 * 48)
    for corner in t.corners():
        count.index_add_(0, t.index(corner), torch.ones(16 ** 3))
    assert len(t) == 4 * 2 * 6 and torch.all(count == 8)
    uneven = Tiling((36, 16, 20), 16, overlap=0.5, periodic=True, factor=2)
    assert uneven.starts == [[0, 8, 14, 22, 28], [0, 8], [0, 6, 14]]
    count = torch.zeros(36 * 16 * 20)
    for corner in uneven.corners():
        count.index_add_(0, uneven.index(corner), torch.ones(16 ** 3))
    assert count.min() >= 8  # at least twice along each axis


def _pointwise(x, t):
    """A network whose output at a voxel depends on that voxel's x_t and t alone: windows and
    the whole volume must then give the same x̂_0 exactly."""
    return torch.tanh(x * 1.3 + 0.002 * t.float().view(-1, 1, 1, 1, 1)) + 0.1 * x.roll(1, 1)


@pytest.mark.parametrize("objective", ["x0", "eps", "v"])
@pytest.mark.parametrize("shape,periodic", [((40, 24, 16), False), ((32, 48, 16), True)])
def test_fused_windows_equal_the_whole_volume_for_a_pointwise_network(objective, shape, periodic):
    process = GaussianDiffusion(cosine_betas(50), objective=objective).respace(10)
    torch.manual_seed(0)
    x_t = torch.randn(2, 3, *shape)  # non-contiguous views are fine as well
    t = torch.full((2,), 6)
    whole = process.denoiser(_pointwise)(x_t, t)
    tiled = tiled_denoiser(process, _pointwise, shape, 16, 0.5, periodic, batch=3)(x_t, t)
    for a, b in zip(whole, tiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_windows_see_the_training_cube_and_fuse_with_bump_weights():
    """A network that returns the mean of its window: the fused x̂_0 at a voxel is the
    bump-weighted mean over the windows that hold it."""
    process = GaussianDiffusion(cosine_betas(20), objective="eps")
    seen = []

    def window_mean(x, t):
        seen.append(tuple(x.shape[2:]))
        return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)

    x_t = torch.randn(1, 1, 24, 16, 16)
    t = torch.full((1,), 3)
    x_start, _ = tiled_denoiser(process, window_mean, (24, 16, 16), 16, 0.5, False,
                                clip_denoised=False)(x_t, t)
    assert set(seen) == {(16, 16, 16)}
    means = [process.predict_xstart_from_eps(x_t[:, :, a:a + 16], t,
                                             x_t[:, :, a:a + 16].mean().expand(1, 1, 16, 16, 16))
             for a in (0, 8)]
    from mdiff.tiling import bump
    w = bump(16)
    # voxel z = 10 is in both windows (at 10 and at 2)
    expected = (w[10] * means[0][0, 0, 10] + w[2] * means[1][0, 0, 2]) / (w[10] + w[2])
    torch.testing.assert_close(x_start[0, 0, 10], expected)
    torch.testing.assert_close(x_start[0, 0, 0], means[0][0, 0, 0])  # one window only


def test_self_conditioning_feeds_each_window_its_crop_of_the_fused_estimate():
    process = GaussianDiffusion(cosine_betas(30), objective="x0", self_condition=True).respace(3)
    seen = []

    def model(x, t, x_self):
        seen.append(x_self.clone())
        return x * 2.0

    denoise = tiled_denoiser(process, model, (24, 16, 16), 16, 0.5, False, batch=8)
    x_t = torch.randn(1, 3, 24, 16, 16)
    first, _ = denoise(x_t, torch.full((1,), 2))
    assert all(torch.count_nonzero(s) == 0 for s in seen)
    seen.clear()
    denoise(x_t, torch.full((1,), 1))
    torch.testing.assert_close(seen[0][0], first[0, :, 0:16])
    torch.testing.assert_close(seen[0][1], first[0, :, 8:24])


def test_windowed_attention_attends_within_training_size_blocks():
    cfg = PRESETS["tiny"].unet
    torch.manual_seed(0)
    att = Attention(8, 2, cfg, window=4)
    torch.nn.init.normal_(att.out.weight)
    x = torch.randn(2, 8, 8, 12, 4)
    got = att(x)
    h = att.norm(x)
    for a in (0, 4):
        for b in (0, 4, 8):
            block = att.out(att._attend(h[:, :, a:a + 4, b:b + 4]))
            torch.testing.assert_close(got[:, :, a:a + 4, b:b + 4], x[:, :, a:a + 4, b:b + 4]
                                       + block, rtol=1e-4, atol=1e-5)
    full = Attention(8, 2, cfg, window=None)
    full.load_state_dict(att.state_dict())
    small = torch.randn(1, 8, 4, 4, 4)
    torch.testing.assert_close(att(small), full(small))


def test_periodic_network_commutes_with_whole_window_shifts():
    """With circular padding the U-Net is equivariant to shifts by a multiple of its coarsest
    attention window (16 voxels for tiny): the volume has no faces."""
    p = PRESETS["tiny"]
    torch.manual_seed(0)
    model = UNet(p.unet, p.train.patch).eval()
    for m in model.modules():  # the zero-initialised output layers would hide everything
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.normal_(m.weight, std=0.2)
    model.set_periodic(True)
    x = torch.randn(1, 3, 32, 32, 16)
    t = torch.full((1,), 5)
    with torch.no_grad():
        a = model(x, t).roll(16, 2)
        b = model(x.roll(16, 2), t)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    model.set_periodic(False)
    with torch.no_grad():
        assert not torch.allclose(model(x, t).roll(16, 2), model(x.roll(16, 2), t), atol=1e-3)


def test_dpmpp_with_an_x0_oracle_returns_the_clean_volume():
    process = GaussianDiffusion(cosine_betas(200), objective="x0").respace(8)
    x0 = torch.randn(2, 3, 4, 4, 4).sign()
    onehot = torch.nn.functional.one_hot(x0.argmax(1), 3).permute(0, 4, 1, 2, 3).float()
    oracle = lambda x, t: 60.0 * onehot  # noqa: E731
    got = dpmpp_2m_sample(process.denoiser(oracle), process, x0.shape[1:],
                          [torch.Generator().manual_seed(k) for k in range(2)])
    torch.testing.assert_close(got, 2 * onehot - 1, rtol=0, atol=1e-4)


def test_dpmpp_is_second_order_where_ddim_is_first():
    """On a smooth toy network, DPM-Solver++(2M) with K steps lands nearer the probability-flow
    ODE's solution (DDIM with all 1000 steps) than DDIM with K steps, and its error falls
    faster as K doubles."""
    full = GaussianDiffusion(cosine_betas(1000), objective="x0")
    toy = lambda x, t: 2.0 * x + 0.5 * x.roll(1, 2)  # noqa: E731  (phase logits)
    gens = lambda: [torch.Generator().manual_seed(3)]  # noqa: E731
    shape = (2, 6, 6, 6)
    truth = ddim_sample(full.denoiser(toy, False), full, shape, gens())

    def err(sampler, k):
        process = full.respace(k)
        return float((sampler(process.denoiser(toy, False), process, shape, gens())
                      - truth).abs().mean())

    e_ddim = [err(ddim_sample, k) for k in (10, 20)]
    e_dpm = [err(dpmpp_2m_sample, k) for k in (10, 20)]
    assert e_dpm[0] < e_ddim[0] and e_dpm[1] < e_ddim[1]
    assert e_dpm[0] / e_dpm[1] > e_ddim[0] / e_ddim[1]


@pytest.mark.parametrize("tiling", ["windows", "whole"])
def test_large_non_cubic_and_periodic_samples(ckpt, tiling):
    gen = mdiff.load(ckpt)
    vol = gen.sample(2, size=(32, 24, 16), sampler="dpm++", steps=3, seed=1, tiling=tiling)
    assert vol.shape == (2, 32, 24, 16) and set(np.unique(vol)) <= {3, 17, 200}
    again = gen.sample(1, size=(32, 24, 16), sampler="dpm++", steps=3, seed=1, tiling=tiling,
                       batch=1)
    np.testing.assert_array_equal(vol[:1], again)  # volume i depends on (seed, i) alone
    per = gen.generate(SampleRequest(count=1, size=32, steps=3, seed=1, tiling=tiling,
                                     periodic=True, overlap=0.5))
    assert per.volumes.shape == (1, 32, 32, 32) and per.plan.periodic
    assert per.plan.tiling == tiling


def test_cli_large_sample_records_how_it_was_made(ckpt, tmp_path, capsys):
    out = tmp_path / "big"
    assert sample_main([str(ckpt), str(out), "-n", "1", "--size", "32", "16", "48",
                        "--periodic", "--overlap", "0.5", "--steps", "2", "--sampler",
                        "dpm++", "--tiling", "windows"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["size"] == [32, 16, 48] and info["periodic"] and info["tiling"] == "windows"
    assert info["window"] == 16 and info["overlap"] == 0.5 and info["stride"] == 8
    assert info["windows"] == 4 * 2 * 6 and info["sampler"] == "dpm++" and info["steps"] == 2
    assert mdiff.read_volume(out / "sample_000.tif").shape == (32, 16, 48)
    assert "windows of 16^3" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--size", "32", "16"], "one side or three"),
    (["--size", "31"], "multiple of 2"),
    (["--overlap", "1"], "--overlap must be in [0, 1)"),
    (["--size", "32", "32", "8", "--periodic", "--tiling", "windows"], "use --tiling whole"),
    (["--size", "8192"], "GiB are free"),
    (["--size", "2048", "--tiling", "whole"], "GiB are free"),
])
def test_cli_large_sample_bad_requests_get_one_line(ckpt, tmp_path, capsys, args, message):
    assert sample_main([str(ckpt), str(tmp_path / "o"), "-n", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o" / "sample_000.tif").exists()


def test_generator_rejects_a_bad_size(ckpt):
    with pytest.raises(MdiffError, match="one side or three"):
        mdiff.load(ckpt).sample(1, size=(16, 16))


def test_auto_tiling_takes_the_whole_volume_where_it_fits(ckpt, monkeypatch):
    from mdiff import runtime
    from mdiff.plan import memory_needed

    gen = mdiff.load(ckpt)
    need = memory_needed(gen.facts, {"shape": (64, 64, 64), "tiling": "whole"}, 1)
    monkeypatch.setattr(runtime, "free_memory", lambda device: 2 * need)
    target = {"fractions": (0.4, 0.3, 0.3)}  # drawn compositions go by windows (below)
    assert gen.plan(size=64, **target).tiling == "whole"
    assert gen.plan(size=64).tiling == "windows" and gen.plan(size=64).drawn == "per window"
    assert gen.plan(size=64, tiling="whole").drawn == "per field"  # made whole: a field
    monkeypatch.setattr(runtime, "free_memory", lambda device: 2 * need - 1)
    assert gen.plan(size=64, **target).tiling == "windows"
    assert gen.plan(size=16).tiling == "whole"  # the training size is always seen whole


def test_sampling_keeps_freed_memory_where_glibc_allows_it():
    import sys

    from mdiff.runtime import keep_freed_memory

    took = keep_freed_memory()
    assert took is (sys.platform.startswith("linux"))


def test_evaluate_pins_the_allocator_thresholds_where_glibc_allows_it(monkeypatch):
    """mdiff-evaluate pins glibc's mmap and trim thresholds before it measures (its memory
    curve over a thousand cubes is benchmarks/long_runs.py's); elsewhere it is a no-op."""
    import sys

    from mdiff import runtime

    calls = []
    monkeypatch.setattr(runtime, "_mallopt", lambda settings: calls.append(settings) or True)
    assert runtime.return_freed_memory() and calls == [runtime.RETURN_FREED]
    monkeypatch.undo()
    assert runtime.return_freed_memory() is sys.platform.startswith("linux")
    from mdiff.cli import evaluate_main

    pinned = []
    monkeypatch.setattr(runtime, "return_freed_memory", lambda: pinned.append(1))
    assert evaluate_main(["real.tif", "gen", "--size", "2"]) == 2  # refused after the pinning
    assert pinned == [1]


def test_default_batch_keeps_a_cpu_batchs_feature_maps_under_the_heap_ceiling(ckpt):
    import dataclasses

    from mdiff.plan import default_batch
    from mdiff.runtime import HEAP_CEILING

    gen = mdiff.load(ckpt, device="cpu", precision="fp32")
    tiny = gen.facts.feature_bytes * 16 ** 3  # one volume's full-resolution map, one branch
    assert tiny == 4 * 8 * 16 ** 3 and gen.plan(count=8).batch == 8  # far below: 8 a call
    # a model whose map is just over an eighth of the ceiling a volume: under guidance (2
    # branches) 4 volumes reach it, so 8 volumes go 3 + 3 + 2, and 4 volumes 2 + 2
    wide = dataclasses.replace(gen.facts, feature_bytes=HEAP_CEILING // 8 // 16 ** 3 + 1)
    assert [default_batch(wide, n, (16,) * 3, True, 2) for n in (8, 4, 1)] == [3, 2, 1]
    assert default_batch(wide, 8, (16,) * 3, True, 1) == 8 // 2  # one branch: 8 → 4 + 4
    assert default_batch(wide, 8, (32,) * 3, False, 2) == 1  # larger volumes: one a call
    gpu = dataclasses.replace(wide, device="cuda")  # no glibc heap there: up to 8
    assert default_batch(gpu, 10, (16,) * 3, True, 2) == 8
    # the batch is arithmetic only: the same volumes whatever it is (fp32)
    gen.facts = wide
    plan = gen.plan(count=5, steps=3, seed=2, fractions=(0.4, 0.3, 0.3), guidance=1.5)
    assert plan.batch == 3
    alone = gen.sample(5, steps=3, seed=2, fractions=(0.4, 0.3, 0.3), guidance=1.5)
    together = gen.sample(5, steps=3, seed=2, fractions=(0.4, 0.3, 0.3), guidance=1.5,
                          batch=5)
    np.testing.assert_array_equal(alone, together)

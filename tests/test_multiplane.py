"""2D models and 3D volumes from them: 2D images and slice folders in, the 2D U-Net, patches
with the square's symmetries, multi-plane denoising, and the command line around them."""
import json

import numpy as np
import pytest
import tifffile
import torch

import mdiff
from mdiff import synth, write_volume
from mdiff.cli import evaluate_main, metrics_main, sample_main, train_main
from mdiff.config import PRESETS, UNetConfig
from mdiff.data import PLANES, SQUARE_SYMMETRIES, ImageDataset, apply_symmetry, volume_slices
from mdiff.diffusion import GaussianDiffusion, cosine_betas
from mdiff.io import read_image, read_slices, read_volume
from mdiff.multiplane import multiplane_denoiser
from mdiff.phases import PhaseMap
from mdiff.unet import UNet

QUIET = {"log": None}


@pytest.fixture(scope="module")
def volume():
    return synth.generate((24, 32, 40), (0.5, 0.3, 0.2), (0, 127, 255), 2.0, seed=5)


@pytest.fixture(scope="module")
def image_file(volume, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "slice.tif"
    tifffile.imwrite(path, volume[12])
    return path


@pytest.fixture(scope="module")
def model_2d(image_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run2d")
    return mdiff.train([image_file], preset="tiny", out=out, train={"steps": 3}, **QUIET)


def _random_unet(cfg, patch=8, seed=0):
    """A tiny U-Net with random (not zero) output weights, so that its output depends on its
    input and the tests below can fail."""
    torch.manual_seed(seed)
    model = UNet(cfg, patch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


TINY_2D = UNetConfig(phases=3, base_channels=8, channel_mult=(1, 2), blocks_per_level=1,
                     attention_sizes=(4,), heads=2, groups=4, dims=2)


# ---- reading 2D images and slice folders ---------------------------------------------------

def test_a_folder_of_slices_reads_as_the_volume_it_was_cut_from(volume, tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    for k in range(volume.shape[0]):  # natural order: slice_2 before slice_10
        tifffile.imwrite(folder / f"slice_{k}.tif", volume[k])
    got = read_volume(folder)
    assert got.dtype == volume.dtype and np.array_equal(got, volume)
    assert mdiff.io.volume_shape(folder) == volume.shape
    assert mdiff.io.volume_files(folder) == [folder]


def test_png_slices_and_grey_rgb_images_read_as_labels(volume, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "png"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(volume[k]).save(folder / f"z{k:02d}.png")
    assert np.array_equal(read_volume(folder), volume[:5])
    assert mdiff.io.volume_shape(folder) == (5, *volume.shape[1:])  # from the headers
    rgb = np.repeat(volume[3][:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "grey_as_rgb.png")
    assert np.array_equal(read_image(tmp_path / "grey_as_rgb.png"), volume[3])


def _bad_images(tmp_path, volume):
    rgb = np.stack([volume[0], volume[1], volume[2]], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", volume[0].astype(np.float32))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a1.tif", volume[0])
    tifffile.imwrite(mixed / "a2.tif", volume[1, :20])
    (tmp_path / "empty").mkdir()
    return {"rgb.tif": "colour (RGB)", "float.tif": "float voxels",
            "mixed": "slices of a volume must all be alike", "empty": "no images"}


def test_bad_2d_input_is_one_line_and_exit_2(volume, tmp_path, capsys):
    cases = _bad_images(tmp_path, volume)
    for name, expected in cases.items():
        code = train_main([str(tmp_path / name), "--preset", "tiny", "--out",
                           str(tmp_path / f"run_{name}")])
        err = capsys.readouterr().err
        assert code == 2, name
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / f"run_{name}" / "checkpoint.pt").exists()
    for name in ("mixed", "empty"):  # a folder is a volume everywhere
        assert metrics_main([str(tmp_path / name)]) == 2
        assert cases[name] in capsys.readouterr().err
    write_volume(tmp_path / "real.tif", volume)
    assert evaluate_main([str(tmp_path / "real.tif"), str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err  # planned from the slices' headers, refused before any work
    assert cases["mixed"] in err and err.count("\n") == 1


def test_png_without_pillow_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(mdiff.MdiffError, match=r"mdiff\[images\]"):
        read_image(tmp_path / "a.png")


def test_metrics_and_evaluate_read_a_slice_folder(volume, tmp_path, capsys):
    folder = tmp_path / "stack"
    folder.mkdir()
    for k in range(volume.shape[0]):
        tifffile.imwrite(folder / f"s{k}.tif", volume[k])
    write_volume(tmp_path / "v.tif", volume)
    assert metrics_main([str(folder), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert metrics_main([str(tmp_path / "v.tif"), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_folder["volumes"][0]["phases"] == from_file["volumes"][0]["phases"]
    assert evaluate_main([str(tmp_path / "v.tif"), str(folder), "--size", "8", "--json"]) == 0


# ---- 2D data and network ---------------------------------------------------------------------

def test_volume_slices_are_views_in_the_three_planes(volume):
    slices = volume_slices(volume)
    d, h, w = volume.shape
    assert len(slices) == d + h + w
    assert [p for _, p in slices] == [0] * d + [1] * h + [2] * w
    assert np.array_equal(slices[d + 3][0], volume[:, 3, :])
    assert np.array_equal(slices[d + h + 5][0], volume[:, :, 5])
    assert all(np.shares_memory(image, volume) for image, _ in slices)


def test_square_symmetries_are_the_eight_distinct_ones(rng):
    patch = rng.integers(0, 255, (5, 5))
    seen = {apply_symmetry(patch, k, SQUARE_SYMMETRIES).tobytes() for k in range(8)}
    assert len(seen) == 8
    rotations = {np.rot90(patch, k).tobytes() for k in range(4)}
    assert rotations <= seen


def test_image_dataset_grid_matches_a_brute_force_listing(rng):
    images = [(rng.integers(0, 2, (20, 13)).astype(np.uint8), 0),
              (rng.integers(0, 2, (9, 30)).astype(np.uint8), 2)]
    ds = ImageDataset(images, PhaseMap([0, 1]), patch=8, stride=3, augment=False)
    want = [(i, a, b) for i, (im, _) in enumerate(images)
            for a in range(0, im.shape[0] - 8 + 1, 3) for b in range(0, im.shape[1] - 8 + 1, 3)]
    assert [ds.positions[k] for k in range(len(ds))] == want
    x, planes = ds.draw([np.random.default_rng(k) for k in range(6)])
    assert x.shape == (6, 2, 8, 8) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert set(planes.tolist()) <= {0, 2}


def test_2d_unet_shapes_and_plane_embedding():
    from dataclasses import replace

    model = _random_unet(TINY_2D)
    x = torch.randn(3, 3, 12, 8)
    assert model(x, torch.tensor([1, 50, 99])).shape == x.shape
    planar = _random_unet(replace(TINY_2D, planes=3))
    with torch.no_grad():
        planar.planes.weight.normal_()
        a = planar(x, torch.tensor([5] * 3), plane=0)
        b = planar(x, torch.tensor([5] * 3), plane=2)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="plane"):
        planar(x, torch.tensor([5] * 3))


# ---- multi-plane denoising -----------------------------------------------------------------

def _reference(diffusion, model, x_t, t, axes, planes=False):
    """x̂_0 of every slice along each axis, one slice at a time, averaged over the axes."""
    fused = torch.zeros_like(x_t)
    for axis in axes:
        for k in range(x_t.shape[2 + axis]):
            image = x_t.select(2 + axis, k)
            fn = (lambda x, tt, a=axis: model(x, tt, plane=a)) if planes else model
            x0, _ = diffusion.predict(fn, image, t)
            fused.select(2 + axis, k).add_(x0)
    return fused / len(axes)


@pytest.mark.parametrize("planes", [False, True])
def test_fused_x0_equals_slice_by_slice_reference(planes):
    from dataclasses import replace

    model = _random_unet(replace(TINY_2D, planes=3 if planes else 1))
    diffusion = GaussianDiffusion(cosine_betas(100), objective="x0")
    x_t = torch.randn(2, 3, 6, 4, 12)[..., ::2]  # odd chunking, non-contiguous input
    t = torch.tensor([90, 40])
    denoise = multiplane_denoiser(diffusion, model, "mean", slices=5, planes=planes)
    x0, eps = denoise(x_t, t)
    want = _reference(diffusion, model, x_t, t, (0, 1, 2), planes)
    assert torch.allclose(x0, want, atol=1e-5)
    assert torch.allclose(eps, diffusion.predict_eps_from_xstart(x_t, t, want), atol=1e-4)
    cycle = multiplane_denoiser(diffusion, model, "cycle", slices=3, planes=planes)
    for step in range(4):  # the axis turns z, y, x, z, ...
        got, _ = cycle(x_t, t)
        assert torch.allclose(got, _reference(diffusion, model, x_t, t, (step % 3,), planes),
                              atol=1e-5)


def test_fused_x0_of_a_constant_field_is_constant():
    """A constant field's slices are all alike along every axis, so every plane sees the
    same images and the fused x̂_0 is constant wherever the network's zero padding does not
    reach (here: a network of 1x1 convolutions, no padding at all)."""
    diffusion = GaussianDiffusion(cosine_betas(100), objective="x0")

    def pointwise(x, t):
        return torch.stack([x[:, 0] * 2, x[:, 1] - 1, -x[:, 2]], 1)

    x_t = torch.full((1, 3, 5, 7, 9), 0.3)
    x0, _ = multiplane_denoiser(diffusion, pointwise, "mean", slices=4)(x_t, torch.tensor([10]))
    assert torch.allclose(x0, x0[:, :, :1, :1, :1].expand_as(x0), atol=1e-6)


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ddpm"])
@pytest.mark.parametrize("periodic", [False, True])
def test_a_2d_checkpoint_samples_3d_volumes(model_2d, sampler, periodic):
    gen = mdiff.load(model_2d)
    assert gen.dims == 2
    steps = None if sampler == "ddpm" else 4
    a = gen.sample(2, size=(8, 12, 16), sampler=sampler, steps=steps, seed=3, periodic=periodic,
                   slices=5)
    assert a.shape == (2, 8, 12, 16) and set(np.unique(a)) <= {0, 127, 255}
    b = gen.sample(1, size=(8, 12, 16), sampler=sampler, steps=steps, seed=3, periodic=periodic,
                   first=1, slices=64)
    assert np.array_equal(a[1], b[0])  # volume i depends on (seed, i) alone


def test_sample_cli_from_a_2d_checkpoint_and_its_refusals(model_2d, tmp_path, capsys):
    out = tmp_path / "samples"
    assert sample_main([str(model_2d), str(out), "-n", "2", "--size", "16", "--steps", "3",
                        "--fuse", "cycle"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["tiling"] == "planes" and info["fuse"] == "cycle" and info["size"] == [16] * 3
    # a 2D model's defaults: DDIM with eta = 1, one axis a step (plan.KIND_DEFAULTS)
    assert info["sampler"] == "ddim" and info["eta"] == 1.0 and info["steps"] == 3
    assert read_volume(out / "sample_001.tif").shape == (16, 16, 16)
    capsys.readouterr()
    for args, expected in ((["--tiling", "windows"], "--tiling"),
                           (["--overlap", "0.5"], "--overlap"),
                           (["--fractions", "0.5,0.3,0.2"], "--fractions"),
                           (["--guidance", "2"], "--guidance"),
                           (["--fractions-along", "z", "0:1,1,1", "1:1,2,1"], "--fractions"),
                           (["--slices", "0"], "--slices"),
                           (["--size", "9"], "multiple of")):
        assert sample_main([str(model_2d), str(tmp_path / "bad"), *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_a_3d_checkpoint_refuses_2d_flags_and_keeps_its_defaults(tmp_path, capsys):
    ckpt = mdiff.train(example=True, preset="tiny", out=tmp_path / "r3",
                       train={"steps": 1}, **QUIET)
    assert sample_main([str(ckpt), str(tmp_path / "s"), "--fuse", "cycle"]) == 2
    assert "2D models" in capsys.readouterr().err
    assert sample_main([str(ckpt), str(tmp_path / "s"), "--free-fractions"]) == 2
    assert "2D models" in capsys.readouterr().err
    assert sample_main([str(ckpt), str(tmp_path / "s"), "-n", "1", "--steps", "2"]) == 0
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["sampler"] == "dpm++" and info["steps"] == 2 and "fuse" not in info
    assert sample_main([str(ckpt), str(tmp_path / "d"), "--sampler", "ddpm", "--steps",
                        "5"]) == 2
    assert "--steps does not apply" in capsys.readouterr().err


def test_match_fractions_holds_each_volume_to_the_target():
    from mdiff.multiplane import match_fractions

    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 5, 6, 7) * 2 + torch.tensor([2.0, 0, -1])[:, None,
                                                                          None, None], 1)
    target = torch.tensor([0.2, 0.5, 0.3])
    got = (match_fractions(2 * p - 1, target, rounds=20) + 1) / 2
    assert torch.allclose(got.sum(1), torch.ones(2, 5, 6, 7), atol=1e-5)
    assert torch.allclose(got.mean(dim=(2, 3, 4)), target.expand(2, 3), atol=1e-3)
    assert (got.argmax(1) == p.argmax(1)).float().mean() < 1  # it moved the decisions


def test_2d_runs_record_their_images_fractions_and_sampling_holds_to_them(image_file, volume,
                                                                           model_2d, tmp_path):
    state = torch.load(model_2d, weights_only=True)
    image = volume[12]
    want = [float((image == label).mean()) for label in (0, 127, 255)]
    assert state["image_fractions"].tolist() == pytest.approx(want, abs=1e-6)
    gen = mdiff.load(model_2d)
    assert gen.plan(size=16).match_fractions == pytest.approx(want, abs=1e-5)
    assert gen.plan(size=16, free_fractions=True).match_fractions is None
    assert sample_main([str(model_2d), str(tmp_path / "s"), "-n", "1", "--size", "8",
                        "--steps", "2", "--free-fractions"]) == 0
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["match_fractions"] is None


def test_geometric_fusion_is_the_normalised_product_of_the_planes():
    diffusion = GaussianDiffusion(cosine_betas(100), objective="x0")
    model = _random_unet(TINY_2D)
    x_t = torch.randn(1, 3, 4, 6, 8)
    t = torch.tensor([30])
    logs = []
    for axis in range(3):
        p = (_reference(diffusion, model, x_t, t, (axis,)) + 1) / 2
        logs.append(torch.log(p.clamp_min(1e-6)))
    want = 2 * torch.softmax(sum(logs) / 3, dim=1) - 1
    got, _ = multiplane_denoiser(diffusion, model, "geo", slices=7)(x_t, t)
    assert torch.allclose(got, want, atol=1e-5)


# ---- training a 2D model -------------------------------------------------------------------

def test_2d_training_says_so_uses_the_2d_defaults_and_resumes(image_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([str(image_file), "--preset", "tiny", "--steps", "2", "--out",
                       str(out)]) == 0
    err = capsys.readouterr().err
    assert "a 2D model" in err and "patches of 16^2" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["unet"]["dims"] == 2 and state["unet"]["planes"] == 1
    assert state["train"]["batch_size"] == 4  # config.PRESETS_2D["tiny"]
    assert train_main(["--resume", "--out", str(out), "--steps", "3"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    assert train_main([str(image_file), "--dims", "3", "--preset", "tiny", "--out",
                       str(tmp_path / "r3")]) == 2
    assert "--dims 2" in capsys.readouterr().err


def test_dims_2_on_a_volume_trains_on_its_slices(volume, tmp_path):
    path = tmp_path / "v.tif"
    write_volume(path, volume)
    ckpt = mdiff.train([path], preset="tiny", out=tmp_path / "iso", unet={"dims": 2},
                       train={"steps": 1}, **QUIET)
    assert torch.load(ckpt, weights_only=True)["unet"]["planes"] == 1
    ckpt = mdiff.train([path], preset="tiny", out=tmp_path / "aniso", unet={"dims": 2},
                       train={"steps": 1, "augment": False}, **QUIET)
    state = torch.load(ckpt, weights_only=True)
    assert state["unet"]["planes"] == 3 and "planes.weight" in state["model"]
    assert mdiff.load(ckpt).sample(1, size=16, steps=2, seed=0).shape == (1, 16, 16, 16)


def test_oriented_images_train_an_anisotropic_model(volume, tmp_path, capsys):
    for plane, image in (("xy", volume[12]), ("xz", volume[:, 10]), ("yz", volume[:, :, 7])):
        tifffile.imwrite(tmp_path / f"{plane}.tif", image)
    out = tmp_path / "run"
    assert train_main(["--xy", str(tmp_path / "xy.tif"), "--xz", str(tmp_path / "xz.tif"),
                       "--preset", "tiny", "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no symmetries" in err and "xz images stand for them" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["unet"]["planes"] == 3 and state["train"]["augment"] is False
    assert set(state["data"]["planes"]) == {"xy", "xz"}
    assert train_main(["--yz", str(tmp_path / "yz.tif"), "--preset", "tiny", "--out",
                       str(tmp_path / "r2")]) == 2
    assert "needs xy images" in capsys.readouterr().err
    assert train_main(["--xz", str(tmp_path / "xz.tif"), "--example", "--out",
                       str(tmp_path / "r3")]) == 2
    capsys.readouterr()


def test_2d_models_refuse_conditioning(image_file, tmp_path, capsys):
    assert train_main([str(image_file), "--preset", "tiny", "--condition", "fractions",
                       "--out", str(tmp_path / "r")]) == 2
    assert "3D models" in capsys.readouterr().err


def test_presets_have_2d_defaults():
    from mdiff.config import PRESETS_2D

    assert set(PRESETS_2D) == set(PRESETS)


def test_a_volumes_slices_are_tagged_with_the_plane_they_lie_in():
    from mdiff.data import volume_slices

    # xy: rows y, columns x (a slice at fixed z); xz: rows z, columns x; yz: rows z, columns y
    sides = {"z": 3, "y": 4, "x": 5}
    volume = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    slices = volume_slices(volume)
    assert len(slices) == 3 + 4 + 5
    for image, plane in slices:
        cols, rows = PLANES[plane]  # "xz": columns x, rows z
        assert image.shape == (sides[rows], sides[cols])
    assert np.array_equal(slices[3][0], volume[:, 0]) and PLANES[slices[3][1]] == "xz"

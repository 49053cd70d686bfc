import math

import pytest
import torch

from mdiff.config import PRESETS, UNetConfig
from mdiff.unet import MEAN_SCALES, UNet, mean_features

TINY = PRESETS["tiny"].unet


@pytest.mark.parametrize("phases", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [16, 32])
def test_output_shape(phases, size):
    torch.manual_seed(0)
    cfg = UNetConfig(**{**TINY.__dict__, "phases": phases})
    model = UNet(cfg, patch=16)
    x = torch.randn(2, phases, size, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_downsampling_is_isotropic():
    model = UNet(UNetConfig(**{**TINY.__dict__, "channel_mult": (1, 2, 2)}), patch=16)
    shapes = []
    hook = lambda m, i, o: shapes.append(tuple(o.shape[2:]))
    for m in model.modules():
        if type(m).__name__ == "Downsample":
            m.register_forward_hook(hook)
    model(torch.randn(1, 3, 16, 16, 16), torch.tensor([3]))
    assert shapes == [(8, 8, 8), (4, 4, 4)]  # depth halves with height and width


def test_attention_where_configured():
    model = UNet(TINY, patch=16)  # levels at 16 and 8; attention at 8
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    assert any(n.startswith("down") for n in names) and any(n.startswith("middle") for n in names)


def test_periodic_model_is_translation_equivariant():
    torch.manual_seed(0)
    cfg = UNetConfig(**{**TINY.__dict__, "periodic": True})
    model = UNet(cfg, 16).eval()
    for p in model.parameters():  # zero-initialised outputs would make the test vacuous
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 3, 16, 16, 16)
    t = torch.tensor([10])
    shifted = model(torch.roll(x, 4, dims=2), t)  # shift by a multiple of the down factor
    torch.testing.assert_close(shifted, torch.roll(model(x, t), 4, dims=2), rtol=1e-4,
                               atol=1e-4)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = UNetConfig(**{**TINY.__dict__, "grad_checkpoint": True})
    a = UNet(cfg, 16)
    b = UNet(TINY, 16)
    b.load_state_dict(a.state_dict())
    for p in list(a.parameters()) + list(b.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 16, 16, 16)
    t = torch.tensor([5])
    a(x, t).square().mean().backward()
    b(x, t).square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_bf16_autocast_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = UNet(TINY, 16).cuda()
    x = torch.randn(2, 3, 16, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, torch.tensor([1, 2], device="cuda"))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mean_features_reference():
    """Each channel's mean m over the spatial axes and tanh(m·√V/s), on a non-contiguous view
    of odd sides, against a float64 reference."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 10, 7)[..., ::2, :]
    assert not x.is_contiguous()
    m = x.double().flatten(2).mean(2)
    z = m * math.sqrt(6 * 5 * 7)
    want = torch.cat([torch.tanh(z / s) for s in MEAN_SCALES] + [m], 1)
    feats = mean_features(x)
    assert feats.shape == (3, 2 * (len(MEAN_SCALES) + 1))
    assert torch.allclose(feats.double(), want, atol=1e-6)


def test_mean_input_starts_as_the_plain_model_and_reads_the_cube_mean():
    torch.manual_seed(0)
    plain = UNet(TINY, 16).eval()
    for p in plain.parameters():  # a trained-like model: no zero-initialised layers
        torch.nn.init.normal_(p, std=0.1)
    torch.manual_seed(0)
    with_mean = UNet(UNetConfig(**{**TINY.__dict__, "mean_input": True}), 16).eval()
    with_mean.load_state_dict(plain.state_dict(), strict=False)
    x, t = torch.randn(2, 3, 16, 16, 16), torch.tensor([990, 10])
    with torch.no_grad():
        assert torch.equal(plain(x, t), with_mean(x, t))  # zero-initialised: no change yet
        torch.nn.init.normal_(with_mean.mean_embed[-1].weight)
        assert not torch.allclose(plain(x, t), with_mean(x, t), atol=1e-4)
    # and it learns: the loss reaches the mean embedding's weights
    with_mean.train()
    with_mean(x, t).square().mean().backward()
    assert with_mean.mean_embed[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [3, 2])
def test_reflect_padding_keeps_a_uniform_input_uniform_where_zeros_mark_the_faces(dims):
    # a uniform input: with reflect padding every layer's features stay uniform, so the
    # output is the same at a face as at the centre; zero padding marks the faces
    torch.manual_seed(0)
    shape = (1, 3) + (16,) * dims
    outs = {}
    for padding in ("zeros", "reflect"):
        cfg = UNetConfig(**{**TINY.__dict__, "padding": padding, "dims": dims})
        model = UNet(cfg, 16).eval()
        for p in model.parameters():  # zero-initialised outputs would make the test vacuous
            torch.nn.init.normal_(p, std=0.1)
        with torch.no_grad():
            outs[padding] = model(torch.full(shape, 0.3), torch.tensor([500]))
    spread = lambda out: float((out - out.flatten(2).mean(2)[(...,) + (None,) * dims]).abs().max())
    assert spread(outs["reflect"]) < 1e-4 * float(outs["reflect"].abs().max())
    assert spread(outs["zeros"]) > 1e-2 * float(outs["zeros"].abs().max())


def test_set_periodic_goes_back_to_the_trained_padding():
    model = UNet(UNetConfig(**{**TINY.__dict__, "padding": "reflect"}), 16)
    modes = lambda: {m.padding_mode for m in model.modules()
                     if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1}
    assert modes() == {"reflect"}
    model.set_periodic(True)
    assert modes() == {"circular"}
    model.set_periodic(False)
    assert modes() == {"reflect"}
    assert UNetConfig().padding == "zeros"  # old checkpoints (no field) keep zero padding
    with pytest.raises(ValueError, match="padding must be one of"):
        UNet(UNetConfig(**{**TINY.__dict__, "padding": "edge"}), 16)

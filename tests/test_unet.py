import pytest
import torch

from mdiff.config import PRESETS, UNetConfig
from mdiff.unet import UNet

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

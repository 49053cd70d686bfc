import numpy as np
import pytest
import torch

from mdiff.config import DiffusionConfig
from mdiff.diffusion import GaussianDiffusion, cosine_betas, linear_betas
from mdiff.samplers import ddim_sample, ddpm_sample


@pytest.fixture
def process():
    return GaussianDiffusion.from_config(DiffusionConfig(timesteps=1000))


def test_schedule_properties(process):
    abar = process.alphas_cumprod
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < abar[0] < 1
    assert np.all(process.betas <= 0.999) and np.all(process.betas > 0)
    # ᾱ_t = f(t) / f(0) where not clipped
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(abar[:900], f(np.arange(1, 901)) / f(0), rtol=1e-10)
    assert np.all(np.diff(linear_betas(1000)) > 0)


def test_q_sample_equals_iterated_forward_process():
    process = GaussianDiffusion(cosine_betas(50))
    torch.manual_seed(0)
    x0 = torch.randn(4000, 1, 1, 1, 1, dtype=torch.float64)
    x = x0.clone()
    t = 30
    for s in range(t + 1):  # eq. 1, one step at a time
        x = (1 - process.betas[s]) ** 0.5 * x + process.betas[s] ** 0.5 * torch.randn_like(x)
    # same distribution: mean √ᾱ x0, variance 1 − ᾱ
    resid = x - process.sqrt_alphas_cumprod[t] * x0
    assert abs(resid.mean().item()) < 0.05
    assert resid.var().item() == pytest.approx(1 - process.alphas_cumprod[t], rel=0.08)
    closed = process.q_sample(x0.float(), torch.full((4000,), t), torch.zeros_like(x0).float())
    torch.testing.assert_close(closed, process.sqrt_alphas_cumprod[t] * x0.float())


def test_posterior_mean_is_eq8(process):
    torch.manual_seed(1)
    x_t = torch.randn(3, 2, 4, 4, 4)
    eps = torch.randn_like(x_t)
    t = torch.tensor([5, 400, 999])
    x0 = process.predict_xstart_from_eps(x_t, t, eps)
    mean, var = process.q_posterior_mean_variance(x0, x_t, t)
    for i, s in enumerate(t.tolist()):
        b, a, abar = process.betas[s], 1 - process.betas[s], process.alphas_cumprod[s]
        eq8 = (x_t[i] - b / (1 - abar) ** 0.5 * eps[i]) / a ** 0.5
        torch.testing.assert_close(mean[i], eq8, rtol=1e-4, atol=1e-4)
        expected_var = b * (1 - process.alphas_cumprod_prev[s]) / (1 - abar)
        assert var[i].item() == pytest.approx(expected_var, rel=1e-5)


def _toy_model(x, t):
    return 0.3 * x + 0.001 * t.float()[:, None, None, None, None]


def test_ddim_eta1_all_steps_is_ancestral():
    process = GaussianDiffusion(cosine_betas(40))
    shape = (2, 3, 3, 3)
    gens = lambda: [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    a = ddpm_sample(_toy_model, process, shape, gens(), clip_denoised=False)
    b = ddim_sample(_toy_model, process, shape, gens(), eta=1.0, clip_denoised=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_respace_keeps_alphas(process):
    sub = process.respace(50)
    assert sub.num_timesteps == 50
    np.testing.assert_allclose(sub.alphas_cumprod, process.alphas_cumprod[sub.timestep_map])
    assert sub.timestep_map[0] == 0 and sub.timestep_map[-1] == 999
    assert process.respace(1000).timestep_map.tolist() == list(range(1000))


def test_ddim_deterministic_and_batch_independent():
    process = GaussianDiffusion(cosine_betas(100)).respace(10)
    g = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    both = ddim_sample(_toy_model, process, (2, 4, 4, 4), g([1, 2]))
    one = ddim_sample(_toy_model, process, (2, 4, 4, 4), g([2]))
    torch.testing.assert_close(both[1:], one)


def test_ddim_from_a_noised_volume_with_the_true_noise_returns_it():
    """An oracle model (the exact ε of a known x_0) takes DDIM from x_t at any step back to
    x_0: checks the x_t/start entry point used to denoise noised real volumes."""
    process = GaussianDiffusion(cosine_betas(200)).respace(20)
    torch.manual_seed(3)
    x0 = torch.randn(2, 2, 4, 4, 4).sign()
    seen = []

    def oracle(x, t):
        seen.append(int(t[0]))
        abar = torch.as_tensor(process.alphas_cumprod, dtype=torch.float32)[
            torch.searchsorted(torch.as_tensor(process.timestep_map), t)]
        abar = abar[:, None, None, None, None]
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    for start in (5, 12, 19):
        seen.clear()
        x_t = process.q_sample(x0, torch.full((2,), start), torch.randn_like(x0))
        got = ddim_sample(oracle, process, x0.shape[1:], [None, None], x_t=x_t, start=start)
        torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)
        assert seen == process.timestep_map[start::-1].tolist()  # steps start, ..., 0

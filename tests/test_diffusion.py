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
    denoise = process.denoiser(_toy_model, clip_denoised=False)
    a = ddpm_sample(denoise, process, shape, gens())
    b = ddim_sample(denoise, process, shape, gens(), eta=1.0)
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
    both = ddim_sample(process.denoiser(_toy_model), process, (2, 4, 4, 4), g([1, 2]))
    one = ddim_sample(process.denoiser(_toy_model), process, (2, 4, 4, 4), g([2]))
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
        got = ddim_sample(process.denoiser(oracle), process, x0.shape[1:], [None, None],
                          x_t=x_t, start=start)
        torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)
        assert seen == process.timestep_map[start::-1].tolist()  # steps start, ..., 0


# --- objectives: the one place that reads the network's output -------------------------------

def _known(process, seed=0):
    torch.manual_seed(seed)
    index = torch.randint(0, 3, (2, 5, 6, 7))
    x0 = torch.nn.functional.one_hot(index, 3).movedim(-1, 1).float() * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([3, process.num_timesteps - 5])
    return x0, noise, t, process.q_sample(x0, t, noise)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_predict_of_the_exact_output_recovers_x0_and_eps(objective):
    """Feed each objective the output a perfect network would give: x̂_0 and ε̂ are the truth."""
    process = GaussianDiffusion(cosine_betas(100), objective=objective)
    x0, noise, t, x_t = _known(process)
    a = torch.as_tensor(process.sqrt_alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1, 1)
    s = torch.as_tensor(process.sqrt_one_minus_alphas_cumprod,
                        dtype=torch.float32)[t].view(-1, 1, 1, 1, 1)
    exact = {"eps": noise, "v": a * noise - s * x0, "x0": 60.0 * x0}[objective]
    x_start, eps = process.predict(lambda x, tt: exact, x_t, t, clip_denoised=False)
    torch.testing.assert_close(x_start, x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(eps[1], noise[1], rtol=0, atol=1e-3)
    # at t = 3 ε̂ = (x_t − √ᾱ x̂_0)/√(1 − ᾱ) amplifies x̂_0's float error by √(ᾱ/(1 − ᾱ))
    torch.testing.assert_close(eps[0], noise[0], rtol=0, atol=2e-2)


def test_x0_prediction_is_the_posterior_mean_of_the_one_hot():
    process = GaussianDiffusion(cosine_betas(50), objective="x0")
    logits = torch.randn(2, 4, 3, 3, 3)
    x_t = torch.randn_like(logits)
    t = torch.tensor([10, 40])
    x_start, eps = process.predict(lambda x, tt: logits, x_t, t)
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(x_start, p * 1 + (1 - p) * -1)  # E[one-hot in {-1, 1}]
    assert x_start.sum(1).allclose(torch.full((2, 3, 3, 3), 2.0 - 4.0))
    torch.testing.assert_close(eps, process.predict_eps_from_xstart(x_t, t, x_start))


def test_losses_match_hand_written_formulas():
    betas = cosine_betas(100)
    x0, noise, t, _ = _known(GaussianDiffusion(betas))
    out = torch.randn_like(x0)
    model = lambda x, tt: out
    abar = torch.as_tensor(np.cumprod(1 - betas), dtype=torch.float32)[t]
    snr = abar / (1 - abar)
    ce = GaussianDiffusion(betas, objective="x0").training_losses(model, x0, t, noise)
    logp = torch.log_softmax(out, 1)
    hand = -(logp * (x0 + 1) / 2).sum(1).flatten(1).mean(1)
    torch.testing.assert_close(ce, hand)
    mse = (noise - out).pow(2).flatten(1).mean(1)
    weighted = GaussianDiffusion(betas, objective="eps", snr_gamma=5.0).training_losses(
        model, x0, t, noise)
    torch.testing.assert_close(weighted, mse * snr.clamp(max=5) / snr)
    v = abar.sqrt().view(-1, 1, 1, 1, 1) * noise - (1 - abar).sqrt().view(-1, 1, 1, 1, 1) * x0
    got = GaussianDiffusion(betas, objective="v", snr_gamma=5.0).training_losses(
        model, x0, t, noise)
    torch.testing.assert_close(got, (v - out).pow(2).flatten(1).mean(1)
                               * snr.clamp(max=5) / (snr + 1))


def test_snr_shift_divides_the_snr_everywhere():
    from mdiff.diffusion import shift_betas

    base = GaussianDiffusion(cosine_betas(1000))
    shifted = GaussianDiffusion(shift_betas(base.betas, 2.0))
    snr = lambda p: p.alphas_cumprod / (1 - p.alphas_cumprod)
    np.testing.assert_allclose(snr(shifted) * 4, snr(base), rtol=1e-5)
    same = GaussianDiffusion.from_config(DiffusionConfig(snr_shift=1.0))
    np.testing.assert_array_equal(same.betas, base.betas)


def test_self_conditioning_feeds_the_previous_estimate():
    process = GaussianDiffusion(cosine_betas(30), objective="x0",
                                self_condition=True).respace(4)
    seen = []

    def model(x, t, x_self):
        seen.append(x_self.clone())
        return torch.full_like(x, 0.0) + 0.01 * t.float().view(-1, 1, 1, 1, 1) * torch.arange(
            x.shape[1]).float().view(1, -1, 1, 1, 1)

    ddim_sample(process.denoiser(model), process, (3, 2, 2, 2),
                [torch.Generator().manual_seed(0)])
    assert len(seen) == 4 and torch.count_nonzero(seen[0]) == 0
    for step, previous in zip(seen[1:], seen[:-1]):
        assert torch.count_nonzero(step) > 0 and not torch.equal(step, previous)
    # the estimate fed at call k+1 is x̂_0 of call k: softmax of that call's logits
    t_first = int(process.timestep_map[-1])
    expected = 2 * torch.softmax(0.01 * t_first * torch.arange(3.0), 0) - 1
    torch.testing.assert_close(seen[1][0, :, 0, 0, 0], expected)


def test_ddim_from_noised_volume_with_an_x0_oracle_returns_it():
    process = GaussianDiffusion(cosine_betas(200), objective="x0").respace(20)
    x0, _, _, _ = _known(process, seed=4)
    oracle = lambda x, t: 50.0 * x0
    x_t = process.q_sample(x0, torch.full((2,), 12), torch.randn_like(x0))
    got = ddim_sample(process.denoiser(oracle), process, x0.shape[1:], [None, None], x_t=x_t,
                      start=12)
    torch.testing.assert_close(got, x0, rtol=0, atol=1e-3)


def test_soft_morphology_equals_pooling_and_the_cldice_term_sees_a_broken_throat():
    import torch.nn.functional as F

    from mdiff.diffusion import _soft_dilate, _soft_erode, soft_cldice, soft_skeleton

    x = torch.rand(2, 3, 7, 10, 9)
    want = None
    for kernel in ((3, 1, 1), (1, 3, 1), (1, 1, 3)):
        e = -F.max_pool3d(-x, kernel, 1, tuple(k // 2 for k in kernel))
        want = e if want is None else torch.minimum(want, e)
    assert torch.equal(_soft_erode(x), want)
    assert torch.equal(_soft_dilate(x), F.max_pool3d(x, 3, 1, 1))
    image = torch.rand(2, 2, 9, 8)
    assert torch.equal(_soft_dilate(image), F.max_pool2d(image, 3, 1, 1))
    rod = torch.zeros(1, 2, 16, 16, 16)
    rod[:, 1, :, 6:10, 6:10] = 1
    rod[:, 0] = 1 - rod[:, 1]
    skeleton = soft_skeleton(rod[:, 1:]) > 0.5
    assert skeleton.any() and not (skeleton & (rod[:, 1:] == 0)).any()
    assert soft_cldice(rod, rod).item() == pytest.approx(0, abs=1e-6)
    broken = rod.clone()
    broken[:, 1, 7:9] = 0
    broken[:, 0] = 1 - broken[:, 1]
    thinner = rod.clone()  # the same voxels lost from the rod's side instead of its throat
    thinner[:, 1, :, 6, 6:8] = 0
    thinner[:, 0] = 1 - thinner[:, 1]
    assert soft_cldice(broken, rod).item() > soft_cldice(thinner, rod).item() + 0.1
    logits = torch.randn(2, 2, 16, 16, 16, requires_grad=True)
    soft_cldice(torch.softmax(logits, 1), rod.repeat(2, 1, 1, 1, 1)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_the_topology_term_adds_to_the_x0_loss_only_where_weighted():
    from mdiff.config import DiffusionConfig

    torch.manual_seed(0)
    x = torch.zeros(2, 2, 8, 8, 8)
    x[:, 1, :, 2:5, 2:5] = 1
    x = x.where(torch.arange(2)[None, :, None, None, None] == 1, 1 - x[:, 1:2])
    x_start = x * 2 - 1
    t, noise = torch.tensor([10, 60]), torch.randn_like(x_start)
    logits = torch.randn_like(x_start)

    def model(x_t, tt):
        return logits

    plain = GaussianDiffusion.from_config(DiffusionConfig(timesteps=100, objective="x0"))
    weighted = GaussianDiffusion.from_config(DiffusionConfig(timesteps=100, objective="x0",
                                                             topology_weight=0.5))
    from mdiff.diffusion import soft_cldice

    extra = 0.5 * soft_cldice(torch.softmax(logits, 1), x)
    assert torch.allclose(weighted.training_losses(model, x_start, t, noise),
                          plain.training_losses(model, x_start, t, noise) + extra)


@pytest.mark.parametrize("shape", [(9, 14, 11), (16, 7, 12)])
def test_thin_parts_are_what_an_opening_of_radius_two_removes(shape):
    """Against scipy.ndimage: the voxels of each phase that erosion then dilation by the
    face-neighbour cross, twice each, removes (the outside neither erodes nor dilates)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    from mdiff.diffusion import THIN_RADIUS, thin_parts

    rng = np.random.default_rng(7)
    labels = (ndimage.uniform_filter(rng.random(shape), 3) * 3).astype(int).clip(0, 2)
    one_hot = np.stack([labels == k for k in range(3)])
    x_start = torch.from_numpy(one_hot).float()[None].transpose(2, 4) * 2 - 1  # non-contiguous
    got = thin_parts(x_start)[0].transpose(0, 2).numpy()
    cross = ndimage.generate_binary_structure(3, 1)
    want = np.zeros(shape, dtype=bool)
    for m in one_hot:
        opened = ndimage.binary_dilation(
            ndimage.binary_erosion(m, cross, THIN_RADIUS, border_value=1), cross, THIN_RADIUS)
        want |= m & ~opened
    assert want.any() and not want.all()
    assert np.array_equal(got > 0.5, want) and set(np.unique(got)) <= {0.0, 1.0}


@pytest.mark.parametrize("radius", [0, 1])
@pytest.mark.parametrize("shape", [(9, 13, 11), (12, 7, 10)])
def test_spanning_parts_are_the_clusters_that_join_opposite_faces(shape, radius):
    from scipy import ndimage

    from mdiff.diffusion import spanning_parts

    rng = np.random.default_rng(sum(shape) + radius)
    labels = rng.integers(0, 3, size=(shape[2], shape[1], shape[0]))
    labels = ndimage.median_filter(labels, 2).transpose(2, 1, 0)  # non-contiguous, blobs
    one_hot = np.stack([labels == k for k in range(3)])
    x_start = torch.from_numpy(one_hot[None].astype(np.float32) * 2 - 1)
    got = spanning_parts(x_start, radius)[0].numpy()
    cross = ndimage.generate_binary_structure(3, 1)
    want = np.zeros(shape, dtype=bool)
    for m in one_hot:
        if radius:
            m = ndimage.binary_dilation(ndimage.binary_erosion(m, cross, radius, border_value=1),
                                        cross, radius) & m
        clusters, _ = ndimage.label(m, cross)
        for axis in range(3):
            first = set(np.unique(clusters.take(0, axis))) - {0}
            last = set(np.unique(clusters.take(-1, axis))) - {0}
            want |= np.isin(clusters, list(first & last))
    assert want.any() and not want.all()
    assert np.array_equal(got > 0.5, want) and set(np.unique(got)) <= {0.0, 1.0}
    # the 2D form: the clusters that join opposite edges of each image
    flat = torch.from_numpy(one_hot[:, 0][None].astype(np.float32) * 2 - 1)
    want2 = np.zeros(shape[1:], dtype=bool)
    for m in one_hot[:, 0]:
        clusters, _ = ndimage.label(m, ndimage.generate_binary_structure(2, 1))
        for axis in range(2):
            ends = set(np.unique(clusters.take(0, axis))) & set(np.unique(clusters.take(-1, axis)))
            want2 |= np.isin(clusters, list(ends - {0}))
    got2 = spanning_parts(flat)[0].numpy()
    assert np.array_equal(got2 > 0.5, want2)


def _throats_reference(mask, opened, reach):
    """Voxels of mask minus opened that see two or more 6-connected bodies of ``opened`` within
    a (2·reach + 1)-cube: scipy labelling, then each voxel's window looked at one by one."""
    from scipy import ndimage

    bodies, _ = ndimage.label(opened, ndimage.generate_binary_structure(mask.ndim, 1))
    out = np.zeros(mask.shape, bool)
    for at in zip(*np.nonzero(mask & ~opened)):
        window = tuple(slice(max(0, a - reach), a + reach + 1) for a in at)
        out[at] = len(set(np.unique(bodies[window])) - {0}) >= 2
    return out


@pytest.mark.parametrize("shape,reach", [((2, 9, 11, 10), 4), ((1, 12, 7, 13), 2)])
def test_throat_parts_are_the_thin_voxels_near_two_bodies(shape, reach):
    ndimage = pytest.importorskip("scipy.ndimage")

    from mdiff.diffusion import THIN_RADIUS, throat_parts

    rng = np.random.default_rng(sum(shape))
    field = ndimage.gaussian_filter(rng.standard_normal((shape[0], 3) + shape[1:]),
                                    (0, 0, 1.5, 1.5, 1.5))
    phase = field.argmax(1)
    one_hot = np.stack([phase == c for c in range(3)], 1)
    x_start = torch.from_numpy(one_hot.astype(np.float32) * 2 - 1)
    x_start = x_start.transpose(2, 4).contiguous().transpose(2, 4)  # non-contiguous input
    cross = ndimage.generate_binary_structure(3, 1)
    want = np.zeros(phase.shape, bool)
    for i in range(shape[0]):
        for c in range(3):
            m = one_hot[i, c]
            opened = ndimage.binary_dilation(  # as in the thin parts' test above
                ndimage.binary_erosion(m, cross, THIN_RADIUS, border_value=1), cross,
                THIN_RADIUS)
            want[i] |= _throats_reference(m, opened, reach)
    got = throat_parts(x_start, reach=reach)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))


def test_throat_parts_mark_a_neck_between_two_bodies_not_a_fin():
    from mdiff.diffusion import thin_parts, throat_parts

    x = torch.zeros(1, 2, 12, 22, 14)
    x[0, 1, 2:9, 1:8, 2:9] = 1  # a body
    x[0, 1, 2:9, 13:20, 2:9] = 1  # another
    x[0, 1, 5, 8:13, 5] = 1  # the neck between them, one voxel thick
    x[0, 1, 5, 4, 9:14] = 1  # a fin off the first body: thin, but it reaches no other
    x[:, 0] = 1 - x[:, 1]
    thin = thin_parts(x * 2 - 1)[0]
    throats = throat_parts(x * 2 - 1)[0]
    # the neck's ends lie in the opening (they are the bodies' own, rounded); its thin middle
    # is the throat, and nothing else: the fin and the one matrix phase around join nothing
    assert thin[5, 9:12, 5].all() and thin[5, 4, 11:14].all()
    assert throats[5, 9:12, 5].all() and throats.sum() == 3
    flat = throat_parts(x[:, :, 5] * 2 - 1)[0]  # 2D input: the same neck and fin in a plane
    assert flat[9:12, 5].all() and flat[4, 11:14].sum() == 0


def test_the_thin_and_span_weights_make_a_weighted_mean_of_the_cross_entropy():
    from mdiff.config import DiffusionConfig
    from mdiff.diffusion import spanning_parts, thin_parts, throat_parts

    x = torch.zeros(2, 2, 10, 10, 10)
    x[:, 1, :, 2:8, 2:8] = 1  # a bar: bulk
    x[:, 1, :, 4, 8:10] = 1  # and a one-voxel fin: thin
    x[:, 1, 4:6, 0, 0] = 1  # a pocket that joins no opposite faces: thin, not spanning
    x[:, 0] = 1 - x[:, 1]
    x_start = x * 2 - 1
    t, noise = torch.tensor([10, 60]), torch.randn_like(x_start)
    logits = torch.randn_like(x_start)
    weighted = GaussianDiffusion.from_config(DiffusionConfig(timesteps=100, objective="x0",
                                                             thin_weight=3.0))
    ce = torch.nn.functional.cross_entropy(logits, x.argmax(1), reduction="none").flatten(1)
    w = 1 + 3.0 * thin_parts(x_start).flatten(1)
    assert (w > 1).any()
    assert torch.allclose(weighted.training_losses(lambda x_t, tt: logits, x_start, t, noise),
                          (w * ce).sum(1) / w.sum(1))
    both = GaussianDiffusion.from_config(DiffusionConfig(timesteps=100, objective="x0",
                                                         thin_weight=3.0, span_weight=2.0))
    w = w + 2.0 * spanning_parts(x_start).flatten(1)
    w_at = w.view(x[:, 0].shape)
    assert w_at[0, 4, 0, 0] == 4 and w_at[0, 4, 5, 5] == 3 and w_at[0, 4, 4, 9] == 6
    assert torch.allclose(both.training_losses(lambda x_t, tt: logits, x_start, t, noise),
                          (w * ce).sum(1) / w.sum(1))
    throat = GaussianDiffusion.from_config(DiffusionConfig(timesteps=100, objective="x0",
                                                           throat_weight=4.0))
    w = 1 + 4.0 * throat_parts(x_start).flatten(1)
    assert torch.allclose(throat.training_losses(lambda x_t, tt: logits, x_start, t, noise),
                          (w * ce).sum(1) / w.sum(1))

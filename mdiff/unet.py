"""The 3D U-Net noise predictor ε_θ(x_t, t) of the paper's §3.2.3 (Fig. 3), and its 2D twin.

Initial convolution; levels of residual blocks (GroupNorm in fp32, SiLU, time-embedding
injection) with multi-head self-attention at the coarse cube sides; stride-2 down-sampling on
all three axes (depth is a spatial axis here, not time); middle blocks with attention; mirrored
up-sampling levels fed by skip connections; final norm, SiLU and convolution. Tensors are
(N, C, D, H, W). The network knows nothing of the noise schedule.

``UNetConfig.dims = 2`` builds the same network with 2D convolutions on (N, C, H, W) images: a
model trained on 2D micrographs, which ``mdiff.multiplane`` turns into a 3D denoiser.
"""
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import descriptors
from .config import PADDINGS, UNetConfig


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding (N,) → (N, dim) of (possibly fractional) timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the autocast dtype: statistics over 64³ voxels
    lose too much precision in bf16."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias,
                            self.eps).to(x.dtype)


def norm(channels, groups):
    groups = math.gcd(channels, min(groups, channels))
    return GroupNorm32(groups, channels)


CONVS = {2: nn.Conv2d, 3: nn.Conv3d}


def conv(cin, cout, kernel=3, stride=1, periodic=False, dims=3, padding="zeros"):
    return CONVS[dims](cin, cout, kernel, stride=stride, padding=kernel // 2,
                       padding_mode="circular" if periodic and kernel > 1 else padding)


MEAN_SCALES = (1.0, 4.0, 16.0, 64.0, 256.0)


def mean_features(x):
    """(N, C, *spatial) → (N, C·(len(MEAN_SCALES) + 1)): each channel's mean m over the
    spatial axes, and tanh(m·√V / s) for the scales s, V the voxel count. Under pure noise
    m·√V ~ N(0, 1), at low noise m is the cube's composition (in [−1, 1]): every scale in
    between is resolved by one of the features and none is unbounded."""
    m = x.float().flatten(2).mean(2)
    z = m * math.sqrt(x[0, 0].numel())
    return torch.cat([torch.tanh(z / s) for s in MEAN_SCALES] + [m], dim=1)


def to_grid(field, size, periodic=False):
    """A coarse field (N, C, *grid) interpolated (trilinear, cell centres) onto ``size``, each
    side an integer multiple of the grid's; with ``periodic`` the field wraps round the faces
    (one cell of circular padding interpolated and cut off again) instead of being held
    constant beyond the outer cell centres. A constant field stays that constant."""
    grid = field.shape[2:]
    if tuple(grid) == tuple(size):
        return field
    mode = "trilinear" if field.ndim == 5 else "bilinear"
    if not periodic:
        return F.interpolate(field, size=tuple(size), mode=mode, align_corners=False)
    scale = [s // g for s, g in zip(size, grid)]
    padded = F.pad(field, [1, 1] * len(grid), mode="circular")
    out = F.interpolate(padded, size=[s + 2 * k for s, k in zip(size, scale)], mode=mode,
                        align_corners=False)
    return out[(slice(None), slice(None), *(slice(k, k + s) for k, s in zip(scale, size)))]


def zero(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim, cfg):
        super().__init__()
        self.norm1 = norm(cin, cfg.groups)
        self.conv1 = conv(cin, cout, periodic=cfg.periodic, dims=cfg.dims,
                          padding=cfg.padding)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = norm(cout, cfg.groups)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = zero(conv(cout, cout, periodic=cfg.periodic, dims=cfg.dims,
                               padding=cfg.padding))
        self.skip = nn.Identity() if cin == cout else conv(cin, cout, kernel=1, dims=cfg.dims)
        self.periodic = cfg.periodic  # how a condition field wraps (``UNet.set_periodic``)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        if emb.ndim == 2:
            e = self.emb(F.silu(emb))
            h = h + e.reshape(*e.shape, *[1] * (h.ndim - 2)).to(h.dtype)
        else:  # a field of embeddings (N, E, *grid): projected per cell, then to h's grid
            e = self.emb(F.silu(emb).movedim(1, -1)).movedim(-1, 1)
            h = h + to_grid(e, h.shape[2:], self.periodic).to(h.dtype)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the voxels of a (coarse) feature cube, within windows of
    side ``window`` (the side this level had in training): a larger volume is attended window
    by window, so the cost stays linear in the volume and every voxel attends to a context of
    the size the network learnt (attention over the whole of a 128³ sample's coarse levels
    needs tens of GB)."""

    def __init__(self, channels, heads, cfg, window=None):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.window = window
        self.norm = norm(channels, cfg.groups)
        self.qkv = conv(channels, 3 * channels, 1, dims=cfg.dims)
        self.out = zero(conv(channels, channels, 1, dims=cfg.dims))

    def _attend(self, x):
        n, c = x.shape[:2]
        qkv = self.qkv(x).reshape(n, 3, self.heads, c // self.heads, -1)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, L, C/heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return y.transpose(-1, -2).reshape(x.shape)

    def forward(self, x, emb=None):
        h = self.norm(x)
        s = self.window
        if not s or max(x.shape[2:]) <= s:
            return x + self.out(self._attend(h))
        y = torch.empty_like(h)
        for corner in itertools.product(*(range(0, n, s) for n in x.shape[2:])):
            window = (slice(None), slice(None), *(slice(a, a + s) for a in corner))
            y[window] = self._attend(h[window])
        return x + self.out(y)


class Downsample(nn.Module):
    def __init__(self, channels, cfg):
        super().__init__()
        self.conv = conv(channels, channels, stride=2, periodic=cfg.periodic, dims=cfg.dims,
                         padding=cfg.padding)

    def forward(self, x, emb=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels, cfg):
        super().__init__()
        self.conv = conv(channels, channels, periodic=cfg.periodic, dims=cfg.dims,
                         padding=cfg.padding)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """(N, phases, S, S, S) noisy cube and (N,) timesteps → (N, phases, S, S, S): ε, v or phase
    logits, as the diffusion's objective reads it.

    ``patch`` is the training cube side: attention runs at the levels whose side is in
    ``cfg.attention_sizes`` for that side, and keeps those levels at other sample sizes, where
    it attends within windows of the side the level had in training.
    ``self_condition``: a third input, the previous x̂_0 (N, phases, S, S, S), enters as extra
    channels of the first convolution.
    """

    def __init__(self, cfg: UNetConfig, patch: int, self_condition: bool = False):
        super().__init__()
        self.cfg = cfg
        levels = len(cfg.channel_mult)
        if patch % 2 ** (levels - 1):
            raise ValueError(f"patch {patch} is not divisible by 2^{levels - 1}")
        if cfg.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, "
                             f"got {cfg.padding!r}")
        self.padding = cfg.padding
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.cond_embed = None
        self.cond_size = 0
        if cfg.condition != "none":
            # each descriptor value through the sinusoidal embedding of the timesteps (at
            # value·1000, so that differences of 0.01 are resolved), plus the "given" flag;
            # zero-initialised output: training starts from the unconditional model
            self.cond_size = descriptors.size(cfg.condition, cfg.phases)
            self.cond_embed = nn.Sequential(nn.Linear(self.cond_size * ch + 1, emb_dim), nn.SiLU(),
                                            zero(nn.Linear(emb_dim, emb_dim)))
        self.mean_embed = None
        if cfg.mean_input:  # zero-initialised too: training starts from the plain model
            self.mean_embed = nn.Sequential(
                nn.Linear(cfg.phases * (len(MEAN_SCALES) + 1), emb_dim), nn.SiLU(),
                zero(nn.Linear(emb_dim, emb_dim)))
        self.self_condition = self_condition
        self.planes = None
        if cfg.planes > 1:  # an anisotropic 2D model: which plane (xy, xz, yz) it denoises
            self.planes = nn.Embedding(cfg.planes, emb_dim)
            nn.init.zeros_(self.planes.weight)
        self.input = conv(cfg.phases * (2 if self_condition else 1), ch, periodic=cfg.periodic,
                          dims=cfg.dims, padding=cfg.padding)
        self.down = nn.ModuleList()
        skips = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            attend = (patch >> level) in cfg.attention_sizes
            for _ in range(cfg.blocks_per_level):
                blocks = [ResBlock(ch, mult * cfg.base_channels, emb_dim, cfg)]
                ch = mult * cfg.base_channels
                if attend:
                    blocks.append(Attention(ch, cfg.heads, cfg, patch >> level))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch, cfg)]))
                skips.append(ch)
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg),
                                     Attention(ch, cfg.heads, cfg, patch >> (levels - 1)),
                                     ResBlock(ch, ch, emb_dim, cfg)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            attend = (patch >> level) in cfg.attention_sizes
            for i in range(cfg.blocks_per_level + 1):
                blocks = [ResBlock(ch + skips.pop(), mult * cfg.base_channels, emb_dim, cfg)]
                ch = mult * cfg.base_channels
                if attend:
                    blocks.append(Attention(ch, cfg.heads, cfg, patch >> level))
                if level > 0 and i == cfg.blocks_per_level:
                    blocks.append(Upsample(ch, cfg))
                self.up.append(nn.ModuleList(blocks))
        self.output = nn.Sequential(norm(ch, cfg.groups), nn.SiLU(),
                                    zero(conv(ch, cfg.phases, periodic=cfg.periodic,
                                              dims=cfg.dims, padding=cfg.padding)))

    def set_periodic(self, periodic):
        """Circular (periodic) padding in every convolution from now on, or the padding the
        model was trained with: a model trained either way can sample a volume that tiles
        space."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.kernel_size[0] > 1:
                m.padding_mode = "circular" if periodic else self.padding
            if isinstance(m, ResBlock):
                m.periodic = periodic

    def feature_bytes_per_voxel(self):
        """Bytes per voxel of the input of one full-resolution feature map (fp32): what a
        batch's largest allocations scale with (``plan.default_batch``)."""
        return 4 * self.cfg.channel_mult[0] * self.cfg.base_channels

    def activation_bytes_per_voxel(self):
        """Bytes of activations per voxel of the input while sampling (no gradients, fp32):
        the skip connections of every level (a level of side S/2^l holds 1/8^l of the voxels)
        plus a few working tensors of the widest full-resolution block. An estimate to refuse
        requests that cannot fit, checked against measured peaks in benchmarks/large_volume.py.
        A 2D model: bytes per pixel of its input (a level holds 1/4^l of them)."""
        cfg = self.cfg
        skips = cfg.base_channels  # the input convolution's output
        for level, mult in enumerate(cfg.channel_mult):
            skips += (cfg.blocks_per_level + (level < len(cfg.channel_mult) - 1)) \
                * mult * cfg.base_channels / (2 ** cfg.dims) ** level
        widest = 2 * cfg.channel_mult[0] * cfg.base_channels + cfg.channel_mult[-1] \
            * cfg.base_channels / 2
        return 4 * (skips + 4 * widest)

    @property
    def factor(self):
        """Sample sides must be multiples of this."""
        return 2 ** (len(self.cfg.channel_mult) - 1)

    def _run(self, blocks, h, emb):
        for block in blocks:
            if self.cfg.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, emb, use_reentrant=False)
            else:
                h = block(h, emb)
        return h

    def embed_condition(self, cond):
        """(M, k + 1) conditions → (M, E): each descriptor value through the sinusoidal
        embedding (at value·1000), masked by the "given" flag, then the condition MLP."""
        values, flag = cond[:, :-1], cond[:, -1:]
        feats = timestep_embedding(values.reshape(-1) * 1000, self.cfg.base_channels)
        return self.cond_embed(torch.cat([feats.reshape(len(cond), -1) * flag, flag], dim=1))

    def forward(self, x, t, x_self=None, cond=None, plane=None):
        """``cond``: (N, k + 1) condition of ``mdiff.descriptors`` (None: unconditional), or a
        field of conditions over the volume: an object whose ``embedded(embed)`` returns
        (N, E, *grid), the embeddings ``embed`` gives its conditions mixed cell by cell
        (``conditioning.ConditionField``), on a grid of which every level's side is an integer
        multiple; every block reads it interpolated to its own resolution, so one pass over a
        large volume carries a composition that varies from place to place (a field of one
        condition gives what the vector gives). Conditions are mixed after the embedding, not
        before: it resolves differences of 0.01, so a blend of values would oscillate from
        cell to cell where a blend of embeddings changes as smoothly as its weights.
        ``plane``: (N,) or one index of the plane each image lies in (0 xy, 1 xz, 2 yz), for
        a model with ``cfg.planes`` > 1."""
        ch = self.cfg.base_channels
        emb = self.time_embed(timestep_embedding(t, ch))
        if self.planes is not None:
            if plane is None:
                raise ValueError("this model tells planes apart: give plane=0 (xy), 1 (xz) "
                                 "or 2 (yz)")
            plane = torch.as_tensor(plane, device=x.device).long().expand(len(x))
            emb = emb + self.planes(plane)
        if self.cond_embed is not None:
            if cond is None:
                cond = torch.zeros(len(x), self.cond_size + 1, device=x.device)
            if hasattr(cond, "embedded"):  # (N, E, *grid): each block at its own resolution
                field = cond.embedded(self.embed_condition)
                emb = emb.reshape(*emb.shape, *[1] * (field.ndim - 2)) + field
            else:
                emb = emb + self.embed_condition(cond)
        if self.mean_embed is not None:
            m = self.mean_embed(mean_features(x))
            emb = emb + m.reshape(*m.shape, *[1] * (emb.ndim - 2))
        if self.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x_self is None else x_self.to(x.dtype)], 1)
        h = self.input(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.middle, h, emb)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, hs.pop()], dim=1), emb)
        return self.output(h).to(x.dtype)

"""Stochastic reference microstructures: a thresholded Gaussian random field.

White noise smoothed by a Gaussian kernel of standard deviation ``length`` voxels (in Fourier
space, so the field is periodic), then cut at its own quantiles so that each phase gets exactly
round(fraction · N) voxels: the truncated Gaussian model of stochastic geometry (Lantuéjoul,
*Geostatistical Simulation*, ch. 18). With n phases, phase i lies between phases i − 1 and
i + 1 of the field, as in a one-field plurigaussian model.

It is the built-in example (``mdiff-train --example``) and the classical baseline that a learned
generator has to beat (``benchmarks/fidelity.py``).
"""
from dataclasses import dataclass

import numpy as np

from .errors import MdiffError


@dataclass
class SynthConfig:
    shape: tuple = (128, 128, 128)  # (z, y, x) voxels
    fractions: tuple = (0.45, 0.40, 0.15)  # volume fraction per phase, in label order
    labels: tuple = (0, 127, 255)  # label value per phase
    length: float = 3.0  # correlation length: std of the Gaussian smoothing kernel, voxels
    seed: int = 0


EXAMPLE = SynthConfig()


def gaussian_field(shape, length, seed=0):
    """Periodic Gaussian random field (float32, zero mean) with a Gaussian covariance."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfftn(noise)
    del noise
    for axis, n in enumerate(shape):
        k = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        kernel = np.exp(-2.0 * (np.pi * length * k) ** 2).astype(np.float32)
        spectrum *= kernel.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return np.fft.irfftn(spectrum, s=shape, axes=range(len(shape))).astype(np.float32)


def phase_counts(n_voxels, fractions):
    """Integer voxel counts per phase, summing to n_voxels (largest remainder rounding)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    exact = fractions / fractions.sum() * n_voxels
    counts = np.floor(exact).astype(np.int64)
    short = n_voxels - counts.sum()
    counts[np.argsort(exact - counts)[::-1][:short]] += 1
    return counts


def threshold(field, fractions, labels):
    """Labels by rank of the field: the lowest round(f_0 N) values get labels[0], and so on.

    Ties at a threshold (float32 fields of millions of voxels have them) are split in voxel
    order so that the counts stay exact."""
    counts = phase_counts(field.size, fractions)
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    flat = field.ravel()
    cuts = np.cumsum(counts)[:-1]
    index = np.zeros(field.size, dtype=np.uint8)
    if len(cuts):
        thresholds = np.partition(flat, cuts)[cuts]
        for value in thresholds:
            index += flat > value
        for j, (value, cut) in enumerate(zip(thresholds, cuts)):
            tied = np.flatnonzero(flat == value)
            excess = int(np.count_nonzero(index <= j)) - int(cut)
            if excess > 0:
                index[tied[len(tied) - excess:]] = j + 1
    if not np.array_equal(np.bincount(index, minlength=len(counts)), counts):
        index[np.argsort(flat, kind="stable")] = np.repeat(  # whole phases tied: rank order
            np.arange(len(counts), dtype=np.uint8), counts)
    return np.asarray(labels, dtype=dtype)[index].reshape(field.shape)


def generate(shape=EXAMPLE.shape, fractions=EXAMPLE.fractions, labels=EXAMPLE.labels,
             length=EXAMPLE.length, seed=EXAMPLE.seed):
    """A (D, H, W) label volume with exact phase fractions; same seed → same volume."""
    shape = tuple(int(s) for s in shape)
    fractions = tuple(float(f) for f in fractions)
    labels = tuple(int(v) for v in labels)
    if len(shape) != 3 or min(shape) < 1:
        raise MdiffError(f"shape must be three positive sizes, got {shape}")
    if len(fractions) < 2 or len(fractions) != len(labels):
        raise MdiffError(f"need one fraction per label and at least two phases; got fractions "
                         f"{fractions} for labels {labels}")
    if min(fractions) <= 0 or abs(sum(fractions) - 1) > 0.01:
        raise MdiffError(f"fractions must be positive and sum to 1, got {fractions}")
    if abs(sum(fractions) - 1) > 1e-9:  # rounded ones (0.333, ...): normalised
        fractions = tuple(f / sum(fractions) for f in fractions)
    if len(set(labels)) != len(labels) or min(labels) < 0 or max(labels) > 65535:
        raise MdiffError(f"labels must be distinct values in 0..65535, got {labels}")
    if not length > 0:
        raise MdiffError(f"length must be positive, got {length}")
    order = np.argsort(labels)
    field = gaussian_field(shape, length, seed)
    return threshold(field, np.asarray(fractions)[order], np.asarray(labels)[order])

"""Stochastic reference microstructures: a thresholded Gaussian random field.

White noise smoothed by a Gaussian kernel of standard deviation ``length`` voxels (in Fourier
space, so the field is periodic), then cut at its own quantiles so that each phase gets exactly
round(fraction · N) voxels: the truncated Gaussian model of stochastic geometry (Lantuéjoul,
*Geostatistical Simulation*, ch. 18). With n phases, phase i lies between phases i − 1 and
i + 1 of the field, as in a one-field plurigaussian model — so in three phases the first and
the last never meet, and there is almost no triple-phase boundary. ``fields=2`` is a
two-field plurigaussian model: the first phase is cut from one field, and the rest of the
volume is split among the other phases by a second, independent field (the same length), so
every pair of phases meets and triple-phase lines run through the volume as in an electrode.

The two-field model is the built-in example (``mdiff-train --example``, ``mdiff-demo``,
``mdiff-synth``'s default; ``example()``), so that the example has the triple-phase boundary
an electrode has; ``generate()`` keeps one field unless asked. Both are the classical
baselines a learned generator has to beat (``benchmarks/fidelity.py``).
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
    fields: int = 1  # 1: one field cut at its quantiles; 2: the first phase from one, the
    # others split by a second (triple-phase boundaries)


EXAMPLE = SynthConfig(fields=2)


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


def example():
    """The built-in example: ``EXAMPLE``'s 128³ two-field structure of three phases."""
    return generate(EXAMPLE.shape, EXAMPLE.fractions, EXAMPLE.labels, EXAMPLE.length,
                    EXAMPLE.seed, EXAMPLE.fields)


def generate(shape=EXAMPLE.shape, fractions=EXAMPLE.fractions, labels=EXAMPLE.labels,
             length=EXAMPLE.length, seed=EXAMPLE.seed, fields=1):
    """A (D, H, W) label volume with exact phase fractions; same seed → same volume.
    ``fields``: 1 or 2 (see the module's note)."""
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
    if fields not in (1, 2):
        raise MdiffError(f"fields must be 1 or 2, got {fields}")
    order = np.argsort(labels)
    fractions, labels = np.asarray(fractions)[order], np.asarray(labels)[order]
    field = gaussian_field(shape, length, seed)
    if fields == 1 or len(labels) < 3:
        return threshold(field, fractions, labels)
    # the first phase where the first field is lowest; the rest split by a second field
    volume = threshold(field, (fractions[0], 1 - fractions[0]), (0, 1)).astype(bool)
    del field
    rest = np.flatnonzero(volume)
    second = gaussian_field(shape, length, (seed, 2)).ravel()[rest]
    out = np.full(volume.size, labels[0], dtype=np.uint8 if max(labels) < 256 else np.uint16)
    out[rest] = threshold(second, fractions[1:] / fractions[1:].sum(), labels[1:])
    return out.reshape(shape)

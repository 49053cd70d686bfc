"""Training cubes cut from uint8 label volumes, with the 48 symmetries of the cube.

Only the cubes of a batch are ever encoded: a cube is cut from the label volume, mapped to
phase indices (uint8), rotated/reflected, and one-hot encoded on the training device. The whole
volume is never copied in float or one-hot (a 750³ volume would need 5 GB per phase).
"""
import itertools

import numpy as np
import torch

from .errors import MdiffError
from .phases import one_hot

# the 48 symmetries of the cube: 6 axis permutations × 8 reflections
SYMMETRIES = [(perm, flips) for perm in itertools.permutations(range(3))
              for flips in itertools.product((False, True), repeat=3)]


def apply_symmetry(cube, index):
    """One of the 48 cube symmetries applied to a (D, D, D) numpy cube (a view)."""
    perm, flips = SYMMETRIES[index]
    cube = cube.transpose(perm)
    return cube[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


class CubeDataset:
    """Positions of training cubes in one or more label volumes.

    stride > 0: the regular grid of the paper (side ``patch``, stride 25 there); stride 0:
    uniformly random positions. ``batch(rng, n)`` draws n cubes as a uint8 index tensor."""

    def __init__(self, volumes, phase_map, patch, stride=25, augment=True, names=None):
        names = names or [f"volume {i}" for i in range(len(volumes))]
        for volume, name in zip(volumes, names):
            if min(volume.shape) < patch:
                raise MdiffError(f"{name}: the volume {volume.shape} is smaller than the "
                                 f"training cube side {patch}; use a smaller --patch")
        self.volumes = volumes
        self.lut = phase_map.lut(np.uint16 if any(v.dtype == np.uint16 for v in volumes)
                                 else np.uint8)
        self.n = phase_map.n
        self.patch = patch
        self.stride = stride
        self.augment = augment
        if stride > 0:
            self.positions = [(i, a, b, c) for i, v in enumerate(volumes)
                              for a in range(0, v.shape[0] - patch + 1, stride)
                              for b in range(0, v.shape[1] - patch + 1, stride)
                              for c in range(0, v.shape[2] - patch + 1, stride)]

    def __len__(self):
        return len(self.positions) if self.stride > 0 else 0

    def cube(self, rng):
        """One cube of phase indices (patch³ uint8), at a random position and symmetry."""
        if self.stride > 0:
            i, a, b, c = self.positions[rng.integers(len(self.positions))]
        else:
            i = int(rng.integers(len(self.volumes)))
            a, b, c = (int(rng.integers(s - self.patch + 1)) for s in self.volumes[i].shape)
        cube = self.cube_at((i, a, b, c))
        if self.augment:
            cube = apply_symmetry(cube, int(rng.integers(len(SYMMETRIES))))
        return np.ascontiguousarray(cube)

    def cube_at(self, position):
        """The cube of phase indices at (volume, z, y, x), as stored (no symmetry)."""
        i, a, b, c = position
        p = self.patch
        return self.lut[self.volumes[i][a:a + p, b:b + p, c:c + p]]

    def batch(self, rngs, device="cpu"):
        """(n, phases, P, P, P) float32 one-hot batch in [-1, 1] on ``device``: one cube per
        generator in ``rngs``."""
        index = torch.from_numpy(np.stack([self.cube(rng) for rng in rngs]))
        return one_hot(index.to(device), self.n)

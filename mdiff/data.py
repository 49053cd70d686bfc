"""Training cubes cut from uint8 label volumes, with the 48 symmetries of the cube; and training
patches cut from 2D label images (or from a volume's slices along every axis), with the 8
symmetries of the square.

Only the cubes of a batch are ever encoded: a cube is cut from the label volume, mapped to
phase indices (uint8), rotated/reflected, and one-hot encoded on the training device. The whole
volume is never copied in float or one-hot (a 750³ volume would need 5 GB per phase).
"""
import itertools

import numpy as np
import torch

from .errors import MdiffError
from .grid import grid_starts
from .io import same_spacing
from .phases import one_hot

# the 48 symmetries of the cube: 6 axis permutations × 8 reflections
SYMMETRIES = [(perm, flips) for perm in itertools.permutations(range(3))
              for flips in itertools.product((False, True), repeat=3)]
# the 8 symmetries of the square: 2 axis orders × 4 reflections
SQUARE_SYMMETRIES = [(perm, flips) for perm in itertools.permutations(range(2))
                     for flips in itertools.product((False, True), repeat=2)]
PLANES = ("xy", "xz", "yz")  # the plane an image lies in; a volume's slices along z, y, x


def spacing_symmetries(voxel_size):
    """Indices into SYMMETRIES of the symmetries that keep a (z, y, x) voxel spacing: the
    reflections always, an axis permutation only where it swaps axes of equal spacing (a
    FIB-SEM stack of thicker slices keeps the 16 that fix z; any spacing keeps the 8
    reflections). All 48 for cubic voxels or an unknown spacing."""
    if voxel_size is None:
        return list(range(len(SYMMETRIES)))
    spacing = [float(v) for v in voxel_size]
    return [k for k, (perm, _) in enumerate(SYMMETRIES)
            if same_spacing([spacing[p] for p in perm], spacing)]


def apply_symmetry(cube, index, symmetries=SYMMETRIES):
    """One of the 48 cube symmetries applied to a (D, D, D) numpy cube (a view); or one of the
    8 square symmetries of a (P, P) patch with ``symmetries=SQUARE_SYMMETRIES``."""
    perm, flips = symmetries[index]
    cube = cube.transpose(perm)
    return cube[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


class CubeDataset:
    """Positions of training cubes in one or more label volumes.

    stride > 0: the regular grid of the paper (side ``patch``, stride 25 there); stride 0:
    uniformly random positions. ``batch(rng, n)`` draws n cubes as a uint8 index tensor."""

    def __init__(self, volumes, phase_map, patch, stride=25, augment=True, names=None,
                 symmetries=None):
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
        # indices into SYMMETRIES that augmentation draws from (spacing_symmetries)
        self.symmetries = list(range(len(SYMMETRIES))) if symmetries is None else symmetries
        if stride > 0:
            self.positions = [(i, *start) for i, v in enumerate(volumes)
                              for start in grid_starts(v.shape, patch, stride)]

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
            cube = apply_symmetry(cube, self.symmetries[int(rng.integers(len(self.symmetries)))])
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

    def draw(self, rngs, device="cpu"):
        """(batch, planes): what training draws; a cube has no plane (None)."""
        return self.batch(rngs, device), None


def volume_slices(volume):
    """Every slice of a (D, H, W) volume as (image, plane) pairs of views: along z the xy
    images (H, W), along y the xz images (D, W), along x the yz images (D, H)."""
    return ([(volume[k], 0) for k in range(volume.shape[0])]
            + [(volume[:, k], 1) for k in range(volume.shape[1])]
            + [(volume[:, :, k], 2) for k in range(volume.shape[2])])


class _Grid:
    """The positions (image, row, column) of a regular grid of patches over many images,
    computed on demand: a 750³ volume's slices hold millions of them."""

    def __init__(self, shapes, patch, stride):
        self.patch, self.stride = patch, stride
        self.cols = [(w - patch) // stride + 1 for _, w in shapes]
        counts = [((h - patch) // stride + 1) * c for (h, _), c in zip(shapes, self.cols)]
        self.ends = np.cumsum(counts)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, k):
        i = int(np.searchsorted(self.ends, k, side="right"))
        r, c = divmod(int(k) - (int(self.ends[i - 1]) if i else 0), self.cols[i])
        return i, r * self.stride, c * self.stride


class ImageDataset:
    """Positions of training patches (side ``patch``) in 2D label images, each image tagged
    with its plane (0 xy, 1 xz, 2 yz; ``PLANES``). stride > 0: a regular grid; 0: uniformly
    random positions. ``augment``: the 8 square symmetries (isotropic materials only: a
    reflection would turn an xz image upside down). ``draw(rngs)`` gives the one-hot batch
    (n, phases, P, P) and the planes (n,) of its patches."""

    def __init__(self, images, phase_map, patch, stride=25, augment=True):
        self.images = [image for image, _ in images]
        self.planes = [plane for _, plane in images]
        for image, plane in images:
            if min(image.shape) < patch:
                raise MdiffError(f"an {PLANES[plane]} training image of {image.shape[0]}x"
                                 f"{image.shape[1]} is smaller than the training patch side "
                                 f"{patch}; use a smaller --patch")
        wide = any(image.dtype == np.uint16 for image in self.images)
        self.lut = phase_map.lut(np.uint16 if wide else np.uint8)
        self.n = phase_map.n
        self.patch = patch
        self.stride = stride
        self.augment = augment
        if stride > 0:
            self.positions = _Grid([image.shape for image in self.images], patch, stride)

    def __len__(self):
        return len(self.positions) if self.stride > 0 else 0

    def _position(self, rng):
        if self.stride > 0:
            return self.positions[int(rng.integers(len(self.positions)))]
        i = int(rng.integers(len(self.images)))
        return (i, *(int(rng.integers(s - self.patch + 1)) for s in self.images[i].shape))

    def cube_at(self, position):
        """The patch of phase indices at (image, row, column), as stored."""
        i, a, b = position
        p = self.patch
        return self.lut[self.images[i][a:a + p, b:b + p]]

    def patch_and_plane(self, rng):
        position = self._position(rng)
        patch = self.cube_at(position)
        if self.augment:
            patch = apply_symmetry(patch, int(rng.integers(len(SQUARE_SYMMETRIES))),
                                   SQUARE_SYMMETRIES)
        return np.ascontiguousarray(patch), self.planes[position[0]]

    def cube(self, rng):
        return self.patch_and_plane(rng)[0]

    def draw(self, rngs, device="cpu"):
        drawn = [self.patch_and_plane(rng) for rng in rngs]
        index = torch.from_numpy(np.stack([patch for patch, _ in drawn]))
        planes = torch.tensor([plane for _, plane in drawn], device=device)
        return one_hot(index.to(device), self.n, dims=2), planes

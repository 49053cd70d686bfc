"""Cutting volumes into cubes on a regular grid: one helper for training cubes, the real and
generated cubes that are judged, and ``mdiff-metrics --subvolume``."""


def grid_starts(shape, size, stride=None, z_range=None):
    """(z, y, x) first voxels of the size³ cubes on a grid of ``stride`` (default ``size``:
    non-overlapping) within ``z_range`` = (z0, z1) of a volume of ``shape``, z-major."""
    z0, z1 = z_range or (0, shape[0])
    stride = stride or size
    return [(a, b, c) for a in range(z0, z1 - size + 1, stride)
            for b in range(0, shape[1] - size + 1, stride)
            for c in range(0, shape[2] - size + 1, stride)]


def grid_cubes(volume, size, z_range=None, stride=None):
    """Views (no copies) of the size³ cubes of volume[z0:z1] on a grid of ``stride``
    (default ``size``: non-overlapping)."""
    return [volume[a:a + size, b:b + size, c:c + size]
            for a, b, c in grid_starts(volume.shape, size, stride, z_range)]

"""HDF5 (``.h5``/``.hdf5``) label volumes through the optional ``h5py`` (``pip install
'mdiff[h5]'``): what Python pipelines, ilastik and the CREMI-style data sets keep volumes in.

``write_h5`` stores the (z, y, x) labels as the dataset ``volume`` (gzip, chunked in 64³
blocks: readable a block at a time), with attributes ``axes`` ("zyx"), ``voxel_size`` (z, y,
x) and ``unit`` when known, and ``element_size_um`` (ilastik's convention) when the unit is
µm. ``read_h5`` takes the dataset ``volume``, or the file's only 3D unsigned-integer dataset,
and its voxel size from ``voxel_size``/``unit`` or ``element_size_um``.
"""
import numpy as np

from .errors import MdiffError

DATASET = "volume"
CHUNK = 64


def _h5py(path, doing):
    try:
        import h5py
    except ImportError:
        raise MdiffError(f"{path}: {doing} HDF5 needs h5py: pip install 'mdiff[h5]' (or "
                         "pip install h5py), or use .tif") from None
    return h5py


def write_h5(path, volume, voxel_size=None, unit=None):
    """Write ``volume`` (z, y, x; uint8/uint16) to ``path`` as the dataset ``volume``."""
    h5py = _h5py(path, "writing")
    volume = np.ascontiguousarray(volume)
    chunks = tuple(min(CHUNK, n) for n in volume.shape)
    with h5py.File(path, "w") as f:
        data = f.create_dataset(DATASET, data=volume, chunks=chunks, compression="gzip",
                                compression_opts=4, shuffle=volume.itemsize > 1)
        data.attrs["axes"] = "zyx"
        if voxel_size is not None:
            triple = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
            data.attrs["voxel_size"] = triple
            if unit:
                data.attrs["unit"] = str(unit)
            if unit in ("um", "\u00b5m", "\u03bcm", "micron"):
                data.attrs["element_size_um"] = triple


def _datasets(f, h5py):
    """(name, dataset) of every dataset in the file."""
    found = []
    f.visititems(lambda name, obj: found.append((name, obj))
                 if isinstance(obj, h5py.Dataset) else None)
    return found


def _pick(path, f, h5py):
    if DATASET in f and isinstance(f[DATASET], h5py.Dataset):
        return f[DATASET]
    volumes = [(n, d) for n, d in _datasets(f, h5py)
               if d.ndim == 3 and d.dtype.kind == "u" and d.dtype.itemsize <= 2]
    if len(volumes) == 1:
        return volumes[0][1]
    names = ", ".join(f"{n} {d.shape} {d.dtype}" for n, d in _datasets(f, h5py)) or "none"
    raise MdiffError(f"{path}: no dataset '{DATASET}' and {len(volumes)} 3D uint8/uint16 "
                     f"datasets (datasets: {names}); save the labels as '{DATASET}'")


def _meta(data):
    attrs = data.attrs
    size, unit = attrs.get("voxel_size"), attrs.get("unit")
    if size is None and attrs.get("element_size_um") is not None:
        size, unit = attrs["element_size_um"], "um"
    if size is None:
        return {"voxel_size": None, "unit": None}
    size = np.broadcast_to(np.asarray(size, dtype=np.float64).ravel(), (3,)) \
        if np.size(size) in (1, 3) else None
    if size is None or not all(v > 0 and np.isfinite(v) for v in size):
        return {"voxel_size": None, "unit": None}
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    return {"voxel_size": tuple(float(v) for v in size), "unit": None if unit is None
            else str(unit)}


def h5_shape(path):
    """The shape of the volume ``read_h5`` would read, without reading it."""
    h5py = _h5py(path, "reading")
    with h5py.File(path, "r") as f:
        return tuple(int(n) for n in _pick(path, f, h5py).shape)


def read_h5(path):
    """``(volume, meta)`` of an HDF5 file's label dataset; MdiffError naming the file for
    anything else (no such dataset, float labels, a damaged file)."""
    from .runtime import check_memory

    h5py = _h5py(path, "reading")
    try:
        with h5py.File(path, "r") as f:
            data = _pick(path, f, h5py)
            check_memory(int(np.prod(data.shape, dtype=object)) * data.dtype.itemsize,
                         what=f"reading {path} ({'x'.join(map(str, data.shape))} voxels)",
                         advice="crop or split the volume on a machine with more memory")
            return data[()], _meta(data)
    except MdiffError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError for damaged files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MdiffError(f"{path}: not a readable HDF5 volume ({text})") from None

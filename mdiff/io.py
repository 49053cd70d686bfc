"""Reading and writing label volumes: 3D TIFF (multi-page or one 3D page) and .npy.

Volumes are (z, y, x) integer arrays of phase labels. A voxel size, when the TIFF carries one
(ImageJ ``spacing`` for z and the X/YResolution tags for y and x), is returned and can be
written back. Writing is atomic: a temporary file beside the target, then a rename.
"""
import contextlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .errors import MdiffError

_SUFFIXES = (".tif", ".tiff", ".npy")


def read_volume(path, with_meta=False):
    """Read a 3D label volume from a TIFF or .npy file.

    Returns the (D, H, W) uint8/uint16 array, or ``(volume, meta)`` with ``with_meta=True``
    where ``meta = {"voxel_size": (z, y, x) or None, "unit": str or None}``.
    Raises MdiffError, naming the file, for anything that is not a 3D integer label volume.
    """
    path = Path(path)
    if not path.exists():
        raise MdiffError(f"{path}: no such file")
    if path.is_dir():
        raise MdiffError(f"{path}: is a directory, expected a .tif or .npy volume")
    if path.stat().st_size == 0:
        raise MdiffError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        volume, meta = _read_npy(path), {"voxel_size": None, "unit": None}
    elif suffix in (".tif", ".tiff"):
        volume, meta = _read_tiff(path)
    else:
        raise MdiffError(f"{path}: unknown file type {suffix!r}; use a 3D .tif/.tiff or .npy")
    volume = check_volume(volume, name=str(path))
    return (volume, meta) if with_meta else volume


def volume_shape(path):
    """(D, H, W) of a volume file without reading its voxels (MdiffError as ``read_volume``),
    so a set of large volumes can be planned before any is loaded."""
    path = Path(path)
    if not path.is_file():
        raise MdiffError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        else:
            raise MdiffError(f"{path}: unknown file type {suffix!r}; use a 3D .tif/.tiff or .npy")
    except MdiffError:
        raise
    except Exception as exc:  # numpy and tifffile raise several types for foreign files
        raise MdiffError(f"{path}: not a readable volume ({_first_line(exc)})") from None
    if len(shape) != 3:
        raise MdiffError(f"{path}: an array of shape {tuple(shape)}; expected a 3D (z, y, x) "
                         "volume")
    return tuple(int(s) for s in shape)


def volume_files(folder):
    """The .tif/.tiff/.npy files of a folder in natural name order (sample_2 before
    sample_10); MdiffError if there are none."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES
             and not p.name.startswith(".")]
    if not files:
        raise MdiffError(f"{folder}: no .tif/.tiff/.npy volumes in this folder")
    return sorted(files, key=_natural_key)


def _natural_key(path):
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", path.name)]


def _read_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for foreign files
        raise MdiffError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None


def _read_tiff(path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            meta = _tiff_voxel_size(tif)
    except Exception as exc:  # tifffile raises several types for corrupt or foreign files
        raise MdiffError(f"{path}: not a readable TIFF image ({_first_line(exc)})") from None
    return volume, meta


def _tiff_voxel_size(tif):
    """(z, y, x) voxel size from ImageJ metadata and resolution tags, or None."""
    meta = {"voxel_size": None, "unit": None}
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return meta
    x_num, x_den = tags["XResolution"].value
    y_num, y_den = tags["YResolution"].value
    if not (x_num and y_num):
        return meta
    vx, vy = x_den / x_num, y_den / y_num
    vz = float(ij.get("spacing", vx))
    unit = ij.get("unit")
    if unit is None and vx == 1.0 and vy == 1.0 and "spacing" not in ij:
        return meta  # default 1-pixel resolution: the file says nothing about size
    meta["voxel_size"] = (vz, vy, vx)
    meta["unit"] = None if unit in (None, "", "pixel") else str(unit)
    return meta


def check_volume(volume, name="volume"):
    """Return ``volume`` if it is a 3D unsigned 8/16-bit label array; raise MdiffError if not.

    Boolean masks are viewed as uint8 and signed integers that fit in uint16 are converted (a
    copy); float voxels, 2D or 4D images and RGB stacks are refused, saying what was found.
    """
    volume = np.asanyarray(volume)
    if volume.ndim == 4 and volume.shape[-1] in (3, 4):
        raise MdiffError(f"{name}: an RGB(A) stack of shape {volume.shape}; "
                         "expected a segmented 3D volume of phase labels (one value per voxel)")
    if volume.ndim != 3:
        kind = {2: "a 2D image"}.get(volume.ndim, f"a {volume.ndim}D array")
        raise MdiffError(f"{name}: {kind} of shape {volume.shape}; expected a 3D (z, y, x) volume")
    if min(volume.shape) == 0:
        raise MdiffError(f"{name}: the volume {volume.shape} has no voxels")
    if volume.dtype == bool:
        return volume.view(np.uint8)
    if volume.dtype.kind == "f":
        raise MdiffError(f"{name}: float voxels ({volume.dtype}); expected integer phase labels "
                         "(segment the image first, e.g. 0 = pore, 255 = solid)")
    if volume.dtype.kind not in "ui":
        raise MdiffError(f"{name}: voxels of type {volume.dtype}; expected integer phase labels")
    if volume.dtype in (np.uint8, np.uint16):
        return volume
    lo, hi = int(volume.min()), int(volume.max())
    if lo < 0 or hi > 65535:
        raise MdiffError(f"{name}: labels range from {lo} to {hi}; expected 0..65535")
    return volume.astype(np.uint8 if hi < 256 else np.uint16)


def write_volume(path, volume, voxel_size=None, unit=None):
    """Write a 3D label volume atomically as TIFF (zlib, ImageJ-readable) or .npy.

    ``voxel_size`` is a number or a (z, y, x) triple, stored as ImageJ spacing and
    resolution tags; ``unit`` (e.g. "um") goes with it.
    """
    path = Path(path)
    volume = check_volume(volume, name=str(path))
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise MdiffError(f"{path}: unknown file type {suffix!r}; use .tif, .tiff or .npy")
    if path.parent and not path.parent.exists():
        raise MdiffError(f"{path}: the folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.ascontiguousarray(volume))
        else:
            _write_tiff(tmp, volume, voxel_size, unit)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, renamed onto it when the block ends without error and
    removed otherwise, so ``path`` is never half-written. The file gets the permissions a plain
    ``open`` would give (mkstemp's are private to the user)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", suffix=path.suffix,
                               dir=path.parent or ".")
    os.close(fd)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_tiff(tmp, volume, voxel_size, unit):
    import tifffile

    kwargs = {}
    metadata = {"axes": "ZYX"}
    if voxel_size is not None:
        vz, vy, vx = (voxel_size,) * 3 if np.isscalar(voxel_size) else voxel_size
        kwargs["resolution"] = (1.0 / vx, 1.0 / vy)
        metadata["spacing"] = float(vz)
        if unit:
            metadata["unit"] = unit
    tifffile.imwrite(tmp, np.ascontiguousarray(volume), imagej=True, compression="zlib",
                     metadata=metadata, **kwargs)


def free_memory(device="cpu"):
    """Bytes free now on ``device`` (a CUDA device's free memory, or the machine's free
    physical memory), or None where that cannot be told."""
    try:
        if str(device).startswith("cuda"):
            import torch

            return torch.cuda.mem_get_info(torch.device(device))[0]
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need, device="cpu", advice="", what="this request"):
    """MdiffError, one line, if ``need`` bytes are more than ``device`` has free: refuse a
    request up front instead of letting it exhaust memory half-way."""
    free = free_memory(device)
    if free is not None and need > free:
        raise MdiffError(f"{what} needs about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB "
                         f"are free on {device}" + (f"; {advice}" if advice else ""))


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Reading and writing label volumes: 3D TIFF (multi-page or one 3D page), .npy, and a folder of
2D slices (one image per z, in natural name order: how CT and FIB-SEM stacks are exported);
and 2D label images (TIFF, .npy; PNG and BMP with Pillow) for 2D training.

Volumes are (z, y, x) integer arrays of phase labels. A voxel size, when the file carries one
(an OME-TIFF's PhysicalSizeX/Y/Z; ImageJ ``spacing`` for z and the X/YResolution tags for y and
x; a slice folder's first slice when it records all three; a .vti's spacing), is returned and
can be written back. Writing is atomic: a temporary file beside the target, then a rename.
"""
import contextlib
import errno
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import MdiffError

_SUFFIXES = (".tif", ".tiff", ".npy", ".vti", ".h5", ".hdf5")
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".bmp")  # .png/.bmp need Pillow
_NO_META = {"voxel_size": None, "unit": None}


def read_volume(path, with_meta=False):
    """Read a 3D label volume from a TIFF, .npy, .vti or HDF5 (.h5/.hdf5, with h5py) file, or
    from a folder of 2D slices.

    Returns the (D, H, W) uint8/uint16 array, or ``(volume, meta)`` with ``with_meta=True``
    where ``meta = {"voxel_size": (z, y, x) or None, "unit": str or None}``.
    Raises MdiffError, naming the file, for anything that is not a 3D integer label volume.
    """
    path = Path(path)
    if path.is_dir():
        volume, meta = read_slices(path), slices_voxel_size(path)
    else:
        volume, meta = _read_file(path, "a 3D .tif/.tiff, .npy, .vti or .h5, or a folder of "
                                  "2D slices")
    volume = check_volume(volume, name=str(path))
    return (volume, meta) if with_meta else volume


def read_image(path):
    """A 2D label image (H, W) uint8/uint16 from a TIFF, .npy, PNG or BMP file (the last two
    need Pillow); MdiffError naming the file for anything else (RGB colour, float, 3D)."""
    path = Path(path)
    image, _ = _read_file(path, "a 2D .tif/.tiff/.npy/.png/.bmp label image", images=True)
    return check_image(image, str(path))


def read_labels(path):
    """``(array, meta)`` of a label file that may hold a 2D image or a 3D volume (training
    data): a folder of slices is a volume; MdiffError for anything else."""
    path = Path(path)
    if path.is_dir():
        return read_volume(path, with_meta=True)
    array, meta = _read_file(path, "a .tif/.tiff/.npy volume or image, a .vti or .h5 volume, "
                             "a .png/.bmp image, or a folder of 2D slices", images=True)
    rgb = np.ndim(array) == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4
    if np.ndim(array) == 2 or rgb or path.suffix.lower() in (".png", ".bmp"):
        return check_image(array, str(path)), meta
    return check_volume(array, name=str(path)), meta


def _read_file(path, expected, images=False):
    if not path.exists():
        raise MdiffError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MdiffError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path), dict(_NO_META)
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    if suffix == ".vti":
        from .vti import read_vti

        return read_vti(path)
    if suffix in (".h5", ".hdf5"):
        from .h5 import read_h5

        return read_h5(path)
    if images and suffix in (".png", ".bmp"):
        return _read_pillow(path), dict(_NO_META)
    raise MdiffError(f"{path}: unknown file type {suffix!r}; expected {expected}")


def _read_pillow(path):
    try:
        from PIL import Image
    except ImportError:
        raise MdiffError(f"{path}: reading {path.suffix} images needs Pillow: pip install "
                         "'mdiff[images]' (or save the image as TIFF)") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as exc:  # Pillow raises several types for corrupt or foreign files
        raise MdiffError(f"{path}: not a readable image ({_first_line(exc)})") from None


def check_image(image, name="image"):
    """Return ``image`` as a 2D unsigned 8/16-bit label array, or raise MdiffError. A grey
    image stored as RGB (three equal channels) is taken as grey; colour, float and 3D arrays
    are refused, saying what was found."""
    image = np.asanyarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        if image.shape[-1] == 4 and (image[..., 3] != image[..., 3].flat[0]).any():
            raise MdiffError(f"{name}: an RGBA image with transparency; expected a segmented "
                             "label image (one grey value per phase)")
        if (image[..., 1] != image[..., 0]).any() or (image[..., 2] != image[..., 0]).any():
            raise MdiffError(f"{name}: a colour (RGB) image of shape {image.shape}; expected a "
                             "segmented label image, one grey value per phase (convert it to "
                             "grey labels first)")
        image = image[..., 0]
    if image.ndim != 2:
        raise MdiffError(f"{name}: an array of shape {image.shape}; expected a 2D (y, x) label "
                         "image")
    return check_volume(image[None], name=name)[0]


def read_slices(folder):
    """The (D, H, W) volume of a folder of 2D slices (.tif/.tiff/.npy/.png/.bmp, one per z in
    natural name order: slice_2 before slice_10); every slice must have the same shape and
    type. Filled slice by slice into one array: no second copy of the volume."""
    files = _slice_files(folder)
    if not files:
        raise MdiffError(f"{folder}: no images in this folder (expected 2D slices "
                         f"{'/'.join(IMAGE_SUFFIXES)}, one per z)")
    volume = None
    for k, path in enumerate(files):
        image = read_image(path)
        if volume is None:
            volume = np.empty((len(files), *image.shape), dtype=image.dtype)
        elif image.shape != volume.shape[1:] or image.dtype != volume.dtype:
            raise MdiffError(f"{path}: a {image.shape[0]}x{image.shape[1]} {image.dtype} slice "
                             f"where {files[0].name} is {volume.shape[1]}x{volume.shape[2]} "
                             f"{volume.dtype}; the slices of a volume must all be alike")
        volume[k] = image
    return volume


def slices_voxel_size(folder):
    """The voxel size of a slice folder: what its first slice (a TIFF) records, when that
    includes the slice spacing (ImageJ ``spacing``, OME PhysicalSizeZ); else none (a 2D
    image's pixel size alone says nothing of the distance between slices)."""
    files = _slice_files(folder)
    if not files or files[0].suffix.lower() not in (".tif", ".tiff"):
        return dict(_NO_META)
    import tifffile

    try:
        with _tifffile_says(), tifffile.TiffFile(files[0]) as tif:
            meta, has_z = _tiff_spacing(tif)
    except Exception:  # the slice itself is read (and judged) by read_slices
        return dict(_NO_META)
    return meta if has_z else dict(_NO_META)


def _slice_files(folder):
    """The image files of a folder in natural name order."""
    return sorted((p for p in Path(folder).iterdir() if p.is_file() and not
                   p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=_natural_key)


def _image_shape(path):
    """(H, W) of a 2D image file (a grey image stored as RGB counts as 2D) from its header."""
    if path.suffix.lower() in (".png", ".bmp"):
        try:
            from PIL import Image

            with Image.open(path) as im:
                return im.size[1], im.size[0]
        except ImportError:
            return read_image(path).shape  # the one line that names the extra
        except Exception as exc:  # Pillow raises several types for corrupt or foreign files
            raise MdiffError(f"{path}: not a readable image ({_first_line(exc)})") from None
    shape = tuple(_file_shape(path))
    return shape[:2] if len(shape) == 3 and shape[-1] in (3, 4) else shape


def is_slice_folder(folder):
    """True when a folder holds 2D images (a volume as slices), False when it holds 3D
    volumes (a set of volumes) or nothing readable."""
    files = _slice_files(folder)
    if not files:
        return False
    if files[0].suffix.lower() in (".png", ".bmp"):
        return True
    try:
        return len(_file_shape(files[0])) == 2
    except MdiffError:
        return False


def volume_shape(path):
    """(D, H, W) of a volume file (or a folder of slices) without reading its voxels
    (MdiffError as ``read_volume``), so a set of large volumes can be planned before any is
    loaded."""
    path = Path(path)
    if path.is_dir() and is_slice_folder(path):  # from the slices' headers, not their pixels
        files = _slice_files(path)
        first = _image_shape(files[0])
        for f in files[1:]:
            if _image_shape(f) != first:
                raise MdiffError(f"{f}: a {'x'.join(map(str, _image_shape(f)))} slice where "
                                 f"{files[0].name} is {'x'.join(map(str, first))}; the slices "
                                 "of a volume must all be alike")
        return (len(files), *(int(s) for s in first))
    if not path.is_file():
        raise MdiffError(f"{path}: no such file")
    shape = _file_shape(path)
    if len(shape) != 3:
        raise MdiffError(f"{path}: an array of shape {tuple(shape)}; expected a 3D (z, y, x) "
                         "volume")
    return tuple(int(s) for s in shape)


def _file_shape(path):
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).shape
        if suffix in (".tif", ".tiff"):
            import tifffile

            with _tifffile_says(), tifffile.TiffFile(path) as tif:  # read_volume notes it
                return tif.series[0].shape
        if suffix == ".vti":
            from .vti import read_vti

            return read_vti(path)[0].shape
        if suffix in (".h5", ".hdf5"):
            from .h5 import h5_shape

            return h5_shape(path)
    except MdiffError:
        raise
    except Exception as exc:  # numpy and tifffile raise several types for foreign files
        raise MdiffError(f"{path}: not a readable volume ({_first_line(exc)})") from None
    raise MdiffError(f"{path}: unknown file type {suffix!r}; use a 3D .tif/.tiff, .npy, .vti or "
                     ".h5")


def volume_files(folder):
    """The .tif/.tiff/.npy/.vti/.h5 volumes of a folder in natural name order (sample_2 before
    sample_10), or [folder] itself when it holds 2D slices (one volume); MdiffError if there
    are none."""
    folder = Path(folder)
    if is_slice_folder(folder):
        return [folder]
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES
             and not p.name.startswith(".")]
    if not files:
        raise MdiffError(f"{folder}: no .tif/.tiff/.npy/.vti/.h5 volumes in this folder")
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
        with _tifffile_says() as said, tifffile.TiffFile(path) as tif:
            _check_claimed_size(path, tif)
            volume = tif.asarray()
            meta = _tiff_voxel_size(tif)
    except MdiffError:
        raise
    except Exception as exc:  # tifffile raises several types for corrupt or foreign files
        raise MdiffError(f"{path}: not a readable TIFF image ({_first_line(exc)})") from None
    if said:
        more = f" (and {len(said) - 1} more)" if len(said) > 1 else ""
        print(f"mdiff: note: {path}: tifffile found {_first_line(said[0])}{more}; the file "
              "may be damaged: check its voxels", file=sys.stderr)
    return volume, meta


# the most a TIFF codec can expand its bytes: none 1, PackBits 64 (2 bytes make a run of 128),
# deflate 1032 (its format's limit), LZW under 4096 (12-bit codes of strings that grow by one)
_MAX_EXPANSION = {1: 1, 32773: 64, 8: 1040, 32946: 1040, 5: 4096}


def _check_claimed_size(path, tif):
    """MdiffError before any pixel is read when a TIFF's header claims more voxels than its
    bytes can hold with its codec (a damaged size field: 7 GiB claimed by a 2 kB file), or
    more than the memory free now: a damaged file never gets the memory it claims."""
    series = tif.series[0]
    shape = tuple(int(n) for n in series.shape)
    claimed = int(np.prod(shape, dtype=object)) * series.dtype.itemsize
    size = path.stat().st_size
    limit = _MAX_EXPANSION.get(int(tif.pages[0].compression))
    if limit is not None and claimed > limit * size:
        raise MdiffError(f"{path}: its header claims a {'x'.join(map(str, shape))} volume "
                         f"({claimed / 2**30:.3g} GiB) that {size} bytes cannot hold; the file "
                         "is damaged")
    from .runtime import check_memory

    check_memory(claimed, what=f"reading {path} ({'x'.join(map(str, shape))} voxels)",
                 advice="crop or split the volume on a machine with more memory")


@contextlib.contextmanager
def _tifffile_says():
    """What tifffile logs about a file it reads (a bad tag, a page offset past the end),
    collected instead of reaching the user's stderr as stray lines: a damaged file gets one
    MdiffError, or one note when it still reads."""
    import logging

    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    keep, propagate = Keep(), logger.propagate
    logger.addHandler(keep)
    logger.propagate = False
    try:
        yield said
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate


def spacing_text(voxel_size):
    """A (z, y, x) voxel size as people write it: ``0.03x0.01x0.01``."""
    return "x".join(f"{float(v):g}" for v in voxel_size)


def spacing_triple(voxel_size):
    """(z, y, x) floats of a voxel size given as None (1), one number or three; MdiffError
    for one that is not positive and finite."""
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    triple = (float(voxel_size),) * 3 if np.isscalar(voxel_size) else tuple(
        float(v) for v in voxel_size)
    if len(triple) != 3 or not all(v > 0 and np.isfinite(v) for v in triple):
        raise MdiffError(f"a voxel size is one positive number or three (z, y, x), got "
                         f"{spacing_text(np.atleast_1d(voxel_size))}")
    return triple


def compact_spacing(voxel_size):
    """A voxel size as the JSON and the figures carry it: None, one number for cubic voxels
    (to the float32 precision files store), or the (z, y, x) floats of non-cubic ones."""
    if voxel_size is None:
        return None
    triple = spacing_triple(voxel_size)
    return triple[0] if same_spacing(triple, triple[0]) else triple


def same_spacing(a, b):
    """True for two voxel sizes (numbers, or (z, y, x) triples, or None) that agree to the
    float32 precision the file formats store them in."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    return bool(np.all(np.abs(a - b) <= 1e-6 * np.maximum(np.abs(a), np.abs(b))))


# lengths of the units OME and ImageJ write, in metres
_UNIT_METRES = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "micron": 1e-6,
                "nm": 1e-9, "pm": 1e-12, "a": 1e-10, "angstrom": 1e-10}


def _unit_name(unit):
    """A unit as mdiff writes it: µm and μm as um, Å as A."""
    text = str(unit).strip().replace("\u00b5", "u").replace("\u03bc", "u")
    return text.replace("\u00c5", "A").replace("\u212b", "A")


def _tiff_voxel_size(tif):
    """(z, y, x) voxel size of a 3D TIFF (``_tiff_spacing``; z as y's pixel size where a
    single-image ImageJ file records no spacing)."""
    return _tiff_spacing(tif)[0]


def _ome_spacing(tif):
    """({"voxel_size", "unit"}, z recorded) from an OME-TIFF's PhysicalSizeX/Y/Z (µm when no
    unit is given, OME's default), in the X size's unit; None where it records none."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError, ValueError):
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    sizes, units = {}, {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        try:
            sizes[axis] = float(value)
        except ValueError:
            return None
        units[axis] = _unit_name(pixels.get(f"PhysicalSize{axis}Unit", "um"))
    if not all(v > 0 and np.isfinite(v) for v in sizes.values()):
        return None
    unit = units["X"]
    for axis in sizes:  # another unit on one axis: expressed in X's where both are known
        if units[axis] != unit:
            a, b = _UNIT_METRES.get(units[axis].lower()), _UNIT_METRES.get(unit.lower())
            if a is None or b is None:
                return None
            sizes[axis] *= a / b
    vy = sizes.get("Y", sizes["X"])
    meta = {"voxel_size": (sizes.get("Z", vy), vy, sizes["X"]), "unit": unit}
    return meta, "Z" in sizes


def _tiff_spacing(tif):
    """({"voxel_size": (z, y, x) or None, "unit"}, whether z is recorded) from OME
    PhysicalSize attributes, else ImageJ metadata and resolution tags. The resolution tags of
    a TIFF without ImageJ or OME metadata are not read as a voxel size: programs write 72 dpi
    there by default, which says nothing about a tomogram's voxels."""
    meta = {"voxel_size": None, "unit": None}
    if tif.is_ome:
        found = _ome_spacing(tif)
        if found is not None:
            return found
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    if "unit" not in ij and "spacing" not in ij:
        return meta, False
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return meta, False
    x_num, x_den = tags["XResolution"].value
    y_num, y_den = tags["YResolution"].value
    if not (x_num and y_num):
        return meta, False
    vx, vy = x_den / x_num, y_den / y_num
    vz = float(ij.get("spacing", vx))
    unit = ij.get("unit")
    if unit is None and vx == 1.0 and vy == 1.0 and "spacing" not in ij:
        return meta, False  # default 1-pixel resolution: the file says nothing about size
    if not all(v > 0 and np.isfinite(v) for v in (vz, vy, vx)):
        return meta, False
    meta["voxel_size"] = (vz, vy, vx)
    meta["unit"] = None if unit in (None, "", "pixel") else _unit_name(unit)
    return meta, "spacing" in ij


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
    """Write a 3D label volume atomically as TIFF (zlib, ImageJ-readable), .npy, .vti (VTK
    ImageData for ParaView, ``mdiff.vti``) or .h5/.hdf5 (HDF5 with h5py, ``mdiff.h5``).

    ``voxel_size`` is a number or a (z, y, x) triple, stored as ImageJ spacing and
    resolution tags (the .vti spacing, the HDF5 dataset's attributes); ``unit`` (e.g. "um")
    goes with it.
    """
    path = Path(path)
    volume = check_volume(volume, name=str(path))
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise MdiffError(f"{path}: unknown file type {suffix!r}; use .tif, .tiff, .npy, .vti or "
                         ".h5")
    if path.parent and not path.parent.exists():
        raise MdiffError(f"{path}: the folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.ascontiguousarray(volume))
        elif suffix == ".vti":
            from .vti import write_vti

            write_vti(tmp, volume, voxel_size, unit)
        elif suffix in (".h5", ".hdf5"):
            from .h5 import write_h5

            write_h5(tmp, volume, voxel_size, unit)
        else:
            _write_tiff(tmp, volume, voxel_size, unit)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, renamed onto it when the block ends without error and
    removed otherwise, so ``path`` is never half-written. The file gets the permissions a plain
    ``open`` would give (mkstemp's are private to the user). Its bytes reach the disk before
    the rename and the rename before this returns (fsync of the file, then of the folder), so
    a power cut leaves the old file or the new one, not a named empty one."""
    path = Path(path)
    folder = path.parent or Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", suffix=path.suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        flush_to_disk(tmp)
        os.replace(tmp, path)
        flush_to_disk(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def flush_to_disk(path):
    """fsync a file, or a folder (which makes the renames in it last). An error flushing a
    file's data is raised (the data did not reach the disk); a folder that cannot be flushed
    (some network and FUSE mounts refuse) is left to its filesystem's own guarantees."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder and exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


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


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""VTK XML ImageData (``.vti``): label volumes for ParaView, written with numpy alone.

Each voxel is one cell (``CellData``, so ParaView draws voxels as blocks and a threshold on
the label keeps whole voxels), the spacing is the voxel size, and the labels follow the XML
header as one raw appended block (``header_type="UInt64"``: any volume size), so a 750³
volume is written from the array itself, with no copy. VTK orders cells x fastest, which is a
C-order (z, y, x) array's own order: the bytes go out as they lie in memory.

``read_vti`` reads back what ``write_vti`` writes (raw appended uint8/uint16 cell data); a
``.vti`` from elsewhere (compressed, base64, point data) is one clear line asking for a TIFF.
"""
import re

import numpy as np

from .errors import MdiffError

_TYPES = {np.dtype(np.uint8): "UInt8", np.dtype(np.uint16): "UInt16"}
_DTYPES = {name: dtype for dtype, name in _TYPES.items()}
_HEADER_LIMIT = 1 << 16  # the XML part of a file mdiff writes is a few hundred bytes


def write_vti(path, volume, voxel_size=None, unit=None):
    """Write ``volume`` (z, y, x; uint8 or uint16) to ``path`` as VTK ImageData cell data.

    ``voxel_size`` (a number or a (z, y, x) triple; 1 when None) becomes the spacing and
    ``unit`` goes into a comment that ``read_vti`` reads back (VTK has no unit field)."""
    volume = np.ascontiguousarray(volume)
    if volume.dtype.newbyteorder("<") not in _TYPES:
        raise MdiffError(f"{path}: .vti holds uint8 or uint16 labels, not {volume.dtype}")
    vz, vy, vx = _spacing(voxel_size)
    nz, ny, nx = volume.shape
    kind = _TYPES[volume.dtype.newbyteorder("<")]
    unit_xml = ""
    if unit:  # a comment: VTK's parser skips it, read_vti takes the unit back from it
        text = str(unit).replace("\u00b5", "u").replace("\u03bc", "u")  # µm, μm -> um
        text = "".join(c for c in text if c.isascii() and (c.isalnum() or c in "._"))
        unit_xml = f"  <!-- mdiff unit: {text} -->\n" if text else ""
    header = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" '
        'header_type="UInt64">\n'
        f"{unit_xml}"
        f'  <ImageData WholeExtent="0 {nx} 0 {ny} 0 {nz}" Origin="0 0 0" '
        f'Spacing="{vx!r} {vy!r} {vz!r}">\n'
        f'    <Piece Extent="0 {nx} 0 {ny} 0 {nz}">\n'
        '      <CellData Scalars="labels">\n'
        f'        <DataArray type="{kind}" Name="labels" format="appended" offset="0"/>\n'
        "      </CellData>\n"
        "    </Piece>\n"
        "  </ImageData>\n"
        '  <AppendedData encoding="raw">\n'
        "   _")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.uint64(volume.nbytes).astype("<u8").tobytes())
        f.write(memoryview(volume.astype(volume.dtype.newbyteorder("<"), copy=False)).cast("B"))
        f.write(b"\n  </AppendedData>\n</VTKFile>\n")


def read_vti(path):
    """``(volume, meta)`` of a ``.vti`` that ``write_vti`` wrote (memory-mapped, not read
    whole); MdiffError naming the file for anything else."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    start = head.find(b'<AppendedData encoding="raw">')
    mark = head.find(b"_", start) if start >= 0 else -1
    text = head[:max(start, 0)].decode("ascii", "replace")
    extent = re.search(r'WholeExtent="([^"]+)"', text)
    array = re.search(r'<DataArray type="(\w+)" Name="[^"]*" format="appended" offset="0"',
                      text)
    if (mark < 0 or extent is None or array is None or "<CellData" not in text
            or 'header_type="UInt64"' not in text or "LittleEndian" not in text
            or array.group(1) not in _DTYPES):
        raise MdiffError(f"{path}: not a .vti that mdiff can read (it reads the raw uint8/"
                         "uint16 cell data it writes); save the volume as TIFF instead")
    if len(head) < mark + 9:  # cut short inside the data block's size word
        raise MdiffError(f"{path}: the file ends before its data does; it is damaged")
    try:
        x0, x1, y0, y1, z0, z1 = (int(v) for v in extent.group(1).split())
        nbytes = int(np.frombuffer(head[mark + 1:mark + 9], "<u8")[0])
    except ValueError:
        raise MdiffError(f"{path}: its header is damaged (WholeExtent or data size unreadable); "
                         "save the volume again") from None
    shape = (z1 - z0, y1 - y0, x1 - x0)
    dtype = _DTYPES[array.group(1)]
    if min(shape) < 1:
        raise MdiffError(f"{path}: its extent {extent.group(1)!r} holds no voxels")
    if nbytes != int(np.prod(shape)) * dtype.itemsize:
        raise MdiffError(f"{path}: its data block holds {nbytes} bytes where a "
                         f"{'x'.join(map(str, shape))} volume needs "
                         f"{int(np.prod(shape)) * dtype.itemsize}; the file is damaged")
    try:
        volume = np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=mark + 9,
                           shape=shape)
    except ValueError:
        raise MdiffError(f"{path}: the file ends before its data does; it is damaged") from None
    spacing = re.search(r'Spacing="([^"]+)"', text)
    meta = {"voxel_size": None, "unit": None}
    if spacing:
        try:
            sx, sy, sz = (float(v) for v in spacing.group(1).split())
        except ValueError:
            raise MdiffError(f"{path}: its Spacing {spacing.group(1)!r} is not three numbers; "
                             "the header is damaged") from None
        if not all(np.isfinite(v) and v > 0 for v in (sx, sy, sz)):
            raise MdiffError(f"{path}: its Spacing {spacing.group(1)!r} is not three positive "
                             "sizes; the header is damaged")
        meta["voxel_size"] = None if (sx, sy, sz) == (1.0, 1.0, 1.0) else (sz, sy, sx)
    unit = re.search(r"<!-- mdiff unit: ([\w.]+) -->", text)
    if unit:
        meta["unit"] = unit.group(1)
    return volume, meta


def _spacing(voxel_size):
    if voxel_size is None:
        return 1.0, 1.0, 1.0
    if np.isscalar(voxel_size):
        return (float(voxel_size),) * 3
    vz, vy, vx = (float(v) for v in voxel_size)
    return vz, vy, vx

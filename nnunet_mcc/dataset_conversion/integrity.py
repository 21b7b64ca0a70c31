"""Checks that an image file holds exactly what its header promises, after reading and after writing.

ITK lets several failures pass without an exception: a truncated ``.nii`` or ``.nii.gz`` reads with
the missing voxels as zeros, a compressed ``.mha`` whose stream is corrupt (or that is not
compressed at all) reads as partly wrong voxels, a MetaImage data file longer than its header says
is read from its start, and the NIfTI writer returns normally after a short write (full disk,
``ulimit -f``), printing only on stderr. These checks compare each file with its header and with the
voxels in memory, cheaply:

* uncompressed data: the bytes on disk must be exactly what the header describes;
* zlib / gzip data: the checksum (and, for gzip, the length) stored at the end of the stream must
  match the voxels ITK produced. A truncated or corrupt stream cannot end with them. Only where
  that shortcut does not apply (scaled NIfTI voxels, several gzip members) is the stream inflated
  again, and then it must inflate cleanly to the right length (and to the same bytes).

Supported: MetaImage (``.mha``, ``.mhd`` + data file), NIfTI-1/2 (``.nii``, ``.nii.gz``) and NRRD
(``.nrrd``, ``.nhdr`` + one data file, raw or gzip). A layout whose data cannot be checked (data
split over several files, ASCII or bzip2 data) is refused on reading.
"""

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_mcc.errors import UserError

_CHUNK = 1 << 20


class Unverifiable(ValueError):
    """The file's data layout is one these checks do not handle."""


@dataclass
class Payload:
    """Where a file's voxels are stored and how."""
    data_path: str          # the file holding the voxels
    offset: int             # where they start in it (-1: they end the file)
    encoding: str           # "raw", "zlib" (MetaImage) or "gzip"
    byte_order: str         # "<" or ">"
    declared: Optional[int] = None  # compressed size the header declares (MetaImage CompressedDataSize)
    prefix: int = 0         # bytes of the inflated stream before the voxels (the header in a .nii.gz)
    nbytes: Optional[int] = None    # voxel bytes the header describes, where the in-memory type may differ
    scaled: bool = False    # NIfTI scl_slope / scl_inter: ITK's voxels are not the stored values


# ---------------------------------------------------------------- headers
def kind(path: str) -> Optional[str]:
    low = path.lower()
    if low.endswith((".mha", ".mhd")):
        return "metaimage"
    if low.endswith((".nii", ".nii.gz")):
        return "nifti"
    if low.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    return None


def header_text(raw: bytes) -> str:
    """One line of a text header as a string whose data-file name opens the file the header names.

    ITK passes the bytes of ``ElementDataFile`` / ``data file`` to the OS unchanged, so they are decoded
    as the OS decodes file names (``os.fsdecode``: UTF-8 with surrogate escapes on Linux and macOS,
    which gives back the same bytes on ``open``), not as Latin-1 (``Cäse 05.raw`` written in UTF-8 would
    read ``CÃ¤se 05.raw``). Bytes the file-system encoding cannot decode fall back to Latin-1.
    """
    try:
        return os.fsdecode(raw)
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def metaimage_header(path: str) -> Tuple[Dict[str, str], int]:
    """({field: value}, bytes up to the end of the ElementDataFile line) of a MetaImage header."""
    fields: Dict[str, str] = {}
    size = 0
    with open(path, "rb") as f:
        for raw in _header_lines(f):
            size += len(raw)
            line = header_text(raw).strip()
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile":
                    return fields, size
    raise ValueError("MetaImage header has no ElementDataFile line")


def _header_lines(f, limit: int = 1 << 16):
    """The lines of a text header at the start of a binary file (at most ``limit`` bytes are read)."""
    read = 0
    while read < limit:
        line = f.readline(min(4096, limit - read))
        if not line:
            return
        read += len(line)
        yield line


def _metaimage(path: str) -> Payload:
    fields, header_end = metaimage_header(path)
    if fields.get("binarydata", "true").lower() != "true":
        raise Unverifiable("ASCII MetaImage data (BinaryData = False)")
    msb = fields.get("elementbyteordermsb", fields.get("binarydatabyteordermsb", "false")).lower() == "true"
    compressed = fields.get("compresseddata", "false").lower() == "true"
    declared = fields.get("compresseddatasize")
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        data_path, offset = path, header_end
    else:
        # ITK reads several files only for LIST or a %-pattern; any other value is one file name, spaces and all
        if data_file.upper().startswith("LIST") or "%" in data_file:
            raise Unverifiable("data split over several files (ElementDataFile = "
                               f"{data_file.split()[0]})")
        data_path = os.path.join(os.path.dirname(path), data_file)
        offset = int(float(fields.get("headersize", "0") or 0))
        offset = -1 if offset < 0 else offset
    if compressed and offset < 0:
        raise Unverifiable("compressed data located by HeaderSize = -1")
    return Payload(data_path, offset, "zlib" if compressed else "raw", ">" if msb else "<",
                   declared=int(declared) if declared and compressed else None)


def _nifti_fields(head: bytes) -> Tuple[str, int, int, float, float, List[int]]:
    """(byte order, bitpix, vox_offset, scl_slope, scl_inter, dim) of a NIfTI-1 or NIfTI-2 header."""
    if len(head) < 348:
        raise ValueError(f"NIfTI header is cut short ({len(head)} bytes)")
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            bitpix, = struct.unpack(order + "h", head[72:74])
            dims = list(struct.unpack(order + "8h", head[40:56]))
            vox_offset, slope, inter = struct.unpack(order + "fff", head[108:120])
            return order, bitpix, max(int(vox_offset), 352), slope, inter, dims
        if size == 540:
            if len(head) < 540:
                raise ValueError(f"NIfTI-2 header is cut short ({len(head)} bytes)")
            bitpix, = struct.unpack(order + "h", head[14:16])
            dims = list(struct.unpack(order + "8q", head[16:80]))
            vox_offset, = struct.unpack(order + "q", head[168:176])
            slope, inter = struct.unpack(order + "dd", head[176:192])
            return order, bitpix, max(int(vox_offset), 544), slope, inter, dims
    raise ValueError("not a NIfTI header (sizeof_hdr is neither 348 nor 540)")


def _nifti(path: str) -> Payload:
    gz = path.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"header cannot be inflated ({e})") from None
    order, bitpix, vox_offset, slope, inter, dims = _nifti_fields(head)
    n = int(np.prod([max(int(d), 1) for d in dims[1:1 + max(1, min(int(dims[0]), 7))]], dtype=np.int64))
    return Payload(path, 0 if gz else vox_offset, "gzip" if gz else "raw", order, prefix=vox_offset if gz else 0,
                   nbytes=n * bitpix // 8, scaled=not (slope in (0.0, 1.0) and inter == 0.0))


def _nrrd(path: str) -> Payload:
    fields: Dict[str, str] = {}
    size = 0
    with open(path, "rb") as f:
        magic = f.readline(16)
        size += len(magic)
        if not magic.startswith(b"NRRD"):
            raise ValueError("not a NRRD header (no NRRD magic)")
        for raw in _header_lines(f):
            size += len(raw)
            line = header_text(raw).rstrip("\r\n")
            if not line.strip():
                break
            if line.startswith("#") or ":=" in line or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower().replace(" ", "")] = value.strip()
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gz", "gzip"):
        encoding = "gzip"
    elif encoding != "raw":
        raise Unverifiable(f"NRRD encoding {encoding!r}")
    if int(fields.get("lineskip", "0") or 0):
        raise Unverifiable("NRRD line skip")
    data_file = fields.get("datafile")
    if data_file:
        if data_file.upper().startswith("LIST") or len(data_file.split()) > 1:
            raise Unverifiable("data split over several files")
        data_path, offset = os.path.join(os.path.dirname(path), data_file), 0
    else:
        data_path, offset = path, size
    skip = int(fields.get("byteskip", "0") or 0)
    offset = -1 if skip < 0 else offset + skip
    return Payload(data_path, offset, encoding, ">" if fields.get("endian", "little").lower() == "big" else "<")


def payload(path: str) -> Payload:
    """Where and how a file stores its voxels (ValueError for a header that cannot be parsed)."""
    parse = {"metaimage": _metaimage, "nifti": _nifti, "nrrd": _nrrd}[kind(path)]
    try:
        return parse(path)
    except (struct.error, KeyError, IndexError) as e:
        raise ValueError(f"header cannot be parsed ({e})") from None


# ---------------------------------------------------------------- the checks
def _voxel_bytes(array: np.ndarray, byte_order: str) -> memoryview:
    """The voxels as the file stores them (C order is the files' order: x fastest); no copy when it already is."""
    if array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder(byte_order), copy=False)
    return memoryview(np.ascontiguousarray(array)).cast("B")


def _read_prefix(p: Payload) -> bytes:
    with gzip.open(p.data_path, "rb") as g:
        return g.read(p.prefix)


def _inflate(f, start: int, length: int, gz: bool, expected: Optional[memoryview], expected_len: int,
             prefix: int) -> Optional[str]:
    """Inflate a stored stream in chunks; None when it is whole (and equals ``expected``), else what is wrong."""
    f.seek(start)
    left = length
    produced = 0
    d = zlib.decompressobj(31 if gz else 15)
    pending = b""
    while True:
        if pending:
            chunk, pending = pending, b""
        else:
            chunk = f.read(min(_CHUNK, left)) if left > 0 else b""
            left -= len(chunk)
        if not chunk:
            break
        try:
            out = d.decompress(chunk)
        except zlib.error as e:
            return f"the compressed data are corrupt ({str(e).split(': ', 1)[-1]})"
        lo, hi = produced - prefix, min(produced + len(out) - prefix, expected_len)
        if expected is not None and hi > max(lo, 0):
            a = max(lo, 0)
            if bytes(out[a - lo:hi - lo]) != bytes(expected[a:hi]):
                return "the voxels read differ from the decompressed data"
        produced += len(out)
        if d.eof:
            rest = d.unused_data
            if gz and rest[:2] == b"\x1f\x8b":  # another gzip member
                d = zlib.decompressobj(31)
                pending = rest
                continue
            if rest or (left > 0 and f.read(left)):
                return "bytes follow the end of the compressed data"
            break
    if not d.eof:
        return "the compressed data end early: the file is truncated"
    if produced - prefix != expected_len:
        return (f"header and data disagree: the data decompress to {produced - prefix} bytes, the header "
                f"describes {expected_len}")
    return None


def _check_stream(p: Payload, voxels: Optional[memoryview], nbytes: int, reading: bool) -> Optional[str]:
    """None when the stored voxel data agree with the header (and with ``voxels``), else what is wrong.

    Reading: a mismatch of the stream's trailer (or no voxels to compare) leads to a full inflation,
    which names the problem precisely and accepts what the shortcut cannot (several gzip members).
    Writing: the trailer decides (this module's writers make one stream).
    """
    total = os.path.getsize(p.data_path)
    if p.offset < 0:  # data at the end of the file (HeaderSize / byte skip -1): raw data only
        start, length = max(total - nbytes, 0), min(total, nbytes)
    else:
        start, length = p.offset, max(total - p.offset, 0)
    if p.encoding == "raw":
        if length != nbytes:
            return (f"header and data disagree: {os.path.basename(p.data_path)} holds {length} bytes of voxel "
                    f"data, the header describes {nbytes}")
        return None
    if p.declared is not None and p.declared != length:
        return f"header and data disagree: CompressedDataSize = {p.declared} but {length} bytes follow the header"
    gz = p.encoding == "gzip"
    with open(p.data_path, "rb") as f:
        f.seek(start)
        head = f.read(2)
        if gz and head != b"\x1f\x8b":
            return "the compressed data are corrupt: not gzip data although the header says so"
        if not gz and (len(head) < 2 or head[0] & 0x0F != 8 or (head[0] * 256 + head[1]) % 31):
            return "the compressed data are corrupt: not zlib data although the header says CompressedData = True"
        if length < (18 if gz else 6):
            return "the compressed data end early: the file is truncated"
        f.seek(start + length - (8 if gz else 4))
        tail = f.read(8 if gz else 4)
        if gz:
            crc, isize = struct.unpack("<II", tail)
            whole = isize == (p.prefix + nbytes) & 0xFFFFFFFF
            if whole and voxels is not None:
                whole = crc == zlib.crc32(voxels, zlib.crc32(_read_prefix(p) if p.prefix else b""))
            elif whole and reading:
                whole = False  # nothing to compare the checksum with: inflate
        else:
            whole = voxels is not None and struct.unpack(">I", tail)[0] == zlib.adler32(voxels)
        if whole:
            return None
        if not reading:
            return "the compressed data are cut short"
        return _inflate(f, start, length, gz, voxels, nbytes, p.prefix)


def check_read(path: str, img) -> None:
    """Refuse (UserError) a file whose stored data disagree with its header or with the voxels ITK read."""
    import SimpleITK as sitk

    if kind(path) is None:
        return
    try:
        p = payload(path)
        array = sitk.GetArrayViewFromImage(img)
        nbytes = p.nbytes if p.nbytes is not None else array.nbytes
        if p.nbytes is not None and not p.scaled and array.nbytes != p.nbytes:
            p.scaled = True  # ITK changed the voxel type: only the stream itself can be checked
        problem = _check_stream(p, None if p.scaled else _voxel_bytes(array, p.byte_order), nbytes, reading=True)
    except Unverifiable as e:
        raise UserError(f"{path}: cannot check this file's data ({e}); convert it to .nii.gz or .mha "
                        "first") from None
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f"{path}: cannot read image ({e}); the file may be truncated or corrupt") from None
    if problem:
        raise UserError(f"{path}: {problem}")


def check_written(path: str, img) -> None:
    """ValueError naming the problem when a file just written does not hold ``img`` in full.

    The header is read back with ITK (size, voxel type) and the stored data are checked against it:
    exact size for raw data, the gzip length field or the zlib checksum for compressed data.
    """
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise ValueError("the file was not created")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError("its header cannot be read back") from None
    if tuple(reader.GetSize()) != tuple(img.GetSize()) or reader.GetPixelID() != img.GetPixelID() or \
            reader.GetNumberOfComponents() != img.GetNumberOfComponentsPerPixel():
        raise ValueError(f"its header describes {reader.GetSize()} {reader.GetPixelIDTypeAsString()}, "
                         f"not the {img.GetSize()} {img.GetPixelIDTypeAsString()} written")
    if kind(path) is None:
        return
    p = payload(path)
    array = sitk.GetArrayViewFromImage(img)
    # gzip: the length field alone (a cut stream cannot end with it); zlib has no length field, so its checksum
    voxels = _voxel_bytes(array, p.byte_order) if p.encoding == "zlib" else None
    problem = _check_stream(p, voxels, array.nbytes, reading=False)
    if problem:
        raise ValueError(problem)

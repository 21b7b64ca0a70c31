"""Reading, checking and writing images: every image read is checked (ITK's own complaints on stderr are errors,
and the stored data must agree with the header: :mod:`.integrity`), every file written is checked after writing,
and bad input raises :class:`nnunet_mcc.errors.UserError` with one line naming the file and the problem."""

import errno
import os
import re
import resource
import sys
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from nnunet_mcc import fileio
from nnunet_mcc.dataset_conversion import integrity
from nnunet_mcc.errors import UserError


def check_readable(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{path}: file does not exist")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: file is not readable (permission denied)")


def first_line(message: str) -> str:
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    # ITK messages start with the source location of the exception; the description is the useful part
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else "unknown error"


@contextmanager
def _captured_stderr():
    """Collect what C++ code writes to file descriptor 2 instead of letting it reach the terminal."""
    holder = {"text": ""}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield holder
        return
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield holder
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            holder["text"] = buf.read().decode(errors="replace")


def _itk_reason(error: Optional[Exception], captured: str) -> str:
    """The useful part of ITK's complaint: its message without source location or object address."""
    m = re.search(r"data not read completely\s*ideal = (\d+) : actual = (\d+)", captured)
    if m:
        return f"data incomplete: {m.group(2)} of {m.group(1)} bytes"
    if "uncompress failed" in captured.lower():  # MetaImage: the zlib stream does not inflate
        return "the compressed data are corrupt: Uncompress failed"
    if error is None:
        lines = [ln.strip(" *") for ln in captured.splitlines() if ln.strip(" *")]
        return lines[0] if lines else "unknown error"
    text = str(error)
    m = re.search(r"ITK ERROR: \w+\(0x[0-9a-f]+\): (.*)", text)
    reason = m.group(1).strip() if m else first_line(text)
    return reason.rstrip(".")


def read_sitk(path: str):
    """Read a 3D image with SimpleITK and check it; a 4D image with one singleton axis is squeezed.

    Refused: anything ITK complains about (an exception, or a message on stderr such as "Uncompress
    failed"), stored data that disagree with the header (:func:`integrity.check_read`), several
    components per voxel, a real 4D image.
    """
    import SimpleITK as sitk

    check_readable(path)
    if path.lower().endswith(".mhd"):
        _check_metaimage_data(path)
    with _captured_stderr() as captured:  # ITK's readers print their complaints on the C stream
        try:
            img = sitk.ReadImage(path)
            error = None
        except RuntimeError as e:
            error = e
    if error is not None or captured["text"].strip():
        raise UserError(f"{path}: cannot read image ({_itk_reason(error, captured['text'])}); the file may be "
                        "truncated or corrupt") from None
    integrity.check_read(path, img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel, expected a "
                        "scalar image")
    size = list(img.GetSize())
    if img.GetDimension() == 4:
        singleton = [i for i, s in enumerate(size) if s == 1]
        if not singleton:
            raise UserError(f"{path}: is a 4D image of size {tuple(size)}, expected 3D (one volume per file)")
        extract = size.copy()
        extract[singleton[-1]] = 0  # collapse that axis; geometry of the three others is kept
        img = sitk.Extract(img, extract, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif img.GetDimension() != 3:
        raise UserError(f"{path}: is a {img.GetDimension()}D image, expected 3D")
    return img


def _check_metaimage_data(path: str) -> None:
    """A .mhd header points to a data file: name it when it is missing or unreadable."""
    try:
        fields, _ = integrity.metaimage_header(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read header ({fileio.os_error_cause(e)})") from None
    except ValueError:
        raise UserError(f"{path}: MetaImage header has no ElementDataFile line") from None
    data_file = fields["elementdatafile"]
    if data_file.upper() in ("LOCAL", "LIST") or "%" in data_file:
        return
    data_path = os.path.join(os.path.dirname(path), data_file)
    if not os.path.isfile(data_path):
        raise UserError(f"{path}: its data file {data_file} is missing")
    if not os.access(data_path, os.R_OK):
        raise UserError(f"{data_path}: file is not readable (permission denied)")


def check_finite(array: np.ndarray, path: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise UserError(f"{path}: contains {bad} NaN or Inf voxels")


def check_same_grid(img, ref, path: str, ref_path: str, what: str = "image") -> None:
    """Same size and spacing as the reference (the check nnU-Net's integrity verification makes)."""
    if tuple(img.GetSize()) != tuple(ref.GetSize()):
        raise UserError(f"{path}: {what} size {tuple(img.GetSize())} differs from {tuple(ref.GetSize())} of "
                        f"{os.path.basename(ref_path)}")
    if not np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-3, atol=1e-4):
        raise UserError(f"{path}: {what} spacing {tuple(round(s, 4) for s in img.GetSpacing())} differs from "
                        f"{tuple(round(s, 4) for s in ref.GetSpacing())} of {os.path.basename(ref_path)}")


def same_frame(a, b) -> bool:
    """Same origin (within 1 micrometre) and direction."""
    return np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) and \
        np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)


def onto_grid(img, ref, path: str, ref_path: str, what: str = "image") -> Tuple[object, Optional[str]]:
    """``img`` on the voxel grid of ``ref`` (carrying ``ref``'s geometry), and a note when it was not already.

    Size and spacing must agree, as nnU-Net requires. When origin or direction differ, the two grids
    must still cover the same voxels (an axis stored flipped or in another order, an origin off by
    less than a quarter voxel): ``img`` is then resampled onto ``ref``'s grid with nearest neighbour,
    which moves every voxel unchanged, and the note says so. Grids that do not line up (rotated,
    shifted, or covering another region) are refused: resampling would change the voxels.
    """
    import SimpleITK as sitk

    name = os.path.basename(ref_path)
    if same_frame(img, ref):
        check_same_grid(img, ref, path, ref_path, what)
        img.CopyInformation(ref)
        return img, None
    dim = img.GetDimension()
    d_img = np.array(img.GetDirection()).reshape(dim, dim)
    d_ref = np.array(ref.GetDirection()).reshape(dim, dim)
    rotation = np.linalg.solve(d_img, d_ref)  # ref axes in img axes
    axes = np.round(rotation)
    if np.abs(rotation - axes).max() > 1e-3 or not (np.abs(axes).sum(0) == 1).all() or \
            not (np.abs(axes).sum(1) == 1).all():
        raise UserError(f"{path}: {what} grid is rotated against {name}'s (direction "
                        f"{tuple(round(v, 3) for v in img.GetDirection())} vs "
                        f"{tuple(round(v, 3) for v in ref.GetDirection())}); resample it onto the image first")
    perm = np.abs(axes).argmax(0)  # ref axis k runs along img axis perm[k]
    size_img, size_ref = np.array(img.GetSize()), np.array(ref.GetSize())
    if (size_img[perm] != size_ref).any():
        raise UserError(f"{path}: {what} size {tuple(size_img[perm].tolist())} (in {name}'s axis order) differs "
                        f"from {tuple(size_ref.tolist())} of {name}")
    spacing_img = np.array(img.GetSpacing())[perm]
    if not np.allclose(spacing_img, ref.GetSpacing(), rtol=1e-3, atol=1e-4):
        raise UserError(f"{path}: {what} spacing {tuple(round(s, 4) for s in spacing_img)} (in {name}'s axis "
                        f"order) differs from {tuple(round(s, 4) for s in ref.GetSpacing())} of {name}")
    # continuous img index of ref's first and last voxel: they must be img's corners
    to_index = np.linalg.inv(d_img @ np.diag(img.GetSpacing()))
    shift_mm = np.array(ref.GetOrigin()) - np.array(img.GetOrigin())
    first = to_index @ shift_mm
    last = to_index @ (shift_mm + d_ref @ np.diag(ref.GetSpacing()) @ (size_ref - 1))
    lo, hi = np.minimum(first, last), np.maximum(first, last)
    off = np.abs(np.concatenate([lo, hi - (size_img - 1)])).max()
    if off > 0.25:
        raise UserError(f"{path}: {what} covers another region than {name} (origin "
                        f"{tuple(round(v, 3) for v in img.GetOrigin())} vs "
                        f"{tuple(round(v, 3) for v in ref.GetOrigin())}, {off:.2f} voxels apart); resample it "
                        "onto the image first")
    changes = []
    flipped = ["xyz"[perm[k]] for k in range(dim) if axes[perm[k], k] < 0]
    if flipped:
        changes.append("axes flipped: " + ", ".join(flipped))
    if (perm != np.arange(dim)).any():
        changes.append("axes in another order")
    if not changes:  # the same voxels in the same order
        changes.append(f"origins {np.abs(shift_mm).max():.3g} mm apart" if np.abs(shift_mm).max() > 1e-3
                       else "direction cosines differ slightly")
        out = img
    else:
        out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    out.CopyInformation(ref)
    return out, (f"{path}: {what} stored with another geometry than {name} ({'; '.join(changes)}); "
                 f"resampled onto {name}'s grid (nearest neighbour, every voxel kept)")


def geometry(img) -> Dict[str, list]:
    """Size, spacing, origin and direction of an image, as stored in dataset.json for the way back."""
    return {"size": list(img.GetSize()), "spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
            "direction": list(img.GetDirection())}


def label_values(array: np.ndarray, path: str, allowed: Iterable[int]) -> np.ndarray:
    """Integer label map checked against the allowed values (floats must hold whole numbers)."""
    return checked_labels(array, path, allowed)[0]


def checked_labels(array: np.ndarray, path: str, allowed: Iterable[int]) -> Tuple[np.ndarray, np.ndarray]:
    """(integer label map, voxels per value 0..max(allowed)); values outside ``allowed`` are refused."""
    check_finite(array, path)
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise UserError(f"{path}: label map holds non-integer values")
        array = array.astype(np.int64)
    allowed = sorted(set(int(a) for a in allowed))
    if allowed[0] >= 0:
        # one comparison pass per allowed value: far cheaper than np.unique or np.bincount on 10^7 voxels
        counts = np.zeros(allowed[-1] + 1, np.int64)
        for v in allowed:
            counts[v] = np.count_nonzero(array == v)
        if counts.sum() == array.size:
            return array, counts
    found, n = np.unique(array, return_counts=True)
    counts = np.zeros(max(allowed[-1], 0) + 1, np.int64)
    for value, count in zip(found.tolist(), n.tolist()):
        if 0 <= value <= allowed[-1]:
            counts[value] = count
    bad = [int(v) for v in found if int(v) not in allowed]
    if bad:
        raise UserError(f"{path}: label values {bad[:10]} outside the expected set {allowed}")
    return array, counts


# ---------------------------------------------------------------- writing
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _write_cause(path: str, complaint: str, nbytes: int) -> str:
    """Why a write came out short when the writer gave no error number: size limit, full disk or I/O error."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    written = os.path.getsize(path) if os.path.exists(path) else 0
    if "file too large" in complaint.lower() or (soft != resource.RLIM_INFINITY and written >= soft):
        return fileio.os_error_cause(OSError(errno.EFBIG, ""))
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if "no space" in complaint.lower() or (free is not None and free < max(nbytes, 1 << 20)):
        return fileio.os_error_cause(OSError(errno.ENOSPC, ""))
    return f"incomplete write: {complaint}" if complaint else fileio.os_error_cause(OSError(errno.EIO, ""))


def write_sitk(img, path: str, compress: bool = True) -> None:
    """SimpleITK write, then checked: ITK's complaints on stderr and a file that does not hold ``img``
    in full (:func:`integrity.check_written`) are errors, reported as one line with the cause."""
    import SimpleITK as sitk

    problem = None
    with _captured_stderr() as captured:  # the NIfTI writer reports a short write only here
        try:
            fileio.fault_point(path)
            sitk.WriteImage(img, path, useCompression=compress)
            fileio.fault_point(path, can_fail=False)
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
        except RuntimeError as e:
            problem = first_line(e)
        if problem is None:
            try:
                integrity.check_written(path, img)
            except (ValueError, OSError) as e:
                problem = str(e)
    complaint = _itk_reason(None, captured["text"]) if captured["text"].strip() else ""
    if problem is None and not complaint:
        return
    cause = _write_cause(path, "; ".join(filter(None, [complaint, problem])), sitk.GetArrayViewFromImage(img).nbytes)
    raise UserError(f"{path}: cannot write ({cause})")


def write_png(pixels: np.ndarray, path: str) -> None:
    """A 2D gray (uint8/uint16) or RGB (uint8) array as PNG, then checked: header read back, file complete."""
    from PIL import Image

    try:
        fileio.fault_point(path)
        Image.fromarray(pixels).save(path, format="PNG")
        fileio.fault_point(path, can_fail=False)
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - len(_PNG_END), 0))
            complete = f.read() == _PNG_END
        with Image.open(path) as back:
            same = back.size == (pixels.shape[1], pixels.shape[0]) and \
                len(back.getbands()) == (1 if pixels.ndim == 2 else pixels.shape[2])
    except OSError as e:
        raise UserError(f"{path}: cannot write ({fileio.os_error_cause(e)})") from None
    if not complete or not same:
        raise UserError(f"{path}: cannot write ({_write_cause(path, '', pixels.nbytes)})")

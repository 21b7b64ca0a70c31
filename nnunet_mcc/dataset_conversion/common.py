"""Shared machinery of the dataset converters.

Every converter follows the same steps: find the cases in the source folder (nothing is read in
depth yet, so a missing modality is reported before any writing), check the target dataset id and
the requested split, convert every case in parallel into a temporary folder next to the target,
write dataset.json with nnU-Net's ``generate_dataset_json`` and move the folder into place only
when every case succeeded (:func:`nnunet_mcc.fileio.atomic_folder`).

Every image read is checked (ITK's own complaints on stderr are errors, and the stored data must
agree with the header: :mod:`.integrity`), every file written is checked after writing, and bad
input raises :class:`nnunet_mcc.errors.UserError` with one line naming the file and the problem.
The source is only ever read.
"""

import errno
import json
import os
import re
import resource
import signal
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mcc import fileio
from nnunet_mcc.dataset_conversion import integrity
from nnunet_mcc.errors import UserError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


# ---------------------------------------------------------------- names and case discovery
def normalize(name: str) -> str:
    """Lower case, every run of separators (space, dot, dash, underscore) turned into one '_'."""
    return re.sub(r"[\s._\-]+", "_", name.strip().lower()).strip("_")


def strip_suffix(filename: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> str:
    low = filename.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return filename[:-len(s)]
    return filename


def has_suffix(filename: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> bool:
    return strip_suffix(filename, suffixes) != filename


def safe_id(name: str) -> str:
    """A case id nnU-Net can parse: letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", name).strip("_") or "case"


def list_dir(folder: str) -> List[str]:
    """Sorted entries of a folder, hidden ones left out; unreadable folders give a clear error."""
    try:
        return sorted(e for e in os.listdir(folder) if not e.startswith("."))
    except PermissionError:
        raise UserError(f"{folder}: folder is not readable (permission denied)") from None
    except OSError as e:
        raise UserError(f"{folder}: cannot list folder ({e.strerror})") from None


def subfolders(folder: str) -> List[str]:
    return [e for e in list_dir(folder) if os.path.isdir(os.path.join(folder, e))]


def walk_files(folder: str, max_depth: int = 3) -> List[Tuple[str, str]]:
    """(folder, file name) of every visible file under ``folder``, at most ``max_depth`` levels down.

    Unlike ``os.walk``, an unreadable folder is refused by name instead of being skipped silently.
    """
    found: List[Tuple[str, str]] = []

    def visit(path: str, depth: int) -> None:
        for entry in list_dir(path):
            full = os.path.join(path, entry)
            if not os.path.isdir(full):
                found.append((path, entry))
            elif depth < max_depth:
                visit(full, depth + 1)

    visit(folder, 0)
    return found


def find_child(folder: str, pattern: str) -> List[str]:
    """Subfolders whose normalised name matches the regular expression ``pattern`` (full match)."""
    return [e for e in subfolders(folder) if re.fullmatch(pattern, normalize(e))]


def check_source_folder(src: str) -> str:
    if not src:
        raise UserError("SRC: no source folder given")
    src = os.path.abspath(os.path.expanduser(src))
    if not os.path.exists(src):
        raise UserError(f"{src}: source folder does not exist")
    if not os.path.isdir(src):
        raise UserError(f"{src}: is a file, expected the folder the download was unpacked into")
    if not list_dir(src):
        raise UserError(f"{src}: source folder is empty")
    return src


@dataclass
class Case:
    """One case as found in the source: its channel files (in channel order) and ground truth."""
    case_id: str
    images: List[str]
    label: Optional[str] = None
    source: str = ""  # how the summary and error messages name it (path relative to SRC)
    training: bool = True
    extra: Dict[str, object] = field(default_factory=dict)


def source_map(cases: Sequence[Case]) -> Dict[str, Dict[str, str]]:
    """{"training": {case id: source}, "test": {...}} for dataset.json (test ids may repeat training ids)."""
    return {"training": {c.case_id: c.source for c in cases if c.training},
            "test": {c.case_id: c.source for c in cases if not c.training}}


def check_unique_ids(cases: Sequence[Case]) -> None:
    seen: Dict[Tuple[bool, str], Case] = {}
    for c in cases:
        key = (c.training, c.case_id.lower())  # case-insensitive file systems would merge them
        if key in seen:
            raise UserError(f"{c.source}: case id {c.case_id!r} is also used by {seen[key].source}")
        seen[key] = c


def disambiguate(names_and_groups: Sequence[Tuple[str, str]]) -> List[str]:
    """Case ids from (name, group): the name alone where it is unique, ``group_name`` where it repeats.

    Depends only on the source tree, so ids are stable from one run to the next.
    """
    counts: Dict[str, int] = {}
    for name, _ in names_and_groups:
        counts[safe_id(name).lower()] = counts.get(safe_id(name).lower(), 0) + 1
    return [safe_id(name) if counts[safe_id(name).lower()] == 1 else safe_id(f"{group}_{name}")
            for name, group in names_and_groups]


# ---------------------------------------------------------------- reading and checking images
def check_readable(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{path}: file does not exist")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: file is not readable (permission denied)")


def _first_line(message: str) -> str:
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
    reason = m.group(1).strip() if m else _first_line(text)
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
            sitk.WriteImage(img, path, useCompression=compress)
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
        except RuntimeError as e:
            problem = _first_line(e)
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
        Image.fromarray(pixels).save(path, format="PNG")
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


def raw_root() -> str:
    root = os.environ.get("nnUNet_raw", "").strip()
    if not root:
        raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's "
                        "documentation/set_environment_variables.md)")
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"nnUNet_raw={root}: is a file, not a folder")
    return root


def check_dataset_id(dataset_id: int, name: str, raw: str, overwrite: bool) -> str:
    """The target folder; refuses an id used under another name, or an existing dataset without overwrite."""
    if not 1 <= dataset_id <= 999:
        raise UserError(f"-d {dataset_id}: dataset id must be in 1..999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise UserError(f"--name {name!r}: use letters, digits, '_' or '-' only")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    prefix = f"Dataset{dataset_id:03d}_"
    for root_var in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = raw if root_var == "nnUNet_raw" else os.environ.get(root_var, "")
        if root and os.path.isdir(root):
            for entry in list_dir(root):
                if entry.startswith(prefix) and entry != folder_name:
                    raise UserError(f"-d {dataset_id}: dataset id {dataset_id} is already taken by {entry} in "
                                    f"{root_var} ({root}); choose another id with -d")
    target = os.path.join(raw, folder_name)
    if os.path.exists(target) and not overwrite:
        raise UserError(f"{target}: dataset already exists; pass --overwrite to replace it")
    return target


def make_dataset_folders(folder: str, with_test: bool, with_test_labels: bool = False) -> None:
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if with_test else ()) + \
            (("labelsTs",) if with_test_labels else ()):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)


def write_dataset_json(folder: str, channel_names: Dict[int, str], labels: Dict[str, object], num_training: int,
                       file_ending: str, **extra) -> None:
    """dataset.json as nnU-Net's ``generate_dataset_json`` makes it, then rewritten (atomically, verified) by fileio."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    path = os.path.join(folder, "dataset.json")
    try:
        generate_dataset_json(folder, dict(channel_names), dict(labels), num_training, file_ending, **extra)
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: cut short by a full disk or a file-size limit
        cause = fileio.os_error_cause(e) if isinstance(e, OSError) else "written incompletely"
        raise UserError(f"{path}: cannot write dataset.json ({cause})") from None
    fileio.write_json(path, content, what="dataset.json")


# ---------------------------------------------------------------- running and reporting
@dataclass
class CaseResult:
    case_id: str
    training: bool
    label_counts: Optional[np.ndarray] = None  # voxels per label value of the written label map
    notes: List[str] = field(default_factory=list)
    geometry: Optional[Dict[str, list]] = None  # the source image's, for writing predictions back


def _guarded(fn: Callable, case: Case) -> CaseResult:
    try:
        return fn(case)
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{case.source}: out of memory while converting this case (try fewer jobs, -j)") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"{case.source}: no space left on device") from None
        raise UserError(f"{case.source}: {e.strerror or e}") from None
    except Exception as e:  # one line per case instead of a traceback from a worker process
        raise UserError(f"{case.source}: unexpected {type(e).__name__}: {_first_line(e)}") from None


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _worker_init() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a worker ends on SIGTERM; the main process cleans up


def parallel_map(fn: Callable[[Case], CaseResult], cases: Sequence[Case], jobs: Optional[int],
                 desc: str, progress: Optional[bool] = None) -> List[CaseResult]:
    """Convert cases with ``jobs`` processes, in order, stopping at the first case that fails."""
    from tqdm import tqdm

    jobs = default_jobs() if not jobs else jobs
    if jobs < 1:
        raise UserError(f"-j {jobs}: number of jobs must be >= 1")
    jobs = min(jobs, len(cases)) or 1
    bar = tqdm(total=len(cases), desc=desc, unit="case", file=sys.stderr,
               disable=(None if progress is None else not progress))
    work = partial(_guarded, fn)
    results: List[CaseResult] = []
    try:
        if jobs == 1:
            for case in cases:
                results.append(work(case))
                bar.update()
        else:
            import multiprocessing as mp
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [pool.submit(work, case) for case in cases]
                try:
                    for fut in futures:
                        results.append(fut.result())
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    except BrokenProcessPool:
        raise UserError(f"{desc}: a conversion process ended abruptly (killed, or out of memory: try fewer "
                        "jobs, -j)") from None
    finally:
        bar.close()
    return results


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (``kill``, a batch system ending a job) raises KeyboardInterrupt, so the
    clean-up that Ctrl-C gets (removing the temporary dataset) runs for it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def class_fractions(results: Sequence[CaseResult], labels: Dict[str, object]) -> Dict[str, float]:
    """Fraction of training voxels in each class (or region) of dataset.json's labels."""
    counts = [r.label_counts for r in results if r.training and r.label_counts is not None]
    if not counts:
        return {}
    n = max(len(c) for c in counts)
    total = np.sum([np.pad(c, (0, n - len(c))) for c in counts], axis=0).astype(np.float64)
    out = {}
    for name, value in labels.items():
        members = list(value) if isinstance(value, (list, tuple)) else [value]
        out[name] = float(sum(total[m] for m in members if m < n) / max(total.sum(), 1))
    return out


def print_summary(target: str, results: Sequence[CaseResult], labels: Dict[str, object],
                  skipped: Sequence[str] = (), stream=None) -> Dict[str, float]:
    stream = stream or sys.stdout
    n_train = sum(r.training for r in results)
    n_test = len(results) - n_train
    fractions = class_fractions(results, labels)
    print(f"Wrote {target}: {n_train} training cases, {n_test} test cases, {len(skipped)} skipped", file=stream)
    for s in skipped:
        print(f"  skipped: {s}", file=stream)
    if fractions:
        print("Voxel fraction per class (training labels):", file=stream)
        width = max(len(k) for k in fractions)
        for name, frac in fractions.items():
            print(f"  {name:<{width}}  {100 * frac:9.4f} %", file=stream)
    notes = [n for r in results for n in r.notes]
    for n in notes[:10]:
        print(f"  note: {n}", file=stream)
    if len(notes) > 10:
        print(f"  ... and {len(notes) - 10} more notes", file=stream)
    return fractions


def _json_extra(json_extra: Optional[dict], desc: str, results: Sequence[CaseResult],
                labels: Dict[str, object]) -> dict:
    """dataset.json's keys beyond nnU-Net's: provenance, class fractions, each case's source geometry."""
    extra = dict(json_extra or {})
    extra.setdefault("license", f"see the terms of the original release ({extra.get('reference', 'its web page')})")
    extra.setdefault("converted_by", f"nnunet-mcc convert ({desc})")
    extra["class_voxel_fractions"] = {k: round(v, 8) for k, v in class_fractions(results, labels).items()}
    if any(r.geometry for r in results):
        extra["source_geometry"] = {part: {r.case_id: r.geometry for r in results
                                           if r.training == (part == "training") and r.geometry}
                                    for part in ("training", "test")}
    return extra


def convert_dataset(target: str, cases: Sequence[Case], convert_case: Callable[..., CaseResult], *,
                    jobs: Optional[int], desc: str, channel_names: Dict[int, str], labels: Dict[str, object],
                    file_ending: str, json_extra: Optional[dict] = None, progress: Optional[bool] = None,
                    with_test_labels: bool = False, skipped: Sequence[str] = (),
                    split: Optional[Tuple[str, int]] = None) -> List[CaseResult]:
    """The shared pipeline: convert every case into a temporary folder, dataset.json, move into place.

    ``convert_case(case, out_dir=...)`` writes one case and returns its :class:`CaseResult`.
    ``split``: (fractions, seed) of ``--split``, planned and checked before anything is written; its
    files are written with the dataset. Nothing is moved into place unless everything succeeded.
    """
    from nnunet_mcc.dataset_conversion import splits

    check_unique_ids(cases)
    n_train = sum(c.training for c in cases)
    if n_train == 0:
        raise UserError("no training cases found")
    plan = splits.plan_split(os.path.basename(target), [c.case_id for c in cases if c.training], *split) \
        if split else None
    tmp = ""
    try:
        with sigterm_as_interrupt(), fileio.atomic_folder(target, "dataset") as tmp:
            make_dataset_folders(tmp, with_test=any(not c.training for c in cases), with_test_labels=with_test_labels)
            results = parallel_map(partial(convert_case, out_dir=tmp), cases, jobs, desc, progress)
            write_dataset_json(tmp, channel_names, labels, n_train, file_ending, dataset_name=os.path.basename(target),
                               **_json_extra(json_extra, desc, results, labels))
            if plan:
                plan.write(tmp)
    except BaseException as e:
        if plan:
            plan.undo()
        if isinstance(e, OSError):
            e = UserError(f"{getattr(e, 'filename', None) or target}: cannot write ({fileio.os_error_cause(e)})")
        if isinstance(e, UserError):  # name files where they were to be, not in the temporary folder
            raise UserError(str(e).replace(tmp, target) if tmp else str(e)) from None
        raise
    print_summary(target, results, labels, skipped)
    if plan:
        plan.report(target)
    return results


# ---------------------------------------------------------------- command line
def add_common_arguments(parser, default_id: int, default_name: str) -> None:
    """The options every converter shares (see docs/converters.md)."""
    parser.add_argument("src", metavar="SRC", help="folder the download was unpacked into (or its training folder)")
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=f"nnU-Net dataset id (default {default_id})")
    parser.add_argument("--name", default=None, help=f"dataset name (default {default_name})")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel processes (default: every core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")
    parser.add_argument("--split", default=None, metavar="TRAIN/VAL/TEST",
                        help="also write a seeded train/validation/test split, e.g. 70/20/10 (see docs)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --split (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def split_option(args) -> Optional[Tuple[str, int]]:
    """``--split`` and ``--split-seed`` for :func:`convert_dataset`; the fractions are checked here already."""
    if not args.split:
        return None
    from nnunet_mcc.dataset_conversion import splits

    splits.parse_fractions(args.split)
    return args.split, args.split_seed

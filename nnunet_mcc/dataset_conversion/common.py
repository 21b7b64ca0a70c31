"""Shared machinery of the dataset converters.

Every converter follows the same steps: find the cases in the source folder (nothing is read in
depth yet, so a missing modality is reported before any writing), check the target dataset id,
convert every case in parallel into a temporary folder next to the target, write dataset.json with
nnU-Net's ``generate_dataset_json`` and move the folder into place only when every case succeeded.
Bad input raises :class:`nnunet_mcc.errors.UserError` with one line naming the file and the problem;
the source is only ever read.
"""

import errno
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

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


def _itk_reason(error: Exception, captured: str) -> str:
    """The useful part of an ITK exception: its message without source location or object address."""
    m = re.search(r"data not read completely\s*ideal = (\d+) : actual = (\d+)", captured)
    if m:
        return f"data incomplete: {m.group(2)} of {m.group(1)} bytes"
    text = str(error)
    m = re.search(r"ITK ERROR: \w+\(0x[0-9a-f]+\): (.*)", text)
    reason = m.group(1).strip() if m else _first_line(text)
    return reason.rstrip(".")


def read_sitk(path: str):
    """Read a 3D image with SimpleITK; a 4D image with one singleton axis is squeezed, a real 4D refused."""
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
    if error is not None:
        raise UserError(f"{path}: cannot read image ({_itk_reason(error, captured['text'])}); the file may be "
                        "truncated or corrupt") from None
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
    data_file = None
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                if line.strip().lower().startswith("elementdatafile"):
                    data_file = line.split("=", 1)[1].strip()
    except OSError as e:
        raise UserError(f"{path}: cannot read header ({e.strerror})") from None
    if data_file is None:
        raise UserError(f"{path}: MetaImage header has no ElementDataFile line")
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
def write_sitk(img, path: str, compress: bool = True) -> None:
    """SimpleITK write; a full disk or any other OS failure becomes one clear line."""
    import SimpleITK as sitk

    try:
        sitk.WriteImage(img, path, useCompression=compress)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    except RuntimeError as e:
        raise UserError(f"{path}: cannot write ({_first_line(e)})") from None


def raw_root() -> str:
    root = os.environ.get("nnUNet_raw", "").strip()
    if not root:
        raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's "
                        "documentation/set_environment_variables.md)")
    return os.path.abspath(os.path.expanduser(root))


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


class AtomicDataset:
    """Write a dataset into a temporary folder next to ``target`` and move it into place on success.

    On any failure the temporary folder (and ``nnUNet_raw`` itself, when this run created it) is
    removed, so a failed conversion leaves nothing behind.
    """

    def __init__(self, target: str):
        self.target = target
        self.root = os.path.dirname(target)
        self.created_root = False
        self.tmp = ""

    def __enter__(self) -> str:
        if not os.path.isdir(self.root):
            try:
                os.makedirs(self.root)
            except OSError as e:
                raise UserError(f"{self.root}: cannot create nnUNet_raw ({e.strerror})") from None
            self.created_root = True
        try:
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.partial-", dir=self.root)
        except OSError as e:
            self._cleanup()
            raise UserError(f"{self.root}: cannot write into nnUNet_raw ({e.strerror})") from None
        return self.tmp

    def _cleanup(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created_root:
            try:
                os.rmdir(self.root)  # only when empty
            except OSError:
                pass

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._cleanup()
            return False
        old = None
        if os.path.exists(self.target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.old-", dir=self.root)
            os.replace(self.target, os.path.join(old, "dataset"))
        os.replace(self.tmp, self.target)
        os.chmod(self.target, 0o755)  # mkdtemp makes 0700 folders
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


def make_dataset_folders(folder: str, with_test: bool, with_test_labels: bool = False) -> None:
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if with_test else ()) + \
            (("labelsTs",) if with_test_labels else ()):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)


def write_dataset_json(folder: str, channel_names: Dict[int, str], labels: Dict[str, object], num_training: int,
                       file_ending: str, **extra) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    try:
        generate_dataset_json(folder, dict(channel_names), dict(labels), num_training, file_ending, **extra)
    except OSError as e:
        raise UserError(f"{os.path.join(folder, 'dataset.json')}: cannot write ({e.strerror or e})") from None


# ---------------------------------------------------------------- running and reporting
@dataclass
class CaseResult:
    case_id: str
    training: bool
    label_counts: Optional[np.ndarray] = None  # voxels per label value of the written label map
    notes: List[str] = field(default_factory=list)


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
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                futures = [pool.submit(work, case) for case in cases]
                try:
                    for fut in futures:
                        results.append(fut.result())
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return results


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


def convert_dataset(target: str, cases: Sequence[Case], convert_case: Callable[..., CaseResult], *,
                    jobs: Optional[int], desc: str, channel_names: Dict[int, str], labels: Dict[str, object],
                    file_ending: str, json_extra: Optional[dict] = None, progress: Optional[bool] = None,
                    with_test_labels: bool = False, skipped: Sequence[str] = ()) -> List[CaseResult]:
    """The shared pipeline: convert every case into a temporary folder, dataset.json, move into place.

    ``convert_case(case, out_dir=...)`` writes one case and returns its :class:`CaseResult`.
    """
    check_unique_ids(cases)
    n_train = sum(c.training for c in cases)
    if n_train == 0:
        raise UserError("no training cases found")
    with AtomicDataset(target) as tmp:
        make_dataset_folders(tmp, with_test=any(not c.training for c in cases), with_test_labels=with_test_labels)
        results = parallel_map(partial(convert_case, out_dir=tmp), cases, jobs, desc, progress)
        extra = dict(json_extra or {})
        extra.setdefault("license", f"see the terms of the original release ({extra.get('reference', 'its web page')})")
        extra.setdefault("converted_by", f"nnunet-mcc convert ({desc})")
        extra["class_voxel_fractions"] = {k: round(v, 8) for k, v in class_fractions(results, labels).items()}
        write_dataset_json(tmp, channel_names, labels, n_train, file_ending,
                           dataset_name=os.path.basename(target), **extra)
    print_summary(target, results, labels, skipped)
    return results


def script_main(prog: str, add_arguments: Callable, run: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of a converter run as a script (``python -m nnunet_mcc.dataset_conversion.<name>``)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code

"""A converter's run: the raw-dataset target (id, folders, dataset.json through nnU-Net's
``generate_dataset_json``), every case converted in parallel into a temporary folder moved into place only when
every case succeeded (:func:`nnunet_mcc.fileio.atomic_folder`), the summary, and the shared command-line
options."""

import errno
import os
import re
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mcc import fileio
from nnunet_mcc.dataset_conversion.discovery import Case, check_unique_ids, list_dir
from nnunet_mcc.dataset_conversion.image_io import first_line
from nnunet_mcc.errors import UserError


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
    except OSError as e:
        raise UserError(f"{path}: cannot write dataset.json ({fileio.os_error_cause(e)})") from None
    try:
        content = fileio.read_json(path, "dataset.json")
    except UserError:  # cut short by a full disk or a file-size limit
        raise UserError(f"{path}: cannot write dataset.json (written incompletely)") from None
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
        raise UserError(f"{case.source}: unexpected {type(e).__name__}: {first_line(e)}") from None


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

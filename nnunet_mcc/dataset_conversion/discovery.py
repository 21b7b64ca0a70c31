"""Finding a converter's cases in a source folder: names, suffixes, folder walks and the ``Case`` each converter
fills in. Nothing is read in depth yet, so a missing modality is reported before any writing."""

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


from nnunet_mcc.errors import UserError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


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

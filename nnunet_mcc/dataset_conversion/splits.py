"""The seeds' train/validation/test split (70/20/10) as an alternative to nnU-Net's five folds.

``seeded_split`` shuffles the sorted training case ids with a seeded generator and cuts them by the
fractions (validation and test rounded half up, at least one case each when asked for; training
takes the rest), so the same ids and seed always give the same split. A conversion with ``--split``
writes

* ``split_<a>_<b>_<c>.json`` in the raw dataset folder: seed, fractions and the three id lists;
* ``splits_final.json`` (one fold: train / val) in ``$nnUNet_preprocessed/DatasetXXX_Name/`` when
  ``nnUNet_preprocessed`` is set. nnU-Net then trains fold 0 on it instead of making five folds;
  the test ids are held out of both (predict them with ``nnUNetv2_predict`` after training).

:func:`plan_split` computes the split and checks ``nnUNet_preprocessed`` before the conversion
writes anything, so a split that cannot be made is refused before a dataset is moved into place.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mcc import fileio
from nnunet_mcc.errors import UserError


def parse_fractions(text: str) -> Tuple[float, float, float]:
    """'70/20/10' (or '0.7,0.2,0.1') -> fractions summing to 1."""
    parts = [p for p in re.split(r"[/,:]", str(text)) if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0 or values[0] == 0 or not np.isfinite(values).all():
        raise UserError(f"--split {text!r}: expected three non-negative parts TRAIN/VAL/TEST like 70/20/10")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def seeded_split(case_ids: Sequence[str], fractions=(0.7, 0.2, 0.1), seed: int = 0) -> Dict[str, List[str]]:
    if isinstance(fractions, str):
        fractions = parse_fractions(fractions)
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case ids must be unique")
    n = len(ids)
    # half rounds up, and a part asked for gets at least one case (5 cases at 70/20/10: 3/1/1)
    n_val, n_test = (max(int(np.floor(f * n + 0.5)), 1 if f > 0 else 0) for f in fractions[1:])
    if n - n_val - n_test < 1:
        raise UserError(f"--split: {n} training cases are too few for a "
                        f"{'/'.join(f'{f:.0%}' for f in fractions)} split")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {"train": sorted(shuffled[:n - n_val - n_test]),
            "val": sorted(shuffled[n - n_val - n_test:n - n_test]),
            "test": sorted(shuffled[n - n_test:])}


def preprocessed_folder(dataset_name: str) -> Optional[str]:
    """``$nnUNet_preprocessed/<dataset_name>`` when the variable is set, checked to be writable; else None."""
    root = os.environ.get("nnUNet_preprocessed", "").strip()
    if not root:
        return None
    root = os.path.abspath(os.path.expanduser(root))
    folder = os.path.join(root, dataset_name)
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "nnUNet_preprocessed=" + root if probe == root else probe
        raise UserError(f"{what}: is a file, not a folder (--split writes splits_final.json into "
                        f"{folder})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{probe}: folder is not writable (permission denied); --split writes "
                        f"splits_final.json into {folder}")
    return folder


@dataclass
class SplitPlan:
    """A split computed and checked before the conversion, written with the dataset."""
    record: Dict
    tag: str
    final_folder: Optional[str]
    _created: List[str] = field(default_factory=list)
    _previous: Optional[bytes] = None
    _final_written: bool = False

    @property
    def final_path(self) -> Optional[str]:
        return os.path.join(self.final_folder, "splits_final.json") if self.final_folder else None

    def write(self, dataset_folder: str) -> None:
        """split_<tag>.json into ``dataset_folder``, and splits_final.json into nnUNet_preprocessed."""
        fileio.write_json(os.path.join(dataset_folder, f"split_{self.tag}.json"), self.record, what="split file")
        if not self.final_path:
            return
        probe = self.final_folder
        while not os.path.isdir(probe):
            self._created.append(probe)
            probe = os.path.dirname(probe)
        try:
            os.makedirs(self.final_folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.final_folder}: cannot create folder ({fileio.os_error_cause(e)})") from None
        if os.path.isfile(self.final_path):
            with open(self.final_path, "rb") as f:
                self._previous = f.read()
        fileio.write_json(self.final_path, [{"train": self.record["train"], "val": self.record["val"]}],
                          what="nnU-Net split file")
        self._final_written = True

    def undo(self) -> None:
        """Put nnUNet_preprocessed back as it was (the conversion failed after :meth:`write`)."""
        if self._final_written:
            if self._previous is not None:
                fileio.write_bytes(self.final_path, self._previous, what="nnU-Net split file")
            else:
                os.remove(self.final_path)
            self._final_written = False
        for folder in self._created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break

    def report(self, dataset_folder: str) -> None:
        r = self.record
        print(f"Split {self.tag.replace('_', '/')} (seed {r['seed']}): {len(r['train'])} train, {len(r['val'])} val, "
              f"{len(r['test'])} test -> {os.path.join(dataset_folder, f'split_{self.tag}.json')}")
        if self.final_path:
            print(f"  nnU-Net fold 0 = this split: {self.final_path}")
        else:
            print("  nnUNet_preprocessed is not set: copy train/val into splits_final.json yourself")


def plan_split(dataset_name: str, case_ids: Sequence[str], fractions="70/20/10", seed: int = 0) -> SplitPlan:
    """The split of ``case_ids`` and where it goes; refuses (UserError) what could not be written."""
    frac = parse_fractions(fractions) if isinstance(fractions, str) else tuple(fractions)
    split = seeded_split(case_ids, frac, seed)
    tag = "_".join(f"{round(100 * f):d}" for f in frac)
    return SplitPlan({"seed": seed, "fractions": list(frac), **split}, tag, preprocessed_folder(dataset_name))


def write_split_files(dataset_folder: str, case_ids: Sequence[str], fractions="70/20/10", seed: int = 0) -> Dict:
    """Split an existing raw dataset's training ids and write the split files (see the module docstring)."""
    plan = plan_split(os.path.basename(os.path.normpath(dataset_folder)), case_ids, fractions, seed)
    try:
        plan.write(dataset_folder)
    except BaseException:
        plan.undo()
        raise
    plan.report(dataset_folder)
    return plan.record

"""The seeds' train/validation/test split (70/20/10) as an alternative to nnU-Net's five folds.

``seeded_split`` shuffles the sorted training case ids with a seeded generator and cuts them by the
fractions (validation and test rounded half up, at least one case each when asked for; training
takes the rest), so the same ids and seed always
give the same split. ``write_split_files`` writes

* ``split_<a>_<b>_<c>.json`` in the raw dataset folder: seed, fractions and the three id lists;
* ``splits_final.json`` (one fold: train / val) in ``$nnUNet_preprocessed/DatasetXXX_Name/`` when
  ``nnUNet_preprocessed`` is set. nnU-Net then trains fold 0 on it instead of making five folds;
  the test ids are held out of both (predict them with ``nnUNetv2_predict`` after training).
"""

import json
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_mcc.errors import UserError


def parse_fractions(text: str) -> Tuple[float, float, float]:
    """'70/20/10' (or '0.7,0.2,0.1') -> fractions summing to 1."""
    parts = [p for p in re.split(r"[/,:]", str(text)) if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0 or values[0] == 0:
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
        raise UserError(f"{n} cases are too few for a {'/'.join(f'{f:.0%}' for f in fractions)} split")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {"train": sorted(shuffled[:n - n_val - n_test]),
            "val": sorted(shuffled[n - n_val - n_test:n - n_test]),
            "test": sorted(shuffled[n - n_test:])}


def write_split_files(dataset_folder: str, case_ids: Sequence[str], fractions="70/20/10", seed: int = 0) -> Dict:
    frac = parse_fractions(fractions) if isinstance(fractions, str) else tuple(fractions)
    split = seeded_split(case_ids, frac, seed)
    tag = "_".join(f"{round(100 * f):d}" for f in frac)
    record = {"seed": seed, "fractions": list(frac), **split}
    path = os.path.join(dataset_folder, f"split_{tag}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"Split {tag.replace('_', '/')} (seed {seed}): {len(split['train'])} train, {len(split['val'])} val, "
          f"{len(split['test'])} test -> {path}")
    preprocessed = os.environ.get("nnUNet_preprocessed", "").strip()
    if preprocessed:
        folder = os.path.join(preprocessed, os.path.basename(os.path.normpath(dataset_folder)))
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, "splits_final.json")
        with open(final, "w") as f:
            json.dump([{"train": split["train"], "val": split["val"]}], f, indent=2)
        print(f"  nnU-Net fold 0 = this split: {final}")
    else:
        print("  nnUNet_preprocessed is not set: copy train/val into splits_final.json yourself")
    return record

"""What a comparison's figures show: the reliability diagram of each trainer pooled over its compared cases
(``reliability_table``) and the cases on which the trainers disagree most, read and cut to the slice of the largest
disagreement (``disagreement_cases``, ``disagreement_pictures``); ``plots.py`` draws them."""

import os
from typing import List, Sequence, Tuple

import numpy as np
import pandas as pd

from nnunet_mcc.experiments.collect import Collected
from nnunet_mcc.experiments.collect_dataset import case_arrays
from nnunet_mcc.metrics import reliability_curve


RELIABILITY_TABLE_COLUMNS = ["trainer", "class_or_region", "bin", "mean_probability", "frequency", "voxels", "cases"]


def reliability_table(reliability: pd.DataFrame, cases: Sequence[str], trainers: Sequence[str],
                      classes: Sequence[str], n_bins: int) -> pd.DataFrame:
    """Per trainer and class/region, its reliability diagram pooled over its compared cases (and seeds): the fine
    probability bins every case added (``collect_calibration.calibration_scores``) summed and grouped into ``n_bins``
    equal-mass bins (``metrics.reliability_curve``), with each bin's mean predicted probability, observed frequency
    (share of its voxels that are the class in the reference) and voxel count."""
    if reliability is None or reliability.empty:
        return pd.DataFrame(columns=RELIABILITY_TABLE_COLUMNS)
    own = reliability[reliability["case"].isin(cases)]
    rows = []
    for trainer in trainers:
        for c in classes:
            sub = own[(own["trainer"] == trainer) & (own["class_or_region"] == c)]
            if sub.empty:
                continue
            fine = sub.groupby("bin")[["count", "sum_probability", "sum_outcome"]].sum()
            mean_p, frequency, voxels = reliability_curve(fine["count"], fine["sum_probability"],
                                                          fine["sum_outcome"], n_bins)
            for i in range(len(voxels)):
                rows.append({"trainer": trainer, "class_or_region": c, "bin": i, "mean_probability": mean_p[i],
                             "frequency": frequency[i], "voxels": int(voxels[i]), "cases": sub["case"].nunique()})
    return pd.DataFrame(rows, columns=RELIABILITY_TABLE_COLUMNS)


def _seed_order(seed) -> tuple:
    try:
        return (0, int(seed))
    except (TypeError, ValueError):
        return (1, 0)  # unrecorded


def disagreement_cases(final_runs: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                       n_cases: int) -> pd.DataFrame:
    """Per class/region (not the foreground mean), the ``n_cases`` cases on which the trainers disagree most: the
    largest spread (max - min over trainers) of the per-case Dice, each trainer on one run, its lowest seed (its
    only run when unseeded). A Dice that is undefined (class in neither reference nor prediction) counts as 1 for the
    spread; cases without any spread are not chosen; ties go to the case name. One row per (class, case): spread,
    and per trainer (dicts) its Dice, run, seed and fold."""
    columns = ["class_or_region", "kind", "case", "spread", "dice", "runs", "seeds", "folds"]
    if n_cases <= 0 or len(trainers) < 2:
        return pd.DataFrame(columns=columns)
    dice = final_runs[(final_runs["metric"] == "Dice") & (final_runs["kind"].isin(["label", "region"]))]
    chosen = {}
    for trainer in trainers:
        own = dice[dice["trainer"] == trainer]
        if own.empty:
            return pd.DataFrame(columns=columns)
        seeds = own.groupby("run")["seed"].first()
        chosen[trainer] = min(seeds.index, key=lambda run: (_seed_order(seeds[run]), run))
    picked = dice[[chosen[t] == r for t, r in zip(dice["trainer"], dice["run"])]]
    wide = picked.pivot_table(index=["class_or_region", "kind", "case"], columns="trainer", values="value",
                              aggfunc="first", dropna=False).reindex(columns=list(trainers))
    where = picked.groupby(["trainer", "case"])[["run", "seed", "fold"]].first()
    filled = wide.fillna(1.0)
    spread = (filled.max(axis=1) - filled.min(axis=1))[wide.notna().any(axis=1) & filled.notna().all(axis=1)]
    rows = []
    for c in classes:
        if c not in spread.index.get_level_values(0):
            continue
        own = spread.xs(c, level="class_or_region")
        own = own[own > 0].reset_index().sort_values([0, "case"], ascending=[False, True]).head(n_cases)
        for _, entry in own.iterrows():
            case = entry["case"]
            rows.append({"class_or_region": c, "kind": entry["kind"], "case": case, "spread": float(entry[0]),
                         "dice": {t: float(wide.loc[(c, entry["kind"], case), t]) for t in trainers},
                         "runs": {t: where.loc[(t, case), "run"] for t in trainers},
                         "seeds": {t: where.loc[(t, case), "seed"] for t in trainers},
                         "folds": {t: int(where.loc[(t, case), "fold"]) for t in trainers}})
    return pd.DataFrame(rows, columns=columns)


def disagreement_slice(reference: np.ndarray, masks: Sequence[np.ndarray]) -> int:
    """The index along the first axis of the slice with the most voxels where the masks are not all equal (2D
    images, read by nnU-Net as one slice: 0); with no such voxel, the slice with the most reference voxels; ties
    to the lowest index."""
    if not len(masks):
        return int(np.argmax(reference.reshape(len(reference), -1).sum(axis=1)))
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    differ = (stack.any(axis=0) & ~stack.all(axis=0)).reshape(len(reference), -1).sum(axis=1)
    if differ.max() > 0:
        return int(np.argmax(differ))
    return int(np.argmax(reference.reshape(len(reference), -1).sum(axis=1)))


def file_part(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def disagreement_pictures(chosen: pd.DataFrame, data: Collected, trainers: Sequence[str]) -> Tuple[List[dict],
                                                                                                     List[str]]:
    """For each chosen (class, case): its image, reference and trainers' masks read (``collect_dataset.case_arrays``) and
    cut to the slice of the largest disagreement (``disagreement_slice``); what ``plots.plot_disagreement`` draws
    and the report says about it (``file`` relative to the report folder). Also why a chosen case is not drawn (no
    reference segmentation, no exported prediction of any trainer: results copied without them)."""
    keys = data.counts.drop_duplicates(["class_or_region", "kind"]).set_index(["class_or_region", "kind"])["key"]
    folders = data.runs.set_index(["run", "fold"])["folder"]
    pictures, cache, skipped = [], {}, []
    for entry in chosen.itertuples(index=False):
        where = {t: os.path.join(folders[(entry.runs[t], entry.folds[t])], "validation") for t in trainers}
        arrays = case_arrays(data.dataset_name, entry.case, keys[(entry.class_or_region, entry.kind)], entry.kind,
                             where, cache)
        if arrays["missing"] or not arrays["predictions"]:
            skipped.append(f"{entry.class_or_region}, {entry.case}: not drawn ("
                           f"{arrays['missing'] or 'no exported prediction of any trainer'})")
            continue
        reference, masks = arrays["reference"], arrays["predictions"]
        index = disagreement_slice(reference, list(masks.values()))
        spacing = arrays["spacing"]
        pictures.append({
            "class_or_region": entry.class_or_region, "case": entry.case, "spread": entry.spread,
            "dice": entry.dice, "runs": entry.runs, "seeds": entry.seeds, "folds": entry.folds,
            "slice": index, "slices": len(reference), "image_missing": arrays["image_missing"],
            "predictions_missing": arrays["predictions_missing"],
            "file": f"disagreement/{len(pictures) + 1:02d}_{file_part(entry.class_or_region)}_"
                    f"{file_part(entry.case)}.png",
            "image": None if arrays["image"] is None else arrays["image"][index],
            "reference": reference[index], "masks": {t: m[index] for t, m in masks.items()},
            "aspect": spacing[1] / spacing[2] if len(spacing) == 3 else 1.0})
    return pictures, skipped


def reliability_plot_files(trainers: Sequence[str], reliability: pd.DataFrame, plots: bool) -> dict:
    """trainer -> the path of its reliability diagram in the report folder, for the trainers with a reliability
    table (none without plots)."""
    return {t: f"calibration/reliability_{i + 1:02d}_{file_part(t)}.png"
            for i, t in enumerate(trainers) if plots and t in set(reliability["trainer"])}

"""Classes a run failed on at the end of training: lost (Dice 0 on every validation case that has the class) or
flooded (predicted over much of the image), when a lost class went, and whether it was lost in training or by
test-time mirroring (from the fold's validation without mirroring)."""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence, results
from nnunet_mcc.experiments.collect_dataset import FINAL
from nnunet_mcc.provenance import unmirrored_summary


# A class "floods" a run when it is predicted over much of the image instead of on its own voxels: a mean Dice
# below FLOOD_DICE over the validation cases that have it, while more voxels are predicted as the class than the
# reference holds, times FLOOD_FACTOR (summed over the fold's validation cases). A flooded class scores about 0.01,
# not 0, so the Dice-0 rule of a lost class misses it; the class-loss rate counts both.
FLOOD_DICE = 0.1
FLOOD_FACTOR = 2.0
LOST, FLOODED = "lost", "flooded"


def _failure(dice: pd.Series, predicted: float, referenced: float) -> Optional[str]:
    """``LOST`` (Dice 0 on every case that has the class), ``FLOODED`` or None, from the class's per-case Dice over
    the cases that have it and its predicted / reference voxels summed over the fold."""
    if bool((dice == 0).all()):
        return LOST
    if float(dice.mean()) < FLOOD_DICE and predicted >= FLOOD_FACTOR * referenced:
        return FLOODED
    return None


def collapsed_classes(counts: pd.DataFrame, records: Sequence[dict]) -> pd.DataFrame:
    """Runs (trainer, seed, fold) in which a class or region failed at the end of training: ``failure`` "lost"
    (Dice 0 on every validation case where it is present, reference non-empty) or "flooded" (see ``FLOOD_DICE``).
    When a lost class went: from the run's per-epoch pseudo Dice per class (``dice_per_class_or_region``, in the
    order of the summary's labels/regions), the epoch after which it stayed at or below 1e-3 to the end, or "never
    learned" (never above it)."""
    columns = ["trainer", "run", "seed", "fold", "class_or_region", "kind", "failure", "cases_present",
               "predicted_voxels", "reference_voxels", "status", "epoch", "iterations", "when"]
    final = counts[(counts["stage"] == FINAL) & counts["kind"].isin(["label", "region"])]
    present = final[(final["TP"] + final["FN"]) > 0]
    if present.empty:
        return pd.DataFrame(columns=columns)
    keys = ["trainer", "run", "seed", "fold", "class_or_region", "kind", "key"]
    voxels = final.assign(predicted=final["TP"] + final["FP"], referenced=final["TP"] + final["FN"]).groupby(
        keys, sort=False)[["predicted", "referenced"]].sum()
    grouped = present.groupby(keys, sort=False)["Dice"].agg(cases_present="count", dice=list)
    by_run = {(r["run"], r["fold"]): r for r in records}
    rows = []
    for (trainer, run, seed, fold, name, kind, key), entry in grouped.iterrows():
        predicted, referenced = (float(v) for v in voxels.loc[(trainer, run, seed, fold, name, kind, key)])
        failure = _failure(pd.Series(entry["dice"], dtype=float), predicted, referenced)
        if failure is None:
            continue
        record = by_run[(run, fold)]
        status, epoch = "no per-class curve", None
        per_class = record.get("_per_class")
        if failure == FLOODED:
            status = FLOODED
        elif kind == "label" and per_class:
            order = list(dict.fromkeys(final.loc[(final["run"] == run) & (final["fold"] == fold) &
                                                 (final["kind"] == "label"), "key"]))
            index = order.index(key)
            status, epoch = convergence.collapse_epoch([e[index] if index < len(e) else None for e in per_class])
        elif kind == "region":
            status = "no per-epoch curve for evaluation regions"
        per_epoch = record["num_iterations_per_epoch"]
        iterations = epoch * per_epoch if epoch and per_epoch else None
        when = {"collapsed": f"collapsed after epoch {epoch}" + (f" ({iterations} it.)" if iterations else ""),
                "never learned": "never learned",
                "not at the end": "pseudo Dice still above 0 at the last epoch",
                FLOODED: f"flooded: predicted on {predicted:.0f} voxels for {referenced:.0f} in the reference"
                }.get(status, status)
        rows.append({"trainer": trainer, "run": run, "seed": seed, "fold": fold, "class_or_region": name,
                     "kind": kind, "failure": failure, "cases_present": int(entry["cases_present"]),
                     "predicted_voxels": int(predicted), "reference_voxels": int(referenced), "status": status,
                     "epoch": epoch, "iterations": iterations, "when": when})
    return pd.DataFrame(rows, columns=columns)


LOST_IN_TRAINING, LOST_BY_MIRRORING = "training", "mirroring"
LOST_IN_UNKNOWN = "unknown (no unmirrored validation)"


def lost_in_training_or_mirroring(collapsed: pd.DataFrame, records: Sequence[dict],
                                  context: dict) -> Tuple[pd.DataFrame, List[str]]:
    """``collapsed`` with ``lost_in`` and ``dice_unmirrored`` per row, from the fold's validation without
    test-time mirroring (``validation_nomirror/summary.json``, ``nnunet_mcc.experiments.mirroring``) when it
    exists: "training" when the class is lost there too (Dice 0 on every case that has it), "mirroring" when it
    is found there (so nnU-Net's mirrored prediction lost it), else "unknown (...)" saying why.
    ``dice_unmirrored``: the class's mean Dice over the cases that have it, predicted without mirroring. Also the
    notes on unreadable unmirrored summaries."""
    collapsed = collapsed.copy()
    collapsed["lost_in"] = pd.Series([LOST_IN_UNKNOWN] * len(collapsed), index=collapsed.index, dtype=object)
    collapsed["dice_unmirrored"] = float("nan")
    if collapsed.empty:
        return collapsed, []
    folders = {(r["run"], r["fold"]): r["folder"] for r in records}
    unmirrored: Dict[tuple, Tuple[Optional[pd.DataFrame], str]] = {}
    notes = []
    for index, entry in collapsed.iterrows():
        run = (entry["run"], entry["fold"])
        if run not in unmirrored:
            unmirrored[run] = _unmirrored_counts(folders[run], context, notes, f"{entry['run']} fold {entry['fold']}")
        counts, why = unmirrored[run]
        if counts is None:
            collapsed.at[index, "lost_in"] = why
            continue
        own = counts[(counts["kind"] == entry["kind"]) & (counts["class_or_region"] == entry["class_or_region"])]
        present = own[(own["TP"] + own["FN"]) > 0]
        if present.empty:
            collapsed.at[index, "lost_in"] = "unknown (not present in the unmirrored validation)"
            continue
        dice = 2 * present["TP"] / (2 * present["TP"] + present["FP"] + present["FN"])
        collapsed.at[index, "dice_unmirrored"] = float(dice.mean())
        failed = _failure(dice, float((own["TP"] + own["FP"]).sum()), float((own["TP"] + own["FN"]).sum()))
        collapsed.at[index, "lost_in"] = LOST_BY_MIRRORING if failed is None else LOST_IN_TRAINING
    return collapsed, notes


def _unmirrored_counts(folder: str, context: dict, notes: List[str],
                       label: str) -> Tuple[Optional[pd.DataFrame], str]:
    """Per-case counts of a fold's validation without mirroring (its summary, and the evaluation regions from its
    predictions when the dataset has some), or (None, why not)."""
    path = unmirrored_summary(folder)
    if not os.path.isfile(path):
        return None, LOST_IN_UNKNOWN
    try:
        rows = results.read_summary(path, context["file_ending"], context["names"], "unmirrored validation summary")
    except UserError as e:
        notes.append(f"{label}: {e}; lost in training or by mirroring not told")
        return None, "unknown (unmirrored validation unreadable)"
    if context["regions"]:
        rows += results.region_rows(os.path.dirname(path), context["gt_folder"], context["regions"],
                                    context["file_ending"], context["reader_writer"], context["ignore_label"])
    columns = ["case", "key", "class_or_region", "kind", *results.COUNTS]
    return pd.DataFrame(rows, columns=columns), ""

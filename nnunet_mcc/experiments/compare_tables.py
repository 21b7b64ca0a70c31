"""The per-trainer tables of a comparison, from its runs (one per fold and seed): seeds, budget, settings and the
convergence verdict; the recorded training cost against the baseline's; what a longer budget would add (the judge's
projected gains); and the class-loss rate (runs that lost or flooded a class, and whether in training or by
mirroring)."""

import json
from typing import Sequence

import numpy as np
import pandas as pd

from nnunet_mcc.experiments import convergence, results
from nnunet_mcc.experiments.collect_collapse import FLOODED, LOST_BY_MIRRORING, LOST_IN_TRAINING


def trainer_runs(runs: pd.DataFrame, trainers: Sequence[str]) -> pd.DataFrame:
    """One row per trainer: seeds, budget(s), loss, settings, the convergence verdict over its runs (folds x
    seeds) and the classes that collapsed in some of its runs."""
    rows = []
    for trainer in trainers:
        own = runs[runs["trainer"] == trainer]
        if own.empty:
            continue
        judged = own[own["converged"].isin([convergence.YES, convergence.NO])]
        n_yes = int((own["converged"] == convergence.YES).sum())
        n_runs = own["run"].nunique() if "run" in own else 1
        what = "folds" if n_runs == 1 else "runs (folds x seeds)"
        if len(judged) == 0:
            verdict = "not judged (" + ", ".join(sorted(set(own["converged"]))) + ")"
        else:
            verdict = f"{n_yes} of {len(own)} {what} converged"
        collapsed = {}
        for text in own.get("collapsed", pd.Series(dtype=object)).fillna(""):
            for name in {part.split(" (")[0] for part in text.split("; ") if part}:
                collapsed[name] = collapsed.get(name, 0) + 1
        seeds = " ".join(dict.fromkeys(str(int(s)) if s is not None and pd.notna(s) else "unrecorded"
                                       for s in own.get("seed", pd.Series([None] * len(own)))))
        settings = own["loss_settings"].iloc[0]
        rows.append({"trainer": trainer, "seeds": seeds, "n_seeds": n_runs, "folds": own["fold"].nunique(),
                     "runs": len(own), "budget": " / ".join(dict.fromkeys(own["budget"])),
                     "iterations": " / ".join(str(int(v)) if pd.notna(v) else "unknown"
                                              for v in dict.fromkeys(own["iterations"])),
                     "loss": own["loss"].iloc[0],
                     "settings": results.settings_text(json.loads(settings)) if settings else "",
                     "converged": verdict, "all_converged": n_yes == len(own),
                     "collapsed": "; ".join(f"{c} in {n} of {len(own)} runs" for c, n in collapsed.items())})
    return pd.DataFrame(rows)


def cost_table(runs: pd.DataFrame, trainers: Sequence[str], baseline: str) -> pd.DataFrame:
    """Per trainer, the mean over its runs (folds and seeds) of the recorded training cost (``cost`` of
    ``nnunet_mcc_log.json``), and the ratio of wall time, iterations/s and peak memory to the baseline's."""
    rows = []
    for trainer in trainers:
        own = runs[runs["trainer"] == trainer]
        if own.empty:
            continue
        row = {"trainer": trainer, "runs": len(own)}
        for key in ("wall_seconds", "iterations_per_second", "peak_memory_mb"):
            values = pd.to_numeric(own.get(f"cost_{key}", pd.Series(dtype=float)), errors="coerce")
            row[key] = float(values.mean()) if values.notna().any() else float("nan")
            row[f"runs_with_{key}"] = int(values.notna().sum())
        for key in ("device", "peak_memory_kind", "jobs", "torch_threads"):
            values = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                      for v in own.get(f"cost_{key}", pd.Series(dtype=object)) if v is not None and pd.notna(v)]
            row[key] = " / ".join(dict.fromkeys(values)) if values else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    base = table.set_index("trainer").loc[baseline] if baseline in set(table["trainer"]) else None
    for key in ("wall_seconds", "iterations_per_second", "peak_memory_mb"):
        reference = base[key] if base is not None else float("nan")
        table[f"{key}_vs_baseline"] = table[key] / reference if np.isfinite(reference) and reference else float("nan")
    return table


PROJECTION_COLUMNS = ["trainer", "runs", "rising_runs", "runs_with_class_at_zero", "classes_at_zero"] + [
    f"gain_{name}_{stat}" for name in convergence.SERIES for stat in ("median", "min", "max")]


def projected_gains(runs: pd.DataFrame, trainers: Sequence[str]) -> pd.DataFrame:
    """Per trainer with runs the judge did not call converged for a reason a longer budget may change: over its runs
    still rising (``still_rising``), the median, least and largest projected gain of each judged series (the gain
    of a schedule twice as long, ``convergence.doubling_gain``); and
    its runs with a class at zero (``classes_at_zero``: flat, no gain projected), with how often each class."""
    rows = []
    for trainer in trainers:
        own = runs[runs["trainer"] == trainer]
        rising = own[own.get("still_rising", pd.Series("", index=own.index)).fillna("") != ""]
        zero = own.get("classes_at_zero", pd.Series("", index=own.index)).fillna("")
        if rising.empty and not (zero != "").any():
            continue
        classes: dict = {}
        for text in zero:
            for part in filter(None, text.split("; ")):
                classes[part] = classes.get(part, 0) + 1
        row = {"trainer": trainer, "runs": len(own), "rising_runs": len(rising),
               "runs_with_class_at_zero": int((zero != "").sum()),
               "classes_at_zero": ", ".join(f"{c} in {n}" for c, n in classes.items())}
        for name in convergence.SERIES:
            values = pd.to_numeric(rising.get(f"projected_gain_{name}", pd.Series(dtype=float)),
                                   errors="coerce").dropna()
            for stat, value in (("median", values.median()), ("min", values.min()), ("max", values.max())):
                row[f"gain_{name}_{stat}"] = float(value) if len(values) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=PROJECTION_COLUMNS)


def class_loss_table(runs: pd.DataFrame, collapsed: pd.DataFrame, trainers: Sequence[str],
                     classes: Sequence[str] = ()) -> pd.DataFrame:
    """Per trainer, its class-loss rate: the runs (one per fold and seed, finished) in which some class or region
    was lost or flooded (``collect_collapse.collapsed_classes``: Dice 0 on every validation case that has it, or predicted
    over much of the image) over its runs; how many of those runs had a flood; per class, in how many runs it
    failed (most often first, ties in the order of ``classes``); and how many of
    those runs lost a class in training (some lost class is lost without mirroring too), by mirroring only
    (every lost class is found without mirroring) or for an unknown reason (no unmirrored validation), from
    ``collapsed``'s ``lost_in``."""
    rows = []
    for trainer in trainers:
        own = runs[runs["trainer"] == trainer]
        if own.empty:
            continue
        lost = collapsed[collapsed["trainer"] == trainer] if len(collapsed) else pd.DataFrame(
            columns=["run", "fold", "class_or_region", "lost_in"])
        per_class = lost.drop_duplicates(["run", "fold", "class_or_region"]).groupby(
            "class_or_region", sort=False).size()
        position = {c: i for i, c in enumerate(classes)}
        per_class = sorted(per_class.items(), key=lambda item: (-item[1], position.get(item[0], len(position))))
        causes = {LOST_IN_TRAINING: 0, LOST_BY_MIRRORING: 0, "unknown": 0}
        for _, group in lost.groupby(["run", "fold"], sort=False):
            found = set(group.get("lost_in", pd.Series(dtype=object)))
            cause = LOST_IN_TRAINING if LOST_IN_TRAINING in found else \
                LOST_BY_MIRRORING if found == {LOST_BY_MIRRORING} else "unknown"
            causes[cause] += 1
        n_lost = int(len(lost[["run", "fold"]].drop_duplicates()))
        flooded = lost[lost["failure"] == FLOODED] if "failure" in lost else lost.iloc[:0]
        rows.append({"trainer": trainer, "runs": len(own), "runs_with_lost_class": n_lost,
                     "class_loss_rate": n_lost / len(own),
                     "runs_with_flood": int(len(flooded[["run", "fold"]].drop_duplicates())),
                     "lost_classes": ", ".join(f"{c} {n}" for c, n in per_class),
                     "runs_lost_in_training": causes[LOST_IN_TRAINING],
                     "runs_lost_by_mirroring": causes[LOST_BY_MIRRORING],
                     "runs_lost_cause_unknown": causes["unknown"]})
    return pd.DataFrame(rows, columns=["trainer", "runs", "runs_with_lost_class", "class_loss_rate",
                                       "runs_with_flood", "lost_classes",
                                       "runs_lost_in_training", "runs_lost_by_mirroring", "runs_lost_cause_unknown"])

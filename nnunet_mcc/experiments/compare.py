"""``nnunet-mcc compare``: compare trainers from their cross-validation results, reading only.

Reads what nnU-Net's own tools read, each fold's ``validation/summary.json`` (checkpoints are not needed),
plus what says how the fold was trained: nnU-Net's ``debug.json`` (the budget, for any trainer), this
package's ``nnunet_mcc_provenance.json`` (loss settings), the per-epoch validation series
(``nnunet_mcc_log.json``, else the checkpoint's ``logging``) and the snapshot validations written during
training (``snapshots/epoch_<N>/summary.json``), and for a run with a collapsed class its validation without
test-time mirroring (``validation_nomirror/summary.json``, written by ``mirroring.validate_without_mirroring``)
when present. From the predictions the final validation exports (``validation/<case><file_ending>``) and the
dataset's ``gt_segmentations`` it also computes the boundary metrics HD95 (mm) and NSD (``--nsd-tolerance`` mm,
``nnunet_mcc.metrics``), tested and ranked as Dice and MCC in each metric's direction (``metrics.METRIC_INFO``);
folds without predictions get a note. From the class probabilities the final validation saves with ``--npz``
(``validation/<case>.npz``) it computes the calibration metrics ECE (``--calibration-bins`` equal-mass bins) and
Brier score the same way, with a reliability diagram per trainer (``--no-calibration`` skips them); and it draws,
per class, the cases on which the trainers' Dice differ most (``--pictures N``, ``disagreement_cases``). It never
starts a training or validation process.

Everything is built on one tidy table (trainer, fold, case, class or region, training stage, metric,
value): group-by and pivots give the tables, scipy the paired Wilcoxon tests, statsmodels the Holm
correction. Runs of different budgets are not paired unless asked for (``--allow-mixed-budgets``); every
run's convergence is judged from its logged curves (``convergence.py``) and a comparison with any
unconverged run says first that it measures training speed, not final quality.

Training seeds: a trainer's runs are its seed folders ``<trainer>_seed<S>`` when it has any (else its
unsuffixed folder); each case's score is averaged over the seeds before the paired tests, the spread over
seeds is reported beside the fold spread, and a pair is "above training noise" only when the Holm-corrected
test passes and the mean difference exceeds 2 sqrt((s_A^2 + s_B^2) / n_seeds). Different seed sets between
trainers (``--allow-mixed-seeds``) and different settings identities within a trainer
(``--allow-mixed-settings``) are refused like mixed budgets. Collapsed classes (Dice 0 on every validation
case that has them) and the recorded training cost are reported per run and trainer; the class-loss rate (runs that
lost a class / runs) of every trainer heads the report, and a pair's difference is split into the part that goes
with the runs that lost a class and the rest (``lost_class_split``).

Written into the report folder (replaced as a whole, never half-written): ``per_case.csv``,
``summary_table.{md,csv,tex}``, ``wilcoxon.csv``, ``bootstrap_ranks.csv``, ``runs.csv`` (seed, budget,
settings, convergence, collapsed classes, cost per run), ``cost.csv``, ``collapsed.csv`` (with whether each class was
lost in training or by mirroring), ``class_loss.csv`` (each trainer's class-loss rate),
``learning_curves.csv``, ``snapshots.csv``, ``plots/`` and ``report.md``.

Ensembles (``--ensemble A+B``, ``all``): the members' saved validation probabilities averaged per fold and seed by
nnU-Net's ensembling and scored by its evaluation (``ensemble.py``), written under the report folder's
``ensembles/`` (never into the trainers' folders), then read as one more trainer.
"""

import argparse
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from nnunet_mcc.errors import UserError
from nnunet_mcc.plans import add_planner_argument
from nnunet_mcc.experiments import auto_budget as auto_budget_module
from nnunet_mcc.experiments import convergence, report, results, stats
from nnunet_mcc.experiments import ensemble as ensemble_module
from nnunet_mcc.experiments.collect import (BOUNDARY_METRICS, FINAL, FLOODED, LOST_BY_MIRRORING, LOST_IN_TRAINING,
                                            METRICS, SNAPSHOT, Collected, collect, metric_columns)
from nnunet_mcc.experiments.plots import plot_distributions, plot_learning_curves
from nnunet_mcc.experiments.collect import CALIBRATION_METRICS, case_arrays
from nnunet_mcc.experiments.plots import plot_disagreement, plot_reliability
from nnunet_mcc.fileio import atomic_folder
from nnunet_mcc.metrics import DEFAULT_NSD_TOLERANCE_MM, higher_is_better
from nnunet_mcc.metrics import DEFAULT_CALIBRATION_BINS, reliability_curve

TESTED_METRICS = ("Dice", "MCC")  # and the boundary and calibration metrics, where computed (``tested_metrics``)
DEFAULT_PICTURES = 2  # cases drawn per class/region where the trainers disagree most
FOREGROUND_MEAN = "foreground mean"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    add_planner_argument(parser)
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("--baseline", help="trainer the others are tested against (default: the first of -tr)")
    parser.add_argument("--ensemble", action="append", metavar="A+B",
                        help="also compare the ensemble of these trainers of -tr (joined by '+'; repeatable; 'all': "
                             "every compared trainer): per fold and seed nnU-Net's validation probabilities (--npz) "
                             "averaged, exported and scored by nnU-Net's ensembling and evaluation, written under "
                             "the report folder's ensembles/ and reused while their inputs are unchanged")
    parser.add_argument("--ensemble-processes", type=int, default=ensemble_module.DEFAULT_PROCESSES, metavar="N",
                        help="worker processes of nnU-Net's ensembling and evaluation (default %(default)s; 0: in "
                             "this process, case after case)")
    parser.add_argument("-o", "--output", help="report folder (default: $nnUNet_results/<dataset>/"
                                               "nnunet_mcc_comparison_<plans>_<configuration>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")
    parser.add_argument("--allow-mixed-budgets", action="store_true",
                        help="pair runs trained with different budgets (epochs, iterations per epoch, validation "
                             "iterations) or an unknown one; the budgets are then shown first in the report")
    parser.add_argument("--allow-mixed-seeds", action="store_true",
                        help="pair trainers whose training seeds differ (their seed folders <trainer>_seed<S>, or "
                             "the seed an unsuffixed folder records); the seeds are then shown first in the report")
    parser.add_argument("--allow-mixed-settings", action="store_true",
                        help="pair the folds and seeds of a trainer although they were trained with different "
                             "loss settings (their recorded identity); the differences are listed in the report")
    parser.add_argument("--auto-budget", nargs="?", const="", metavar="RECORD",
                        help="compare each trainer at the budget crossval --auto-budget found its runs converged at "
                             "(its record, default $nnUNet_results/<dataset>/nnunet_mcc_auto_budget_<plans>_"
                             "<configuration>.json); the first lines say which budget each trainer is compared at")
    parser.add_argument("--same-budget", action="store_true",
                        help="with --auto-budget: compare every trainer at the largest budget tried (equal cost) "
                             "instead of each at the budget at which its runs converged")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help="tolerance of the normalised surface Dice in mm (default %(default)s)")
    parser.add_argument("--no-boundary", action="store_true",
                        help="skip the boundary metrics (HD95, NSD), which read every exported validation prediction")
    parser.add_argument("--calibration-bins", type=int, default=DEFAULT_CALIBRATION_BINS, metavar="N",
                        help="equal-mass bins of the expected calibration error (default %(default)s)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="skip the calibration metrics (ECE, Brier) and reliability diagrams, which read every "
                             "saved validation probability file (validation/<case>.npz, crossval --npz)")
    parser.add_argument("--pictures", type=int, default=DEFAULT_PICTURES, metavar="N",
                        help="draw, per class/region, the N cases on which the trainers' Dice differ most (default "
                             "%(default)s; 0: none)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the plots, the reliability diagrams and the pictures of --pictures")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="leave out the 'score after N iterations' table of the snapshot validations")


def run(args) -> int:
    comparison = compare(args.dataset, args.configuration, args.trainers, plans=args.plans, folds=args.folds,
                         baseline=args.baseline, output=args.output, bootstrap=args.bootstrap,
                         plots=not args.no_plots, snapshots=not args.no_snapshots,
                         allow_mixed_budgets=args.allow_mixed_budgets, allow_mixed_seeds=args.allow_mixed_seeds,
                         allow_mixed_settings=args.allow_mixed_settings, auto_budget=args.auto_budget,
                         same_budget=args.same_budget, boundary=not args.no_boundary,
                         nsd_tolerance=args.nsd_tolerance, calibration=not args.no_calibration,
                         calibration_bins=args.calibration_bins, pictures=args.pictures, ensemble=args.ensemble,
                         ensemble_processes=args.ensemble_processes)
    print(comparison["markdown"])
    print(f"\nReport folder: {comparison['output']}")
    return 0


# ---- the tidy table and what is computed from it ----------------------------------------------
def class_order(counts: pd.DataFrame) -> List[str]:
    labels = list(dict.fromkeys(counts.loc[counts["kind"] == "label", "class_or_region"]))
    regions = list(dict.fromkeys(counts.loc[counts["kind"] == "region", "class_or_region"]))
    return labels + ([FOREGROUND_MEAN] if len(labels) > 1 else []) + regions


def tidy_scores(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per trainer, fold, stage, case, class/region and metric, plus the per-case foreground mean
    over the labels (nnU-Net's labels or regions; NaN-aware: the labels defined for that case)."""
    ids = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "kind"]
    long = counts.melt(id_vars=ids, value_vars=metric_columns(counts), var_name="metric", value_name="value")
    long = long[~(long["metric"].isin((*BOUNDARY_METRICS, *CALIBRATION_METRICS)) &
                  (long["stage"] != FINAL))]  # final validation only
    labels = long[long["kind"] == "label"]
    if labels["class_or_region"].nunique() > 1:
        keys = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "metric"]
        fg = labels.groupby(keys, dropna=False, sort=False)["value"].mean().reset_index()
        fg["class_or_region"], fg["kind"] = FOREGROUND_MEAN, "mean"
        long = pd.concat([long, fg[long.columns]], ignore_index=True)
    return long


def tested_metrics(final: pd.DataFrame) -> List[str]:
    """The metrics tested, ranked and plotted: Dice and MCC, and the boundary and calibration metrics where
    computed."""
    present = set(final["metric"].dropna().unique()) if len(final) else set()
    return [m for m in (*TESTED_METRICS, *BOUNDARY_METRICS, *CALIBRATION_METRICS)
            if m in present or m in TESTED_METRICS]


def common_cases(final: pd.DataFrame, trainers: Sequence[str]) -> List[str]:
    """The cases every trainer has, in every one of its runs (seeds): each case is then averaged over the same
    seeds."""
    keys = ["trainer", "run"] if "run" in final.columns else ["trainer"]
    per_run = final.groupby(keys)["case"].agg(set)
    cases = None
    for trainer in trainers:
        own = [v for k, v in per_run.items() if (k[0] if isinstance(k, tuple) else k) == trainer]
        for found in own or [set()]:
            cases = set(found) if cases is None else cases & found
    return sorted(cases or set())


def seed_average(final_runs: pd.DataFrame) -> pd.DataFrame:
    """Each case's score averaged over the trainer's runs (seeds): one row per trainer, case, class/region and
    metric (NaN-aware: the seeds in which the score is defined); ``n_seeds`` says over how many."""
    keys = ["trainer", "case", "class_or_region", "kind", "metric"]
    return final_runs.groupby(keys, sort=False, dropna=False).agg(
        value=("value", "mean"), fold=("fold", "min"), n_seeds=("run", "nunique")).reset_index()


def seed_spread(final_runs: pd.DataFrame) -> pd.DataFrame:
    """Per metric, class/region and trainer: the number of runs (seeds) and the std (ddof=1) over them of each
    run's mean score over all compared cases (NaN with one seed: not measured)."""
    keys = ["metric", "class_or_region", "trainer"]
    per_seed = final_runs.groupby(keys + ["run"])["value"].mean()
    return per_seed.groupby(level=keys).agg(n_seeds="count", std_seeds="std")


def summary_table(final: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                  final_runs: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Per metric, class/region and trainer: mean and std over cases (of the seed-averaged case scores), the
    std of the fold means and the std over seeds of the mean over all cases."""
    keys = ["metric", "class_or_region", "trainer"]
    over_cases = final.groupby(keys)["value"].agg(n_cases="count", mean="mean", std_cases="std")
    fold_means = final.groupby(keys + ["fold"])["value"].mean()
    over_folds = fold_means.groupby(level=keys).agg(n_folds="count", mean_of_fold_means="mean", std_folds="std")
    spread = seed_spread(final_runs if final_runs is not None else final.assign(run=final["trainer"]))
    table = over_cases.join(over_folds).join(spread).reset_index()
    signed = table["mean"].where(table["metric"].map(higher_is_better), -table["mean"])  # larger = better
    table["best"] = signed.notna() & (signed == signed.groupby([table["metric"], table["class_or_region"]]).transform(
        "max"))
    return _ordered(table, trainers, classes)


def _ordered(frame: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    order = {"metric": {m: i for i, m in enumerate((*METRICS, *BOUNDARY_METRICS, *CALIBRATION_METRICS))},
             "class_or_region": {c: i for i, c in enumerate(classes)},
             "trainer": {t: i for i, t in enumerate(trainers)}}
    columns = [c for c in order if c in frame.columns]
    return frame.sort_values(columns, key=lambda s: s.map(order[s.name]), kind="stable").reset_index(drop=True)


def _wide(final: pd.DataFrame) -> pd.DataFrame:
    """(metric, class/region, case) x trainer."""
    return final.set_index(["metric", "class_or_region", "case", "trainer"])["value"].unstack("trainer")


def paired_tests(final: pd.DataFrame, trainers: Sequence[str], baseline: str, classes: Sequence[str],
                 table: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Wilcoxon signed-rank test of every trainer against the baseline on the same cases (each case's score
    averaged over the trainer's seeds), Holm-corrected over all comparisons (trainers x classes) of a metric.
    Differences are trainer minus baseline in the metric's unit; ``higher_is_better`` says which sign favours the
    trainer (negative for HD95).

    With ``table`` (``summary_table``), each pair is also judged against training noise: "above training
    noise" when the Holm-corrected test passes and |mean_A - mean_B| > 2 sqrt(s_A^2/n_A + s_B^2/n_B), s the
    std over seeds of a trainer's mean score (``stats.noise_threshold``); None when a spread is unmeasured."""
    wide = _wide(final)
    rows = []
    for metric in tested_metrics(final):
        block = []
        for trainer in trainers:
            if trainer == baseline:
                continue
            for c in classes:
                if (metric, c) not in wide.index.droplevel("case"):
                    continue
                pair = wide.loc[(metric, c)].reindex(columns=[trainer, baseline])
                result = stats.wilcoxon_paired(pair[trainer].to_numpy(), pair[baseline].to_numpy())
                block.append({"metric": metric, "class_or_region": c, "trainer": trainer, "baseline": baseline,
                              "n_pairs": result["n"], "median_difference": result["median_difference"],
                              "p": result["p"], "higher_is_better": higher_is_better(metric)})
        for entry, adjusted in zip(block, stats.holm([e["p"] for e in block])):
            entry["p_holm"] = adjusted
            entry["significant_0.05"] = bool(np.isfinite(adjusted) and adjusted < 0.05)
        rows += block
    columns = ["metric", "class_or_region", "trainer", "baseline", "n_pairs", "median_difference", "p", "p_holm",
               "significant_0.05", "higher_is_better"]
    if table is None:
        return pd.DataFrame(rows, columns=columns)
    index = table.set_index(["metric", "class_or_region", "trainer"])
    empty = pd.Series({"mean": np.nan, "std_seeds": np.nan, "n_seeds": 0})
    for row in rows:
        own, base = (index.loc[key] if key in index.index else empty for key in (
            (row["metric"], row["class_or_region"], row["trainer"]),
            (row["metric"], row["class_or_region"], row["baseline"])))
        row["mean_difference"] = float(own["mean"] - base["mean"])
        row["std_seeds"], row["std_seeds_baseline"] = float(own["std_seeds"]), float(base["std_seeds"])
        row["n_seeds"], row["n_seeds_baseline"] = (int(v) if pd.notna(v) else 0 for v in (own["n_seeds"],
                                                                                          base["n_seeds"]))
        row["noise_threshold"] = stats.noise_threshold(row["std_seeds"], row["n_seeds"], row["std_seeds_baseline"],
                                                       row["n_seeds_baseline"])
        row["above_training_noise"] = (bool(row["significant_0.05"] and abs(row["mean_difference"]) >
                                            row["noise_threshold"]) if np.isfinite(row["noise_threshold"]) else None)
    return pd.DataFrame(rows, columns=columns + ["mean_difference", "std_seeds", "std_seeds_baseline", "n_seeds",
                                                 "n_seeds_baseline", "noise_threshold", "above_training_noise"])


def rank_stability(final_runs: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                   n_samples: int) -> pd.DataFrame:
    """Bootstrap rank distribution over the cases and, per trainer, its seeds (``stats.bootstrap_ranks_over_seeds``);
    rank 1 is the best mean in the metric's direction (the lowest for HD95)."""
    if "run" not in final_runs.columns:
        final_runs = final_runs.assign(run=final_runs["trainer"])
    rows = []
    for metric in tested_metrics(final_runs):
        sign = 1.0 if higher_is_better(metric) else -1.0
        for c in classes:
            sub = final_runs[(final_runs["metric"] == metric) & (final_runs["class_or_region"] == c)]
            if sub.empty:
                continue
            wide = sub.pivot_table(index="case", columns=["trainer", "run"], values="value", aggfunc="first",
                                   dropna=False)
            cases = sorted(sub["case"].unique())
            wide = wide.reindex(index=cases)
            scores = [sign * wide[t].to_numpy(dtype=float).T if t in wide.columns.get_level_values(0)
                      else np.full((1, len(cases)), np.nan) for t in trainers]
            ranks = stats.bootstrap_ranks_over_seeds(scores, n_samples=n_samples)
            for i, t in enumerate(trainers):
                rows.append({"metric": metric, "class_or_region": c, "trainer": t, "rank": int(ranks["full_rank"][i]),
                             "mean_bootstrap_rank": float(ranks["mean_rank"][i]),
                             "p_rank_1": float(ranks["frequency"][i, 0]),
                             "rank_frequencies": " ".join(f"{f:.3f}" for f in ranks["frequency"][i]),
                             "kendall_tau_median": ranks["kendall_tau"]})
    return pd.DataFrame(rows)


def snapshot_table(tidy: pd.DataFrame, cases: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Foreground mean (or the only label) per trainer after each snapshot and at the end of training:
    mean over the compared cases of each fold's validation set."""
    if not (tidy["stage"] == SNAPSHOT).any():
        return pd.DataFrame()
    headline = FOREGROUND_MEAN if FOREGROUND_MEAN in classes else classes[0]
    sub = tidy[(tidy["class_or_region"] == headline) & tidy["case"].isin(cases) &
               tidy["metric"].isin(TESTED_METRICS)]
    keys = ["trainer", "epoch", "iterations", "stage"]
    table = sub.groupby(keys + ["metric"], dropna=False)["value"].agg(["mean", "count"])
    wide = table["mean"].unstack("metric")
    wide["n_cases"] = table["count"].groupby(level=keys, dropna=False).max()
    wide = wide.reset_index()
    wide.columns.name = None
    return wide.sort_values(["trainer", "iterations"], kind="stable").reset_index(drop=True)


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
    was lost or flooded (``collect.collapsed_classes``: Dice 0 on every validation case that has it, or predicted
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


LOST_SPLIT_COLUMNS = ("mean_difference_without_lost_runs", "n_cases_without_lost_runs", "difference_due_to_lost_runs")


def lost_class_split(tests: pd.DataFrame, final_runs: pd.DataFrame, collapsed: pd.DataFrame) -> pd.DataFrame:
    """``tests`` with, for every pair in which either trainer lost a class in some run, the pair's difference
    recomputed without the runs in which either of the two lost a class: a (fold, seed) is left out for both
    trainers (so the two are still averaged over the same seeds), each case averaged over the seeds left, the
    difference of the means over the cases both still have (``n_cases_without_lost_runs``; a fold drops out when
    every seed lost a class in it), and ``difference_due_to_lost_runs``: the pair's ``mean_difference`` minus
    that. Not tested again; NaN for pairs in which neither trainer lost a class."""
    tests = tests.copy()
    for column in LOST_SPLIT_COLUMNS:
        tests[column] = np.nan
    if tests.empty or "mean_difference" not in tests or collapsed is None or collapsed.empty:
        return tests
    lost_by = {t: set(zip(group["fold"], group["seed"])) for t, group in collapsed.groupby("trainer")}
    run_keys = pd.Series(list(zip(final_runs["fold"], final_runs["seed"])), index=final_runs.index)
    for index, row in tests.iterrows():
        pair = [row["trainer"], row["baseline"]]
        lost = lost_by.get(pair[0], set()) | lost_by.get(pair[1], set())
        if not lost:
            continue
        kept = final_runs[final_runs["trainer"].isin(pair) & ~run_keys.isin(lost) &
                          (final_runs["metric"] == row["metric"]) &
                          (final_runs["class_or_region"] == row["class_or_region"])]
        scores = seed_average(kept).pivot_table(index="case", columns="trainer", values="value", aggfunc="first") \
            if len(kept) else pd.DataFrame()
        scores = scores.reindex(columns=pair).dropna()
        tests.at[index, "n_cases_without_lost_runs"] = len(scores)
        if len(scores):
            clean = float(scores[pair[0]].mean() - scores[pair[1]].mean())
            tests.at[index, "mean_difference_without_lost_runs"] = clean
            tests.at[index, "difference_due_to_lost_runs"] = row["mean_difference"] - clean
    return tests


# ---- calibration and pictures -------------------------------------------------------------------
RELIABILITY_TABLE_COLUMNS = ["trainer", "class_or_region", "bin", "mean_probability", "frequency", "voxels", "cases"]


def reliability_table(reliability: pd.DataFrame, cases: Sequence[str], trainers: Sequence[str],
                      classes: Sequence[str], n_bins: int) -> pd.DataFrame:
    """Per trainer and class/region, its reliability diagram pooled over its compared cases (and seeds): the fine
    probability bins every case added (``collect.calibration_scores``) summed and grouped into ``n_bins``
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


def _file_part(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def disagreement_pictures(chosen: pd.DataFrame, data: Collected, trainers: Sequence[str]) -> Tuple[List[dict],
                                                                                                     List[str]]:
    """For each chosen (class, case): its image, reference and trainers' masks read (``collect.case_arrays``) and
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
            "file": f"disagreement/{len(pictures) + 1:02d}_{_file_part(entry.class_or_region)}_"
                    f"{_file_part(entry.case)}.png",
            "image": None if arrays["image"] is None else arrays["image"][index],
            "reference": reference[index], "masks": {t: m[index] for t, m in masks.items()},
            "aspect": spacing[1] / spacing[2] if len(spacing) == 3 else 1.0})
    return pictures, skipped


# ---- the whole comparison ---------------------------------------------------------------------
def compare(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), baseline: Optional[str] = None, output: Optional[str] = None,
            bootstrap: int = 1000, plots: bool = True, snapshots: bool = True,
            allow_mixed_budgets: bool = False, allow_mixed_seeds: bool = False,
            allow_mixed_settings: bool = False, auto_budget: Optional[str] = None, same_budget: bool = False,
            boundary: bool = True, nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM, calibration: bool = True,
            calibration_bins: int = DEFAULT_CALIBRATION_BINS, pictures: int = DEFAULT_PICTURES,
            ensemble: Optional[Sequence[str]] = None,
            ensemble_processes: int = ensemble_module.DEFAULT_PROCESSES) -> dict:
    """``auto_budget``: the record of ``crossval --auto-budget`` ("" for its default place): each trainer is
    compared at the budget at which its runs converged, or with ``same_budget`` every trainer at the largest one.
    ``boundary``: also HD95 and NSD (tolerance ``nsd_tolerance`` mm) from the exported validation predictions.
    ``calibration``: also ECE (``calibration_bins`` equal-mass bins) and Brier from the saved probabilities (--npz),
    and a reliability diagram per trainer (with ``plots``). ``pictures``: with ``plots``, that many cases per
    class/region where the trainers disagree most are drawn (0: none). ``ensemble``: ``--ensemble`` values
    (``A+B``, ``all``), each ensemble compared as one more trainer after them (``ensemble_module``; built with
    ``ensemble_processes`` worker processes, 0: in this process)."""
    trainers = list(trainers)
    for name, value, least in (("--calibration-bins", calibration_bins, 1), ("--pictures", pictures, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise UserError(f"{name} must be a whole number of at least {least}, got {value!r}")
    try:
        nsd_tolerance = float(nsd_tolerance)
    except (TypeError, ValueError):
        raise UserError(f"--nsd-tolerance must be a number of mm, got {nsd_tolerance!r}") from None
    if not (np.isfinite(nsd_tolerance) and nsd_tolerance > 0):
        raise UserError(f"--nsd-tolerance must be a positive number of mm, got {nsd_tolerance:g}")
    baseline = baseline or trainers[0]
    if baseline not in trainers:
        raise UserError(f"--baseline {baseline!r} is not one of the compared trainers ({' '.join(trainers)})")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be a positive number of samples, got {bootstrap}")
    specs = ensemble_module.parse(ensemble, trainers)
    choice = auto_budget_choice(dataset, configuration, plans, folds, trainers, auto_budget, same_budget)
    if choice is not None:  # the runs of each trainer at the chosen budget: nnU-Net's <Trainer>_<N>epochs folders
        trainers, baseline = [choice.compared[t] for t in trainers], choice.compared[baseline]
        specs = ensemble_module.rename(specs, choice.compared)
    ensembles, ensemble_notes, output = build_ensembles(specs, dataset, configuration, plans, folds, output,
                                                        ensemble_processes)
    data = collect(dataset, configuration, trainers, plans, folds, snapshots,
                   allow_mixed_budgets or (choice is not None and choice.differ), allow_mixed_seeds,
                   allow_mixed_settings, boundary=boundary, nsd_tolerance=nsd_tolerance, calibration=calibration,
                   calibration_bins=calibration_bins, ensembles=ensembles)
    trainers = list(data.trainers)  # and the ensembles, after them
    output = os.path.abspath(output or os.path.join(data.results_root, data.dataset_name,
                                                    f"nnunet_mcc_comparison_{plans}_{configuration}"))
    missing = [t for t in trainers if t not in set(data.runs["trainer"])]
    if missing:
        raise UserError(f"no finished fold for {', '.join(missing)}: nothing to compare it on")
    tidy = tidy_scores(data.counts)
    final_all = tidy[tidy["stage"] == FINAL]
    cases = common_cases(final_all, trainers)
    all_cases = sorted(set(final_all["case"]))
    notes = ensemble_notes + list(data.notes)
    if choice is None:
        notes += auto_budget_module.superseded_notes(data.results_root, data.dataset_name, trainers, plans,
                                                     configuration)
    if len(cases) < len(all_cases):
        notes.append(f"{len(all_cases) - len(cases)} of {len(all_cases)} cases are left out because not every "
                     f"trainer (in every seed) has them: {' '.join(sorted(set(all_cases) - set(cases)))}")
    if not cases:
        raise UserError("no case has results from every compared trainer (their finished folds do not overlap)")
    final_runs = final_all[final_all["case"].isin(cases)]
    final = seed_average(final_runs)
    classes = class_order(data.counts)
    table = summary_table(final, trainers, classes, final_runs)
    tests = paired_tests(final, trainers, baseline, classes, table)
    ranks = rank_stability(final_runs, trainers, classes, bootstrap)
    snap = snapshot_table(tidy, cases, classes)
    per_trainer = trainer_runs(data.runs, trainers)
    costs = cost_table(data.runs, trainers, baseline)
    class_loss = class_loss_table(data.runs, data.collapsed, trainers, classes)
    tests = lost_class_split(tests, final_runs, data.collapsed)
    unconverged = set(per_trainer.loc[~per_trainer["all_converged"], "trainer"])
    if len(tests):
        tests["caveat_not_converged"] = tests["trainer"].isin(unconverged) | tests["baseline"].isin(unconverged)
    reliability = reliability_table(data.reliability, cases, trainers, classes, calibration_bins)
    chosen = disagreement_cases(final_runs, trainers, [c for c in classes if c != FOREGROUND_MEAN],
                                pictures if plots else 0)
    drawn, not_drawn = disagreement_pictures(chosen, data, trainers)
    page = report.Page(data.dataset_name, configuration, plans, trainers, baseline, classes, cases,
                       sorted({s.fold for s in data.states}), data.runs, per_trainer, table, tests, ranks, snap,
                       notes, allow_mixed_budgets, costs, data.collapsed, class_loss=class_loss,
                       projections=projected_gains(data.runs, trainers),
                       auto_budget=choice.lines if choice is not None else [],
                       metrics=tested_metrics(final), boundary=data.boundary)
    page.calibration, page.reliability = data.calibration, reliability
    page.ensembles = ensemble_module.describe(ensembles)
    page.reliability_plots = {t: f"calibration/reliability_{i + 1:02d}_{_file_part(t)}.png"
                              for i, t in enumerate(trainers) if plots and t in set(reliability["trainer"])}
    page.pictures, page.pictures_asked, page.pictures_not_drawn = drawn, (pictures if plots else 0), not_drawn
    markdown = page.markdown(full=True)
    _write_report(output, data, tidy, page, markdown, plots, ensembles)
    return {"output": output, "ensembles": [ensemble_row(e) for e in ensembles],
            "markdown": page.markdown(full=False), "full_markdown": markdown,
            "table": table.to_dict("records"), "tests": tests.to_dict("records"), "ranks": ranks.to_dict("records"),
            "snapshots": snap.to_dict("records"), "runs": data.runs.to_dict("records"),
            "trainer_runs": per_trainer.to_dict("records"), "cases": cases, "classes": classes, "notes": notes,
            "cost": costs.to_dict("records"), "collapsed": data.collapsed.to_dict("records"),
            "class_loss": class_loss.to_dict("records"), "boundary": data.boundary, "projections": page.projections.to_dict("records"),
            "calibration": data.calibration, "reliability": reliability.to_dict("records"),
            "pictures": [{k: v for k, v in p.items() if k not in ("image", "reference", "masks")} for p in drawn],
            "auto_budget": None if choice is None else {"record": choice.record, "compared": choice.compared,
                                                        "epochs": {t: b.num_epochs for t, b in choice.budgets.items()},
                                                        "budgets_differ": choice.differ},
            "frames": {"counts": data.counts, "tidy": tidy, "table": table, "tests": tests, "ranks": ranks,
                       "snapshots": snap, "runs": data.runs, "curves": data.curves, "final": final,
                       "final_runs": final_runs, "cost": costs, "collapsed": data.collapsed,
                       "class_loss": class_loss}}


def build_ensembles(specs: Sequence["ensemble_module.Spec"], dataset: str, configuration: str, plans: str,
                    folds: Sequence[int], output: Optional[str], num_processes: int):
    """The ensemble folds of ``specs`` built (or reused) under the report folder, the notes on ensembles left out,
    and the report folder (its default place resolved here when there are ensembles to build)."""
    ensemble_module.check_processes(num_processes)
    if not specs:
        return [], [], output
    dataset_name = results.resolve_dataset(dataset)
    results_root = results.nnunet_folder("results")
    results.load_plans_checked(dataset_name, plans, configuration)
    output = os.path.abspath(output or os.path.join(results_root, dataset_name,
                                                    f"nnunet_mcc_comparison_{plans}_{configuration}"))
    file_ending = ensemble_module.context_file_ending(dataset_name)
    runs, notes = ensemble_module.plan(specs, results_root, dataset_name, plans, configuration, folds, output,
                                       file_ending)
    ensemble_module.build_all(runs, dataset_name, plans, num_processes)
    return runs, notes, output


def ensemble_row(run: "ensemble_module.EnsembleRun") -> dict:
    """One built ensemble fold, for compare's result."""
    return {"trainer": run.trainer, "run": run.run, "seed": run.seed, "fold": run.fold, "folder": run.folder,
            "members": [m.run for m in run.members], "cases": list(run.cases), "reused": run.reused}


def auto_budget_choice(dataset: str, configuration: str, plans: str, folds: Sequence[int], trainers: Sequence[str],
                       record: Optional[str], same_budget: bool) -> Optional["auto_budget_module.Choice"]:
    """With ``record`` (``compare --auto-budget``): which runs of each trainer are compared (``auto_budget.choose``),
    each compared fold's own budget checked against the record; None without it."""
    if record is None:
        if same_budget:
            raise UserError("--same-budget chooses among the budgets crossval --auto-budget tried: add --auto-budget")
        return None
    dataset_name = results.resolve_dataset(dataset)
    results_root = results.nnunet_folder("results")
    path = record or auto_budget_module.record_path(results_root, dataset_name, plans, configuration)
    choice = auto_budget_module.choose(path, trainers, same_budget)
    auto_budget_module.check_compared_budgets(choice, results_root, dataset_name, plans, configuration, folds)
    return choice


def _write_report(output: str, data: Collected, tidy: pd.DataFrame, page: "report.Page", markdown: str,
                  plots: bool, ensembles: Sequence["ensemble_module.EnsembleRun"] = ()) -> None:
    """Everything into a fresh folder that replaces ``output`` only when complete (``fileio.atomic_folder``), with
    the ensemble folds this comparison used carried over (``ensemble.carry``)."""
    with atomic_folder(output, "comparison report") as tmp:
        ensemble_module.carry(output, tmp, ensembles)
        per_case = data.counts.copy()
        per_case["epoch"] = per_case["epoch"].astype("Int64")
        columns = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "key",
                   "kind",
                   *results.COUNTS, *metric_columns(data.counts)]
        report.write_frame(os.path.join(tmp, "per_case.csv"), per_case[columns])
        report.write_frame(os.path.join(tmp, "summary_table.csv"), page.table)
        tabled = metric_columns(data.counts)
        report.write_text_file(os.path.join(tmp, "summary_table.md"), page.summary_markdown_all(tabled))
        report.write_text_file(os.path.join(tmp, "summary_table.tex"), page.summary_latex(tabled))
        if len(page.tests):
            report.write_frame(os.path.join(tmp, "wilcoxon.csv"), page.tests)
        report.write_frame(os.path.join(tmp, "bootstrap_ranks.csv"), page.ranks)
        report.write_frame(os.path.join(tmp, "runs.csv"), data.runs)
        if len(page.cost):
            report.write_frame(os.path.join(tmp, "cost.csv"), page.cost)
        if len(page.collapsed):
            report.write_frame(os.path.join(tmp, "collapsed.csv"), page.collapsed)
        report.write_frame(os.path.join(tmp, "class_loss.csv"), page.class_loss)
        if len(data.curves):
            report.write_frame(os.path.join(tmp, "learning_curves.csv"), data.curves)
        if len(page.snapshots):
            report.write_frame(os.path.join(tmp, "snapshots.csv"), page.snapshots)
        if len(page.reliability):
            report.write_frame(os.path.join(tmp, "reliability.csv"), page.reliability)
        _write_pictures(tmp, page)
        if plots:
            os.makedirs(os.path.join(tmp, "plots"))
            final = seed_average(tidy[(tidy["stage"] == FINAL) & tidy["case"].isin(page.cases)])
            for metric in page.metrics:
                plot_distributions(os.path.join(tmp, "plots", f"per_case_{metric.lower()}.png"),
                                          final[final["metric"] == metric], page.trainers, page.classes, metric)
            if len(data.curves):
                plot_learning_curves(os.path.join(tmp, "plots", "learning_curves.png"), data.curves,
                                            page.trainers)
            markdown += "\n\n## Plots\n\n" + "\n".join(
                f"![{n}](plots/{n})" for n in sorted(os.listdir(os.path.join(tmp, "plots"))))
        report.write_text_file(os.path.join(tmp, "report.md"), markdown + "\n")


def _write_pictures(folder: str, page: "report.Page") -> None:
    """The reliability diagrams and the pictures of the cases where the trainers disagree, at the paths the page
    links them from."""
    for trainer, file in page.reliability_plots.items():
        os.makedirs(os.path.dirname(os.path.join(folder, file)), exist_ok=True)
        plot_reliability(os.path.join(folder, file), page.reliability[page.reliability["trainer"] == trainer],
                         trainer, page.classes, page.calibration.get("bins"))
    for picture in page.pictures:
        os.makedirs(os.path.dirname(os.path.join(folder, picture["file"])), exist_ok=True)
        plot_disagreement(os.path.join(folder, picture["file"]), picture, page.trainers)

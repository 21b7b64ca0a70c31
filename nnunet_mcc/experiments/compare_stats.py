"""The statistics of a comparison, all from one tidy table (trainer, run, seed, fold, stage, case, class or region,
metric, value): the per-case foreground mean, the cases every trainer has, each case averaged over a trainer's seeds,
the summary table (spread over cases, folds and seeds), the paired Wilcoxon tests against the baseline (Holm-corrected,
judged against training noise), the bootstrap rank stability, the "score after N iterations" table of the snapshots and
a pair's difference split into the runs that lost a class and the rest."""

from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from nnunet_mcc.experiments import stats
from nnunet_mcc.experiments.collect_dataset import (BOUNDARY_METRICS, CALIBRATION_METRICS, FINAL, METRICS, SNAPSHOT,
                                                    metric_columns)
from nnunet_mcc.metrics import higher_is_better

TESTED_METRICS = ("Dice", "MCC")  # and the boundary and calibration metrics, where computed (``tested_metrics``)
FOREGROUND_MEAN = "foreground mean"


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

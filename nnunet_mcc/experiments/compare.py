"""``nnunet-mcc compare``: compare trainers from their cross-validation results, reading only.

Reads what nnU-Net's own tools read, each fold's ``validation/summary.json`` (checkpoints are not needed),
plus what says how the fold was trained: nnU-Net's ``debug.json`` (the budget, for any trainer), this
package's ``nnunet_mcc_provenance.json`` (loss settings), the per-epoch validation series
(``nnunet_mcc_log.json``, else the checkpoint's ``logging``) and the snapshot validations written during
training (``snapshots/epoch_<N>/summary.json``). It never starts a training or validation process.

Everything is built on one tidy table (trainer, fold, case, class or region, training stage, metric,
value): group-by and pivots give the tables, scipy the paired Wilcoxon tests, statsmodels the Holm
correction. Runs of different budgets are not paired unless asked for (``--allow-mixed-budgets``); every
run's convergence is judged from its logged curves (``convergence.py``) and a comparison with any
unconverged run says first that it measures training speed, not final quality.

Written into the report folder (replaced as a whole, never half-written): ``per_case.csv``,
``summary_table.{md,csv,tex}``, ``wilcoxon.csv``, ``bootstrap_ranks.csv``, ``runs.csv`` (budget, settings,
convergence per fold), ``learning_curves.csv``, ``snapshots.csv``, ``plots/`` and ``report.md``.
"""

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence, report, results, stats
from nnunet_mcc.fileio import atomic_folder, read_json
from nnunet_mcc.provenance import PROVENANCE_FILE

METRICS = ("Dice", "IoU", "MCC")
TESTED_METRICS = ("Dice", "MCC")
FOREGROUND_MEAN = "foreground mean"
FINAL, SNAPSHOT = "final", "snapshot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("--baseline", help="trainer the others are tested against (default: the first of -tr)")
    parser.add_argument("-o", "--output", help="report folder (default: $nnUNet_results/<dataset>/"
                                               "nnunet_mcc_comparison_<plans>_<configuration>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")
    parser.add_argument("--allow-mixed-budgets", action="store_true",
                        help="pair runs trained with different budgets (epochs, iterations per epoch, validation "
                             "iterations) or an unknown one; the budgets are then shown first in the report")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="leave out the 'score after N iterations' table of the snapshot validations")


def run(args) -> int:
    comparison = compare(args.dataset, args.configuration, args.trainers, plans=args.plans, folds=args.folds,
                         baseline=args.baseline, output=args.output, bootstrap=args.bootstrap,
                         plots=not args.no_plots, snapshots=not args.no_snapshots,
                         allow_mixed_budgets=args.allow_mixed_budgets)
    print(comparison["markdown"])
    print(f"\nReport folder: {comparison['output']}")
    return 0


# ---- collecting -------------------------------------------------------------------------------
@dataclass
class Collected:
    dataset_name: str
    results_root: str
    configuration: str
    plans: str
    trainers: List[str]
    states: List[results.FoldState]
    runs: pd.DataFrame            # one row per finished fold: budget, settings, log, convergence
    counts: pd.DataFrame          # one row per trainer, fold, stage, case, class/region: counts and scores
    curves: pd.DataFrame          # tidy per-epoch series: trainer, fold, epoch, iterations, series, value
    regions: Dict[str, tuple]
    notes: List[str] = field(default_factory=list)


def _check_trainer_folders(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                           configuration: str) -> None:
    dataset_results = os.path.join(results_root, dataset_name)
    if not os.path.isdir(dataset_results):
        raise UserError(f"dataset {dataset_name} has no results in {results_root} (train it first, e.g. with "
                        f"nnunet-mcc crossval)")
    for trainer in trainers:
        folder = results.trainer_folder(results_root, dataset_name, trainer, plans, configuration)
        if not os.path.isdir(folder):
            suffix = f"__{plans}__{configuration}"
            present = sorted(n[: -len(suffix)] for n in os.listdir(dataset_results) if n.endswith(suffix))
            raise UserError(f"trainer {trainer!r} has no results folder {folder} (trainers with results for "
                            f"{plans}/{configuration}: {', '.join(present) or 'none'})")


def _dataset_context(dataset_name: str) -> dict:
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    dataset_json = read_json(os.path.join(preprocessed, "dataset.json"), "dataset.json")
    labels = dataset_json.get("labels", {})
    label_mode = not any(isinstance(v, (list, tuple)) for v in labels.values())
    context = {"file_ending": dataset_json.get("file_ending", ".nii.gz"), "names": results.label_names(dataset_json),
               "regions": results.evaluation_regions(dataset_json) if label_mode else {},
               "gt_folder": os.path.join(preprocessed, "gt_segmentations"), "ignore_label": labels.get("ignore"),
               "reader_writer": None}
    if context["regions"]:
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

        gt = context["gt_folder"]
        example = next((os.path.join(gt, f) for f in sorted(os.listdir(gt)) if f.endswith(context["file_ending"])),
                       None) if os.path.isdir(gt) else None
        if example is None:
            raise UserError(f"evaluation regions need the reference segmentations in {gt}, which has none")
        context["reader_writer"] = determine_reader_writer_from_dataset_json(dataset_json, example)()
    return context


def _run_record(state: results.FoldState, allow_unknown: bool) -> dict:
    """Budget, settings, training log and convergence verdict of one finished fold."""
    try:
        budget = results.recorded_budget(state.folder)
        budget_problem = None
    except UserError as e:
        if not allow_unknown:
            raise UserError(f"{state.trainer} fold {state.fold}: {e}; compare pairs runs of one budget only "
                            f"(--allow-mixed-budgets accepts an unknown one)") from None
        budget, budget_problem = None, str(e)
    provenance = results.read_provenance(state.folder)
    loss = results.loss_record(provenance, state.folder)
    series, log_source = results.training_log(state.folder)
    per_epoch = budget.num_iterations_per_epoch if budget else None
    verdict = convergence.judge(series, per_epoch)
    record = {"trainer": state.trainer, "fold": state.fold, "folder": state.folder,
              "num_epochs": budget.num_epochs if budget else None,
              "num_iterations_per_epoch": per_epoch,
              "num_val_iterations_per_epoch": budget.num_val_iterations_per_epoch if budget else None,
              "iterations": budget.iterations if budget else None,
              "budget": budget.short() if budget else "unknown",
              "budget_source": (PROVENANCE_FILE if provenance else "debug.json") if budget
              else budget_problem,
              "budget_sources": json.dumps((provenance or {}).get("budget_sources") or {}, sort_keys=True),
              "loss": loss["name"], "loss_settings": json.dumps(loss["settings"], sort_keys=True),
              "versions": json.dumps((provenance or {}).get("versions") or {}, sort_keys=True),
              "log_source": log_source if series else None, "log_problem": None if series else log_source,
              "epochs_logged": verdict.epochs, "converged": verdict.status, "convergence": verdict.describe()}
    for name in convergence.SERIES:
        record[f"projected_gain_{name}"] = verdict.gains.get(name, float("nan"))
    record["_series"] = series
    record["_budget"] = budget
    return record


def collect(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), snapshots: bool = True,
            allow_mixed_budgets: bool = False) -> Collected:
    """Read every finished fold; raise UserError for unusable input (nothing is written)."""
    if len(set(trainers)) != len(trainers):
        raise UserError(f"-tr lists a trainer twice: {' '.join(trainers)}")
    dataset_name = results.resolve_dataset(dataset)
    results_root = results.nnunet_folder("results")
    results.load_plans_checked(dataset_name, plans, configuration)
    _check_trainer_folders(results_root, dataset_name, trainers, plans, configuration)
    context = _dataset_context(dataset_name)
    states = results.survey(results_root, dataset_name, trainers, plans, configuration, folds)
    finished = [s for s in states if s.status == results.FINISHED]
    if not finished:
        raise UserError(f"no finished fold (validation/summary.json) for {', '.join(trainers)} on {dataset_name} "
                        f"{configuration} folds {' '.join(map(str, folds))}")
    notes = [f"{s.trainer} fold {s.fold}: {s.status}" for s in states if s.status != results.FINISHED]
    records = [_run_record(s, allow_mixed_budgets) for s in finished]
    _check_budgets(records, allow_mixed_budgets)

    count_rows, curve_rows = [], []
    for state, record in zip(finished, records):
        budget = record["_budget"]
        final_epoch = budget.num_epochs if budget else (record["epochs_logged"] or None)
        per_epoch = budget.num_iterations_per_epoch if budget else None
        stages = [(FINAL, final_epoch, os.path.join(state.folder, "validation", "summary.json"), "summary")]
        if snapshots:
            stages += [(SNAPSHOT, epoch, path, "snapshot summary") for epoch, path in state.snapshots.items()]
        for stage, epoch, path, what in stages:
            rows = results.read_summary(path, context["file_ending"], context["names"], what)
            if stage == FINAL and context["regions"]:
                region = results.region_rows(os.path.dirname(path), context["gt_folder"], context["regions"],
                                             context["file_ending"], context["reader_writer"], context["ignore_label"])
                if not region:
                    notes.append(f"{state.trainer} fold {state.fold}: no exported predictions in validation/, "
                                 f"evaluation regions not computed")
                rows += region
            iterations = epoch * per_epoch if epoch and per_epoch else None
            if stage == SNAPSHOT:
                iterations = read_json(path, what).get("iterations", iterations)
            for row in rows:
                row.update(trainer=state.trainer, fold=state.fold, stage=stage, epoch=epoch, iterations=iterations)
            count_rows += rows
        if record["_series"]:
            series = record["_series"]
            for name, values in series.items():
                for epoch, value in enumerate(values, start=1):
                    curve_rows.append({"trainer": state.trainer, "fold": state.fold, "epoch": epoch,
                                       "iterations": epoch * per_epoch if per_epoch else None, "series": name,
                                       "value": value})
        else:
            notes.append(f"{state.trainer} fold {state.fold}: {record['log_problem']}: no learning curve, "
                         f"convergence not judged")
        unvalidated = sorted(set(results.snapshot_checkpoints(state.folder)) - set(state.snapshots))
        if snapshots and unvalidated:
            names = ", ".join(f"checkpoint_epoch_{e}.pth" for e in unvalidated)
            notes.append(f"{state.trainer} fold {state.fold}: {names} not validated (no snapshots/epoch_<N>/"
                         f"summary.json; validate with nnUNetv2_predict -chk and nnU-Net's evaluation, or let "
                         f"this package's trainers do it during training)")
    if snapshots:
        notes += _snapshot_notes(finished)
    notes += _settings_notes(records)
    runs = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
    counts = pd.DataFrame(count_rows)
    scores = results.scores_from_counts(*(counts[c] for c in results.COUNTS))
    for metric in METRICS:
        counts[metric] = scores[metric]
    curves = pd.DataFrame(curve_rows, columns=["trainer", "fold", "epoch", "iterations", "series", "value"])
    return Collected(dataset_name, results_root, configuration, plans, list(trainers), states, runs, counts, curves,
                     context["regions"], notes)


def _check_budgets(records: List[dict], allow_mixed: bool) -> None:
    """Runs are paired only when they share one budget (epochs, iterations per epoch, validation iterations)."""
    budgets: Dict[Optional[results.Budget], List[str]] = {}
    for r in records:
        budgets.setdefault(r["_budget"], []).append(f"{r['trainer']} fold {r['fold']}")
    if len(budgets) <= 1 or allow_mixed:
        return
    parts = []
    for budget, runs in budgets.items():
        shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        parts.append(f"{budget.short() if budget else 'unknown'} epochs x iterations: {shown}")
    raise UserError(f"the runs were trained with {len(budgets)} different budgets ({'; '.join(parts)}): their "
                    f"differences would mix loss and training length. Compare runs of one budget, or pass "
                    f"--allow-mixed-budgets to pair them anyway")


def _snapshot_notes(finished: Sequence[results.FoldState]) -> List[str]:
    """Say where snapshot validations are absent: all of them, or some folds' epochs that others have."""
    epochs = sorted({e for s in finished for e in s.snapshots})
    if not epochs:
        return ["no snapshot validations (snapshots/epoch_<N>/summary.json): no 'score after N iterations' table "
                "(train with crossval --snapshot-epochs)"]
    return [f"{s.trainer} fold {s.fold}: no snapshot validation after epoch(s) "
            f"{' '.join(str(e) for e in epochs if e not in s.snapshots)}"
            for s in finished if set(epochs) - set(s.snapshots)]


def _settings_notes(records: List[dict]) -> List[str]:
    """Loss settings that differ between the folds of one trainer (weighted CE's class weights are computed
    from each training fold and may differ legitimately; anything else is worth knowing)."""
    notes = []
    by_trainer: Dict[str, Dict[str, List[int]]] = {}
    for r in records:
        by_trainer.setdefault(r["trainer"], {}).setdefault(r["loss_settings"], []).append(r["fold"])
    for trainer, variants in by_trainer.items():
        if len(variants) > 1:
            decoded = [json.loads(v) for v in variants]
            keys = sorted({k for d in decoded for k in d if len({json.dumps(x.get(k), sort_keys=True)
                                                                for x in decoded}) > 1})
            notes.append(f"{trainer}: loss settings differ between folds ({', '.join(keys) or 'settings'}: "
                         f"{len(variants)} variants over folds {' / '.join(' '.join(map(str, f)) for f in variants.values())})")
    return notes


# ---- the tidy table and what is computed from it ----------------------------------------------
def class_order(counts: pd.DataFrame) -> List[str]:
    labels = list(dict.fromkeys(counts.loc[counts["kind"] == "label", "class_or_region"]))
    regions = list(dict.fromkeys(counts.loc[counts["kind"] == "region", "class_or_region"]))
    return labels + ([FOREGROUND_MEAN] if len(labels) > 1 else []) + regions


def tidy_scores(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per trainer, fold, stage, case, class/region and metric, plus the per-case foreground mean
    over the labels (nnU-Net's labels or regions; NaN-aware: the labels defined for that case)."""
    ids = ["trainer", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "kind"]
    long = counts.melt(id_vars=ids, value_vars=list(METRICS), var_name="metric", value_name="value")
    labels = long[long["kind"] == "label"]
    if labels["class_or_region"].nunique() > 1:
        keys = ["trainer", "fold", "stage", "epoch", "iterations", "case", "metric"]
        fg = labels.groupby(keys, dropna=False, sort=False)["value"].mean().reset_index()
        fg["class_or_region"], fg["kind"] = FOREGROUND_MEAN, "mean"
        long = pd.concat([long, fg[long.columns]], ignore_index=True)
    return long


def common_cases(final: pd.DataFrame, trainers: Sequence[str]) -> List[str]:
    per_trainer = final.groupby("trainer")["case"].agg(set)
    cases = set.intersection(*[per_trainer.get(t, set()) for t in trainers]) if trainers else set()
    return sorted(cases)


def summary_table(final: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Per metric, class/region and trainer: mean and std over cases, and the std of the fold means."""
    keys = ["metric", "class_or_region", "trainer"]
    over_cases = final.groupby(keys)["value"].agg(n_cases="count", mean="mean", std_cases="std")
    fold_means = final.groupby(keys + ["fold"])["value"].mean()
    over_folds = fold_means.groupby(level=keys).agg(n_folds="count", mean_of_fold_means="mean", std_folds="std")
    table = over_cases.join(over_folds).reset_index()
    table["best"] = table["mean"].notna() & (table["mean"] == table.groupby(["metric", "class_or_region"])[
        "mean"].transform("max"))
    return _ordered(table, trainers, classes)


def _ordered(frame: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    order = {"metric": {m: i for i, m in enumerate(METRICS)},
             "class_or_region": {c: i for i, c in enumerate(classes)},
             "trainer": {t: i for i, t in enumerate(trainers)}}
    columns = [c for c in order if c in frame.columns]
    return frame.sort_values(columns, key=lambda s: s.map(order[s.name]), kind="stable").reset_index(drop=True)


def _wide(final: pd.DataFrame) -> pd.DataFrame:
    """(metric, class/region, case) x trainer."""
    return final.set_index(["metric", "class_or_region", "case", "trainer"])["value"].unstack("trainer")


def paired_tests(final: pd.DataFrame, trainers: Sequence[str], baseline: str, classes: Sequence[str]) -> pd.DataFrame:
    """Wilcoxon signed-rank test of every trainer against the baseline on the same cases, Holm-corrected over
    all comparisons (trainers x classes) of a metric."""
    wide = _wide(final)
    rows = []
    for metric in TESTED_METRICS:
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
                              "p": result["p"]})
        for entry, adjusted in zip(block, stats.holm([e["p"] for e in block])):
            entry["p_holm"] = adjusted
            entry["significant_0.05"] = bool(np.isfinite(adjusted) and adjusted < 0.05)
        rows += block
    return pd.DataFrame(rows, columns=["metric", "class_or_region", "trainer", "baseline", "n_pairs",
                                       "median_difference", "p", "p_holm", "significant_0.05"])


def rank_stability(final: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                   n_samples: int) -> pd.DataFrame:
    wide = _wide(final)
    rows = []
    for metric in TESTED_METRICS:
        for c in classes:
            if (metric, c) not in wide.index.droplevel("case"):
                continue
            scores = wide.loc[(metric, c)].reindex(columns=list(trainers)).to_numpy(dtype=float)
            if scores.size == 0:
                continue
            ranks = stats.bootstrap_ranks(scores, n_samples=n_samples)
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
    """One row per trainer: budget(s), loss, settings and the convergence verdict over its folds."""
    rows = []
    for trainer in trainers:
        own = runs[runs["trainer"] == trainer]
        if own.empty:
            continue
        judged = own[own["converged"].isin([convergence.YES, convergence.NO])]
        n_yes = int((own["converged"] == convergence.YES).sum())
        if len(judged) == 0:
            verdict = "not judged (" + ", ".join(sorted(set(own["converged"]))) + ")"
        elif n_yes == len(own):
            verdict = "yes"
        else:
            verdict = f"no ({n_yes} of {len(own)} folds)"
        settings = own["loss_settings"].iloc[0]
        rows.append({"trainer": trainer, "folds": len(own), "budget": " / ".join(dict.fromkeys(own["budget"])),
                     "iterations": " / ".join(str(int(v)) if pd.notna(v) else "unknown"
                                              for v in dict.fromkeys(own["iterations"])),
                     "loss": own["loss"].iloc[0],
                     "settings": results.settings_text(json.loads(settings)) if settings else "",
                     "converged": verdict, "all_converged": n_yes == len(own)})
    return pd.DataFrame(rows)


# ---- the whole comparison ---------------------------------------------------------------------
def compare(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), baseline: Optional[str] = None, output: Optional[str] = None,
            bootstrap: int = 1000, plots: bool = True, snapshots: bool = True,
            allow_mixed_budgets: bool = False) -> dict:
    trainers = list(trainers)
    baseline = baseline or trainers[0]
    if baseline not in trainers:
        raise UserError(f"--baseline {baseline!r} is not one of the compared trainers ({' '.join(trainers)})")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be a positive number of samples, got {bootstrap}")
    data = collect(dataset, configuration, trainers, plans, folds, snapshots, allow_mixed_budgets)
    output = os.path.abspath(output or os.path.join(data.results_root, data.dataset_name,
                                                    f"nnunet_mcc_comparison_{plans}_{configuration}"))
    missing = [t for t in trainers if t not in set(data.runs["trainer"])]
    if missing:
        raise UserError(f"no finished fold for {', '.join(missing)}: nothing to compare it on")
    tidy = tidy_scores(data.counts)
    final_all = tidy[tidy["stage"] == FINAL]
    cases = common_cases(final_all, trainers)
    all_cases = sorted(set(final_all["case"]))
    notes = list(data.notes)
    if len(cases) < len(all_cases):
        notes.append(f"{len(all_cases) - len(cases)} of {len(all_cases)} cases are left out because not every "
                     f"trainer has them: {' '.join(sorted(set(all_cases) - set(cases)))}")
    if not cases:
        raise UserError("no case has results from every compared trainer (their finished folds do not overlap)")
    final = final_all[final_all["case"].isin(cases)]
    classes = class_order(data.counts)
    table = summary_table(final, trainers, classes)
    tests = paired_tests(final, trainers, baseline, classes)
    ranks = rank_stability(final, trainers, classes, bootstrap)
    snap = snapshot_table(tidy, cases, classes)
    per_trainer = trainer_runs(data.runs, trainers)
    unconverged = set(per_trainer.loc[~per_trainer["all_converged"], "trainer"])
    if len(tests):
        tests["caveat_not_converged"] = tests["trainer"].isin(unconverged) | tests["baseline"].isin(unconverged)
    page = report.Page(data.dataset_name, configuration, plans, trainers, baseline, classes, cases,
                       sorted({s.fold for s in data.states}), data.runs, per_trainer, table, tests, ranks, snap,
                       notes, allow_mixed_budgets)
    markdown = page.markdown(full=True)
    _write_report(output, data, tidy, page, markdown, plots)
    return {"output": output, "markdown": page.markdown(full=False), "full_markdown": markdown,
            "table": table.to_dict("records"), "tests": tests.to_dict("records"), "ranks": ranks.to_dict("records"),
            "snapshots": snap.to_dict("records"), "runs": data.runs.to_dict("records"),
            "trainer_runs": per_trainer.to_dict("records"), "cases": cases, "classes": classes, "notes": notes,
            "frames": {"counts": data.counts, "tidy": tidy, "table": table, "tests": tests, "ranks": ranks,
                       "snapshots": snap, "runs": data.runs, "curves": data.curves}}


def _write_report(output: str, data: Collected, tidy: pd.DataFrame, page: "report.Page", markdown: str,
                  plots: bool) -> None:
    """Everything into a fresh folder that replaces ``output`` only when complete (``fileio.atomic_folder``)."""
    with atomic_folder(output, "comparison report") as tmp:
        per_case = data.counts.copy()
        per_case["epoch"] = per_case["epoch"].astype("Int64")
        columns = ["trainer", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "key", "kind",
                   *results.COUNTS, *METRICS]
        report.write_frame(os.path.join(tmp, "per_case.csv"), per_case[columns])
        report.write_frame(os.path.join(tmp, "summary_table.csv"), page.table)
        report.write_text_file(os.path.join(tmp, "summary_table.md"), page.summary_markdown_all(METRICS))
        report.write_text_file(os.path.join(tmp, "summary_table.tex"), page.summary_latex(METRICS))
        if len(page.tests):
            report.write_frame(os.path.join(tmp, "wilcoxon.csv"), page.tests)
        report.write_frame(os.path.join(tmp, "bootstrap_ranks.csv"), page.ranks)
        report.write_frame(os.path.join(tmp, "runs.csv"), data.runs)
        if len(data.curves):
            report.write_frame(os.path.join(tmp, "learning_curves.csv"), data.curves)
        if len(page.snapshots):
            report.write_frame(os.path.join(tmp, "snapshots.csv"), page.snapshots)
        if plots:
            os.makedirs(os.path.join(tmp, "plots"))
            final = tidy[(tidy["stage"] == FINAL) & tidy["case"].isin(page.cases)]
            for metric in TESTED_METRICS:
                report.plot_distributions(os.path.join(tmp, "plots", f"per_case_{metric.lower()}.png"),
                                          final[final["metric"] == metric], page.trainers, page.classes, metric)
            if len(data.curves):
                report.plot_learning_curves(os.path.join(tmp, "plots", "learning_curves.png"), data.curves,
                                            page.trainers)
            markdown += "\n\n## Plots\n\n" + "\n".join(
                f"![{n}](plots/{n})" for n in sorted(os.listdir(os.path.join(tmp, "plots"))))
        report.write_text_file(os.path.join(tmp, "report.md"), markdown + "\n")

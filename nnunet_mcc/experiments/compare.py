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

Training seeds: a trainer's runs are its seed folders ``<trainer>_seed<S>`` when it has any (else its
unsuffixed folder); each case's score is averaged over the seeds before the paired tests, the spread over
seeds is reported beside the fold spread, and a pair is "above training noise" only when the Holm-corrected
test passes and the mean difference exceeds 2 sqrt((s_A^2 + s_B^2) / n_seeds). Different seed sets between
trainers (``--allow-mixed-seeds``) and different settings identities within a trainer
(``--allow-mixed-settings``) are refused like mixed budgets. Collapsed classes (Dice 0 on every validation
case that has them) and the recorded training cost are reported per run and trainer.

Written into the report folder (replaced as a whole, never half-written): ``per_case.csv``,
``summary_table.{md,csv,tex}``, ``wilcoxon.csv``, ``bootstrap_ranks.csv``, ``runs.csv`` (seed, budget,
settings, convergence, collapsed classes, cost per run), ``cost.csv``, ``collapsed.csv``,
``learning_curves.csv``, ``snapshots.csv``, ``plots/`` and ``report.md``.
"""

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from nnunet_mcc import labels as dataset_labels
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
    parser.add_argument("--allow-mixed-seeds", action="store_true",
                        help="pair trainers whose training seeds differ (their seed folders <trainer>_seed<S>, or "
                             "the seed an unsuffixed folder records); the seeds are then shown first in the report")
    parser.add_argument("--allow-mixed-settings", action="store_true",
                        help="pair the folds and seeds of a trainer although they were trained with different "
                             "loss settings (their recorded identity); the differences are listed in the report")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="leave out the 'score after N iterations' table of the snapshot validations")


def run(args) -> int:
    comparison = compare(args.dataset, args.configuration, args.trainers, plans=args.plans, folds=args.folds,
                         baseline=args.baseline, output=args.output, bootstrap=args.bootstrap,
                         plots=not args.no_plots, snapshots=not args.no_snapshots,
                         allow_mixed_budgets=args.allow_mixed_budgets, allow_mixed_seeds=args.allow_mixed_seeds,
                         allow_mixed_settings=args.allow_mixed_settings)
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
    collapsed: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per run and collapsed class/region


def _check_trainer_folders(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                           configuration: str) -> None:
    dataset_results = os.path.join(results_root, dataset_name)
    if not os.path.isdir(dataset_results):
        raise UserError(f"dataset {dataset_name} has no results in {results_root} (train it first, e.g. with "
                        f"nnunet-mcc crossval)")
    for trainer in trainers:
        folder = results.trainer_folder(results_root, dataset_name, trainer, plans, configuration)
        runs, _ = results.seed_runs(results_root, dataset_name, trainer, plans, configuration)
        if not os.path.isdir(folder) and runs[0][1] is None:
            suffix = f"__{plans}__{configuration}"
            present = sorted(n[: -len(suffix)] for n in os.listdir(dataset_results) if n.endswith(suffix))
            raise UserError(f"trainer {trainer!r} has no results folder {folder} (trainers with results for "
                            f"{plans}/{configuration}: {', '.join(present) or 'none'})")


def _dataset_context(dataset_name: str) -> dict:
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    dataset_json = read_json(os.path.join(preprocessed, "dataset.json"), "dataset.json")
    context = {"file_ending": dataset_json.get("file_ending", ".nii.gz"),
               "names": dataset_labels.summary_key_names(dataset_json),
               "regions": dataset_labels.evaluation_regions(dataset_json),
               "gt_folder": os.path.join(preprocessed, "gt_segmentations"),
               "ignore_label": dataset_labels.ignore_label(dataset_json), "reader_writer": None}
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
            raise UserError(f"{state.run} fold {state.fold}: {e}; compare pairs runs of one budget only "
                            f"(--allow-mixed-budgets accepts an unknown one)") from None
        budget, budget_problem = None, str(e)
    provenance = results.read_provenance(state.folder)
    loss = results.loss_record(provenance, state.folder)
    series, log_source = results.training_log(state.folder)
    per_class = series.pop(results.PER_CLASS_SERIES, None) if series else None
    per_epoch = budget.num_iterations_per_epoch if budget else None
    verdict = convergence.judge(series, per_epoch)
    training = (provenance or {}).get("training") if isinstance((provenance or {}).get("training"), dict) else {}
    if state.seed is not None:
        seed, seed_source = state.seed, "folder name"
    elif training.get("seed") is not None:
        seed, seed_source = training.get("seed"), f"{PROVENANCE_FILE} ({training.get('seed_source') or 'recorded'})"
    else:
        seed, seed_source = None, "unrecorded"
    record = {"trainer": state.trainer, "run": state.run, "seed": seed, "seed_source": seed_source,
              "deterministic": training.get("deterministic"), "fold": state.fold, "folder": state.folder,
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
    cost = results.training_cost(state.folder)
    for key in results.COST_KEYS:
        record[f"cost_{key}"] = cost[key]
    record["_series"] = series
    record["_per_class"] = per_class
    record["_budget"] = budget
    record["_provenance"] = provenance
    record["_loss"] = loss
    return record


def collect(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), snapshots: bool = True,
            allow_mixed_budgets: bool = False, allow_mixed_seeds: bool = False,
            allow_mixed_settings: bool = False) -> Collected:
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
    notes = [f"{s.run} fold {s.fold}: {s.status}" for s in states if s.status != results.FINISHED]
    for trainer in trainers:
        runs, unsuffixed = results.seed_runs(results_root, dataset_name, trainer, plans, configuration)
        if unsuffixed:
            notes.append(f"{trainer}: its seed folders ({', '.join(r for r, _ in runs)}) are its runs; the unsuffixed "
                         f"folder {trainer}__{plans}__{configuration} is not used")
    records = [_run_record(s, allow_mixed_budgets) for s in finished]
    _check_budgets(records, allow_mixed_budgets)
    notes += _check_seeds(records, trainers, allow_mixed_seeds)
    notes += _check_settings(records, trainers, allow_mixed_settings)

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
                row.update(trainer=state.trainer, run=state.run, seed=_seed_text(record["seed"]), fold=state.fold,
                           stage=stage, epoch=epoch, iterations=iterations)
            count_rows += rows
        if record["_series"]:
            series = record["_series"]
            for name, values in series.items():
                for epoch, value in enumerate(values, start=1):
                    curve_rows.append({"trainer": state.trainer, "run": state.run, "fold": state.fold, "epoch": epoch,
                                       "iterations": epoch * per_epoch if per_epoch else None, "series": name,
                                       "value": value})
        else:
            notes.append(f"{state.run} fold {state.fold}: {record['log_problem']}: no learning curve, "
                         f"convergence not judged")
        unvalidated = sorted(set(results.snapshot_checkpoints(state.folder)) - set(state.snapshots))
        if snapshots and unvalidated:
            names = ", ".join(f"checkpoint_epoch_{e}.pth" for e in unvalidated)
            notes.append(f"{state.run} fold {state.fold}: {names} not validated (no snapshots/epoch_<N>/"
                         f"summary.json; validate with nnUNetv2_predict -chk and nnU-Net's evaluation, or let "
                         f"this package's trainers do it during training)")
    if snapshots:
        notes += _snapshot_notes(finished)
    notes += _settings_notes(records)
    counts = pd.DataFrame(count_rows)
    scores = results.scores_from_counts(*(counts[c] for c in results.COUNTS))
    for metric in METRICS:
        counts[metric] = scores[metric]
    collapsed = collapsed_classes(counts, records)
    for r in records:
        own = collapsed[(collapsed["run"] == r["run"]) & (collapsed["fold"] == r["fold"])] if len(collapsed) else []
        r["collapsed"] = "; ".join(f"{c['class_or_region']} ({c['when']})" for _, c in own.iterrows()) \
            if len(own) else ""
    runs = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
    runs["seed"] = pd.array([r["seed"] for r in records], dtype="Int64")
    curves = pd.DataFrame(curve_rows, columns=["trainer", "run", "fold", "epoch", "iterations", "series", "value"])
    return Collected(dataset_name, results_root, configuration, plans, list(trainers), states, runs, counts, curves,
                     context["regions"], notes, collapsed)


def _seed_text(seed) -> str:
    return "unrecorded" if seed is None else str(seed)


def _run_label(record: dict) -> str:
    return f"{record['run']} fold {record['fold']}"


def _check_seeds(records: List[dict], trainers: Sequence[str], allow_mixed: bool) -> List[str]:
    """Trainers are compared over the same training seeds: their seed folders' seeds, or for an unsuffixed
    folder the seed(s) its folds record. A single run whose seed was not recorded matches any single run.
    Otherwise refused unless ``allow_mixed`` (then a note says which seeds each trainer has)."""
    seeds = {t: sorted({r["seed"] for r in records if r["trainer"] == t}, key=lambda v: (v is None, v or 0))
             for t in trainers}
    seeds = {t: v for t, v in seeds.items() if v}

    def compatible(a, b) -> bool:
        return a == b or (len(a) == len(b) == 1 and None in a + b)

    listed = list(seeds.items())
    mixed = any(not compatible(a, b) for i, (_, a) in enumerate(listed) for _, b in listed[i + 1:])
    if not mixed:
        return []
    text = "; ".join(f"{t}: {' '.join(_seed_text(v) for v in s)}" for t, s in seeds.items())
    if not allow_mixed:
        raise UserError(f"the trainers were trained with different seeds ({text}): their differences would mix "
                        f"the loss with training noise of different draws. Train every trainer with the same seeds "
                        f"(folders <trainer>_seed<S>), or pass --allow-mixed-seeds to pair them anyway")
    return [f"mixed seeds (paired on request, --allow-mixed-seeds): {text}"]


def _flatten(value, prefix: str = "") -> Dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(value, sort_keys=True)}


def _check_settings(records: List[dict], trainers: Sequence[str], allow_mixed: bool) -> List[str]:
    """Every fold and seed of one trainer must have been trained with the same settings identity
    (``results.settings_identity``: the recorded ``identity``, else the loss settings without the per-fold
    class weights); otherwise refused unless ``allow_mixed`` (then a note lists the differences)."""
    problems = []
    for trainer in trainers:
        own = [r for r in records if r["trainer"] == trainer]
        if not own:
            continue
        identities = results.settings_identity([(r["_provenance"], r["_loss"]) for r in own])
        groups: Dict[str, List[dict]] = {}
        flat: Dict[str, Dict[str, str]] = {}
        for r, (identity, source) in zip(own, identities):
            key = json.dumps(identity, sort_keys=True, default=str)
            groups.setdefault(key, []).append(r)
            flat[key] = _flatten(identity)
            r["identity_source"] = source
            r["identity"] = key
        if len(groups) < 2:
            continue
        keys = sorted({k for f in flat.values() for k in f if len({f.get(k) for f in flat.values()}) > 1})
        parts = []
        for key, runs in groups.items():
            shown = ", ".join(_run_label(r) for r in runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
            values = ", ".join(f"{k}={_short(flat[key].get(k, 'absent'))}" for k in keys[:3])
            parts.append(f"{shown} ({values})")
        problems.append(f"{trainer}: {len(groups)} different settings ({', '.join(keys)}) in {' vs '.join(parts)}")
    if not problems:
        return []
    if not allow_mixed:
        raise UserError(f"runs of one trainer were trained with different settings, {'; '.join(problems)}: pairing "
                        f"them would mix settings. Compare runs of one setting, or pass --allow-mixed-settings")
    return [f"mixed settings (paired on request, --allow-mixed-settings): {p}" for p in problems]


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def collapsed_classes(counts: pd.DataFrame, records: Sequence[dict]) -> pd.DataFrame:
    """Runs (trainer, seed, fold) in which a class or region collapsed: Dice 0 on every validation case where
    it is present (reference non-empty), at the end of training. When: from the run's per-epoch pseudo Dice
    per class (``dice_per_class_or_region``, in the order of the summary's labels/regions), the epoch after
    which it stayed at or below 1e-3 to the end, or "never learned" (never above it)."""
    columns = ["trainer", "run", "seed", "fold", "class_or_region", "kind", "cases_present", "status", "epoch",
               "iterations", "when"]
    final = counts[(counts["stage"] == FINAL) & counts["kind"].isin(["label", "region"])]
    present = final[(final["TP"] + final["FN"]) > 0]
    if present.empty:
        return pd.DataFrame(columns=columns)
    keys = ["trainer", "run", "seed", "fold", "class_or_region", "kind", "key"]
    grouped = present.groupby(keys, sort=False)["Dice"].agg(cases_present="count",
                                                            collapsed=lambda v: bool((v == 0).all()))
    by_run = {(r["run"], r["fold"]): r for r in records}
    rows = []
    for (trainer, run, seed, fold, name, kind, key), entry in grouped[grouped["collapsed"]].iterrows():
        record = by_run[(run, fold)]
        status, epoch = "no per-class curve", None
        per_class = record.get("_per_class")
        if kind == "label" and per_class:
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
                "not at the end": "pseudo Dice still above 0 at the last epoch"}.get(status, status)
        rows.append({"trainer": trainer, "run": run, "seed": seed, "fold": fold, "class_or_region": name,
                     "kind": kind, "cases_present": int(entry["cases_present"]), "status": status, "epoch": epoch,
                     "iterations": iterations, "when": when})
    return pd.DataFrame(rows, columns=columns)


def _check_budgets(records: List[dict], allow_mixed: bool) -> None:
    """Runs are paired only when they share one budget (epochs, iterations per epoch, validation iterations)."""
    budgets: Dict[Optional[results.Budget], List[str]] = {}
    for r in records:
        budgets.setdefault(r["_budget"], []).append(_run_label(r))
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
    return [f"{s.run} fold {s.fold}: no snapshot validation after epoch(s) "
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
    ids = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "kind"]
    long = counts.melt(id_vars=ids, value_vars=list(METRICS), var_name="metric", value_name="value")
    labels = long[long["kind"] == "label"]
    if labels["class_or_region"].nunique() > 1:
        keys = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "metric"]
        fg = labels.groupby(keys, dropna=False, sort=False)["value"].mean().reset_index()
        fg["class_or_region"], fg["kind"] = FOREGROUND_MEAN, "mean"
        long = pd.concat([long, fg[long.columns]], ignore_index=True)
    return long


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


def paired_tests(final: pd.DataFrame, trainers: Sequence[str], baseline: str, classes: Sequence[str],
                 table: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Wilcoxon signed-rank test of every trainer against the baseline on the same cases (each case's score
    averaged over the trainer's seeds), Holm-corrected over all comparisons (trainers x classes) of a metric.

    With ``table`` (``summary_table``), each pair is also judged against training noise: "above training
    noise" when the Holm-corrected test passes and |mean_A - mean_B| > 2 sqrt(s_A^2/n_A + s_B^2/n_B), s the
    std over seeds of a trainer's mean score (``stats.noise_threshold``); None when a spread is unmeasured."""
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
    columns = ["metric", "class_or_region", "trainer", "baseline", "n_pairs", "median_difference", "p", "p_holm",
               "significant_0.05"]
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
    """Bootstrap rank distribution over the cases and, per trainer, its seeds (``stats.bootstrap_ranks_over_seeds``)."""
    if "run" not in final_runs.columns:
        final_runs = final_runs.assign(run=final_runs["trainer"])
    rows = []
    for metric in TESTED_METRICS:
        for c in classes:
            sub = final_runs[(final_runs["metric"] == metric) & (final_runs["class_or_region"] == c)]
            if sub.empty:
                continue
            wide = sub.pivot_table(index="case", columns=["trainer", "run"], values="value", aggfunc="first",
                                   dropna=False)
            cases = sorted(sub["case"].unique())
            wide = wide.reindex(index=cases)
            scores = [wide[t].to_numpy(dtype=float).T if t in wide.columns.get_level_values(0)
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


# ---- the whole comparison ---------------------------------------------------------------------
def compare(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), baseline: Optional[str] = None, output: Optional[str] = None,
            bootstrap: int = 1000, plots: bool = True, snapshots: bool = True,
            allow_mixed_budgets: bool = False, allow_mixed_seeds: bool = False,
            allow_mixed_settings: bool = False) -> dict:
    trainers = list(trainers)
    baseline = baseline or trainers[0]
    if baseline not in trainers:
        raise UserError(f"--baseline {baseline!r} is not one of the compared trainers ({' '.join(trainers)})")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be a positive number of samples, got {bootstrap}")
    data = collect(dataset, configuration, trainers, plans, folds, snapshots, allow_mixed_budgets, allow_mixed_seeds,
                   allow_mixed_settings)
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
    unconverged = set(per_trainer.loc[~per_trainer["all_converged"], "trainer"])
    if len(tests):
        tests["caveat_not_converged"] = tests["trainer"].isin(unconverged) | tests["baseline"].isin(unconverged)
    page = report.Page(data.dataset_name, configuration, plans, trainers, baseline, classes, cases,
                       sorted({s.fold for s in data.states}), data.runs, per_trainer, table, tests, ranks, snap,
                       notes, allow_mixed_budgets, costs, data.collapsed)
    markdown = page.markdown(full=True)
    _write_report(output, data, tidy, page, markdown, plots)
    return {"output": output, "markdown": page.markdown(full=False), "full_markdown": markdown,
            "table": table.to_dict("records"), "tests": tests.to_dict("records"), "ranks": ranks.to_dict("records"),
            "snapshots": snap.to_dict("records"), "runs": data.runs.to_dict("records"),
            "trainer_runs": per_trainer.to_dict("records"), "cases": cases, "classes": classes, "notes": notes,
            "cost": costs.to_dict("records"), "collapsed": data.collapsed.to_dict("records"),
            "frames": {"counts": data.counts, "tidy": tidy, "table": table, "tests": tests, "ranks": ranks,
                       "snapshots": snap, "runs": data.runs, "curves": data.curves, "final": final,
                       "final_runs": final_runs, "cost": costs, "collapsed": data.collapsed}}


def _write_report(output: str, data: Collected, tidy: pd.DataFrame, page: "report.Page", markdown: str,
                  plots: bool) -> None:
    """Everything into a fresh folder that replaces ``output`` only when complete (``fileio.atomic_folder``)."""
    with atomic_folder(output, "comparison report") as tmp:
        per_case = data.counts.copy()
        per_case["epoch"] = per_case["epoch"].astype("Int64")
        columns = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "key",
                   "kind",
                   *results.COUNTS, *METRICS]
        report.write_frame(os.path.join(tmp, "per_case.csv"), per_case[columns])
        report.write_frame(os.path.join(tmp, "summary_table.csv"), page.table)
        report.write_text_file(os.path.join(tmp, "summary_table.md"), page.summary_markdown_all(METRICS))
        report.write_text_file(os.path.join(tmp, "summary_table.tex"), page.summary_latex(METRICS))
        if len(page.tests):
            report.write_frame(os.path.join(tmp, "wilcoxon.csv"), page.tests)
        report.write_frame(os.path.join(tmp, "bootstrap_ranks.csv"), page.ranks)
        report.write_frame(os.path.join(tmp, "runs.csv"), data.runs)
        if len(page.cost):
            report.write_frame(os.path.join(tmp, "cost.csv"), page.cost)
        if len(page.collapsed):
            report.write_frame(os.path.join(tmp, "collapsed.csv"), page.collapsed)
        if len(data.curves):
            report.write_frame(os.path.join(tmp, "learning_curves.csv"), data.curves)
        if len(page.snapshots):
            report.write_frame(os.path.join(tmp, "snapshots.csv"), page.snapshots)
        if plots:
            os.makedirs(os.path.join(tmp, "plots"))
            final = seed_average(tidy[(tidy["stage"] == FINAL) & tidy["case"].isin(page.cases)])
            for metric in TESTED_METRICS:
                report.plot_distributions(os.path.join(tmp, "plots", f"per_case_{metric.lower()}.png"),
                                          final[final["metric"] == metric], page.trainers, page.classes, metric)
            if len(data.curves):
                report.plot_learning_curves(os.path.join(tmp, "plots", "learning_curves.png"), data.curves,
                                            page.trainers)
            markdown += "\n\n## Plots\n\n" + "\n".join(
                f"![{n}](plots/{n})" for n in sorted(os.listdir(os.path.join(tmp, "plots"))))
        report.write_text_file(os.path.join(tmp, "report.md"), markdown + "\n")

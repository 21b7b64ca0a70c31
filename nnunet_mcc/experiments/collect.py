"""Reading a comparison's inputs, and nothing else: each trainer's finished folds (every seed), what says how each
was trained (budget, seed, loss settings and identity, training log, cost: ``collect_runs``) and its per-case
confusion counts (for a run with a collapsed class also those of its validation without mirroring, when present:
``collect_collapse``) and the boundary metrics of its exported final validation predictions (``collect_boundary``),
the calibration metrics of the class probabilities it saved (``collect_calibration``), with the checks that refuse to
pair runs that differ (budgets, seed sets, settings: ``collect_checks``). The dataset's labels, references and reader,
and a case's image and masks for the pictures, are ``collect_dataset``'s. ``compare`` computes the statistics and
writes the report from what this returns."""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import pandas as pd

from nnunet_mcc import metrics as metric_functions
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.experiments.collect_boundary import boundary_record, boundary_scores
from nnunet_mcc.experiments.collect_calibration import RELIABILITY_COLUMNS, calibration_record, calibration_scores
from nnunet_mcc.experiments.collect_checks import (check_budgets, check_seeds, check_settings, check_trainer_folders,
                                                   settings_notes, snapshot_notes)
from nnunet_mcc.experiments.collect_collapse import collapsed_classes, lost_in_training_or_mirroring
from nnunet_mcc.experiments.collect_dataset import FINAL, METRICS, SNAPSHOT, dataset_context
from nnunet_mcc.experiments.collect_runs import ensemble_record, ensemble_state, run_record, runs_frame, seed_text
from nnunet_mcc.fileio import read_json

CURVE_COLUMNS = ["trainer", "run", "fold", "epoch", "iterations", "series", "value"]


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
    collapsed: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per run and collapsed class/region,
    # with when, and whether lost in training or by mirroring (lost_in)
    boundary: dict = field(default_factory=dict)  # boundary_record: what the boundary metrics rest on
    calibration: dict = field(default_factory=dict)  # calibration_record: what ECE and Brier rest on
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)  # calibration_scores' fine reliability bins


def collect(request, trainers: Optional[Sequence[str]] = None, ensembles: Sequence = (),
            allow_mixed_budgets: Optional[bool] = None) -> Collected:
    """Read every finished fold of ``request`` (a ``compare_request.CompareRequest``) for ``trainers`` (default: its
    trainers; ``--auto-budget`` compares other runs of them); raise UserError for unusable input (nothing is
    written). With its ``boundary``: also the boundary metrics (HD95, NSD with ``nsd_tolerance`` mm) of the final
    validation, from its exported predictions. ``calibration``: also ECE (``calibration_bins`` equal-mass bins) and
    the Brier score, from the probabilities it saved (``--npz``). ``ensembles``: ensemble folds built by
    ``ensemble.build_all``, read as runs of one more trainer each (named ``A+B``), after the trainers.
    ``allow_mixed_budgets``: default the request's."""
    trainers = list(request.trainers if trainers is None else trainers)
    mixed_budgets = request.allow_mixed_budgets if allow_mixed_budgets is None else allow_mixed_budgets
    plans, configuration = request.plans, request.configuration
    dataset_name = results.resolve_dataset(request.dataset)
    results_root = results.nnunet_folder("results")
    results.load_plans_checked(dataset_name, plans, configuration)
    check_trainer_folders(results_root, dataset_name, trainers, plans, configuration)
    context = dataset_context(dataset_name)
    states = results.survey(results_root, dataset_name, trainers, plans, configuration, request.folds)
    finished = [s for s in states if s.status == results.FINISHED]
    if not finished:
        raise UserError(f"no finished fold (validation/summary.json) for {', '.join(trainers)} on {dataset_name} "
                        f"{configuration} folds {' '.join(map(str, request.folds))}")
    notes = [f"{s.run} fold {s.fold}: {s.status}" for s in states if s.status != results.FINISHED]
    notes += _unused_folder_notes(results_root, dataset_name, trainers, plans, configuration)
    records = [run_record(s, mixed_budgets, context["pseudo_dice_names"]) for s in finished]
    trained, compared = list(finished), list(trainers) + list(dict.fromkeys(e.trainer for e in ensembles))
    by_run = {(r["run"], r["fold"]): r for r in records}
    records += [ensemble_record(e, by_run) for e in ensembles]
    finished += [ensemble_state(e) for e in ensembles]
    check_budgets(records, mixed_budgets)
    notes += check_seeds(records, compared, request.allow_mixed_seeds)
    notes += check_settings(records, compared, request.allow_mixed_settings)

    boundary = request.boundary
    if boundary and not metric_functions.monai_available():
        notes.append(f"{metric_functions.MONAI_MISSING}: not computed")
        boundary = False
    reader = _RunReader(request, context, boundary, notes)
    for state, record in zip(finished, records):
        reader.read(state, record)
    if request.snapshots:
        notes += snapshot_notes(trained)
    notes += settings_notes(records)
    counts = pd.DataFrame(reader.count_rows)
    scores = results.scores_from_counts(*(counts[c] for c in results.COUNTS))
    for metric in METRICS:
        counts[metric] = scores[metric]
    collapsed = collapsed_classes(counts, records)
    collapsed, mirroring_notes = lost_in_training_or_mirroring(collapsed, records, context)
    notes += mirroring_notes
    for r in records:
        own = collapsed[(collapsed["run"] == r["run"]) & (collapsed["fold"] == r["fold"])] if len(collapsed) else []
        r["collapsed"] = "; ".join(f"{c['class_or_region']} ({c['when']})" for _, c in own.iterrows()) \
            if len(own) else ""
    return Collected(dataset_name, results_root, configuration, plans, compared, states, runs_frame(records), counts,
                     pd.DataFrame(reader.curve_rows, columns=CURVE_COLUMNS), context["regions"], notes, collapsed,
                     reader.boundary_info if boundary else {},
                     calibration=reader.calibration_info if request.calibration else {},
                     reliability=pd.DataFrame(reader.reliability_rows, columns=RELIABILITY_COLUMNS))


def _unused_folder_notes(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                         configuration: str) -> List[str]:
    """A trainer's unsuffixed folder beside its seed folders is not used: say so."""
    notes = []
    for trainer in trainers:
        runs, unsuffixed = results.seed_runs(results_root, dataset_name, trainer, plans, configuration)
        if unsuffixed:
            notes.append(f"{trainer}: its seed folders ({', '.join(r for r, _ in runs)}) are its runs; the unsuffixed "
                         f"folder {trainer}__{plans}__{configuration} is not used")
    return notes


class _RunReader:
    """The per-case rows (final validation and snapshots), learning curves and reliability bins of the runs read one
    after the other, with the notes on what is missing and what the boundary and calibration metrics rest on."""

    def __init__(self, request, context: dict, boundary: bool, notes: List[str]):
        self.request, self.context, self.boundary, self.notes = request, context, boundary, notes
        self.boundary_info = boundary_record(request.nsd_tolerance)
        self.calibration_info = calibration_record(request.calibration_bins)
        self.count_rows: List[dict] = []
        self.curve_rows: List[dict] = []
        self.reliability_rows: List[dict] = []

    def read(self, state: results.FoldState, record: dict) -> None:
        """One run: its final validation (and snapshot validations), its learning curve, unvalidated snapshots."""
        budget, snapshots = record["_budget"], self.request.snapshots
        final_epoch = budget.num_epochs if budget else (record["epochs_logged"] or None)
        per_epoch = budget.num_iterations_per_epoch if budget else None
        stages = [(FINAL, final_epoch, os.path.join(state.folder, "validation", "summary.json"), "summary")]
        if snapshots:
            stages += [(SNAPSHOT, epoch, path, "snapshot summary") for epoch, path in state.snapshots.items()]
        for stage, epoch, path, what in stages:
            self.stage(state, record, stage, epoch, path, what, per_epoch)
        if record["_series"]:
            for name, values in record["_series"].items():
                for epoch, value in enumerate(values, start=1):
                    self.curve_rows.append({"trainer": state.trainer, "run": state.run, "fold": state.fold,
                                            "epoch": epoch, "iterations": epoch * per_epoch if per_epoch else None,
                                            "series": name, "value": value})
        elif not record.get("_ensemble"):
            self.notes.append(f"{state.run} fold {state.fold}: {record['log_problem']}: no learning curve, "
                              f"convergence not judged")
        unvalidated = sorted(set(results.snapshot_checkpoints(state.folder)) - set(state.snapshots))
        if snapshots and unvalidated:
            names = ", ".join(f"checkpoint_epoch_{e}.pth" for e in unvalidated)
            self.notes.append(f"{state.run} fold {state.fold}: {names} not validated (no snapshots/epoch_<N>/"
                              f"summary.json; validate with nnUNetv2_predict -chk and nnU-Net's evaluation, or let "
                              f"this package's trainers do it during training)")

    def stage(self, state: results.FoldState, record: dict, stage: str, epoch: Optional[int], path: str, what: str,
              per_epoch: Optional[int]) -> None:
        """The per-case rows of one validation summary (``path``): its counts, at the final validation also the
        evaluation regions and the boundary and calibration metrics."""
        context = self.context
        rows = results.read_summary(path, context["file_ending"], context["names"], what)
        if stage == FINAL and context["regions"]:
            region = results.region_rows(os.path.dirname(path), context["gt_folder"], context["regions"],
                                         context["file_ending"], context["reader_writer"], context["ignore_label"])
            if not region:
                self.notes.append(f"{state.trainer} fold {state.fold}: no exported predictions in validation/, "
                                  f"evaluation regions not computed")
            rows += region
        if stage == FINAL and self.boundary:
            self.boundary_metrics(state, rows, os.path.dirname(path))
        if stage == FINAL and self.request.calibration:
            self.calibration_metrics(state, rows, os.path.dirname(path))
        iterations = epoch * per_epoch if epoch and per_epoch else None
        if stage == SNAPSHOT:
            iterations = read_json(path, what).get("iterations", iterations)
        for row in rows:
            row.update(trainer=state.trainer, run=state.run, seed=seed_text(record["seed"]), fold=state.fold,
                       stage=stage, epoch=epoch, iterations=iterations)
        self.count_rows += rows

    def boundary_metrics(self, state: results.FoldState, rows: List[dict], folder: str) -> None:
        scored, missing = boundary_scores(rows, folder, self.context, self.request.nsd_tolerance)
        self.boundary_info["runs_with_predictions" if scored else "runs_without"] += 1
        if not scored:
            self.notes.append(f"{state.run} fold {state.fold}: no exported predictions in validation/ (or no "
                              f"gt_segmentations): HD95 and NSD not computed")
        elif missing:
            self.notes.append(f"{state.run} fold {state.fold}: {missing} case(s) without an exported prediction "
                              f"or reference: HD95 and NSD not computed for them")

    def calibration_metrics(self, state: results.FoldState, rows: List[dict], folder: str) -> None:
        fine: List[dict] = []
        scored, missing = calibration_scores(rows, folder, self.context, self.request.calibration_bins, fine)
        self.reliability_rows += [dict(r, trainer=state.trainer, run=state.run, fold=state.fold) for r in fine]
        self.calibration_info["runs_with_probabilities" if scored else "runs_without"] += 1
        if not scored:
            self.notes.append(f"{state.run} fold {state.fold}: no validation probabilities (validation/<case>.npz; "
                              f"train or validate with crossval --npz, nnU-Net's --npz): ECE and Brier not computed")
        elif missing:
            self.notes.append(f"{state.run} fold {state.fold}: {missing} case(s) without saved probabilities, an "
                              f"exported prediction or a reference: ECE and Brier not computed for them")

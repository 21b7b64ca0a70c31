"""Reading a comparison's inputs, and nothing else: each trainer's finished folds (every seed), what says how each
was trained (budget, seed, loss settings and identity, training log, cost) and its per-case confusion counts (for a
run with a collapsed class also those of its validation without mirroring, when present) and the boundary metrics of
its exported final validation predictions (``boundary_scores``), the calibration metrics of the class probabilities
it saved (``calibration_scores``) and a case's image and masks for the pictures (``case_arrays``), with the checks that
refuse to pair runs that differ (budgets, seed sets, settings). ``compare`` computes the statistics and writes the
report from what this returns."""

import ast
import json
import os
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from nnunet_mcc import labels as dataset_labels
from nnunet_mcc import metrics as metric_functions
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence, results
from nnunet_mcc.fileio import read_json
from nnunet_mcc.provenance import PROVENANCE_FILE, unmirrored_summary

METRICS = ("Dice", "IoU", "MCC")                     # from nnU-Net's confusion counts, at every stage
BOUNDARY_METRICS = tuple(metric_functions.BOUNDARY_METRICS)  # from the exported predictions, final validation only
CALIBRATION_METRICS = tuple(metric_functions.CALIBRATION_METRICS)  # from the saved probabilities (--npz), final only
FINAL, SNAPSHOT = "final", "snapshot"


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


def metric_columns(counts: pd.DataFrame) -> List[str]:
    """The metrics of ``counts``: the overlap scores, then the boundary and calibration metrics that were computed
    somewhere."""
    return list(METRICS) + [m for m in (*BOUNDARY_METRICS, *CALIBRATION_METRICS)
                            if m in counts.columns and counts[m].notna().any()]


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


def _ignore_label(dataset_json: dict):
    """The label value nnU-Net's evaluation leaves out, as the trainers read it (``TargetFormat``)."""
    from nnunet_mcc.losses.targets import TargetFormat

    return TargetFormat.from_dataset_json(dataset_json).ignore_label


def _dataset_context(dataset_name: str) -> dict:
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    dataset_json = read_json(os.path.join(preprocessed, "dataset.json"), "dataset.json")
    context = {"file_ending": dataset_json.get("file_ending", ".nii.gz"),
               "names": dataset_labels.summary_key_names(dataset_json),
               "pseudo_dice_names": dataset_labels.pseudo_dice_names(dataset_json),
               "regions": dataset_labels.evaluation_regions(dataset_json),
               "gt_folder": os.path.join(preprocessed, "gt_segmentations"),
               "ignore_label": _ignore_label(dataset_json), "reader_writer": None, "dataset_json": dataset_json}
    if context["regions"]:
        context["reader_writer"] = _reader_writer(context)
        if context["reader_writer"] is None:
            raise UserError(f"evaluation regions need the reference segmentations in {context['gt_folder']}, which "
                            f"has none")
    return context


def _reader_writer(context: dict):
    """nnU-Net's image reader for the dataset (``determine_reader_writer_from_dataset_json``, what its evaluation
    uses), chosen from a reference segmentation; None when ``gt_segmentations`` has none."""
    if context["reader_writer"] is not None:
        return context["reader_writer"]
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    gt = context["gt_folder"]
    example = next((os.path.join(gt, f) for f in sorted(os.listdir(gt)) if f.endswith(context["file_ending"])),
                   None) if os.path.isdir(gt) else None
    if example is None:
        return None
    context["reader_writer"] = determine_reader_writer_from_dataset_json(context["dataset_json"], example)()
    return context["reader_writer"]


def boundary_record(tolerance_mm: float) -> dict:
    """What the boundary metrics rest on, for the report and its tables."""
    try:  # the installed version, without importing MONAI (seconds) where --no-boundary needs none of it
        version = importlib_metadata.version("monai")
    except importlib_metadata.PackageNotFoundError:
        version = None
    return {"implementation": f"MONAI {version}" if version else "MONAI (not installed)", "nsd_tolerance_mm":
            float(tolerance_mm), "hd95": metric_functions.METRIC_INFO["HD95"].rests_on,
            "nsd": metric_functions.METRIC_INFO["NSD"].rests_on, "runs_with_predictions": 0, "runs_without": 0}


def _key_values(key: str, kind: str, regions: Dict[str, tuple]) -> Tuple[int, ...]:
    """The label values of a summary key (``"2"``, ``"(1, 2)"``) or an evaluation region."""
    if kind == "region":
        return tuple(regions[key])
    value = ast.literal_eval(key)
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


def boundary_scores(rows: List[dict], validation_folder: str, context: dict,
                    tolerance_mm: float) -> Tuple[int, int]:
    """Fill HD95 and NSD into the final validation's per-case ``rows`` (labels and regions) from the exported
    predictions (``validation/<case><file_ending>``) and the references nnU-Net's evaluation reads
    (``gt_segmentations/<case><file_ending>``), both read with nnU-Net's reader for the dataset, in the spacing
    it reports (``metrics.boundary_scores``; voxels of the ignore label are left out of the prediction, as in
    nnU-Net's evaluation). Returns (cases scored, cases without a prediction or reference file)."""
    by_case: Dict[str, List[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    reader = _reader_writer(context)
    scored = missing = 0
    for case, own in by_case.items():
        prediction_path = os.path.join(validation_folder, case + context["file_ending"])
        reference_path = os.path.join(context["gt_folder"], case + context["file_ending"])
        if reader is None or not (os.path.isfile(prediction_path) and os.path.isfile(reference_path)):
            missing += 1
            continue
        prediction, properties = reader.read_seg(prediction_path)
        reference, _ = reader.read_seg(reference_path)
        prediction, reference = prediction[0], reference[0]
        spacing = [float(v) for v in properties["spacing"]]
        if prediction.shape != reference.shape or len(spacing) != reference.ndim:
            raise UserError(f"{prediction_path} ({prediction.shape}) does not match its reference {reference_path} "
                            f"({reference.shape}) or its spacing {spacing}")
        valid = reference != context["ignore_label"] if context["ignore_label"] is not None else True
        values = [_key_values(r["key"], r["kind"], context["regions"]) for r in own]
        predicted = np.stack([np.isin(prediction, v) & valid for v in values])
        referenced = np.stack([np.isin(reference, v) for v in values])
        scores = metric_functions.boundary_scores(predicted, referenced, spacing, tolerance_mm)
        for i, row in enumerate(own):
            row.update({name: float(value[i]) for name, value in scores.items()})
        scored += 1
    return scored, missing


def calibration_record(n_bins: int) -> dict:
    """What ECE and the Brier score rest on, for the report and its tables."""
    return {"bins": int(n_bins), "binning": "equal-mass (equal voxel count; tied probabilities share a bin)",
            "population": metric_functions.CALIBRATION_POPULATION,
            "sample_seed": "CRC-32 of the case name, and the class's index",
            "ece": metric_functions.METRIC_INFO["ECE"].rests_on,
            "brier": metric_functions.METRIC_INFO["Brier"].rests_on,
            "runs_with_probabilities": 0, "runs_without": 0}


RELIABILITY_COLUMNS = ["trainer", "run", "fold", "case", "class_or_region", "bin", "count", "sum_probability",
                       "sum_outcome"]


def _probability_channels(context: dict, path: str):
    """A function (values of a row) -> the channels of the saved probabilities whose sum is that row's probability:
    nnU-Net saves one channel per label (``LabelManager.all_labels``, in value order, the ignore label left out;
    softmax, so a union of labels sums its channels) or, for region-based training, one per region (sigmoid; the
    region's own channel)."""
    if "channels" in context:
        return context["channels"]
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset_json = context["dataset_json"]
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if manager.has_regions:
        regions = [tuple(sorted(int(v) for v in (r if isinstance(r, (tuple, list)) else (r,))))
                   for r in manager.all_regions]
        count = len(regions)

        def channels(values: Tuple[int, ...]) -> List[int]:
            key = tuple(sorted(values))
            if key not in regions:
                raise UserError(f"{path}: no probability channel for region {key} (regions of dataset.json: "
                                f"{regions})")
            return [regions.index(key)]
    else:
        labels = [int(v) for v in manager.all_labels]
        count = len(labels)

        def channels(values: Tuple[int, ...]) -> List[int]:
            return [labels.index(v) for v in values]
    context["channels"] = (channels, count)
    return context["channels"]


def calibration_scores(rows: List[dict], validation_folder: str, context: dict, n_bins: int,
                       reliability: Optional[List[dict]] = None) -> Tuple[int, int]:
    """Fill ECE and the Brier score into the final validation's per-case ``rows`` (labels and regions) from the class
    probabilities nnU-Net's validation saves with ``--npz`` (``validation/<case>.npz``, key ``probabilities``, shape
    (C, *spatial) in the exported image's geometry), the exported prediction (``validation/<case><file_ending>``)
    and the reference (``gt_segmentations/<case><file_ending>``), one-vs-rest per class on the class's calibration
    population (``metrics.calibration_population``: its voxels in reference or prediction plus as many sampled
    others, seeded by the case name's CRC-32 and the row's position in the case; ignore-label voxels left out) with
    ``n_bins`` equal-mass bins. ``reliability``: gets
    the case's fine reliability bins per class (``RELIABILITY_COLUMNS`` less trainer/run/fold) for the pooled
    diagram. Returns (cases scored, cases without a probability, prediction or reference file)."""
    import zipfile
    import zlib

    by_case: Dict[str, List[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    reader = _reader_writer(context)
    scored = missing = 0
    for case, own in by_case.items():
        npz_path = os.path.join(validation_folder, case + ".npz")
        prediction_path = os.path.join(validation_folder, case + context["file_ending"])
        reference_path = os.path.join(context["gt_folder"], case + context["file_ending"])
        if reader is None or not all(os.path.isfile(p) for p in (npz_path, prediction_path, reference_path)):
            missing += 1
            continue
        try:
            with np.load(npz_path) as saved:
                probabilities = saved["probabilities"]
        except KeyError:
            raise UserError(f"{npz_path}: no 'probabilities' array (not what nnU-Net's --npz saves)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{npz_path}: not a readable .npz file ({e})") from None
        prediction, _ = reader.read_seg(prediction_path)
        reference, _ = reader.read_seg(reference_path)
        prediction, reference = prediction[0], reference[0]
        channels, count = _probability_channels(context, npz_path)
        if probabilities.shape != (count, *reference.shape) or prediction.shape != reference.shape:
            raise UserError(f"{npz_path}: probabilities of shape {probabilities.shape} do not match the reference "
                            f"{reference_path} ({reference.shape}, {count} channels expected) or the prediction "
                            f"{prediction_path} ({prediction.shape})")
        valid = reference != context["ignore_label"] if context["ignore_label"] is not None else None
        seed = zlib.crc32(case.encode("utf-8"))
        try:
            for i, row in enumerate(own):  # one class at a time: a 3D case holds C float volumes already
                values = _key_values(row["key"], row["kind"], context["regions"])
                referenced = np.isin(reference, values)
                population = metric_functions.calibration_population(referenced, np.isin(prediction, values), valid,
                                                                     seed=(seed, i))
                index = channels(values)
                probability = probabilities[index[0]] if len(index) == 1 else \
                    probabilities[index].sum(axis=0, dtype=np.float32)
                p, y = probability.reshape(-1)[population], referenced.reshape(-1)[population]
                row["ECE"] = metric_functions.expected_calibration_error(p, y, n_bins)
                row["Brier"] = metric_functions.brier_score(p, y)
                if reliability is not None:
                    fine = metric_functions.reliability_histogram(p, y)
                    for b in np.flatnonzero(fine[0]):
                        reliability.append({"case": case, "class_or_region": row["class_or_region"], "bin": int(b),
                                            "count": fine[0][b], "sum_probability": fine[1][b],
                                            "sum_outcome": fine[2][b]})
        except ValueError as e:
            raise UserError(f"{npz_path}: {e}") from None
        scored += 1
    return scored, missing


def case_arrays(dataset_name: str, case: str, key: str, kind: str, prediction_folders: Dict[str, str],
                cache: Optional[dict] = None) -> dict:
    """What a picture of one case and class (its summary ``key`` and ``kind``, as in the per-case rows) needs, read
    with nnU-Net's reader for the dataset: the raw image's first channel (``$nnUNet_raw/<dataset>/imagesTr/
    <case>_0000<file_ending>``; None, with ``image_missing`` saying why, when it is not there), the class's mask in
    the reference (``gt_segmentations``) and in each named prediction's exported label map
    (``<folder>/<case><file_ending>``, ignore-label voxels left out; a missing one is listed in
    ``predictions_missing``), (*spatial) arrays as the reader gives them, and the spacing; without a reference,
    only ``missing`` (why). ``cache``: a dict kept between calls, so that dataset.json is read and the reader chosen
    once."""
    cache = {} if cache is None else cache
    if cache.get("dataset") != dataset_name:
        cache.update(dataset=dataset_name, context=_dataset_context(dataset_name))
    context = cache["context"]
    reader = _reader_writer(context)
    ending = context["file_ending"]
    reference_path = os.path.join(context["gt_folder"], case + ending)
    if reader is None or not os.path.isfile(reference_path):
        return {"missing": f"no reference segmentation {reference_path}"}
    reference, properties = reader.read_seg(reference_path)
    reference = reference[0]
    values = _key_values(key, kind, context["regions"])
    valid = reference != context["ignore_label"] if context["ignore_label"] is not None else True
    out = {"missing": None, "reference": np.isin(reference, values), "reference_path": reference_path,
           "spacing": [float(v) for v in properties["spacing"]], "image": None, "image_path": None,
           "image_missing": None, "predictions": {}, "predictions_missing": []}
    raw = os.environ.get("nnUNet_raw")
    image_path = os.path.join(raw, dataset_name, "imagesTr", f"{case}_0000{ending}") if raw else None
    if image_path is None:
        out["image_missing"] = "nnUNet_raw is not set"
    elif not os.path.isfile(image_path):
        out["image_missing"] = f"no raw image {image_path}"
    else:
        image, _ = reader.read_images([image_path])
        if image.shape[1:] != reference.shape:
            raise UserError(f"{image_path}: raw image of shape {image.shape[1:]} does not match its reference "
                            f"{reference_path} ({reference.shape})")
        out["image"], out["image_path"] = image[0], image_path
    for name, folder in prediction_folders.items():
        path = os.path.join(folder, case + ending)
        if not os.path.isfile(path):
            out["predictions_missing"].append(name)
            continue
        prediction, _ = reader.read_seg(path)
        if prediction.shape[1:] != reference.shape:
            raise UserError(f"{path} ({prediction.shape[1:]}) does not match its reference {reference_path} "
                            f"({reference.shape})")
        out["predictions"][name] = np.isin(prediction[0], values) & valid
    return out


def _run_record(state: results.FoldState, allow_unknown: bool, class_names: Sequence[str] = ()) -> dict:
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
    per_epoch = budget.num_iterations_per_epoch if budget else None
    verdict, series, per_class, log_source = results.judged_training_log(state.folder, per_epoch, class_names)
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
    record["still_rising"] = ", ".join(verdict.rising)  # the series the judge found rising
    record["classes_at_zero"] = "; ".join(f"{c} {how}" for c, how in verdict.at_zero.items())  # "core lost"
    cost = results.training_cost(state.folder)
    for key in results.COST_KEYS:
        record[f"cost_{key}"] = cost[key]
    record["_series"] = series
    record["_per_class"] = per_class
    record["_budget"] = budget
    record["_provenance"] = provenance
    record["_loss"] = loss
    return record


def _ensemble_state(run) -> results.FoldState:
    """An ensemble fold (``ensemble.EnsembleRun``) as a finished fold of the trainer named after it: its
    ``validation/summary.json`` and exported predictions are read as any fold's."""
    return results.FoldState(run.trainer, run.fold, results.FINISHED, run.folder, {}, run.seed, run.run)


def _ensemble_record(run, by_run: Dict[Tuple[str, int], dict]) -> dict:
    """The run record of an ensemble fold from its members' records (same fold and seed): their common budget, the
    members' losses and settings as its loss ("ensemble of A (...) and B (...)"), converged when every member run
    converged; no training log or cost of its own. Its settings identity is its list of members, so the settings
    checks never refuse it."""
    members = [by_run[(m.run, run.fold)] for m in run.members]
    names = [f"{m['trainer']} ({m['loss']}" + (f"; {results.settings_text(json.loads(m['loss_settings']), 40)}"
                                                if json.loads(m["loss_settings"]) else "") + ")" for m in members]
    loss = "ensemble of " + ", ".join(names[:-1]) + " and " + names[-1]
    settings = {"members": [m["run"] for m in members], "probabilities": "averaged (nnunetv2.ensembling)",
                **{f"{m['trainer']}.{k}": v for m in members for k, v in json.loads(m["loss_settings"]).items()}}
    statuses = [m["converged"] for m in members]
    converged = convergence.YES if all(v == convergence.YES for v in statuses) else (
        convergence.NO if convergence.NO in statuses else next(v for v in statuses if v != convergence.YES))
    budget = run.budget
    record = {"trainer": run.trainer, "run": run.run, "seed": run.seed,
              "seed_source": "its members' seed folders" if run.seed is not None else "unrecorded",
              "deterministic": None, "fold": run.fold, "folder": run.folder,
              "num_epochs": budget.num_epochs, "num_iterations_per_epoch": budget.num_iterations_per_epoch,
              "num_val_iterations_per_epoch": budget.num_val_iterations_per_epoch, "iterations": budget.iterations,
              "budget": budget.short(), "budget_source": "its members' (one budget)", "budget_sources": "{}",
              "loss": loss, "loss_settings": json.dumps(settings, sort_keys=True), "versions": "{}",
              "log_source": None, "log_problem": "an ensemble: no training of its own",
              "epochs_logged": None, "converged": converged,
              "convergence": "an ensemble of " + ", ".join(f"{m['run']} fold {m['fold']} ({m['converged']})"
                                                           for m in members),
              "still_rising": "", "classes_at_zero": "", "ensemble_of": " + ".join(m["run"] for m in members),
              "ensemble_reused": bool(run.reused)}
    for name in convergence.SERIES:
        record[f"projected_gain_{name}"] = float("nan")
    for key in results.COST_KEYS:
        record[f"cost_{key}"] = None
    record.update(_series=None, _per_class=None, _budget=budget, _loss={"name": loss, "settings": settings},
                  _provenance={"identity": {"ensemble_of": [m["trainer"] for m in members]}}, _ensemble=True)
    return record


def _runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run; a column of whole numbers with gaps (an ensemble has no cost or log of its own, an unseeded
    run no seed) stays whole numbers (pandas' nullable Int64) instead of turning into floats in runs.csv."""
    runs = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
    for column in runs.columns:
        values = [r.get(column) for r in records]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
            runs[column] = pd.array(values, dtype="Int64")
    if "seed" in runs.columns:
        runs["seed"] = pd.array([r["seed"] for r in records], dtype="Int64")
    return runs


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
    dataset, configuration, plans, folds = request.dataset, request.configuration, request.plans, request.folds
    snapshots, boundary, calibration = request.snapshots, request.boundary, request.calibration
    nsd_tolerance, calibration_bins = request.nsd_tolerance, request.calibration_bins
    if allow_mixed_budgets is None:
        allow_mixed_budgets = request.allow_mixed_budgets
    allow_mixed_seeds, allow_mixed_settings = request.allow_mixed_seeds, request.allow_mixed_settings
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
    records = [_run_record(s, allow_mixed_budgets, context["pseudo_dice_names"]) for s in finished]
    trained, compared = list(finished), list(trainers) + list(dict.fromkeys(e.trainer for e in ensembles))
    by_run = {(r["run"], r["fold"]): r for r in records}
    records += [_ensemble_record(e, by_run) for e in ensembles]
    finished += [_ensemble_state(e) for e in ensembles]
    _check_budgets(records, allow_mixed_budgets)
    notes += _check_seeds(records, compared, allow_mixed_seeds)
    notes += _check_settings(records, compared, allow_mixed_settings)

    boundary_info = boundary_record(nsd_tolerance)
    if boundary and not metric_functions.monai_available():
        notes.append(f"{metric_functions.MONAI_MISSING}: not computed")
        boundary = False
    calibration_info = calibration_record(calibration_bins)
    count_rows, curve_rows, reliability_rows = [], [], []
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
            if stage == FINAL and boundary:
                scored, missing = boundary_scores(rows, os.path.dirname(path), context, nsd_tolerance)
                boundary_info["runs_with_predictions" if scored else "runs_without"] += 1
                if not scored:
                    notes.append(f"{state.run} fold {state.fold}: no exported predictions in validation/ (or no "
                                 f"gt_segmentations): HD95 and NSD not computed")
                elif missing:
                    notes.append(f"{state.run} fold {state.fold}: {missing} case(s) without an exported prediction "
                                 f"or reference: HD95 and NSD not computed for them")
            if stage == FINAL and calibration:
                fine: List[dict] = []
                scored, missing = calibration_scores(rows, os.path.dirname(path), context, calibration_bins, fine)
                reliability_rows += [dict(r, trainer=state.trainer, run=state.run, fold=state.fold) for r in fine]
                calibration_info["runs_with_probabilities" if scored else "runs_without"] += 1
                if not scored:
                    notes.append(f"{state.run} fold {state.fold}: no validation probabilities (validation/<case>.npz; "
                                 f"train or validate with crossval --npz, nnU-Net's --npz): ECE and Brier not computed")
                elif missing:
                    notes.append(f"{state.run} fold {state.fold}: {missing} case(s) without saved probabilities, an "
                                 f"exported prediction or a reference: ECE and Brier not computed for them")
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
        elif not record.get("_ensemble"):
            notes.append(f"{state.run} fold {state.fold}: {record['log_problem']}: no learning curve, "
                         f"convergence not judged")
        unvalidated = sorted(set(results.snapshot_checkpoints(state.folder)) - set(state.snapshots))
        if snapshots and unvalidated:
            names = ", ".join(f"checkpoint_epoch_{e}.pth" for e in unvalidated)
            notes.append(f"{state.run} fold {state.fold}: {names} not validated (no snapshots/epoch_<N>/"
                         f"summary.json; validate with nnUNetv2_predict -chk and nnU-Net's evaluation, or let "
                         f"this package's trainers do it during training)")
    if snapshots:
        notes += _snapshot_notes(trained)
    notes += _settings_notes(records)
    counts = pd.DataFrame(count_rows)
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
    runs = _runs_frame(records)
    curves = pd.DataFrame(curve_rows, columns=["trainer", "run", "fold", "epoch", "iterations", "series", "value"])
    return Collected(dataset_name, results_root, configuration, plans, compared, states, runs, counts, curves,
                     context["regions"], notes, collapsed, boundary_info if boundary else {},
                     calibration=calibration_info if calibration else {},
                     reliability=pd.DataFrame(reliability_rows, columns=RELIABILITY_COLUMNS))


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

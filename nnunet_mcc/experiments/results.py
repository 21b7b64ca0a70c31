"""Where nnU-Net keeps a dataset's training results, and reading them back.

Layout (nnU-Net's): ``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/fold_<f>/`` with

* ``validation/summary.json``: per case and label/region Dice, IoU, TP, FP, FN, TN; what nnU-Net's own
  tools (``nnUNetv2_find_best_configuration``, its evaluation) read, and all that a comparison needs;
* ``debug.json``: every trainer attribute as a string, written by nnU-Net at the start of every training
  (stock trainers included): the budget record (``num_epochs``, ``num_iterations_per_epoch``,
  ``num_val_iterations_per_epoch``);
* for this package's trainers, ``nnunet_mcc_provenance.json`` (budget and where it came from, versions,
  the loss and its settings), ``nnunet_mcc_log.json`` (the per-epoch validation series) and
  ``snapshots/epoch_<N>/summary.json`` (the network validated after epoch N, during training);
* ``checkpoint_final.pth`` / ``checkpoint_latest.pth``: optional here (often left behind on a cluster);
  their ``logging`` holds the per-epoch series of any trainer.
"""

import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mcc import provenance
from nnunet_mcc.budget import Budget
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json
from nnunet_mcc.metrics import mcc_score

FINISHED, UNFINISHED, MISSING = "finished", "unfinished", "missing"
SEED_NAME = re.compile(r"^(?P<base>.+)_seed(?P<seed>0|[1-9][0-9]*)$")
# loss settings computed from each training fold's data (weighted CE's class weights): they differ between the
# folds of one setting legitimately, so they are no part of a run's settings identity
PER_FOLD_SETTINGS = ("class_weights",)
SNAPSHOT_EPOCH = re.compile(r"^epoch_(\d+)$")
SNAPSHOT_CHECKPOINT = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")
COUNTS = ("TP", "FP", "FN", "TN")


def nnunet_folder(kind: str) -> str:
    """``$nnUNet_raw``, ``$nnUNet_preprocessed`` or ``$nnUNet_results``; a clear error if unset."""
    variable = f"nnUNet_{kind}"
    value = os.environ.get(variable)
    if not value:
        raise UserError(f"environment variable {variable} is not set (nnU-Net's folders must be configured)")
    return value


def resolve_dataset(dataset: str) -> str:
    """Dataset id or name -> ``DatasetXXX_Name``, searched as nnU-Net's ``maybe_convert_to_dataset_name`` does
    (preprocessed, results, raw), but from the current environment: ``nnunetv2.paths`` keeps the folders of
    its first import, and a clear one-line error instead of nnU-Net's RuntimeError."""
    roots = [nnunet_folder("preprocessed"), nnunet_folder("results"), os.environ.get("nnUNet_raw") or ""]
    text = str(dataset).strip()
    if re.fullmatch(r"Dataset\d{3}_.+", text):
        if any(os.path.isdir(os.path.join(r, text)) for r in roots if r):
            return text
        raise UserError(f"dataset {text} not found in nnUNet_preprocessed, nnUNet_results or nnUNet_raw")
    if not text.isdigit():
        raise UserError(f"dataset {text!r} must be an id (e.g. 4) or a name like Dataset004_Hippocampus")
    prefix = f"Dataset{int(text):03d}_"
    names = sorted({n for r in roots if r and os.path.isdir(r) for n in os.listdir(r)
                    if n.startswith(prefix) and os.path.isdir(os.path.join(r, n))})
    if not names:
        raise UserError(f"dataset {text}: no {prefix}* folder in nnUNet_preprocessed, nnUNet_results or nnUNet_raw")
    if len(names) > 1:
        raise UserError(f"dataset id {text} is ambiguous: {', '.join(names)}")
    return names[0]


def plans_file(dataset_name: str, plans: str) -> str:
    return os.path.join(nnunet_folder("preprocessed"), dataset_name, plans + ".json")


def load_plans_checked(dataset_name: str, plans: str, configuration: str) -> dict:
    """The plans, with a clear error when the file or the configuration does not exist."""
    path = plans_file(dataset_name, plans)
    if not os.path.isfile(path):
        raise UserError(f"plans file {path} does not exist (run nnUNetv2_plan_and_preprocess for "
                        f"{dataset_name}, or pass the right -p)")
    plans_dict = read_json(path, "plans file")
    configurations = plans_dict.get("configurations", {})
    if configuration not in configurations:
        raise UserError(f"plans file {path} has no configuration {configuration!r} "
                        f"(it has: {', '.join(configurations) or 'none'})")
    return plans_dict


def trainer_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's ``<trainer>__<plans>__<configuration>`` folder (as its ``get_output_folder``, for any root)."""
    return os.path.join(results_root, dataset_name, f"{trainer}__{plans}__{configuration}")


def split_seed(name: str) -> Tuple[str, Optional[int]]:
    """``T_seed3`` -> ``("T", 3)``; any other name -> ``(name, None)``. ``nnunet_mcc.budget.split_seed`` (the one
    naming rule, shared with crossval and the trainers; import-light) when present, else the same rule here
    (seed suffix last, no leading zeros)."""
    try:
        from nnunet_mcc.budget import split_seed as shared
    except ImportError:
        shared = None
    if shared is not None:
        return shared(name)
    match = SEED_NAME.match(name)
    return (match.group("base"), int(match.group("seed"))) if match else (name, None)


def seed_runs(results_root: str, dataset_name: str, trainer: str, plans: str,
              configuration: str) -> Tuple[List[Tuple[str, Optional[int]]], bool]:
    """The runs of ``trainer``: its seed folders ``<trainer>_seed<S>__<plans>__<configuration>`` as
    ``[(folder trainer name, S), ...]`` sorted by S when there are any, else ``[(trainer, None)]`` (the
    unsuffixed folder, one run). Also whether an unsuffixed folder exists beside seed folders (then unused)."""
    dataset_results = os.path.join(results_root, dataset_name)
    suffix = f"__{plans}__{configuration}"
    seeded = []
    if os.path.isdir(dataset_results):
        for name in os.listdir(dataset_results):
            if not name.endswith(suffix) or not os.path.isdir(os.path.join(dataset_results, name)):
                continue
            base, seed = split_seed(name[: -len(suffix)])
            if seed is not None and base == trainer:
                seeded.append((name[: -len(suffix)], seed))
    if not seeded:
        return [(trainer, None)], False
    unsuffixed = os.path.isdir(trainer_folder(results_root, dataset_name, trainer, plans, configuration))
    return sorted(seeded, key=lambda r: r[1]), unsuffixed


def fold_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str, fold) -> str:
    return os.path.join(trainer_folder(results_root, dataset_name, trainer, plans, configuration), f"fold_{fold}")


def fold_status(folder: str) -> str:
    """finished (``validation/summary.json``, with or without checkpoints), unfinished (started) or missing."""
    if os.path.isfile(os.path.join(folder, "validation", "summary.json")):
        return FINISHED
    if os.path.isdir(folder) and os.listdir(folder):
        return UNFINISHED
    return MISSING


# ---- budget and settings ----------------------------------------------------------------------
def recorded_budget(folder: str) -> Budget:
    """The budget a fold was trained with (``nnunet_mcc.provenance``: this package's record, else nnU-Net's
    ``debug.json``); one clear UserError line when neither records it."""
    return Budget.from_mapping(provenance.recorded_budget(folder))


def read_provenance(folder: str) -> Optional[dict]:
    """This package's ``nnunet_mcc_provenance.json`` (None for other trainers); UserError when unreadable."""
    return provenance.read_provenance(folder)


def loss_record(record: Optional[dict], debug_folder: Optional[str] = None) -> Dict[str, object]:
    """``{"name", "settings"}`` of the loss: from the provenance file, else nnU-Net's ``debug.json`` repr."""
    if record and isinstance(record.get("loss"), dict):
        loss = record["loss"]
        return {"name": str(loss.get("name", "?")), "settings": loss.get("settings") or {}}
    if debug_folder:
        try:
            text = str(read_json(os.path.join(debug_folder, "debug.json"), "nnU-Net's training record").get("loss", ""))
        except (UserError, AttributeError):
            text = ""
        inner = re.search(r"\(loss\):\s*([A-Za-z_]\w*)", text)  # nnU-Net wraps its loss for deep supervision
        name = inner.group(1) if inner else text.split("(")[0].strip()
        if name:
            return {"name": name, "settings": {}}
    return {"name": "unknown", "settings": {}}


def settings_identity(records: Sequence[Tuple[Optional[dict], Dict[str, object]]]) -> List[Tuple[dict, str]]:
    """The settings identity of each of one trainer's runs, from ``(provenance, loss_record)`` pairs, and where
    it came from: the recorded ``identity`` when every run records one; else (older records) the loss's name,
    deep supervision and settings without the ones computed from each fold's data (``PER_FOLD_SETTINGS``)."""
    if records and all(isinstance((p or {}).get("identity"), dict) for p, _ in records):
        return [(dict(p["identity"]), "identity") for p, _ in records]
    out = []
    for p, loss in records:
        recorded = (p or {}).get("loss") if isinstance((p or {}).get("loss"), dict) else {}
        identity = {"loss": loss["name"]}
        if "deep_supervision" in recorded:
            identity["deep_supervision"] = recorded["deep_supervision"]
        identity.update({k: v for k, v in (loss["settings"] or {}).items() if k not in PER_FOLD_SETTINGS})
        out.append((identity, "loss settings"))
    return out


def settings_text(settings: dict, width: int = 60) -> str:
    """One short line for a settings dict (matrices and long lists abbreviated)."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
            text = f"{len(value)}x{len(value[0])} matrix"
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(_short_number(v) for v in value[:4])
            text = f"[{shown}{', ...' if len(value) > 4 else ''}]"
        elif isinstance(value, dict):
            text = "{...}"
        else:
            text = _short_number(value)
        parts.append(f"{key}={text}")
    line = "; ".join(parts)
    return line if len(line) <= width or width <= 0 else line[: width - 3] + "..."


def _short_number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# ---- training logs ----------------------------------------------------------------------------
LOG_SERIES = ("mean_fg_dice", "ema_fg_dice", "mean_fg_mcc", "train_losses", "val_losses")
PER_CLASS_SERIES = "dice_per_class_or_region"  # nnU-Net's per-epoch pseudo Dice, one list per epoch
COST_KEYS = ("device", "wall_seconds", "train_iterations", "iterations_per_second", "jobs", "torch_threads",
             "peak_memory_mb", "peak_memory_kind")


def training_log(folder: str) -> Tuple[Optional[Dict[str, List[float]]], str]:
    """Per-epoch series of a fold and where they came from: ``nnunet_mcc_log.json`` (no torch.load), else the
    ``logging`` of ``checkpoint_final.pth``/``checkpoint_latest.pth``; (None, why) when there is neither."""
    path = os.path.join(folder, provenance.LOG_FILE)
    if os.path.isfile(path):
        try:
            content = read_json(path, "training log")
            series = content["series"]
            return _cut_series(series), provenance.LOG_FILE
        except (UserError, KeyError, TypeError) as e:
            print(f"warning: {path} is unreadable ({e}); looking for a checkpoint instead", file=sys.stderr)
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        checkpoint_path = os.path.join(folder, name)
        if os.path.isfile(checkpoint_path):
            import torch

            try:
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
                return _cut_series(checkpoint["logging"]), name
            except Exception as e:  # a broken checkpoint costs its learning curve, not the comparison
                return None, f"{name} unreadable ({type(e).__name__})"
    return None, f"no {provenance.LOG_FILE} and no checkpoint"


def judged_training_log(folder: str, iterations_per_epoch: Optional[int], class_names: Optional[Sequence[str]] = None):
    """A fold's logged curves and compare's verdict on them (``convergence.judge``, the per-class pseudo Dice for a
    class at zero): ``(verdict, series without the per-class one, the per-class series, where the log came from)``.
    The one place a run is judged, for compare's tables and crossval's auto budget alike."""
    from nnunet_mcc.experiments import convergence

    series, source = training_log(folder)
    per_class = series.pop(PER_CLASS_SERIES, None) if series else None
    return convergence.judge(series, iterations_per_epoch, per_class, class_names), series, per_class, source


def _cut_series(logging: dict) -> Dict[str, List[float]]:
    """The series, each cut to the epochs the pseudo Dice was logged for (NaN where a series is absent); the
    per-class pseudo Dice (``PER_CLASS_SERIES``, a list per epoch) too when logged."""
    epochs = len(logging.get("mean_fg_dice", []))
    out = {}
    for key in LOG_SERIES:
        values = list(logging.get(key) or [])[:epochs]
        out[key] = [float("nan") if v is None else float(v) for v in values] + [float("nan")] * (epochs - len(values))
    per_class = logging.get(PER_CLASS_SERIES)
    if isinstance(per_class, (list, tuple)) and per_class:
        try:
            out[PER_CLASS_SERIES] = [[float("nan") if v is None else float(v) for v in
                                      (epoch if isinstance(epoch, (list, tuple)) else [epoch])]
                                     for epoch in list(per_class)[:epochs]]
        except (TypeError, ValueError):
            pass  # an unreadable per-class series costs the collapse timing only
    return out


def training_cost(folder: str) -> Dict[str, object]:
    """The ``cost`` record of ``nnunet_mcc_log.json`` (``COST_KEYS``, each None when not recorded)."""
    path = os.path.join(folder, provenance.LOG_FILE)
    cost = {}
    if os.path.isfile(path):
        try:
            cost = read_json(path, "training log").get("cost") or {}
        except (UserError, AttributeError):
            cost = {}
    return {key: cost.get(key) if isinstance(cost, dict) else None for key in COST_KEYS}


# ---- snapshots --------------------------------------------------------------------------------
def snapshot_summaries(folder: str) -> Dict[int, str]:
    """epoch -> ``snapshots/epoch_<N>/summary.json`` (validated by the trainer during training)."""
    root = os.path.join(folder, provenance.SNAPSHOT_FOLDER)
    found = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            match = SNAPSHOT_EPOCH.match(name)
            path = provenance.snapshot_summary(folder, int(match.group(1))) if match else None
            if path and os.path.isfile(path):
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def snapshot_checkpoints(folder: str) -> Dict[int, str]:
    """epoch -> ``checkpoint_epoch_<N>.pth`` (kept by the trainers at the snapshot epochs)."""
    found = {}
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            match = SNAPSHOT_CHECKPOINT.match(name)
            if match:
                found[int(match.group(1))] = os.path.join(folder, name)
    return dict(sorted(found.items()))


# ---- label names ------------------------------------------------------------------------------
# ---- per-case counts and scores ---------------------------------------------------------------
def scores_from_counts(tp, fp, fn, tn) -> Dict[str, np.ndarray]:
    """Dice, IoU and MCC from confusion counts (float64: the MCC products overflow int64).

    Dice, IoU and MCC are undefined (NaN) when the class is in neither reference nor prediction, as in
    nnU-Net. When exactly one marginal is empty (a present class predicted nowhere, or predicted
    everywhere) MCC is 0/0 and is scored 0 (``metrics.mcc_score``), so that missing a class counts against
    the trainer instead of being dropped.
    """
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    defined = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(defined, 2 * tp / np.where(defined, 2 * tp + fp + fn, 1), np.nan)
        iou = np.where(defined, tp / np.where(defined, tp + fp + fn, 1), np.nan)
    return {"Dice": dice, "IoU": iou, "MCC": mcc_score(tp, fp, fn, tn)}


def case_id(entry: dict, file_ending: str) -> str:
    name = os.path.basename(entry.get("reference_file") or entry.get("prediction_file") or "")
    return name[: -len(file_ending)] if file_ending and name.endswith(file_ending) else name.split(".")[0]


def read_summary(path: str, file_ending: str, names: Dict[str, str], what: str = "summary") -> List[dict]:
    """Per-case count rows of an nnU-Net ``summary.json``; one clear UserError if it is not nnU-Net's format."""
    summary = read_json(path, what)
    rows = []
    try:
        for entry in summary["metric_per_case"]:
            case = case_id(entry, file_ending)
            for key, m in entry["metrics"].items():
                row = {"case": case, "key": key, "class_or_region": names.get(key, f"label {key}"), "kind": "label"}
                row.update({c: float(m[c]) for c in COUNTS})
                if not all(math.isfinite(row[c]) and row[c] >= 0 for c in COUNTS):
                    raise ValueError(f"negative or non-finite count in case {case} label {key}")
                rows.append(row)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{what} {path} is not an nnU-Net validation summary (metric_per_case with TP, FP, FN, TN "
                        f"per label): {type(e).__name__} {e}") from None
    return rows


def region_rows(validation_folder: str, gt_folder: str, regions: Dict[str, Tuple[int, ...]], file_ending: str,
                reader_writer, ignore_label: Optional[int]) -> List[dict]:
    """Evaluation regions (e.g. BraTS whole tumour) from the exported label-mode predictions, with nnU-Net's
    ``compute_metrics`` (the per-case function behind ``compute_metrics_on_folder``), called here case by case:
    ``compute_metrics_on_folder`` starts a worker pool per call, several seconds per fold on a small CPU."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics

    rows = []
    predictions = sorted(f for f in os.listdir(validation_folder) if f.endswith(file_ending))
    region_list = list(regions.values())
    for prediction in predictions:
        reference = os.path.join(gt_folder, prediction)
        if not os.path.isfile(reference):
            continue
        result = compute_metrics(reference, os.path.join(validation_folder, prediction), reader_writer,
                                 region_list, ignore_label)
        case = prediction[: -len(file_ending)]
        for name, region in regions.items():
            m = result["metrics"][region]
            row = {"case": case, "key": name, "class_or_region": name, "kind": "region"}
            row.update({c: float(m[c]) for c in COUNTS})
            rows.append(row)
    return rows


@dataclass
class FoldState:
    trainer: str
    fold: int
    status: str
    folder: str
    snapshots: Dict[int, str] = field(default_factory=dict)
    seed: Optional[int] = None     # from the folder name (``<trainer>_seed<S>``); None for an unsuffixed folder
    run: str = ""                  # the folder's trainer name (``<trainer>`` or ``<trainer>_seed<S>``)

    def __post_init__(self):
        self.run = self.run or self.trainer


def survey(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str, configuration: str,
           folds: Sequence[int]) -> List[FoldState]:
    """Every (trainer, seed run, fold): a trainer's seed folders when it has any, else its unsuffixed folder."""
    states = []
    for trainer in trainers:
        for run, seed in seed_runs(results_root, dataset_name, trainer, plans, configuration)[0]:
            for fold in folds:
                folder = fold_folder(results_root, dataset_name, run, plans, configuration, fold)
                states.append(FoldState(trainer, fold, fold_status(folder), folder, snapshot_summaries(folder),
                                        seed, run))
    return states

"""Where nnU-Net keeps a dataset's training results, and reading them back.

Layout (nnU-Net's): ``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/fold_<f>/`` with
``checkpoint_final.pth`` (or ``checkpoint_latest.pth`` while training), ``validation/summary.json``
(per case and label/region: Dice, IoU, TP, FP, FN, TN), ``debug.json`` (the trainer's settings) and,
for this package's trainers, ``checkpoint_epoch_<N>.pth`` snapshots.
"""

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


from nnunet_mcc.errors import UserError
from nnunet_mcc.metrics import mcc_from_counts

FINISHED, UNFINISHED, MISSING = "finished", "unfinished", "missing"
SNAPSHOT_PATTERN = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")


def nnunet_folder(kind: str) -> str:
    """``$nnUNet_raw``, ``$nnUNet_preprocessed`` or ``$nnUNet_results``; a clear error if unset."""
    variable = f"nnUNet_{kind}"
    value = os.environ.get(variable)
    if not value:
        raise UserError(f"environment variable {variable} is not set (nnU-Net's folders must be configured)")
    return value


def resolve_dataset(dataset: str) -> str:
    """Dataset id or name -> ``DatasetXXX_Name``, searched as nnU-Net does (preprocessed, results, raw), from the
    current environment (nnunetv2.paths keeps the values of its first import)."""
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


def read_json(path: str, what: str = "file") -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path} cannot be read as JSON: {e}") from None


def trainer_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    return os.path.join(results_root, dataset_name, f"{trainer}__{plans}__{configuration}")


def fold_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str, fold) -> str:
    return os.path.join(trainer_folder(results_root, dataset_name, trainer, plans, configuration), f"fold_{fold}")


def fold_status(folder: str) -> str:
    """finished (final checkpoint and validation summary), unfinished (started) or missing."""
    if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")) and \
            os.path.isfile(os.path.join(folder, "validation", "summary.json")):
        return FINISHED
    if os.path.isdir(folder) and os.listdir(folder):
        return UNFINISHED
    return MISSING


def snapshot_checkpoints(folder: str) -> Dict[int, str]:
    """epoch -> path of every ``checkpoint_epoch_<N>.pth`` in a fold folder."""
    if not os.path.isdir(folder):
        return {}
    found = {}
    for name in os.listdir(folder):
        match = SNAPSHOT_PATTERN.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return dict(sorted(found.items()))


# ---- label names ------------------------------------------------------------------------------
def label_names(dataset_json: dict) -> Dict[str, str]:
    """summary.json metric key -> readable name, from dataset.json's ``labels``.

    nnU-Net writes labels as ``"2"`` and regions as ``"(1, 2)"``; a region given as one value is ``"(3,)"``.
    """
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        if name == "ignore":
            continue
        if isinstance(value, (list, tuple)):
            keys = [str(tuple(int(v) for v in value))]
            if len(value) == 1:
                keys.append(str(int(value[0])))
        else:
            keys = [str(int(value)), str((int(value),))]
        for key in keys:
            names[key] = name
    return names


def evaluation_regions(dataset_json: dict) -> Dict[str, Tuple[int, ...]]:
    """``evaluation_regions`` of a label-mode dataset.json: region name -> label values (checked)."""
    regions = dataset_json.get("evaluation_regions") or {}
    if not isinstance(regions, dict):
        raise UserError("dataset.json: 'evaluation_regions' must map a region name to a list of label values")
    label_values = {int(v) for v in dataset_json.get("labels", {}).values() if not isinstance(v, (list, tuple))}
    checked = {}
    for name, values in regions.items():
        values = [values] if isinstance(values, int) else values
        if not values or not all(isinstance(v, int) and v in label_values and v > 0 for v in values):
            raise UserError(f"dataset.json: evaluation region {name!r} = {values!r} must list foreground label "
                            f"values of 'labels'")
        checked[name] = tuple(sorted(values))
    return checked


# ---- per-case metrics -------------------------------------------------------------------------
@dataclass
class CaseMetrics:
    trainer: str
    fold: int
    case: str
    key: str            # summary.json key ("1", "(1, 2)") or the evaluation region's name
    name: str           # readable class/region name
    kind: str           # "label" (nnU-Net's own label/region) or "region" (evaluation region)
    tp: float
    fp: float
    fn: float
    tn: float
    snapshot_epoch: Optional[int] = None

    @property
    def dice(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d > 0 else float("nan")

    @property
    def iou(self) -> float:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d > 0 else float("nan")

    @property
    def mcc(self) -> float:
        if self.tp + self.fp + self.fn == 0:  # nothing to find and nothing found: undefined, as nnU-Net's Dice
            return float("nan")
        value = float(mcc_from_counts(self.tp, self.fp, self.fn, self.tn))
        # nothing predicted (or everything): 0/0, scored 0 (no correlation) as is customary, so that a
        # prediction that misses a present class counts against the trainer instead of being dropped
        return value if math.isfinite(value) else 0.0

    def metric(self, name: str) -> float:
        return {"Dice": self.dice, "IoU": self.iou, "MCC": self.mcc}[name]


def case_id(entry: dict, file_ending: str) -> str:
    name = os.path.basename(entry.get("reference_file") or entry.get("prediction_file") or "")
    return name[: -len(file_ending)] if file_ending and name.endswith(file_ending) else name.split(".")[0]


def read_summary(path: str, trainer: str, fold: int, file_ending: str, names: Dict[str, str],
                 snapshot_epoch: Optional[int] = None) -> List[CaseMetrics]:
    """Per-case rows of one fold's ``summary.json``; a clear error if it is not nnU-Net's format."""
    summary = read_json(path, "summary")
    rows = []
    try:
        for entry in summary["metric_per_case"]:
            case = case_id(entry, file_ending)
            for key, m in entry["metrics"].items():
                rows.append(CaseMetrics(trainer, fold, case, key, names.get(key, f"label {key}"), "label",
                                        float(m["TP"]), float(m["FP"]), float(m["FN"]), float(m["TN"]),
                                        snapshot_epoch))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"summary {path} is not an nnU-Net validation summary (metric_per_case with TP/FP/FN/TN per "
                        f"label): {type(e).__name__} {e}") from None
    return rows


def region_rows(validation_folder: str, gt_folder: str, regions: Dict[str, Tuple[int, ...]], trainer: str,
                fold: int, file_ending: str, reader_writer, ignore_label: Optional[int],
                snapshot_epoch: Optional[int] = None) -> List[CaseMetrics]:
    """Evaluation regions (e.g. BraTS whole tumour) from label-mode predictions, with nnU-Net's
    ``compute_metrics`` case by case (in this process: no worker pool to start)."""
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
            rows.append(CaseMetrics(trainer, fold, case, name, name, "region", float(m["TP"]), float(m["FP"]),
                                    float(m["FN"]), float(m["TN"]), snapshot_epoch))
    return rows


# ---- training logs ----------------------------------------------------------------------------
def training_curves(folder: str) -> Optional[Dict[str, List[float]]]:
    """Per-epoch ``mean_fg_dice`` (nnU-Net's EMA-free pseudo Dice) and ``mean_fg_mcc`` from the newest
    checkpoint's logging; None when the fold has no checkpoint."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            break
    else:
        return None
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a broken checkpoint costs its learning curve, not the comparison
        print(f"warning: checkpoint {path} cannot be read ({type(e).__name__}); no learning curve for it",
              file=sys.stderr)
        return None
    logging = checkpoint.get("logging", {})
    epochs = len(logging.get("mean_fg_dice", []))
    return {key: [float(v) for v in logging.get(key, [float("nan")] * epochs)][:epochs]
            for key in ("mean_fg_dice", "mean_fg_mcc", "train_losses", "val_losses")}


def iterations_per_epoch(folder: str) -> Optional[int]:
    """From nnU-Net's ``debug.json`` (the trainer's attributes at start-up)."""
    path = os.path.join(folder, "debug.json")
    try:
        with open(path) as f:
            return int(json.load(f)["num_iterations_per_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class FoldState:
    trainer: str
    fold: int
    status: str
    folder: str
    snapshots: Dict[int, str] = field(default_factory=dict)


def survey(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str, configuration: str,
           folds: Sequence[int]) -> List[FoldState]:
    states = []
    for trainer in trainers:
        for fold in folds:
            folder = fold_folder(results_root, dataset_name, trainer, plans, configuration, fold)
            states.append(FoldState(trainer, fold, fold_status(folder), folder, snapshot_checkpoints(folder)))
    return states

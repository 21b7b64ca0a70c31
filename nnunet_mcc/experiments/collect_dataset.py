"""The dataset a comparison reads: its labels, evaluation regions, references (``gt_segmentations``) and nnU-Net's
image reader for it (``dataset_context``), the label values of a per-case row (``key_values``), one case's image and
masks for a picture (``case_arrays``), and the names of the per-case rows' stages and metrics."""

import ast
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from nnunet_mcc import labels as dataset_labels
from nnunet_mcc import metrics as metric_functions
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.fileio import read_json

METRICS = ("Dice", "IoU", "MCC")                     # from nnU-Net's confusion counts, at every stage
BOUNDARY_METRICS = tuple(metric_functions.BOUNDARY_METRICS)  # from the exported predictions, final validation only
CALIBRATION_METRICS = tuple(metric_functions.CALIBRATION_METRICS)  # from the saved probabilities (--npz), final only
FINAL, SNAPSHOT = "final", "snapshot"


def metric_columns(counts: pd.DataFrame) -> List[str]:
    """The metrics of ``counts``: the overlap scores, then the boundary and calibration metrics that were computed
    somewhere."""
    return list(METRICS) + [m for m in (*BOUNDARY_METRICS, *CALIBRATION_METRICS)
                            if m in counts.columns and counts[m].notna().any()]


def ignore_label(dataset_json: dict):
    """The label value nnU-Net's evaluation leaves out, as the trainers read it (``TargetFormat``)."""
    from nnunet_mcc.losses.targets import TargetFormat

    return TargetFormat.from_dataset_json(dataset_json).ignore_label


def dataset_context(dataset_name: str) -> dict:
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    dataset_json = read_json(os.path.join(preprocessed, "dataset.json"), "dataset.json")
    context = {"file_ending": dataset_json.get("file_ending", ".nii.gz"),
               "names": dataset_labels.summary_key_names(dataset_json),
               "pseudo_dice_names": dataset_labels.pseudo_dice_names(dataset_json),
               "regions": dataset_labels.evaluation_regions(dataset_json),
               "gt_folder": os.path.join(preprocessed, "gt_segmentations"),
               "ignore_label": ignore_label(dataset_json), "reader_writer": None, "dataset_json": dataset_json}
    if context["regions"]:
        context["reader_writer"] = reader_writer(context)
        if context["reader_writer"] is None:
            raise UserError(f"evaluation regions need the reference segmentations in {context['gt_folder']}, which "
                            f"has none")
    return context


def reader_writer(context: dict):
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


def key_values(key: str, kind: str, regions: Dict[str, tuple]) -> Tuple[int, ...]:
    """The label values of a summary key (``"2"``, ``"(1, 2)"``) or an evaluation region."""
    if kind == "region":
        return tuple(regions[key])
    value = ast.literal_eval(key)
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


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
        cache.update(dataset=dataset_name, context=dataset_context(dataset_name))
    context = cache["context"]
    reader = reader_writer(context)
    ending = context["file_ending"]
    reference_path = os.path.join(context["gt_folder"], case + ending)
    if reader is None or not os.path.isfile(reference_path):
        return {"missing": f"no reference segmentation {reference_path}"}
    reference, properties = reader.read_seg(reference_path)
    reference = reference[0]
    values = key_values(key, kind, context["regions"])
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

"""The boundary metrics of a fold's final validation (HD95, NSD), from its exported predictions and the dataset's
references, and what they rest on."""

import os
from importlib import metadata as importlib_metadata
from typing import Dict, List, Tuple

import numpy as np

from nnunet_mcc import metrics as metric_functions
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.collect_dataset import key_values, reader_writer


def boundary_record(tolerance_mm: float) -> dict:
    """What the boundary metrics rest on, for the report and its tables."""
    try:  # the installed version, without importing MONAI (seconds) where --no-boundary needs none of it
        version = importlib_metadata.version("monai")
    except importlib_metadata.PackageNotFoundError:
        version = None
    return {"implementation": f"MONAI {version}" if version else "MONAI (not installed)", "nsd_tolerance_mm":
            float(tolerance_mm), "hd95": metric_functions.METRIC_INFO["HD95"].rests_on,
            "nsd": metric_functions.METRIC_INFO["NSD"].rests_on, "runs_with_predictions": 0, "runs_without": 0}

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
    reader = reader_writer(context)
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
        values = [key_values(r["key"], r["kind"], context["regions"]) for r in own]
        predicted = np.stack([np.isin(prediction, v) & valid for v in values])
        referenced = np.stack([np.isin(reference, v) for v in values])
        scores = metric_functions.boundary_scores(predicted, referenced, spacing, tolerance_mm)
        for i, row in enumerate(own):
            row.update({name: float(value[i]) for name, value in scores.items()})
        scored += 1
    return scored, missing

"""The calibration metrics of a fold's final validation (ECE, Brier score), from the class probabilities nnU-Net's
``--npz`` saves, with the fine reliability bins of the pooled diagram, and what they rest on."""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_mcc import metrics as metric_functions
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.collect_dataset import key_values, reader_writer


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
    reader = reader_writer(context)
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
                values = key_values(row["key"], row["kind"], context["regions"])
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

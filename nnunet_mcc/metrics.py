"""Segmentation metrics, each in one place: hard scores from confusion counts (numpy only) and boundary metrics
from masks and the image spacing (MONAI, imported only when a boundary metric is computed)."""

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import numpy as np


def mcc_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """Hard MCC per class from counts (float64: the products overflow int64); NaN where the formula is 0/0."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), np.nan)


def mcc_score(tp, fp, fn, tn) -> np.ndarray:
    """MCC as a score of a prediction: :func:`mcc_from_counts` with the 0/0 cases decided.

    * nothing to find and nothing found (TP + FP + FN = 0): NaN, undefined as nnU-Net's Dice;
    * otherwise a 0/0 (a present class never predicted, an absent class predicted, everything
      predicted): 0, no correlation, so that a collapse counts against the prediction instead of
      dropping out of averages.
    """
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    mcc = mcc_from_counts(tp, fp, fn, tn)
    return np.where(tp + fp + fn == 0, np.nan, np.where(np.isfinite(mcc), mcc, 0.0))


# ---- boundary metrics: from masks and the image spacing (MONAI, imported when first used) ------------------
# Every metric compare reports, with its unit, its direction and what it rests on: tables, paired tests, seed
# averaging and the rank bootstrap read these by name.
@dataclass(frozen=True)
class MetricInfo:
    unit: str                  # "" for a ratio
    higher_is_better: bool
    rests_on: str              # where the number comes from


METRIC_INFO: Dict[str, MetricInfo] = {
    "Dice": MetricInfo("", True, "nnU-Net's confusion counts"),
    "IoU": MetricInfo("", True, "nnU-Net's confusion counts"),
    "MCC": MetricInfo("", True, "nnU-Net's confusion counts"),
    "HD95": MetricInfo("mm", False, "MONAI compute_hausdorff_distance (percentile 95, image spacing)"),
    "NSD": MetricInfo("", True, "MONAI compute_surface_dice (tolerance in mm, image spacing)"),
}
DEFAULT_NSD_TOLERANCE_MM = 1.0
MONAI_MISSING = ("boundary metrics (HD95, NSD) need MONAI, which is not installed: pip install monai "
                 "(or this package's 'boundary' extra)")


def higher_is_better(metric: str) -> bool:
    """The direction of a metric (unknown names: higher is better, as for every overlap score)."""
    info = METRIC_INFO.get(metric)
    return info.higher_is_better if info else True


def metric_heading(metric: str) -> str:
    """A metric's name with its unit and, for a lower-is-better one, its direction: ``HD95 (mm, lower is better)``."""
    info = METRIC_INFO.get(metric)
    parts = ([info.unit] if info and info.unit else []) + ([] if higher_is_better(metric) else ["lower is better"])
    return f"{metric} ({', '.join(parts)})" if parts else metric


def monai_available() -> bool:
    try:
        import monai.metrics  # noqa: F401
    except ImportError:
        return False
    return True


def _masks(prediction, reference, spacing) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, *spatial) boolean masks and the spacing (mm) of their spatial axes, axes of size 1 dropped (nnU-Net
    reads a 2D image as one slice of spacing 999)."""
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    spacing = np.asarray(spacing, dtype=np.float64)
    if prediction.shape != reference.shape or prediction.ndim != spacing.size + 1:
        raise ValueError(f"masks {prediction.shape} and {reference.shape} must both be (classes, *spatial) with "
                         f"one spacing per spatial axis ({spacing.size} given)")
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
    keep = [i for i, n in enumerate(prediction.shape[1:]) if n > 1]
    shape = (prediction.shape[0], *(prediction.shape[1 + i] for i in keep))
    return prediction.reshape(shape), reference.reshape(shape), spacing[keep]


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The largest distance between two voxel centres of an image: the worst boundary distance there can be."""
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * np.asarray(spacing, dtype=np.float64)) ** 2)))


def _boundary(prediction, reference, spacing, both_present, one_missing: Callable[[tuple, np.ndarray], float]):
    """Per class (first axis): NaN when reference and prediction are both empty, ``one_missing(spatial shape,
    spacing)`` when exactly one of them is, else ``both_present`` of the (1, C', *spatial) masks of the classes
    present in both."""
    prediction, reference, spacing = _masks(prediction, reference, spacing)
    in_prediction = prediction.reshape(len(prediction), -1).any(axis=1)
    in_reference = reference.reshape(len(reference), -1).any(axis=1)
    out = np.full(len(prediction), np.nan)
    out[in_prediction != in_reference] = one_missing(prediction.shape[1:], spacing)
    both = in_prediction & in_reference
    if both.any():
        try:
            import torch
            from monai import metrics as monai_metrics
        except ImportError:
            raise ImportError(MONAI_MISSING) from None
        with warnings.catch_warnings():  # MONAI's own deprecation notices, of no use to a reader of a report
            warnings.simplefilter("ignore", FutureWarning)
            values = both_present(monai_metrics, torch.from_numpy(prediction[both][None]),
                                  torch.from_numpy(reference[both][None]), spacing.tolist())
        out[both] = np.asarray(values, dtype=np.float64).reshape(-1)
    return out


def hd95(prediction, reference, spacing) -> np.ndarray:
    """95th-percentile Hausdorff distance (mm) per class of (C, *spatial) masks: the larger of the two directed
    95th percentiles of the distances between the boundary voxels, in the image spacing (MONAI's
    ``compute_hausdorff_distance``, percentile 95). Empty cases (as Metrics Reloaded discusses them): NaN when
    the class is in neither mask (left out of means); the image diagonal in mm, the worst distance possible,
    when it is in only one of them (a missed or invented structure counts as the worst boundary)."""
    def both_present(monai_metrics, p, r, spacing):
        return monai_metrics.compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                        spacing=spacing)

    return _boundary(prediction, reference, spacing, both_present, image_diagonal_mm)


def nsd(prediction, reference, spacing, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> np.ndarray:
    """Normalised surface Dice per class of (C, *spatial) masks (Nikolov et al. 2021): the share of both
    boundaries that lies within ``tolerance_mm`` of the other, in the image spacing (MONAI's
    ``compute_surface_dice``). NaN when the class is in neither mask (left out of means); 0 when it is in only
    one of them (no boundary of the one lies near the other)."""
    tolerance_mm = float(tolerance_mm)
    if not (np.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise ValueError(f"the NSD tolerance must be a positive number of mm, got {tolerance_mm}")

    def both_present(monai_metrics, p, r, spacing):
        return monai_metrics.compute_surface_dice(p, r, class_thresholds=[tolerance_mm] * p.shape[1],
                                                  include_background=True, spacing=spacing)

    return _boundary(prediction, reference, spacing, both_present, lambda shape, spacing: 0.0)


BOUNDARY_METRICS: Dict[str, Callable[..., np.ndarray]] = {
    "HD95": lambda p, r, spacing, tolerance_mm: hd95(p, r, spacing),
    "NSD": nsd,
}


def boundary_scores(prediction, reference, spacing,
                    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[str, np.ndarray]:
    """Every boundary metric per class of (C, *spatial) masks: name -> (C,) array."""
    return {name: f(prediction, reference, spacing, tolerance_mm) for name, f in BOUNDARY_METRICS.items()}

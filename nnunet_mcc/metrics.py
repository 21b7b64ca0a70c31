"""Segmentation metrics, each in one place: hard scores from confusion counts (numpy only), boundary metrics
from masks and the image spacing (MONAI, imported only when a boundary metric is computed) and calibration
metrics from class probabilities (numpy only)."""

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

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
    "ECE": MetricInfo("", False, "the class probabilities nnU-Net's final validation saves (--npz), one-vs-rest, "
                                 "equal-mass bins, on the calibration population"),
    "Brier": MetricInfo("", False, "the class probabilities nnU-Net's final validation saves (--npz), one-vs-rest, "
                                   "on the calibration population"),
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


# ---- calibration: from the class probabilities of the final validation (nnU-Net's --npz), numpy only -----------
CALIBRATION_METRICS = ("ECE", "Brier")
DEFAULT_CALIBRATION_BINS = 15
RELIABILITY_RESOLUTION = 1000  # fine probability bins kept per case for the pooled reliability diagram
CALIBRATION_POPULATION = ("every voxel that is the class in the reference or in the prediction, plus a seeded uniform "
                          "sample of the other voxels of the same size as that set (all of them if fewer); voxels of "
                          "the ignore label left out; every voxel of the population weighs the same")


def calibration_population(reference, predicted, valid=None, seed=0) -> np.ndarray:
    """Flat indices of the voxels a class's calibration is measured on: every voxel that is the class in the
    ``reference`` or in the ``predicted`` mask (foreground), then a uniform sample without replacement
    (``numpy.random.default_rng(seed)``) of the other voxels, as many as the foreground ones (all of them if
    fewer); voxels outside ``valid`` (the ignore label) are never in it. Empty when the class is in neither
    mask: its calibration is then undefined (NaN), as its Dice is."""
    reference = np.asarray(reference, dtype=bool).ravel()
    predicted = np.asarray(predicted, dtype=bool).ravel()
    if reference.shape != predicted.shape:
        raise ValueError(f"reference ({reference.size} voxels) and prediction ({predicted.size}) differ in size")
    valid = np.ones_like(reference) if valid is None else np.broadcast_to(np.asarray(valid, dtype=bool),
                                                                         reference.shape).ravel()
    foreground = (reference | predicted) & valid
    inside = np.flatnonzero(foreground)
    rest = np.flatnonzero(valid & ~foreground)
    if rest.size > inside.size:
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=inside.size, replace=False))
    return np.concatenate([inside, rest])


def _probabilities_and_outcomes(probability, outcome) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probability, dtype=np.float64).ravel()
    y = np.asarray(outcome, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities for {y.size} outcomes")
    if p.size and not (np.all(np.isfinite(p)) and p.min() >= -1e-6 and p.max() <= 1 + 1e-6):
        raise ValueError(f"probabilities must lie in [0, 1], got values from {np.nanmin(p):g} to {np.nanmax(p):g}")
    return np.clip(p, 0.0, 1.0), y


def equal_mass_bins(probability, n_bins: int = DEFAULT_CALIBRATION_BINS) -> np.ndarray:
    """The bin (0, 1, ... in increasing probability) of every probability, for ``n_bins`` bins of (nearly) equal
    count: the bins are cut at the values found at positions round(k N / n_bins), k = 1 .. n_bins - 1, of the sorted
    probabilities, and a cut value opens its bin. Equal probabilities always share a bin (a bin cut through a tie
    would make the ECE depend on the order of the tied voxels), so there are fewer bins when many are tied (one when
    all are equal); no bin is empty."""
    if int(n_bins) < 1:
        raise ValueError(f"the number of bins must be at least 1, got {n_bins}")
    p = np.asarray(probability, dtype=np.float64).ravel()
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    ordered = np.sort(p)
    cuts = np.round(np.arange(1, int(n_bins)) * p.size / int(n_bins)).astype(np.int64)
    edges = np.unique(ordered[np.clip(cuts, 0, p.size - 1)])
    edges = edges[edges > ordered[0]]
    return np.searchsorted(edges, p, side="right")


def reliability_bins(probability, outcome, n_bins: int = DEFAULT_CALIBRATION_BINS
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-mass bin (``equal_mass_bins``): the mean probability, the observed frequency (mean outcome) and the
    number of voxels; empty arrays for an empty population."""
    p, y = _probabilities_and_outcomes(probability, outcome)
    bins = equal_mass_bins(p, n_bins)
    count = np.bincount(bins).astype(np.float64) if p.size else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.bincount(bins, p) / count if p.size else np.zeros(0),
                np.bincount(bins, y) / count if p.size else np.zeros(0), count)


def expected_calibration_error(probability, outcome, n_bins: int = DEFAULT_CALIBRATION_BINS) -> float:
    """Expected calibration error of a probability against a 0/1 ``outcome`` (one-vs-rest: the probability of the
    class against "the reference voxel is the class"): sum over equal-mass bins (``equal_mass_bins``) of
    n_b / N |mean probability_b - observed frequency_b|, every voxel weighing the same. 0 for a calibrated
    prediction (in each bin the class occurs as often as predicted); 0.4 for a probability of 0.9 that is right
    half of the time; at most 1. NaN for an empty population (nothing to measure)."""
    mean_p, frequency, count = reliability_bins(probability, outcome, n_bins)
    if not count.size:
        return float("nan")
    return float(np.sum(count * np.abs(mean_p - frequency)) / count.sum())


def brier_score(probability, outcome) -> float:
    """Brier score: the mean squared difference between the probability and the 0/1 outcome, every voxel weighing
    the same. 0 for a one-hot prediction that is right everywhere, 1 for one that is wrong everywhere, 0.25 for a
    probability of 0.5 everywhere. NaN for an empty population."""
    p, y = _probabilities_and_outcomes(probability, outcome)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def reliability_histogram(probability, outcome, resolution: int = RELIABILITY_RESOLUTION
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum of probabilities, sum of outcomes) in ``resolution`` equal-width probability bins: what a case
    adds to a reliability diagram pooled over cases (``reliability_curve``) without keeping every voxel."""
    p, y = _probabilities_and_outcomes(probability, outcome)
    index = np.minimum((p * resolution).astype(np.int64), resolution - 1)
    return (np.bincount(index, minlength=resolution).astype(np.float64),
            np.bincount(index, p, minlength=resolution), np.bincount(index, y, minlength=resolution))


def reliability_curve(count, sum_probability, sum_outcome, n_bins: int = DEFAULT_CALIBRATION_BINS
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pooled reliability diagram from summed ``reliability_histogram``s: the fine bins grouped into ``n_bins``
    bins of nearly equal count (a fine bin goes whole to the bin its first voxel falls in, so the bins are
    equal-mass to the fine resolution), and per bin the mean probability, the observed frequency and the count."""
    count, sum_probability, sum_outcome = (np.asarray(v, dtype=np.float64) for v in (count, sum_probability,
                                                                                     sum_outcome))
    used = count > 0
    if not used.any():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    count, sum_probability, sum_outcome = count[used], sum_probability[used], sum_outcome[used]
    start = np.cumsum(count) - count
    group = np.floor(start * int(n_bins) / count.sum()).astype(np.int64)
    _, group = np.unique(group, return_inverse=True)
    total = np.bincount(group, count)
    return np.bincount(group, sum_probability) / total, np.bincount(group, sum_outcome) / total, total


def calibration_samples(probabilities, references, predictions, valid=None, seed=0
                        ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per class (first axis of the (C, *spatial) arrays): the class probability and the 0/1 outcome (reference is
    the class) on its ``calibration_population``, drawn with the seed (``seed``, class index)."""
    probabilities = np.asarray(probabilities)
    references, predictions = np.asarray(references, dtype=bool), np.asarray(predictions, dtype=bool)
    if not (probabilities.shape == references.shape == predictions.shape):
        raise ValueError(f"probabilities {probabilities.shape}, references {references.shape} and predictions "
                         f"{predictions.shape} must all be (classes, *spatial)")
    out = []
    for c in range(len(probabilities)):
        index = calibration_population(references[c], predictions[c], valid, seed=(int(seed), c))
        out.append((probabilities[c].reshape(-1)[index], references[c].reshape(-1)[index]))
    return out


def calibration_scores(probabilities, references, predictions, valid=None, n_bins: int = DEFAULT_CALIBRATION_BINS,
                       seed=0) -> Dict[str, np.ndarray]:
    """ECE and Brier score per class of (C, *spatial) probabilities, reference and prediction masks, each on the
    class's ``calibration_population`` (NaN where the class is in neither mask): name -> (C,) array."""
    samples = calibration_samples(probabilities, references, predictions, valid, seed)
    return {"ECE": np.array([expected_calibration_error(p, y, n_bins) for p, y in samples], dtype=np.float64),
            "Brier": np.array([brier_score(p, y) for p, y in samples], dtype=np.float64)}

"""Hard segmentation metrics from confusion counts (import-light: numpy only)."""

import numpy as np


def mcc_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """Hard MCC per class from counts (float64: the products overflow int64); NaN where undefined."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), np.nan)

"""Hard segmentation metrics from confusion counts (import-light: numpy only)."""

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

"""Had a run stopped improving when its training ended? A stated, robust criterion on its logged curves.

The series judged are the ones every epoch of nnU-Net's training logs from its validation batches:
the pseudo Dice (``mean_fg_dice``, the raw value behind nnU-Net's EMA) and, for this package's
trainers, the pseudo MCC (``mean_fg_mcc``). nnU-Net's EMA (0.9/0.1 per epoch) lags the raw series by
about ten epochs, so a short run's EMA is still rising long after the network has stopped improving;
the raw series is noisy instead. The criterion therefore fits a robust trend to the raw series:

* **window**: the last quarter of the logged epochs (at least 5 epochs);
* **trend**: the Theil-Sen slope (median of the pairwise slopes, insensitive to a few outlying
  epochs) of each series over that window, in score per training iteration;
* **projected gain**: slope x the window's length in iterations, i.e. what training on for another
  quarter of the run would add at the current trend;
* **converged** when the projected gain of every judged series is below 0.02 (two points of Dice or
  MCC). A run with fewer than 10 logged epochs is too short to judge and counts as not converged.

A falling curve (projected gain below zero) has stopped improving too and counts as converged. Like any
plateau test, it cannot tell a plateau that lasts from one a later jump ends (a rare class learned late).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

WINDOW_FRACTION = 0.25
MIN_WINDOW_EPOCHS = 5
MIN_EPOCHS = 10
TOLERANCE = 0.02
SERIES = {"mean_fg_dice": "pseudo Dice", "mean_fg_mcc": "pseudo MCC"}

CRITERION = (f"converged = over the last {WINDOW_FRACTION:.0%} of the logged epochs (at least {MIN_WINDOW_EPOCHS}), "
             f"the Theil-Sen trend of the per-epoch validation pseudo Dice and pseudo MCC projects a gain below "
             f"{TOLERANCE} over another such stretch; runs with fewer than {MIN_EPOCHS} logged epochs are too short "
             f"to judge")

YES, NO, TOO_SHORT, NO_LOG = "yes", "no", "too short", "no log"


@dataclass
class Verdict:
    status: str                           # YES, NO, TOO_SHORT or NO_LOG
    epochs: int = 0                       # logged epochs
    window_epochs: int = 0
    gains: Dict[str, float] = field(default_factory=dict)   # series name -> projected gain

    @property
    def converged(self) -> bool:
        return self.status == YES

    def describe(self) -> str:
        if self.status == NO_LOG:
            return "no training log"
        if self.status == TOO_SHORT:
            return f"too short to judge ({self.epochs} epochs logged, needs {MIN_EPOCHS})"
        gains = ", ".join(f"{SERIES.get(k, k)} {v:+.3f}" for k, v in self.gains.items())
        return f"{self.status} (projected gain over the last {self.window_epochs} epochs: {gains})"


def _finite_series(values: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    if values is None:
        return None
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return array if np.isfinite(array).any() else None


def judge(series: Optional[Dict[str, Sequence[float]]], iterations_per_epoch: Optional[int] = None) -> Verdict:
    """Verdict for one run from its per-epoch series (``mean_fg_dice``, optionally ``mean_fg_mcc``)."""
    if not series:
        return Verdict(NO_LOG)
    judged = {name: _finite_series(series.get(name)) for name in SERIES}
    judged = {name: values for name, values in judged.items() if values is not None}
    if not judged:
        return Verdict(NO_LOG)
    epochs = max(len(v) for v in judged.values())
    if epochs < MIN_EPOCHS:
        return Verdict(TOO_SHORT, epochs=epochs)
    window = max(MIN_WINDOW_EPOCHS, int(math.ceil(WINDOW_FRACTION * epochs)))
    step = float(iterations_per_epoch or 1)
    gains = {name: projected_gain(values[-window:], step) for name, values in judged.items()}
    gains = {name: g for name, g in gains.items() if math.isfinite(g)}
    if not gains:  # fewer than 3 finite values in the window
        return Verdict(TOO_SHORT, epochs=epochs)
    status = YES if all(g < TOLERANCE for g in gains.values()) else NO
    return Verdict(status, epochs=epochs, window_epochs=window, gains=gains)


def projected_gain(window: np.ndarray, iterations_per_epoch: float = 1.0) -> float:
    """Theil-Sen slope of ``window`` (one value per epoch, NaN skipped) times its length."""
    from scipy.stats import theilslopes

    x = np.arange(len(window), dtype=float) * iterations_per_epoch
    keep = np.isfinite(window)
    if keep.sum() < 3:
        return float("nan")
    slope = theilslopes(window[keep], x[keep]).slope
    return float(slope * len(window) * iterations_per_epoch)

"""Had a run stopped improving when its training ended? A stated, robust criterion on its logged curves.

The series judged are the ones every epoch of nnU-Net's training logs from its validation batches:
the pseudo Dice (``mean_fg_dice``, the raw value behind nnU-Net's EMA) and, for this package's
trainers, the pseudo MCC (``mean_fg_mcc``). nnU-Net's EMA (0.9/0.1 per epoch) lags the raw series by
about ten epochs, so a short run's EMA is still rising long after the network has stopped improving;
the raw series is noisy instead (a few validation batches per epoch). The criterion therefore tests
for a trend in the raw series over a long window:

* **window**: the last half of the logged epochs (at least 5 epochs). A quarter (8 of 30 epochs) was
  too short: with a per-epoch noise of 0.02 its slope estimate could neither tell a slow, steady climb
  (0.02 per 100 iterations, as SegAN's in the demo) from a plateau nor keep a noisy plateau converged;
* **trend**: the Theil-Sen slope (median of the pairwise slopes, insensitive to a few outlying
  epochs) of each series over that window, in score per training iteration;
* **significance**: the Mann-Kendall test (Kendall's tau between iteration and score, one-sided,
  scipy), i.e. whether clearly more pairwise slopes are positive than negative;
* **projected gain of a doubled schedule**: the Theil-Sen slope of the score against the logarithm of the
  iterations over the window, times log 2: what a run with twice the iterations would add if the learning curve
  goes on linearly in log iterations, as learning curves roughly do. It answers what a longer budget would change
  (nnU-Net's poly learning rate is near zero at the end of any run, so "training on" means a new, longer schedule,
  as ``crossval --auto-budget`` trains it). It replaced the linear projection (slope against iterations x the
  window's length) after ``benchmarks/judge_calibration.py`` checked both against runs trained at twice the budget
  (rare-class dataset, Dice + CE and MCC, 3 seeds x 3 folds): of the 7 runs that gained at least 0.02 at 2B, the
  linear projection called one converged (+0.022 at 2B), the log fit none, both with one false alarm among the 11
  others (docs/experiments.md). On the demo's dataset (its four trainers and GWDL alone, 75 runs) it called 13 of
  the 39 runs that gained 0.02 or more converged, most of them flat curves that a longer schedule's longer annealing
  still lifted, and 2 of the 36 others rising; the rules that missed fewer raised false alarms on half of the runs
  or more (``CALIBRATION`` below, which the report quotes);
* **not converged** when, for some judged series, the rise is significant (p < 0.05) *and* its
  projected gain is at least 0.02 (two points of Dice or MCC); converged otherwise. A run with fewer
  than 10 logged epochs is too short to judge and counts as not converged;
* **a class at zero**: also not converged when some class's (or region's) per-epoch pseudo Dice
  (nnU-Net's ``dice_per_class_or_region``) stayed below 0.05 over the whole window (at least 3 epochs
  with a value): "never learned" when it was never above that, "lost" when it was earlier. A flat curve
  with a class at zero is not convergence: on a rare-class dataset, Dice + CE runs that had never learned
  two small classes had flat curves (projected gains +0.001 to +0.003), and one of them, retrained with
  twice the iterations, found both (Dice 0.82 and 0.51). The foreground mean hides such a class: its
  curve is flat at the level of the classes that were learned.

What this buys and costs, measured on synthetic curves of 30 epochs x 20 iterations with a per-epoch
noise of std 0.02 (``tests/test_convergence.py``): a steady climb of 0.02 per 100 iterations is called
unconverged in ~91 % of noise draws, a flat plateau converged in ~96 %. The climb's projected gain
(0.06) is only ~3.3 standard errors from a plateau's (0), so no rule on one such curve separates them
every time; longer runs or quieter validation (more validation iterations) do.

A falling curve has stopped improving and counts as converged. Like any plateau test, it cannot tell a
plateau that lasts from one a later jump ends (a rare class learned late), except where that class is
still at zero, which the class rule above catches.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

WINDOW_FRACTION = 0.5
MIN_WINDOW_EPOCHS = 5
MIN_EPOCHS = 10
TOLERANCE = 0.02
ALPHA = 0.05
COLLAPSE_THRESHOLD = 1e-3
# a class whose per-epoch pseudo Dice stays below CLASS_FLOOR over the whole window (with at least CLASS_MIN_EPOCHS
# epochs that have a value: the class absent from an epoch's validation batches gives none) is not learned
CLASS_FLOOR = 0.05
CLASS_MIN_EPOCHS = 3
SERIES = {"mean_fg_dice": "pseudo Dice", "mean_fg_mcc": "pseudo MCC"}
NEVER_LEARNED, LOST = "never learned", "lost"

CRITERION = (f"not converged = over the last {WINDOW_FRACTION:.0%} of the logged epochs "
             f"(at least {MIN_WINDOW_EPOCHS}), "
             f"the per-epoch validation pseudo Dice or pseudo MCC still rises significantly (one-sided Mann-Kendall "
             f"test, p < {ALPHA}) and its Theil-Sen slope against log(iterations) projects a gain of at least "
             f"{TOLERANCE} for a schedule twice as long, or some class's per-epoch pseudo Dice stays below "
             f"{CLASS_FLOOR} over that whole window "
             f"(never learned or lost: a flat curve with a class at zero is not convergence); converged otherwise; "
             f"runs with fewer than {MIN_EPOCHS} logged epochs are too short to judge")

# what the judge's calls were worth against the same runs trained at twice the budget (a new schedule, same seeds
# and splits; benchmarks/judge_calibration.py, docs/experiments.md "Is the judge right?"): the gain in foreground-mean
# Dice of nnU-Net's final validation, median over the runs of each call, on two synthetic 2D datasets
CALIBRATION = ("checked against the same runs trained at twice the budget on two synthetic 2D datasets (93 runs, "
               "docs/experiments.md): runs it called still rising gained a median of +0.040 and +0.112 in foreground "
               "Dice there, runs it called converged +0.016 and -0.001, so a converged curve is not proof that a "
               "longer schedule adds nothing; of the 46 runs that gained 0.02 or more it called 13 converged "
               "(+0.020 to +0.040), of the 47 others it called 3 rising")

YES, NO, TOO_SHORT, NO_LOG = "yes", "no", "too short", "no log"


@dataclass
class Verdict:
    status: str                           # YES, NO, TOO_SHORT or NO_LOG
    epochs: int = 0                       # logged epochs
    window_epochs: int = 0
    gains: Dict[str, float] = field(default_factory=dict)   # series name -> projected gain
    p_values: Dict[str, float] = field(default_factory=dict)  # series name -> one-sided Mann-Kendall p
    rising: List[str] = field(default_factory=list)           # the series still rising (significant, >= TOLERANCE)
    at_zero: Dict[str, str] = field(default_factory=dict)     # class -> NEVER_LEARNED or LOST over the window

    @property
    def converged(self) -> bool:
        return self.status == YES

    def describe(self) -> str:
        if self.status == NO_LOG:
            return "no training log"
        if self.status == TOO_SHORT:
            return f"too short to judge ({self.epochs} epochs logged, needs {MIN_EPOCHS})"
        gains = "; ".join(f"{SERIES.get(k, k)} projected gain {v:+.3f}"
                          + (f", rise p {self.p_values[k]:.2g}" if math.isfinite(self.p_values.get(k, math.nan))
                             else "")
                          for k, v in self.gains.items())
        text = f"{self.status} (last {self.window_epochs} epochs: {gains})"
        if self.at_zero:
            classes = ", ".join(f"{name} {how}" for name, how in self.at_zero.items())
            text += (f"; {classes}: per-epoch pseudo Dice below {CLASS_FLOOR} over the whole window, and a flat "
                     f"curve with a class at zero is not convergence")
        return text


def _finite_series(values: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    if values is None:
        return None
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return array if np.isfinite(array).any() else None


def judge(series: Optional[Dict[str, Sequence[float]]], iterations_per_epoch: Optional[int] = None,
          per_class: Optional[Sequence[Sequence[Optional[float]]]] = None,
          class_names: Optional[Sequence[str]] = None) -> Verdict:
    """Verdict for one run from its per-epoch series (``mean_fg_dice``, optionally ``mean_fg_mcc``) and, when
    given, its per-epoch pseudo Dice per class (``per_class``: one list per epoch, nnU-Net's
    ``dice_per_class_or_region``; ``class_names`` in that order, else "class 1", "class 2", ...)."""
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
    gains = {name: doubling_gain(values[:epochs][-window:], len(values[:epochs]), step)
             for name, values in judged.items()}
    gains = {name: g for name, g in gains.items() if math.isfinite(g)}
    if not gains:  # fewer than 3 finite values in the window
        return Verdict(TOO_SHORT, epochs=epochs)
    p_values = {name: rise_p_value(judged[name][-window:]) for name in gains}
    rising = [name for name, g in gains.items() if g >= TOLERANCE and p_values[name] < ALPHA]
    at_zero = classes_at_zero(per_class, window, epochs, class_names)
    return Verdict(NO if rising or at_zero else YES, epochs=epochs, window_epochs=window, gains=gains,
                   p_values=p_values, rising=rising, at_zero=at_zero)


def classes_at_zero(per_class: Optional[Sequence[Sequence[Optional[float]]]], window: int, epochs: int,
                    class_names: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """The classes whose per-epoch pseudo Dice stayed below ``CLASS_FLOOR`` over the last ``window`` of ``epochs``
    (the judged series' epochs): class -> ``NEVER_LEARNED`` (never above it) or ``LOST`` (above it before the
    window). A class needs ``CLASS_MIN_EPOCHS`` epochs with a value in the window; other epochs are skipped."""
    if not per_class:
        return {}
    rows = [list(e) if isinstance(e, (list, tuple)) else [e] for e in list(per_class)[:epochs]]
    width = max(len(r) for r in rows)
    values = np.asarray([[np.nan if i >= len(r) or r[i] is None else float(r[i]) for i in range(width)]
                         for r in rows], dtype=float)
    found = {}
    for index in range(width):
        column = values[:, index]
        tail = column[-window:]
        tail = tail[np.isfinite(tail)]
        if tail.size < CLASS_MIN_EPOCHS or tail.max() >= CLASS_FLOOR:
            continue
        before = column[:-window]
        learned = bool((before[np.isfinite(before)] >= CLASS_FLOOR).any()) if len(before) else False
        name = class_names[index] if class_names and index < len(class_names) else f"class {index + 1}"
        found[name] = LOST if learned else NEVER_LEARNED
    return found


def rise_p_value(window: np.ndarray) -> float:
    """One-sided Mann-Kendall p-value for a rising trend (Kendall's tau of score against epoch, scipy)."""
    import warnings

    from scipy.stats import kendalltau

    keep = np.isfinite(window)
    if keep.sum() < 3:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant window: tau undefined
        p = kendalltau(np.arange(len(window))[keep], window[keep], alternative="greater").pvalue
    return float(p) if np.isfinite(p) else 1.0


def collapse_epoch(values: Sequence[Optional[float]], threshold: float = COLLAPSE_THRESHOLD):
    """When a class's per-epoch pseudo Dice went to 0 for good: ``("never learned", None)`` when it never rose
    above ``threshold``, ``("collapsed", e)`` when epoch e (1-based) was the last above it and every later
    logged epoch stayed at or below it, ``("not at the end", None)`` when the last logged epochs are still
    above it (or nothing was logged). Epochs without a value (NaN: the class not in the validation batches)
    are skipped."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    logged = np.flatnonzero(np.isfinite(array))
    if logged.size == 0:
        return "no per-class curve", None
    above = logged[array[logged] > threshold]
    if above.size == 0:
        return "never learned", None
    last = int(above[-1])
    if last == int(logged[-1]):
        return "not at the end", None
    return "collapsed", last + 1


def doubling_gain(window: np.ndarray, end_epoch: int, iterations_per_epoch: float = 1.0) -> float:
    """What doubling the schedule would add: the Theil-Sen slope of ``window`` (one value per epoch, the last
    ``len(window)`` of ``end_epoch`` epochs, NaN skipped) against log(iterations at the end of each epoch), times
    log 2. NaN with fewer than 3 finite values."""
    from scipy.stats import theilslopes

    window = np.asarray(window, dtype=float)
    epochs = np.arange(end_epoch - len(window) + 1, end_epoch + 1, dtype=float)
    x = np.log(epochs * float(iterations_per_epoch or 1))
    keep = np.isfinite(window)
    if keep.sum() < 3:
        return float("nan")
    return float(theilslopes(window[keep], x[keep]).slope * math.log(2))


def projected_gain(window: np.ndarray, iterations_per_epoch: float = 1.0) -> float:
    """The former rule's projection (kept for the calibration benchmark and the record): Theil-Sen slope of
    ``window`` (one value per epoch, NaN skipped) against iterations times the window's length."""
    from scipy.stats import theilslopes

    x = np.arange(len(window), dtype=float) * iterations_per_epoch
    keep = np.isfinite(window)
    if keep.sum() < 3:
        return float("nan")
    slope = theilslopes(window[keep], x[keep]).slope
    return float(slope * len(window) * iterations_per_epoch)

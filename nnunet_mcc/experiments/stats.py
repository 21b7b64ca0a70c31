"""Statistics for loss comparisons: paired Wilcoxon signed-rank tests, Holm correction, bootstrap ranks.

* Paired test: scipy's two-sided Wilcoxon signed-rank test on per-case scores of two trainers over the
  same cases (cases where either score is undefined are dropped from that pair).
* Holm (1979) step-down correction (statsmodels): sort the m p-values ascending,
  p_(i) -> max_{j<=i} min(1, (m-j+1) p_(j)).
* Rank stability as in nnU-Net's paper and challengeR (Wiesenfarth et al. 2021): draw the cases with
  replacement, rank the trainers by their mean score on each bootstrap sample, report how often each
  trainer takes each rank. With several training seeds per trainer (``bootstrap_ranks_over_seeds``) each
  sample also draws every trainer's seeds with replacement, so the ranks carry training noise too.
* Training noise: a difference is "above training noise" when it exceeds twice its standard error from
  the seed spread, 2 * sqrt(s_A^2 / n_A + s_B^2 / n_B) (``noise_threshold``).
"""

import warnings
from typing import Dict, List, Sequence

import numpy as np


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of ``x - y``; NaN pairs dropped.

    Returns n (pairs used), the median difference and p (NaN with fewer than 2 pairs; 1.0 when every
    difference is 0: no evidence of a difference).
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(keep.sum())
    result = {"n": n, "median_difference": float(np.median(x - y)) if n else float("nan"), "p": float("nan")}
    if n < 2:
        return result
    if np.all(x == y):
        result["p"] = 1.0
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small samples and ties; the p-value stays valid
        result["p"] = float(wilcoxon(x, y, alternative="two-sided").pvalue)
    return result


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values (statsmodels' ``multipletests``) in the input order; NaN entries stay NaN and do
    not count in the number of comparisons."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.isfinite(p)
    if valid.any():
        adjusted[valid] = multipletests(p[valid], method="holm")[1]
    return adjusted.tolist()


def ranks_by_mean(scores: np.ndarray) -> np.ndarray:
    """Rank (1 = best, highest mean) of each column of ``scores`` (cases x trainers); ties share the best rank."""
    from scipy.stats import rankdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a trainer without any defined score ranks last
        means = np.nanmean(scores, axis=0)
    means = np.where(np.isfinite(means), means, -np.inf)
    return rankdata(-means, method="min").astype(int)


def _rank_distribution(full: np.ndarray, draw, n_samples: int) -> Dict[str, np.ndarray]:
    """What ``bootstrap_ranks`` returns, from the full ranking and ``draw()``, one bootstrap sample of the
    scores (cases x trainers) per call."""
    from scipy.stats import kendalltau

    n_trainers = len(full)
    frequency = np.zeros((n_trainers, n_trainers))
    taus = []
    rank_sum = np.zeros(n_trainers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns in a sample, constant rankings in kendalltau
        for _ in range(n_samples):
            ranks = ranks_by_mean(draw())
            frequency[np.arange(n_trainers), ranks - 1] += 1
            rank_sum += ranks
            if n_trainers > 1:
                tau = kendalltau(full, ranks).statistic
                taus.append(1.0 if not np.isfinite(tau) and np.array_equal(full, ranks) else tau)
    return {"full_rank": full, "frequency": frequency / n_samples, "mean_rank": rank_sum / n_samples,
            "kendall_tau": float(np.nanmedian(taus)) if taus else 1.0}


def bootstrap_ranks(scores: np.ndarray, n_samples: int = 1000, seed: int = 0) -> Dict[str, np.ndarray]:
    """Bootstrap rank distribution of trainers (columns) over cases (rows).

    Returns ``full_rank`` (rank on all cases), ``frequency`` (trainers x ranks: share of bootstrap samples in
    which the trainer took rank r+1), ``mean_rank`` and ``kendall_tau`` (median Kendall's tau between the
    bootstrap ranking and the full ranking: 1 = perfectly stable).
    """
    scores = np.asarray(scores, dtype=float)
    n_cases, n_trainers = scores.shape
    if n_cases == 0 or n_trainers == 0:
        raise ValueError("bootstrap ranks need at least one case and one trainer")
    rng = np.random.default_rng(seed)
    return _rank_distribution(ranks_by_mean(scores), lambda: scores[rng.integers(0, n_cases, n_cases)], n_samples)


def bootstrap_ranks_over_seeds(runs: Sequence[np.ndarray], n_samples: int = 1000,
                               seed: int = 0) -> Dict[str, np.ndarray]:
    """``bootstrap_ranks`` for trainers trained with several seeds: ``runs[t]`` is seeds x cases (the same cases,
    in the same order, for every trainer). Each sample draws the cases with replacement (shared by all
    trainers: they are paired) and, per trainer, its seeds with replacement (independent: seed S of two
    trainers are unrelated networks); a trainer's score is the mean over the drawn seeds and cases. With one
    seed per trainer this is ``bootstrap_ranks`` of the case scores."""
    runs = [np.atleast_2d(np.asarray(r, dtype=float)) for r in runs]
    if all(r.shape[0] == 1 for r in runs):
        return bootstrap_ranks(np.stack([r[0] for r in runs], axis=1), n_samples=n_samples, seed=seed)
    n_cases = runs[0].shape[1]
    if n_cases == 0 or not runs or any(r.shape[1] != n_cases for r in runs):
        raise ValueError("bootstrap ranks need the same cases (at least one) for every trainer")
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ranks_by_mean(np.stack([np.nanmean(r, axis=0) for r in runs], axis=1))

    def draw() -> np.ndarray:
        cases = rng.integers(0, n_cases, n_cases)
        return np.stack([np.nanmean(r[rng.integers(0, r.shape[0], r.shape[0])][:, cases], axis=0) for r in runs],
                        axis=1)

    return _rank_distribution(full, draw, n_samples)


def noise_threshold(s_a: float, n_a: int, s_b: float, n_b: int) -> float:
    """2 x the standard error of a difference of two trainers' means over seeds: 2 sqrt(s_a^2/n_a + s_b^2/n_b)
    (= 2 sqrt((s_a^2 + s_b^2)/n) for n seeds each); NaN when either spread is unmeasured (one seed)."""
    if not (n_a and n_b) or not (np.isfinite(s_a) and np.isfinite(s_b)):
        return float("nan")
    return float(2.0 * np.sqrt(s_a ** 2 / n_a + s_b ** 2 / n_b))

"""Boundary metrics (HD95 and NSD, ``nnunet_mcc.metrics.boundary_scores``): seconds per case, what
``nnunet-mcc compare`` adds per validation case and class set.

Cases: a 2D 64x64 and a 3D 64^3 label map with 3 foreground classes (nested discs / balls off centre), the
prediction the reference moved by one voxel along each axis with one class also grown by a voxel; spacing
(0.8, 0.8) and (2.5, 0.8, 0.8) mm, NSD tolerance 1 mm. Time: median of several calls after a warm-up (reading the
files is not included). Reference, for scale: nnU-Net's own per-case evaluation of the same masks (its
``compute_tp_fp_fn_tn`` for the 3 classes), which compare reads from ``summary.json`` at no cost. No target: the
rows say what the boundary metrics cost (``quick``: fewer repeats).
"""

import os
import statistics
import sys
import time
from typing import List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import print_rows, row  # noqa: E402

from nnunet_mcc.metrics import boundary_scores  # noqa: E402

CLASSES = (1, 2, 3)


def label_map(side: int, dims: int) -> np.ndarray:
    grid = np.indices((side,) * dims) - side * 0.45
    radius = np.sqrt(np.sum(grid ** 2, axis=0))
    seg = np.zeros((side,) * dims, dtype=np.uint8)
    for value, r in zip(CLASSES, (0.35, 0.22, 0.1)):
        seg[radius <= r * side] = value
    return seg


def one_hot(seg: np.ndarray) -> np.ndarray:
    return np.stack([seg == v for v in CLASSES])


def case(side: int, dims: int):
    reference = label_map(side, dims)
    prediction = reference.copy()
    for axis in range(dims):
        prediction = np.roll(prediction, 1, axis=axis)
    grown = np.zeros_like(prediction, dtype=bool)
    for axis in range(dims):
        grown |= np.roll(prediction == 2, 1, axis=axis)
    prediction[grown & (prediction == 1)] = 2
    return one_hot(prediction), one_hot(reference)


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> List[dict]:
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    repeats = 3 if quick else 7
    rows = []
    for side, dims, spacing in ((64, 2, (0.8, 0.8)), (64, 3, (2.5, 0.8, 0.8))):
        prediction, reference = case(side, dims)
        ours = median_seconds(lambda: boundary_scores(prediction, reference, spacing, 1.0), repeats)
        counts = median_seconds(lambda: [compute_tp_fp_fn_tn(r, p) for p, r in zip(prediction, reference)], repeats)
        shape = "x".join([str(side)] * dims)
        rows.append(row("boundary", f"{dims}D {shape}, 3 classes, HD95 + NSD (MONAI, CPU)", "seconds per case (median)",
                        ours, "nnU-Net counts per case", counts, float("inf"), enforced=False))
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))

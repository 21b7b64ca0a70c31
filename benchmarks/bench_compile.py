"""torch.compile of every loss: forward+backward time of the compiled loss against the same loss eager.

Losses as the trainers run them (``check_target=False``): ``MCCLoss`` plain and with the missed-class
penalty (``missed_weight=1``, as ``nnUNetTrainerMCC``), ``GeneralizedWassersteinDiceLoss``, ``TverskyLoss``,
``MaskedBCEWithLogits`` (regions, ignore channel, ``pos_weight``) and SegAN's ``multiscale_l1`` (a 4-scale
pyramid). Batch 2, 3 classes, 3D 64^3 (``quick``: 32^3). ``torch.compile(dynamic=False)`` with inductor; the
first call (the compile, wall time) is timed apart and given in the case column. On the CPU the measure is the
process's CPU time with one torch thread (other jobs on a shared machine distort wall time far more than the
work done), on a GPU the wall time; the median of interleaved repeats after a warm-up. For information
(no target): whether compiling the loss pays off on this machine.
"""

import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import print_rows, row, step  # noqa: E402

from nnunet_mcc.losses import (GeneralizedWassersteinDiceLoss, MaskedBCEWithLogits, MCCLoss,  # noqa: E402
                               TverskyLoss, multiscale_l1)


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return wall
    return time.process_time


class _MultiscaleL1(torch.nn.Module):
    """``multiscale_l1`` of a prediction pyramid against a fixed target pyramid, as a loss(prediction, target)."""

    def forward(self, prediction: List[torch.Tensor], target: List[torch.Tensor]) -> torch.Tensor:
        return multiscale_l1(prediction, target)


def _cases(side: int, device: torch.device) -> Dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, side, side, side)
    logits = (torch.randn(shape, generator=g) * 2).to(device)
    labels = torch.randint(0, 3, (2, 1, side, side, side), generator=g).to(device)
    regions = (torch.rand((2, 4, side, side, side), generator=g) > 0.6).float().to(device)
    pyramid = [torch.randn((2, 8 * 2 ** i, side // 2 ** i, side // 2 ** i, side // 2 ** i), generator=g).to(device)
               for i in range(4)]
    target_pyramid = [torch.randn(p.shape, generator=g).to(device) for p in pyramid]
    matrix = [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]
    return {
        "MCCLoss": (MCCLoss(check_target=False), logits, labels),
        "MCCLoss missed_weight=1": (MCCLoss(check_target=False, missed_weight=1.0), logits, labels),
        "GeneralizedWassersteinDiceLoss": (GeneralizedWassersteinDiceLoss(matrix, check_target=False).to(device),
                                           logits, labels),
        "TverskyLoss": (TverskyLoss(check_target=False, batch=True), logits, labels),
        "MaskedBCEWithLogits": (MaskedBCEWithLogits(torch.tensor([2.0, 1.0, 3.0]), ignore_channel=True).to(device),
                                logits, regions),
        "multiscale_l1": (_MultiscaleL1(), pyramid, target_pyramid),
    }


def run(quick: bool = False) -> List[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    side, repeats = (32, 5) if quick else (64, 5)
    clock = _clock(device)
    saved_threads = torch.get_num_threads()
    rows = []
    try:
        if device.type == "cpu":
            torch.set_num_threads(1)
        for name, (loss, prediction, target) in _cases(side, device).items():
            torch._dynamo.reset()
            compiled = torch.compile(loss, dynamic=False)
            start = time.perf_counter()  # wall time: inductor compiles in worker processes too
            step(compiled, prediction, target)  # the compile (forward and backward graphs)
            compile_seconds = time.perf_counter() - start
            candidates = {"compiled": compiled, "eager": loss}
            step(loss, prediction, target)  # warm-up
            times = {k: [] for k in candidates}
            for _ in range(repeats):
                for key, candidate in candidates.items():
                    start = clock()
                    step(candidate, prediction, target)
                    times[key].append(clock() - start)
            median = {k: statistics.median(v) for k, v in times.items()}
            measure = "time (s, fwd+bwd, median)" if device.type == "cuda" else \
                "CPU time (s, fwd+bwd, median, 1 thread)"
            case = f"{name}, 2x3x{side}^3, {device.type}, compile {compile_seconds:.1f} s"
            rows.append(row("compile", case, measure, median["compiled"], "eager", median["eager"], 1.0,
                            enforced=False))
    finally:
        torch.set_num_threads(saved_threads)
        torch._dynamo.reset()
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))

"""The confusion-count losses as their trainers build them, against nnU-Net's DC_and_CE_loss, on the CPU or a GPU.

The losses of ``nnUNetTrainerMCC`` (gate: weight 1, recall room 0.5, specificity room 0.9: the hard and direct-TN
paths of the soft confusion), ``nnUNetTrainerTversky`` (0.3 / 0.7, the same gate) and ``nnUNetTrainerGWDL``
(a tree matrix, its gate) on batch 2, 4 classes, 3D 96^3 (``quick``: 48^3), per-sample statistics as nnU-Net's
3d_fullres plans; forward+backward time (median of interleaved repeats after a warm-up) and peak memory above
the inputs. For information: the GPU targets live in ``benchmarks/gpu_check.py`` (docs/gpu.md).
"""

import os
import sys
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import median_seconds, memory_label, peak_bytes, print_rows, row  # noqa: E402

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss, MCCLoss, TverskyLoss  # noqa: E402

GATE = dict(missed_weight=1.0, min_recall=0.5, min_specificity=0.9)
TREE = [[0, 1, 1, 1], [1, 0, 0.5, 0.5], [1, 0.5, 0, 0.25], [1, 0.5, 0.25, 0]]


def _losses():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    common = dict(batch=False, check_target=False)
    return {"MCC (nnUNetTrainerMCC)": MCCLoss(**common, **GATE),
            "Tversky (nnUNetTrainerTversky)": TverskyLoss(alpha=0.3, beta=0.7, **common, **GATE),
            "GWDL (nnUNetTrainerGWDL)": GeneralizedWassersteinDiceLoss(TREE, missed_weight=1.0, min_recall=0.5,
                                                                       min_specificity=0.5, **common),
            "nnU-Net DC_and_CE": DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                {}, dice_class=MemoryEfficientSoftDiceLoss)}


def run(quick: bool = False) -> List[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    side, repeats = (48, 5) if quick else (96, 5)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 4, side, side, side, generator=g) * 2).to(device)
    labels = torch.randint(0, 4, (2, 1, side, side, side), generator=g).to(device)
    losses = {k: (v.to(device) if isinstance(v, torch.nn.Module) else v) for k, v in _losses().items()}
    seconds = median_seconds(losses, logits, labels, device, repeats)
    peaks = {name: peak_bytes(loss, logits, labels, device) / 2 ** 20 for name, loss in losses.items()}
    ref, rows = "nnU-Net DC_and_CE", []
    for name in losses:
        if name == ref:
            continue
        case = f"{name}, 4 classes, batch 2, {side}^3, {device.type}"
        rows += [row("confusion", case, "time (s, fwd+bwd, median)", seconds[name], ref, seconds[ref], 1.0,
                     enforced=False),
                 row("confusion", case, memory_label(device), peaks[name], ref, peaks[ref], 1.0, enforced=False)]
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))

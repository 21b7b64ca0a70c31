"""Soft MCC loss: forward+backward time and peak memory against nnU-Net's DC_and_CE_loss and MONAI.

nnU-Net shapes: batch 2, 2 and 4 classes, 3D 128^3 and 2D 512^2, with deep supervision (nnU-Net's
``DeepSupervisionWrapper`` over 4 scales, weights 1/2^i with the lowest off, as the trainers build it).
Candidates: our ``MCCLoss`` as ``nnUNetTrainerMCC`` trains with it (with the missed-class penalty,
``missed_weight=1``), the plain soft MCC (``missed_weight=0``, for information), our MCC in nnU-Net's
compound slot (``nnUNetTrainerMCC_CE``), nnU-Net's ``DC_and_CE_loss`` (the reference), and MONAI's
``MCCLoss`` where installed. ``quick``: 64^3 and 256^2. Target: MCC at most 1.0x DC_and_CE in time and in
memory.
"""

import os
import sys
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import median_seconds, memory_label, peak_bytes, print_rows, row  # noqa: E402

from nnunet_mcc.losses import MCCLoss  # noqa: E402


def _deep_supervision(loss, scales: int = 4):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    weights = np.array([1 / 2 ** i for i in range(scales)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def _candidates(classes: int) -> Dict[str, torch.nn.Module]:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    candidates = {
        "MCC": MCCLoss(batch=True, check_target=False, missed_weight=1.0),
        "MCC plain": MCCLoss(batch=True, check_target=False),
        "MCC+CE": DC_and_CE_loss({"batch": True, "check_target": False}, {}, dice_class=MCCLoss),
        "nnU-Net DC_and_CE": DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                            dice_class=MemoryEfficientSoftDiceLoss),
    }
    try:
        from monai.losses import MCCLoss as MonaiMCC

        monai = MonaiMCC(softmax=True, to_onehot_y=True, include_background=False, batch=True)
        candidates["MONAI MCCLoss"] = monai
    except ImportError:
        pass
    return {name: _deep_supervision(loss) for name, loss in candidates.items()}


def _pyramid(batch: int, classes: int, shape, device):
    g = torch.Generator().manual_seed(0)
    logits, labels = [], []
    full_labels = torch.randint(0, classes, (batch, 1, *shape), generator=g).float()
    for i in range(4):
        size = [s // 2 ** i for s in shape]
        logits.append(torch.randn(batch, classes, *size, generator=g).to(device))
        labels.append(F.interpolate(full_labels, size=size, mode="nearest").to(device))
    return logits, labels


def run(quick: bool = False) -> List[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [(64, 64, 64), (256, 256)] if quick else [(128, 128, 128), (512, 512)]
    rows = []
    for shape in shapes:
        for classes in (2, 4):
            logits, labels = _pyramid(2, classes, shape, device)
            losses = _candidates(classes)
            case = f"{classes} classes, batch 2, {'x'.join(map(str, shape))}, DS, {device.type}"
            seconds = median_seconds(losses, logits, labels, device)
            peaks = {name: peak_bytes(loss, logits, labels, device) / 2 ** 20 for name, loss in losses.items()}
            ref = "nnU-Net DC_and_CE"
            rows += [row("mcc", case, "time (s, fwd+bwd, median)", seconds["MCC"], ref, seconds[ref], 1.0),
                     row("mcc", case, memory_label(device), peaks["MCC"], ref, peaks[ref], 1.0),
                     row("mcc", case + " plain soft MCC", "time (s, fwd+bwd, median)", seconds["MCC plain"], ref,
                         seconds[ref], 1.0, enforced=False),
                     row("mcc", case + " MCC+CE", "time (s, fwd+bwd, median)", seconds["MCC+CE"], ref, seconds[ref],
                         1.0, enforced=False)]
            if "MONAI MCCLoss" in losses:
                monai = "MONAI MCCLoss"
                rows += [row("mcc", case, "time (s, fwd+bwd, median)", seconds["MCC"], monai, seconds[monai], 1.0,
                             enforced=False),
                         row("mcc", case, memory_label(device), peaks["MCC"], monai, peaks[monai], 1.0,
                             enforced=False)]
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))

"""Generalized Wasserstein Dice loss: forward+backward time and peak memory against references.

Compared, on the same logits and labels (5 classes, batch 2, 128^3; ``quick``: 48^3):

* nnU-Net's default loss ``DC_and_CE_loss`` (MemoryEfficientSoftDiceLoss + CE, batch Dice);
* MONAI's ``GeneralizedWassersteinDiceLoss`` (same definition, per sample), where installed;
* this package's GWDL alone and in nnU-Net's compound slot (``DC_and_CE_loss(dice_class=GWDL)``,
  what ``nnUNetTrainerGWDL_CE`` trains with).

Time: median of several forward+backward passes after a warm-up, the losses interleaved so that
load from other processes hits them alike. Peak memory: bytes allocated above the inputs during
one forward+backward, from the CPU allocator events of ``torch.profiler`` (``profile_memory=True``),
or ``torch.cuda.max_memory_allocated`` on a GPU.
"""

import os
import sys
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import median_seconds, memory_label, peak_bytes, print_rows, row, step  # noqa: E402

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss  # noqa: E402
from nnunet_mcc.losses.distance_matrix import BRATS_MATRIX  # noqa: E402


def _row(case, measure, ours, reference_name, reference, target_ratio, enforced=True):
    return row("gwdl", case, measure, ours, reference_name, reference, target_ratio, enforced)


def _losses() -> Dict[str, Callable]:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    losses = {
        "GWDL": GeneralizedWassersteinDiceLoss(BRATS_MATRIX, check_target=False),
        "GWDL+CE": DC_and_CE_loss({"distance_matrix": BRATS_MATRIX, "batch": True, "check_target": False}, {},
                                  dice_class=GeneralizedWassersteinDiceLoss),
        "nnU-Net DC_and_CE": DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                            dice_class=MemoryEfficientSoftDiceLoss),
    }
    try:
        from monai.losses import GeneralizedWassersteinDiceLoss as MonaiGWDL

        monai_loss = MonaiGWDL(torch.tensor(BRATS_MATRIX, dtype=torch.float32))
        losses["MONAI GWDL"] = lambda x, y: monai_loss(x, y[:, 0])
    except ImportError:
        pass
    return losses


def run(quick: bool = False) -> List[dict]:
    side, repeats = (48, 5) if quick else (128, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, side, side, side, generator=generator).to(device)
    labels = torch.randint(0, 5, (2, 1, side, side, side), generator=generator).to(device)
    case = f"5 classes, batch 2, {side}^3, {device.type}"
    losses = _losses()

    values = {name: step(loss, logits, labels) for name, loss in losses.items()}
    seconds = median_seconds(losses, logits, labels, device, repeats)
    peaks = {name: peak_bytes(loss, logits, labels, device) for name, loss in losses.items()}
    memory = memory_label(device)
    ref = "nnU-Net DC_and_CE"
    rows = [
        _row(case, "time (s, fwd+bwd, median)", seconds["GWDL"], ref, seconds[ref], 1.5),
        _row(case + ", GWDL+CE", "time (s, fwd+bwd, median)", seconds["GWDL+CE"], ref, seconds[ref], 1.5),
        _row(case, memory, peaks["GWDL"] / 2 ** 20, ref, peaks[ref] / 2 ** 20, 1.0, enforced=False),
    ]
    if "MONAI GWDL" in losses:
        monai = "MONAI GWDL"
        rows += [
            _row(case, "time (s, fwd+bwd, median)", seconds["GWDL"], monai, seconds[monai], 1.0,
                 enforced=False),
            _row(case, memory, peaks["GWDL"] / 2 ** 20, monai, peaks[monai] / 2 ** 20, 1.0),
            {"benchmark": "gwdl", "case": case, "measure": "loss value |ours - MONAI|",
             "ours": abs(values["GWDL"] - values[monai]), "reference_name": monai, "reference": values[monai],
             "ratio": float("nan"), "target": "<= 1e-5 absolute",
             "ok": abs(values["GWDL"] - values[monai]) <= 1e-5},
        ]
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))

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

import statistics
import time
from typing import Callable, Dict, List

import torch

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss
from nnunet_mcc.losses.distance_matrix import BRATS_MATRIX


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


def _step(loss: Callable, logits: torch.Tensor, labels: torch.Tensor) -> float:
    x = logits.detach().requires_grad_()
    value = loss(x, labels)
    value.backward()
    return float(value.detach())


def _peak_bytes(loss: Callable, logits: torch.Tensor, labels: torch.Tensor) -> float:
    if logits.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _step(loss, logits, labels)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(loss, logits, labels)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()  # negative for frees
        peak = max(peak, current)
    return float(peak)


def _row(case, measure, ours, reference_name, reference, target_ratio, enforced=True):
    ratio = ours / reference if reference else float("nan")
    return {"benchmark": "gwdl", "case": case, "measure": measure, "ours": ours, "reference_name": reference_name,
            "reference": reference, "ratio": ratio,
            "target": f"<= {target_ratio}x" if enforced else "info",
            "ok": ratio <= target_ratio or not enforced}


def run(quick: bool = False) -> List[dict]:
    side, repeats = (48, 5) if quick else (128, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, side, side, side, generator=generator).to(device)
    labels = torch.randint(0, 5, (2, 1, side, side, side), generator=generator).to(device)
    case = f"5 classes, batch 2, {side}^3, {device.type}"
    losses = _losses()

    values = {name: _step(loss, logits, labels) for name, loss in losses.items()}  # warm-up
    times = {name: [] for name in losses}
    for _ in range(repeats):
        for name, loss in losses.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(loss, logits, labels)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    peaks = {name: _peak_bytes(loss, logits, labels) for name, loss in losses.items()}

    memory = "peak memory (MB above inputs, " + ("cuda max_memory_allocated)" if device.type == "cuda"
                                                 else "torch.profiler CPU allocations)")
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
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48^3 instead of 128^3")
    for row in run(parser.parse_args().quick):
        print(f"{row['case']:<40} {row['measure']:<58} ours {row['ours']:10.4g}  {row['reference_name']:<18} "
              f"{row['reference']:10.4g}  ratio {row['ratio']:6.3f}  {row['target']:<22} "
              f"{'ok' if row['ok'] else 'MISS'}")

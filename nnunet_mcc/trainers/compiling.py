"""torch.compile of the package's losses where nnU-Net compiles its own: the one home of that switch.

nnU-Net compiles the network and the Dice part of its loss (``loss.dc = torch.compile(loss.dc)`` in
``nnUNetTrainer._build_loss``) when ``nnUNetTrainer._do_i_compile()`` is true: on CUDA unless ``nnUNet_compile``
says no (``0``, ``false``, ``f``), never on the CPU, MPS or Windows. The trainers of this package build their
losses themselves, so they ask the same question here:

* :func:`compile_losses`: every :class:`nnunet_mcc.losses.ConfusionLoss` inside a built loss (alone, or in the
  Dice slot of nnU-Net's ``DC_and_CE_loss`` / ``DC_and_BCE_loss``) is compiled in place
  (``nn.Module.compile``, nnU-Net's default options), so the loss keeps its identity and its ``settings()``;
  cross-entropy stays eager, as nnU-Net leaves it;
* :func:`critic_l1`: the SegAN critic's multi-scale L1, compiled or the plain function.

With the trainers' ``check_target=False`` each loss traces to one graph (tests/test_compile_losses.py checks it
with ``fullgraph=True`` and compiled = eager on the CPU).
"""

from typing import Callable

import torch

from nnunet_mcc.losses import ConfusionLoss, multiscale_l1


def compiles(trainer) -> bool:
    """nnU-Net's own answer for this trainer (``_do_i_compile``: device, ``nnUNet_compile``, platform); False for a
    trainer not yet given a device (a loss built outside nnU-Net's ``__init__``)."""
    return getattr(trainer, "device", None) is not None and bool(trainer._do_i_compile())


def compile_losses(trainer, loss: torch.nn.Module) -> torch.nn.Module:
    """``loss`` with every outermost ConfusionLoss inside it compiled in place when nnU-Net compiles; returned."""
    if not compiles(trainer) or not isinstance(loss, torch.nn.Module):
        return loss
    compiled = []
    for module in loss.modules():
        if isinstance(module, ConfusionLoss) and not any(module in list(c.modules()) for c in compiled):
            module.compile()
            compiled.append(module)
    if compiled:
        trainer.print_to_log_file("Using torch.compile for the loss: "
                                  + ", ".join(type(m).__name__ for m in compiled))
    return loss


def critic_l1(trainer) -> Callable:
    """The multi-scale L1 of the SegAN critic's features: compiled when nnU-Net compiles, else the function."""
    if not compiles(trainer):
        return multiscale_l1
    trainer.print_to_log_file("Using torch.compile for the critic's multi-scale L1")
    return torch.compile(multiscale_l1)

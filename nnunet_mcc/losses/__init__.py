"""Plain torch loss modules, usable without nnU-Net's trainers."""

from nnunet_mcc.losses.mcc import MCCLoss, soft_mcc

__all__ = ["MCCLoss", "soft_mcc"]

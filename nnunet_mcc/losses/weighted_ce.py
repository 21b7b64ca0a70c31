"""Class-frequency weights for cross-entropy (seed 003) and a masked, weighted BCE for nnU-Net regions.

With the marginal frequency ``f_c`` of class ``c`` (its share of the labelled voxels), the weights are
inverse frequencies normalised so the average voxel weight over the data is 1 (the loss keeps the
scale of plain CE)::

    w_c = f_c ** -p / sum_j f_j ** (1 - p)        (so that sum_c f_c * w_c = 1)

with ``p`` the power (1: inverse frequency as in Chan et al. 2019; 0.5: a milder inverse square root;
0: plain CE). A balanced dataset gives ``w_c = 1``; classes absent from the data get weight 1.

Region-based datasets (sigmoid outputs): each region is a binary problem, weighted with BCE's
``pos_weight_r = ((1 - f_r) / f_r) ** p`` so its voxels inside and outside carry equal total weight.

References:
    R. Chan, M. Rottmann, F. Hüger, P. Schlicht, H. Gottschalk. Application of decision rules for
    handling class imbalance in semantic segmentation. arXiv:1901.08394, 2019.
"""

from typing import Optional

import numpy as np
import torch
from torch import nn

from nnunet_mcc.losses.base import check_reduction
from nnunet_mcc.losses.targets import TargetFormat


def inverse_frequency_weights(frequencies, power: float = 1.0) -> np.ndarray:
    """``w_c = f_c^-p / sum_j f_j^(1-p)`` over the classes present (f > 0); absent classes get 1.

    Raises:
        ValueError: frequencies that are not a 1D array of non-negative values with one > 0, or ``power < 0``.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or np.any(f < 0) or not np.any(f > 0):
        raise ValueError(f"frequencies must be a 1D array of non-negative values with one > 0, got {f}")
    if power < 0:
        raise ValueError(f"class_weight_power must be >= 0, got {power}")
    present = f > 0
    weights = np.ones_like(f)
    weights[present] = f[present] ** -power / np.sum(f[present] ** (1 - power))
    return weights


def region_pos_weights(frequencies, power: float = 1.0) -> np.ndarray:
    """BCE ``pos_weight_r = ((1 - f_r) / f_r)^p``; 1 where a region is absent or covers everything."""
    f = np.asarray(frequencies, dtype=np.float64)
    weights = np.ones_like(f)
    usable = (f > 0) & (f < 1)
    weights[usable] = ((1 - f[usable]) / f[usable]) ** power
    return weights


class MaskedBCEWithLogits(nn.Module):
    """Binary cross-entropy per region channel over the valid voxels, with optional ``pos_weight`` per region.

    Args:
        pos_weight: one weight per region for the positive voxels (BCE's ``pos_weight``), or None.
        ignore_channel: the target has one more channel, the last marking ignored voxels (nnU-Net's
            region convention with an ignore label).
        reduction: as in MONAI: ``"mean"`` over valid voxels x channels, ``"sum"``, or ``"none"`` (the
            elementwise loss ``(B, K, *S)``, 0 at ignored voxels).

    Raises:
        ValueError: an unknown reduction; (in ``forward``) a target whose shape does not fit.

    Example:
        >>> import torch
        >>> loss = MaskedBCEWithLogits(pos_weight=torch.tensor([4.0, 1.0]), ignore_channel=True)
        >>> logits = torch.randn(2, 2, 8, 8)
        >>> target = torch.randint(0, 2, (2, 3, 8, 8))  # 2 regions + the ignore channel
        >>> loss(logits, target).shape
        torch.Size([])
    """

    def __init__(self, pos_weight: Optional[torch.Tensor] = None, ignore_channel: bool = False,
                 reduction: str = "mean"):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())
        self.ignore_channel = ignore_channel
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        regions, valid = TargetFormat(logits.shape[1], region_ignore_channel=self.ignore_channel).onehot(
            target, prediction=logits, check=False)
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = self.pos_weight.to(logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), regions, reduction="none",
                                                              pos_weight=pos_weight)
        if valid is not None:
            loss = loss * valid
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        if valid is None:
            return loss.mean()
        return loss.sum() / torch.clip(valid.sum() * loss.shape[1], min=1e-8)

"""Focal loss (Lin et al. 2017) over mutually exclusive classes, in the cross-entropy slot of nnU-Net's Dice + CE."""

from typing import Optional

import torch
from torch import nn

from nnunet_mcc.losses.base import check_reduction


class FocalLoss(nn.Module):
    r"""Softmax focal loss of logits against a label map.

    With :math:`p_t` the softmax probability of a voxel's true class and focusing parameter :math:`\gamma`:

    .. math::
        FL = -\frac{1}{|V|} \sum_{i \in V} (1 - p_{t,i})^{\gamma} \log p_{t,i}

    over the valid voxels :math:`V` (``ignore_index`` left out). :math:`\gamma = 0` is the cross-entropy;
    :math:`\gamma > 0` takes weight off the well-classified voxels (mostly background in imbalanced data).
    :math:`\log p_t` comes from ``log_softmax`` in float32 (also under autocast), so extreme logits stay finite.
    A batch with no valid voxel gives 0 (with a zero gradient).

    Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense Object Detection",
    ICCV 2017 (eq. 5, without the class weight alpha).

    Args:
        gamma: the focusing parameter, >= 0 (2, the paper's choice, by default).
        ignore_index: label value whose voxels count nowhere (nnU-Net's ignore label), or None.
        reduction: ``"mean"`` over valid voxels, ``"sum"``, or ``"none"`` (per voxel ``(B, *S)``, 0 where ignored).

    ``forward(x, y)``: logits ``(B, C, *S)``; labels ``(B, 1, *S)`` or ``(B, *S)`` (the form nnU-Net's
    ``DC_and_CE_loss`` passes its ``ce``).

    Raises:
        ValueError: ``gamma < 0``, an unknown reduction, a non-integer ``ignore_index``, or (in ``forward``)
            labels whose shape does not fit the logits.
    """

    loss_name = "focal"

    def __init__(self, gamma: float = 2.0, ignore_index: Optional[int] = None, reduction: str = "mean"):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0 (0: cross-entropy), got {gamma}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)

    def settings(self) -> dict:
        return {"gamma": self.gamma}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == x.ndim:
            y = y[:, 0]
        if y.shape != x.shape[:1] + x.shape[2:]:
            raise ValueError(f"labels of shape {tuple(y.shape)} do not fit logits of shape {tuple(x.shape)}")
        y = y.long()
        valid = None if self.ignore_index is None else y != self.ignore_index
        if valid is not None:
            y = torch.where(valid, y, torch.zeros_like(y))
        with torch.autocast(x.device.type, enabled=False):
            log_pt = torch.log_softmax(x.float(), 1).gather(1, y.unsqueeze(1)).squeeze(1)
            loss = -(1 - log_pt.exp()).clamp_min(0) ** self.gamma * log_pt
            if valid is not None:
                loss = loss * valid
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        count = loss.numel() if valid is None else valid.sum()
        return loss.sum() / torch.as_tensor(count, device=loss.device, dtype=loss.dtype).clamp_min(1)

"""Tversky and Focal Tversky losses."""

from typing import Optional

import torch

from nnunet_mcc.losses.base import ConfusionLoss, Nonlin, reduce_per_sample


class TverskyLoss(ConfusionLoss):
    r"""Tversky loss, and its focal form, of soft confusion counts.

    With the soft counts of one class (:meth:`ConfusionLoss.confusion`: TP, FP, FN over the valid voxels):

    .. math::
        TI = \frac{TP + s_{nr}}{TP + \alpha\,FP + \beta\,FN + s_{dr}},\qquad
        \mathcal{L} = (1 - TI)^{1/\gamma}

    ``alpha`` weighs false positives and ``beta`` false negatives (MONAI's meaning); alpha = beta = 0.5 is
    the soft Dice and alpha = beta = 1 the soft Jaccard. beta > alpha favours recall, which helps small
    structures. gamma = 1 (the default) is the Tversky loss; gamma > 1 is the Focal Tversky loss, which
    raises the loss of the classes still far from TI = 1 relative to the nearly solved ones (Abraham and
    Khan recommend 4/3). Its gradient grows without bound as TI -> 1, so ``1 - TI`` is floored at 1e-12 under
    the power: the gradient of a perfectly scored class is then 0 rather than infinite.

    With ``missed_weight > 0``, a class present in the target (of the batch when pooled, of the sample
    otherwise) that has too little room (a soft recall below ``min_recall``; with ``min_recall = 0``, no voxel
    predicted) adds ``missed_weight`` times minus the log of its soft recall over ``min_recall``
    (:func:`nnunet_mcc.losses.base.missed_class_penalty`, the gate of ``MCCLoss``): wherever every present
    class has room the loss is exactly the Tversky loss, value and gradient bit for bit.

    References:
        S. S. M. Salehi, D. Erdogmus, A. Gholipour, "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017 (arXiv:1706.05721).
        N. Abraham, N. M. Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for
        Lesion Segmentation", IEEE ISBI 2019 (arXiv:1810.07842).

    Args:
        apply_nonlin: ``"softmax"``, ``"sigmoid"``, ``None`` (inputs are probabilities) or a callable.
        alpha: weight of the false positives, >= 0.
        beta: weight of the false negatives, >= 0 (alpha + beta > 0).
        gamma: focal exponent, >= 1 (the loss is raised to 1 / gamma).
        batch: pool the counts over the batch (and DDP ranks) before the index.
        include_background: keep channel 0 in softmax mode (ignored for sigmoid).
        ignore_index: label value whose voxels count nowhere (label-map targets).
        region_ignore_channel: the target's last channel marks ignored voxels (nnU-Net regions).
        smooth_nr, smooth_dr: added to the numerator and the denominator (MONAI's defaults), >= 0.
        ddp: gather the pooled counts over ranks (with gradient) under torch.distributed.
        check_target: validate target values (one device sync per call).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the ``(B, K)`` losses, ``(1, K)`` pooled), as MONAI.
        missed_weight: weight of the missed-class penalty (0: the plain loss).
        min_recall: the penalty's room, in [0, 1] (0: only a class of which no voxel is predicted).
        min_specificity: the room of each class's complement, in [0, 1] (0: none; see ``MCCLoss``).

    ``forward(x, y, loss_mask=None)`` takes nnU-Net's target forms, so the loss fits the Dice slot of its
    compound losses (``DC_and_CE_loss(..., dice_class=TverskyLoss)``).

    Raises:
        ValueError: a negative alpha, beta, smoothing or missed_weight, alpha + beta = 0, gamma < 1, an
            unknown activation or reduction, and (in ``forward``) shapes or target values that do not fit.

    Example:
        >>> import torch
        >>> from nnunet_mcc.losses import TverskyLoss
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> TverskyLoss("softmax", alpha=0.3, beta=0.7)(logits, torch.randint(0, 3, (2, 1, 32, 32))).backward()
    """

    loss_name = "Tversky"

    def __init__(self, apply_nonlin: Nonlin = "softmax", alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0,
                 batch: bool = False, include_background: bool = False, ignore_index: Optional[int] = None,
                 region_ignore_channel: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 ddp: bool = False, check_target: bool = True, reduction: str = "mean", missed_weight: float = 0.0,
                 min_recall: float = 0.0, min_specificity: float = 0.0):
        super().__init__(apply_nonlin, include_background, ignore_index, region_ignore_channel, check_target,
                         reduction, batch, ddp)
        for name, value in (("alpha", alpha), ("beta", beta), ("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not alpha + beta > 0:
            raise ValueError(f"alpha + beta must be > 0 (else the index is 1 whatever is predicted), got "
                             f"{alpha} + {beta}")
        if not gamma >= 1:
            raise ValueError(f"gamma must be >= 1 (1: Tversky, > 1: Focal Tversky), got {gamma}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.init_gate(missed_weight, min_recall, self.nonlin_kind, min_specificity)
        if self.gamma > 1:
            self.loss_name = "Focal Tversky"

    def settings(self) -> dict:
        return {**super().settings(), "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "smooth_nr": self.smooth_nr, "smooth_dr": self.smooth_dr, **self.gate_settings()}

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.missed_weight:
            tp, fp, fn, _, penalty = self.gated_confusion(x, y, loss_mask)
        else:
            tp, fp, fn, _ = self.confusion(x, y, loss_mask)
        index = (tp + self.smooth_nr) / (tp + self.alpha * fp + self.beta * fn + self.smooth_dr)
        loss = 1 - index
        if self.gamma != 1:
            loss = loss.clamp_min(1e-12) ** (1 / self.gamma)
        if self.missed_weight:
            # an exact 0 for every class with room keeps the plain loss bit for bit
            loss = loss + penalty.to(loss.dtype)
        return reduce_per_sample(loss, self.reduction, self.batch, self.ddp)

"""Soft Matthews Correlation Coefficient loss."""

from typing import Optional

import torch

from nnunet_mcc.losses.base import ConfusionLoss, Nonlin, reduce_per_sample


def soft_mcc(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor,
             eps: float = 1e-20) -> torch.Tensor:
    """MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN) + eps), elementwise.

    The counts are first divided by their total (MCC does not change under a common scale), and the
    formula runs in float64: the raw product under the root reaches ~1e24 for a 2x128^3 patch, far
    beyond fp16 and close to where fp32 loses the small foreground terms. ``eps`` sits inside the
    root so the gradient stays finite when a factor is 0 (the numerator is then 0 as well, and the
    MCC is 0, sklearn's convention for an undefined MCC).
    """
    tp, fp, fn, tn = (t.double() for t in (tp, fp, fn, tn))
    total = (tp + fp + fn + tn).clamp_min(1e-12)
    tp, fp, fn, tn = tp / total, fp / total, fn / total, tn / total
    numerator = tp * tn - fp * fn
    denominator = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + eps)
    return numerator / denominator


class MCCLoss(ConfusionLoss):
    r"""Soft Matthews Correlation Coefficient loss, ``1 - MCC`` of soft confusion counts.

    With probabilities :math:`p` and one-hot ground truth :math:`g` of one class (one-vs-rest), and
    valid voxels :math:`m` (the ignore label removed):

    .. math::
        TP = \sum m\,p\,g,\quad FP = \sum m\,p\,(1-g),\quad FN = \sum m\,(1-p)\,g,\quad
        TN = \sum m\,(1-p)(1-g)

        \mathcal{L} = 1 - \frac{TP\cdot TN - FP\cdot FN}{\sqrt{(TP+FP)(TP+FN)(TN+FP)(TN+FN)}}

    The sums run over the voxels of each sample, and also over the batch when ``batch=True`` (the
    sums over n of the reference). The loss lies in [0, 2]: 0 for a perfect prediction, 1 for
    chance, 2 for the inverted one.

    **The 0/0 convention.** When a factor under the root is 0 the MCC is 0/0. The loss then counts
    the MCC as 0 (sklearn's convention): loss 1 with zero gradient. In particular a class absent
    from the ground truth of a sample (per-sample mode) or of the whole batch (pooled mode) gives
    loss 1 and no gradient whatever is predicted, even a perfect empty prediction. That is why pooling
    over the batch (nnU-Net samples patches without foreground) and adding cross-entropy
    (``nnUNetTrainerMCC_CE``) matter.

    References:
        A. Marquez Herrera, A. Cuadros Vargas, H. Pedrini, "Improving Semantic Segmentation of 3D
        Medical Images on CNNs", LatinX in AI at ICML 2019 (eq. 5-6: the soft counts and 1 - MCC).
        K. Abhishek, G. Hamarneh, "Matthews Correlation Coefficient Loss for Deep Convolutional
        Networks: Application to Skin Lesion Segmentation", IEEE ISBI 2021 (arXiv:2010.13454).
        B. W. Matthews, Biochimica et Biophysica Acta 405(2), 1975.

    Args:
        apply_nonlin: ``"softmax"`` (mutually exclusive classes, target a label map or one-hot),
            ``"sigmoid"`` (independent regions or a binary channel, target one-hot/regions), ``None``
            (inputs are already probabilities) or a callable.
        batch: pool the counts over the batch (and over DDP ranks) before the MCC. Recommended:
            a sample without foreground has an undefined MCC (counted as 0 with zero gradient), so
            per-sample statistics ignore false positives on empty patches.
        include_background: keep channel 0 in softmax mode (ignored for sigmoid: every channel is
            a region).
        ignore_index: label value whose voxels count in none of TP/FP/FN/TN (label-map targets).
        region_ignore_channel: the target's last channel marks ignored voxels (nnU-Net regions).
        eps: added under the square root, on counts normalised to sum 1.
        ddp: under torch.distributed, gather the pooled counts over ranks (with gradient) so that
            N ranks of B/N samples give the loss and gradients of one process with B samples
            (exact for ``reduction="mean"``).
        check_target: validate target values (costs one device sync per call).
        reduction: as in MONAI: ``"mean"`` (the mean over classes and samples), ``"sum"`` (the sum
            over classes and samples) or ``"none"`` (the per-sample, per-class losses ``(B, K)``, or
            ``(1, K)`` with ``batch=True``, K the scored classes).
        missed_weight: weight of :func:`nnunet_mcc.losses.base.missed_class_penalty` (the missed-class gate), added to the loss
            of a class present in the target (of the batch when pooled, of the sample otherwise) that has
            too little room. 0 (the default) is the plain soft MCC.
        min_recall: the gate's room. ``m > 0``: a present class whose soft recall TP / (TP + FN) is
            below ``m`` adds ``missed_weight * (log m - log recall)``; 0 (the default): a present class
            of which no voxel is predicted as the class (the argmax, or probability > 0.5 for sigmoid
            regions and a single binary channel) adds ``-missed_weight * log recall``. Wherever every
            present class has room, the loss is exactly ``1 - MCC``, value and gradient bit for bit.
        min_specificity: the room of each class's complement: a class whose soft specificity
            TN / (TN + FP) is below it (a class flooding the image) adds ``missed_weight * (log m - log
            specificity)`` (:func:`nnunet_mcc.losses.base.flooded_class_penalty`); 0 (the default): none.
            ``nnUNetTrainerMCC`` uses weight 1, recall room 0.5 and specificity room 0.9:
            docs/mcc_rare_classes.md shows why.

    ``forward(x, y, loss_mask=None)``: ``x`` logits ``(B, C, *S)``; ``y`` label map ``(B, 1, *S)`` /
    ``(B, *S)`` or one-hot/regions ``(B, C, *S)``; ``loss_mask`` ``(B, 1, *S)``, 1 where valid (the
    form nnU-Net's compound losses pass, so ``MCCLoss`` fits their Dice slot).

    Raises:
        ValueError: on an unknown ``apply_nonlin`` or ``reduction``, ``eps <= 0``, ``missed_weight < 0``,
            ``min_recall`` outside [0, 1],
            or set with a custom activation, a non-integer ``ignore_index``, and (in ``forward``) on
            shapes that do not fit or target values outside the classes.

    Example:
        >>> import torch
        >>> from nnunet_mcc.losses import MCCLoss
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 32, 32))
        >>> MCCLoss("softmax", batch=True)(logits, labels).backward()
        >>> MCCLoss("softmax", batch=False, reduction="none")(logits, labels).shape
        torch.Size([2, 2])
    """

    loss_name = "soft MCC"

    def __init__(self, apply_nonlin: Nonlin = "softmax", batch: bool = True, include_background: bool = False,
                 ignore_index: Optional[int] = None, region_ignore_channel: bool = False, eps: float = 1e-20,
                 ddp: bool = False, check_target: bool = True, reduction: str = "mean",
                 missed_weight: float = 0.0, min_recall: float = 0.0, min_specificity: float = 0.0):
        super().__init__(apply_nonlin, include_background, ignore_index, region_ignore_channel, check_target,
                         reduction, batch, ddp)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)
        self.init_gate(missed_weight, min_recall, self.nonlin_kind, min_specificity)

    def settings(self) -> dict:
        return {**super().settings(), "eps": self.eps, **self.gate_settings()}

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.missed_weight:
            loss = 1 - soft_mcc(*self.confusion(x, y, loss_mask), eps=self.eps)
        else:
            tp, fp, fn, tn, penalty = self.gated_confusion(x, y, loss_mask)
            # adding an exact 0 keeps the value and gradient of every class with room bit for bit
            loss = 1 - soft_mcc(tp, fp, fn, tn, eps=self.eps) + penalty
        return reduce_per_sample(loss, self.reduction, self.batch, self.ddp)

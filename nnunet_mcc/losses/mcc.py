"""Soft Matthews Correlation Coefficient loss."""

from typing import Optional

import torch

from nnunet_mcc.losses._common import ConfusionLoss, Nonlin, ddp_active, reduce_per_sample, sum_over_ranks


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

    ``forward(x, y, loss_mask=None)``: ``x`` logits ``(B, C, *S)``; ``y`` label map ``(B, 1, *S)`` /
    ``(B, *S)`` or one-hot/regions ``(B, C, *S)``; ``loss_mask`` ``(B, 1, *S)``, 1 where valid (the
    form nnU-Net's compound losses pass, so ``MCCLoss`` fits their Dice slot).

    Raises:
        ValueError: on an unknown ``apply_nonlin`` or ``reduction``, ``eps <= 0``, a non-integer
            ``ignore_index``, and (in ``forward``) on shapes that do not fit or target values outside
            the classes.

    Example:
        >>> import torch
        >>> from nnunet_mcc.losses import MCCLoss
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 32, 32))
        >>> MCCLoss("softmax", batch=True)(logits, labels).backward()
        >>> MCCLoss("softmax", batch=False, reduction="none")(logits, labels).shape
        torch.Size([2, 2])
    """

    def __init__(self, apply_nonlin: Nonlin = "softmax", batch: bool = True, include_background: bool = False,
                 ignore_index: Optional[int] = None, region_ignore_channel: bool = False, eps: float = 1e-20,
                 ddp: bool = False, check_target: bool = True, reduction: str = "mean"):
        super().__init__(apply_nonlin, include_background, ignore_index, region_ignore_channel, check_target,
                         reduction)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.batch = bool(batch)
        self.eps = float(eps)
        self.ddp = bool(ddp)

    def confusion(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None):
        """Soft TP, FP, FN, TN, each (B, K), or (1, K) when pooled (float32, K classes scored)."""
        probs, onehot, mask = self._probabilities_and_target(x, y, loss_mask)
        if mask is not None:
            probs = probs * mask
            onehot = onehot * mask
            n_valid = mask.sum(-1)
        else:
            n_valid = torch.full(probs.shape[:1] + (1,), float(probs.shape[-1]), device=probs.device)
        tp = (probs * onehot).sum(-1)
        sum_p = probs.sum(-1)
        sum_g = onehot.sum(-1)
        fp, fn = sum_p - tp, sum_g - tp
        tn = n_valid - tp - fp - fn
        stats = torch.stack((tp, fp, fn, tn))  # (4, B, K)
        if self.batch:
            stats = stats.sum(1, keepdim=True)
            if ddp_active(self.ddp):
                stats = sum_over_ranks(stats)
        return stats.unbind(0)

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        loss = 1 - soft_mcc(*self.confusion(x, y, loss_mask), eps=self.eps)
        return reduce_per_sample(loss, self.reduction, self.batch, self.ddp)

"""Generalized Wasserstein Dice loss (Fidon et al. 2017) with a class distance matrix."""

from typing import Optional

import torch

from nnunet_mcc.losses.base import (ConfusionLoss, Nonlin, ddp_active, reduce_per_sample,
                                   sum_over_ranks)
from nnunet_mcc.losses.confusion import label_confusion
from nnunet_mcc.losses.distance_matrix import validate_distance_matrix
from nnunet_mcc.losses.targets import check_prediction

WEIGHTINGS = ("default", "GDL")


class GeneralizedWassersteinDiceLoss(ConfusionLoss):
    r"""Generalized Wasserstein Dice loss: a Dice loss where errors cost the distance between classes.

    With softmax probabilities :math:`p_{i,c}`, true labels :math:`g_i`, valid voxels :math:`m_i`
    (the ignore label removed) and a class distance matrix :math:`M` (zero diagonal, symmetric,
    :math:`M_{l,0} = 1`, entries in [0, 1]), each voxel's Wasserstein distance between the one-hot
    truth and the prediction is

    .. math::
        W_i = \sum_c M_{g_i, c}\, p_{i,c}

    and with class weights :math:`\alpha_l` the generalized true positives and the loss are

    .. math::
        TP = \sum_i m_i\,\alpha_{g_i}\,(1 - W_i),\qquad
        \mathcal{L} = 1 - \frac{2\,TP + s}{2\,TP + \sum_i m_i\,\beta_{g_i} W_i + s}

    ``weighting="default"`` (Fidon): :math:`\alpha_0 = 0`, :math:`\alpha_l = 1` otherwise, :math:`\beta = 1`.
    ``weighting="GDL"`` (Tilborghs et al. 2020, appendix): :math:`\alpha_l = \beta_l = 1 / (V_l + 1)`
    with :math:`V_l` the number of valid voxels of label l (background included).
    With two labels and :math:`M = [[0, 1], [1, 0]]` the default loss is the foreground soft Dice loss.

    The sums run over each sample's voxels (``batch=False``, the paper's definition; the loss averages
    the samples) or over the whole batch and all DDP ranks (``batch=True``). Memory stays in the
    class of a Dice loss: the sums come from one soft confusion matrix per sample, ``C[c, l]`` the
    probability of class c summed over the voxels of label l (a K x K batched matrix product), and
    :math:`\sum_{i: g_i = l} m_i W_i = \sum_c M_{l,c} C_{c,l}`: never a voxels x K x K tensor; with softmax
    backward recomputes the probabilities instead of storing them
    (:func:`nnunet_mcc.losses.confusion.label_confusion`). Everything runs in float32, also under autocast.

    **Missed labels.** With ``missed_weight = w > 0``, each foreground label l that is present (in the
    sample, or in the batch when pooled) and has too little room adds :math:`w (\log m - \log r_l)`,
    with :math:`r_l = TP_l / V_l` the label's soft recall (:math:`TP_l = \sum_{i: g_i = l} m_i\, p_{i,l}`,
    :math:`V_l` its valid voxels): with ``min_recall = m > 0`` a label has room when :math:`r_l \ge m`;
    with ``m = 0`` when at least one voxel is predicted as l (the argmax), and a label without adds
    :math:`-w \log r_l`. Every label with room adds an exact 0. A label that is rare and close to another in ``M`` costs little to
    miss: once the network gives its voxels to the neighbour, the label's probability saturates near 0
    and the softmax Jacobian (:math:`dW/dx_l = p_l (M_{g,l} - W)`) takes away the gradient that could
    bring it back. The gradient of :math:`\log TP_l` with respect to the logits of the label's voxels
    sums to about 1 however far it has saturated (the gate of ``MCCLoss``,
    :func:`nnunet_mcc.losses.base.missed_class_penalty`). Whenever every present label has room the loss
    is Fidon et al.'s, value and gradient bit for bit (docs/gwdl.md).

    References: L. Fidon et al., "Generalised Wasserstein Dice Score for Imbalanced Multi-class
    Segmentation using Holistic Convolutional Networks", BrainLes 2017 (eq. 6-9); S. Tilborghs et al.,
    arXiv:2007.15546 (GDL weighting).

    Args:
        distance_matrix: K x K class distances in label-value order (see
            ``nnunet_mcc.losses.distance_matrix`` to build one from label names); checked by
            ``validate_distance_matrix``.
        apply_nonlin: ``"softmax"`` (default), ``None`` (inputs are probabilities) or a softmax callable
            (nnU-Net passes ``softmax_helper_dim1``). Sigmoid is refused: the labels must be exclusive.
        weighting: ``"default"`` or ``"GDL"``.
        batch: pool the statistics over the batch (and DDP ranks) instead of per sample.
        ignore_index: label value whose voxels are left out (label-map targets).
        smooth: added to numerator and denominator (a sample with no error and no foreground gives 0).
        ddp: under torch.distributed, pool over ranks (with gradient; ``batch=True``) or average the
            per-sample losses over the global batch, so N ranks give one process's loss and gradients.
        check_target: validate target values (costs a device sync per call).
        reduction: as in MONAI: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (the per-sample
            losses ``(B,)``, or ``(1,)`` with ``batch=True``; the score is one number over all classes,
            so there is no per-class value).
        missed_weight: weight of the missed-label term above (0, the default: the paper's loss).
        min_recall: the term's room ``m`` above (0, the default: only a label with no predicted voxel).
        min_specificity: the room of each foreground label's complement: a label whose soft specificity (one
            minus its mean probability over the other valid voxels) is below it adds ``w (log m - log
            specificity)`` (``nnunet_mcc.losses.base.flooded_class_penalty``); 0, the default: none.

    ``forward(x, y, loss_mask=None)``: ``x`` logits ``(B, K, *S)``; ``y`` label map ``(B, 1, *S)`` /
    ``(B, *S)`` or one-hot ``(B, K, *S)``; ``loss_mask`` ``(B, 1, *S)``, nonzero where valid (the form
    nnU-Net's ``DC_and_CE_loss`` passes, so the class fits its ``dice_class`` slot).

    **The 0/0 convention.** ``smooth`` decides it: a sample with no foreground and no error scores 1
    (loss 0); with ``smooth=0`` such a sample would be 0/0.

    Raises:
        ValueError: sigmoid activation, an unknown ``weighting`` or ``reduction``, ``smooth < 0``, a
            matrix breaking a rule (:class:`DistanceMatrixError`), ``missed_weight < 0``, ``min_recall`` outside
            [0, 1], and (in ``forward``) a prediction whose
            channels differ from the matrix's size, shapes that do not fit or labels outside 0..K-1.

    Example:
        >>> import torch
        >>> from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss
        >>> loss = GeneralizedWassersteinDiceLoss([[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]])
        >>> logits = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
        >>> loss(logits, torch.randint(0, 3, (2, 1, 16, 16, 16))).backward()
    """

    loss_name = "Generalized Wasserstein Dice"

    def __init__(self, distance_matrix, apply_nonlin: Nonlin = "softmax", weighting: str = "default",
                 batch: bool = False, ignore_index: Optional[int] = None, smooth: float = 1e-5, ddp: bool = False,
                 check_target: bool = True, reduction: str = "mean", missed_weight: float = 0.0,
                 min_recall: float = 0.0, min_specificity: float = 0.0):
        super().__init__(apply_nonlin, True, ignore_index, False, check_target, reduction, batch, ddp)
        if self.nonlin_kind == "sigmoid":
            raise ValueError("apply_nonlin: the Generalized Wasserstein Dice loss needs softmax probabilities of "
                             "mutually exclusive labels, not sigmoid regions")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        if isinstance(distance_matrix, torch.Tensor):
            distance_matrix = distance_matrix.detach().cpu().double().numpy()
        matrix = validate_distance_matrix(distance_matrix, source="distance_matrix")
        # a buffer, moved to the logits' device once (nnU-Net never moves its loss to the GPU)
        self.register_buffer("distance_matrix", torch.as_tensor(matrix, dtype=torch.float32), persistent=False)
        self.num_classes = matrix.shape[0]
        self.weighting = weighting
        self.smooth = float(smooth)
        self.init_gate(missed_weight, min_recall, None, min_specificity)  # the argmax of any activation is the logits'

    def settings(self) -> dict:
        # read from the buffer that trains, rounded so that a JSON round trip compares equal
        matrix = [[round(float(v), 6) for v in row] for row in self.distance_matrix.tolist()]
        return {"activation": self.nonlin_kind, "batch": self.batch, "distance_matrix": matrix,
                "weighting": self.weighting, "smooth": self.smooth, **self.gate_settings()}

    def _labels_and_weights(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor]):
        """Label map (B, N) int64 and voxel weights (B, N) float32 (None when every voxel counts)."""
        labels, valid = self.target_format(self.num_classes).labels(y, loss_mask, prediction=x,
                                                                    check=self.check_target)
        return labels.flatten(1), None if valid is None else valid.to(torch.float32).flatten(1)

    def statistics(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                   recall: bool = False, hard: bool = True, mass: bool = False):
        """Per-label voxel counts V and sums of W over each label's voxels S, each (B, K), or (1, K) pooled.
        With ``recall`` also each label's soft true positives (the sum of its probability over its own
        voxels) and, with ``hard`` too, its hard true positives (its voxels whose argmax is the label); with
        ``mass`` last each label's missing mass (the sum of one minus its probability over all valid voxels); all
        pooled the same way.

        All from one soft confusion matrix per sample (:func:`nnunet_mcc.losses.confusion.label_confusion`):
        with ``C[c, l]`` the probability of class c summed over the valid voxels of label l,
        ``S_l = sum_c M[l, c] C[c, l]`` and the soft true positives are C's diagonal."""
        if check_prediction(x).shape[1] != self.num_classes:
            raise ValueError(f"prediction has {x.shape[1]} channels but the distance matrix is "
                             f"{self.num_classes} x {self.num_classes}")
        labels, weights = self._labels_and_weights(x, y, loss_mask)
        x, labels = x.flatten(2), labels.unsqueeze(1)  # (B, K, N), (B, 1, N)
        if self.distance_matrix.device != x.device:
            self.distance_matrix = self.distance_matrix.to(x.device)
        weights = None if weights is None else weights.unsqueeze(1)
        with torch.no_grad():
            ones = torch.ones_like(labels, dtype=torch.float32) if weights is None else weights
            volumes = torch.zeros(x.shape[:2], device=x.device).scatter_add_(1, labels[:, 0], ones[:, 0])
            hard_tp = None
            if recall and hard:  # its voxels whose true label is the argmax (ties count; softmax keeps the order)
                hit = (x.detach().gather(1, labels) >= x.detach().amax(1, keepdim=True)).to(torch.float32) * ones
                hard_tp = torch.zeros(x.shape[:2], device=x.device).scatter_add_(1, labels[:, 0], hit[:, 0])
        confusion, missing = label_confusion(x, labels, weights, ones.clone() if mass else None,  # apply takes distinct tensors
                                             softmax=self.nonlin_kind == "softmax", nonlin=self.nonlin)
        errors = (self.distance_matrix.t().unsqueeze(0) * confusion).sum(1)  # S_l = sum_c M[l, c] C[c, l]
        stats = [volumes, errors]
        if recall:
            stats.append(torch.diagonal(confusion, dim1=1, dim2=2))
            if hard:
                stats.append(hard_tp)
        if mass:
            stats.append(missing)
        stats = torch.stack(stats, 1)  # (B, 2 to 5, K)
        if self.batch:
            stats = stats.sum(0, keepdim=True)
            if ddp_active(self.ddp):
                stats = sum_over_ranks(stats)
        return stats.unbind(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        flood = bool(self.missed_weight and self.min_specificity)
        volumes, errors, *hits = self.statistics(x, y, loss_mask, recall=bool(self.missed_weight),
                                                 hard=self.gate_needs_hard_tp, mass=flood)
        if self.weighting == "default":
            alpha = torch.ones_like(volumes)
            alpha[:, 0] = 0
            error_sum = errors.sum(-1)
        else:
            alpha = 1.0 / (volumes + 1.0)
            error_sum = (alpha * errors).sum(-1)
        true_positives = (alpha * (volumes - errors)).sum(-1)
        score = (2 * true_positives + self.smooth) / (2 * true_positives + error_sum + self.smooth)
        loss = 1 - score
        if hits:
            missing = hits.pop()[:, 1:] if flood else None
            soft_tp, *hard_tp = (h[:, 1:] for h in hits)  # the foreground labels
            fp = tn = None
            if flood:  # each foreground label's complement: every other valid voxel
                tn = missing - (volumes[:, 1:] - soft_tp)
                fp = volumes.sum(-1, keepdim=True) - volumes[:, 1:] - tn
            # an exact 0 for every label with room keeps the paper's value and gradient bit for bit
            penalty = self.gate_penalty(soft_tp, volumes[:, 1:] - soft_tp, hard_tp[0] if hard_tp else None,
                                        fp, tn).sum(-1)
            loss = loss + penalty.to(loss.dtype)
        loss = reduce_per_sample(loss.unsqueeze(-1), self.reduction, self.batch, self.ddp)
        return loss.squeeze(-1) if self.reduction == "none" else loss


def generalized_wasserstein_dice_loss(logits: torch.Tensor, target: torch.Tensor, distance_matrix,
                                      **kwargs) -> torch.Tensor:
    """Functional form of :class:`GeneralizedWassersteinDiceLoss`."""
    return GeneralizedWassersteinDiceLoss(distance_matrix, **kwargs)(logits, target)

"""Pieces shared by the losses: activation, MONAI's ``reduction``, DDP pooling, and :class:`ConfusionLoss`,
the public base of the losses built from soft confusion counts (subclass it to add a loss: see the README's
"Adding a loss")."""

import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from nnunet_mcc.losses.confusion import _onehot, soft_confusion
from nnunet_mcc.losses.targets import TargetFormat, check_prediction

Nonlin = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]
REDUCTIONS = ("mean", "sum", "none")


def resolve_nonlin(apply_nonlin: Nonlin) -> Tuple[Optional[Callable], str]:
    """Return ``(function, kind)`` with kind one of ``softmax``, ``sigmoid``, ``none``, ``custom``.

    Accepts the strings ``"softmax"`` / ``"sigmoid"`` / ``None`` or a callable (nnU-Net passes
    ``softmax_helper_dim1`` or ``torch.sigmoid`` to the losses it composes).
    """
    if apply_nonlin is None or apply_nonlin == "none":
        return None, "none"
    if apply_nonlin == "softmax":
        return (lambda x: torch.softmax(x, 1)), "softmax"
    if apply_nonlin == "sigmoid":
        return torch.sigmoid, "sigmoid"
    if callable(apply_nonlin):
        name = getattr(apply_nonlin, "__name__", "")
        if name == "sigmoid":
            return apply_nonlin, "sigmoid"
        if "softmax" in name:
            return apply_nonlin, "softmax"
        return apply_nonlin, "custom"
    raise ValueError(f"apply_nonlin must be 'softmax', 'sigmoid', None or a callable, got {apply_nonlin!r}")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (as in MONAI), got {reduction!r}")
    return reduction


def ddp_active(ddp: bool) -> bool:
    return ddp and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all DDP ranks, keeping the gradient path to this rank's contribution.

    Uses nnU-Net's ``AllGatherGrad`` (its backward all-reduces the incoming gradients), so that after
    DDP averages parameter gradients over W ranks, the result equals one process seeing all samples.
    """
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    return AllGatherGrad.apply(t.contiguous()).sum(0)


def global_batch_size(local: int, device: torch.device) -> int:
    n = torch.tensor([float(local)], device=device)
    dist.all_reduce(n)
    return int(n.item())


def mean_over_samples(per_sample: torch.Tensor, ddp: bool) -> torch.Tensor:
    """Mean of per-sample losses; under DDP over the GLOBAL batch.

    DDP averages gradients over ranks, so each rank's sum is scaled by world_size / global batch: the
    ranks' reported values then average to the global mean, and the gradients are exact even for
    unequal per-rank batches.
    """
    if not ddp_active(ddp):
        return per_sample.mean()
    world = dist.get_world_size()
    return per_sample.sum() * world / global_batch_size(per_sample.shape[0], per_sample.device)


def reduce_per_sample(loss: torch.Tensor, reduction: str, pooled: bool, ddp: bool) -> torch.Tensor:
    """MONAI's reduction of a per-sample loss ``(B, K)`` (``(1, K)`` when the batch was pooled), in float32.

    ``"mean"``: the mean over classes, then over samples (over the global batch under DDP, see
    :func:`mean_over_samples`); ``"sum"``: the sum over samples and classes; ``"none"``: the (B, K) values.
    """
    if reduction == "none":
        return loss.float()
    if reduction == "sum":
        return loss.sum().float()
    if pooled:
        return loss.mean().float()
    return mean_over_samples(loss.mean(-1), ddp).float()


class ConfusionLoss(nn.Module):
    """Base for losses built from soft per-class statistics: handles activation, nnU-Net's target forms
    (through :class:`nnunet_mcc.losses.targets.TargetFormat`), pooling over the batch and DDP ranks, and the
    loss's record of itself.

    Targets: a label map ``(B, 1, *S)`` or ``(B, *S)`` with integer values (softmax), or a one-hot /
    region target ``(B, C, *S)`` with values in {0, 1}; with ``region_ignore_channel`` a region target
    has one more channel, the last marking ignored voxels (nnU-Net's convention).

    A subclass sets ``loss_name`` (how reports name it) and extends :meth:`settings` with the arguments of
    its own that change results; the trainers record exactly that (``ComparisonTrainer.loss_settings``).
    """

    loss_name = "confusion-count loss"

    def __init__(self, apply_nonlin: Nonlin = "softmax", include_background: bool = False,
                 ignore_index: Optional[int] = None, region_ignore_channel: bool = False,
                 check_target: bool = True, reduction: str = "mean", batch: bool = False, ddp: bool = False):
        super().__init__()
        self.nonlin, self.nonlin_kind = resolve_nonlin(apply_nonlin)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index
        self.region_ignore_channel = bool(region_ignore_channel)
        self.check_target = bool(check_target)
        self.reduction = check_reduction(reduction)
        self.batch = bool(batch)
        self.ddp = bool(ddp)

    def settings(self) -> dict:
        """The settings of this loss that change results, JSON-able (subclasses add theirs)."""
        return {"activation": self.nonlin_kind, "include_background": self.include_background, "batch": self.batch}

    def init_gate(self, missed_weight: float, min_recall: float, nonlin_kind: Optional[str] = None,
                  min_specificity: float = 0.0) -> None:
        """Set the missed-class gate (:func:`missed_class_penalty` and :func:`flooded_class_penalty`): its weight
        and its room."""
        self.missed_weight = check_missed_weight(missed_weight, nonlin_kind)
        self.min_recall = check_min_recall(min_recall)
        self.min_specificity = check_min_recall(min_specificity, "min_specificity")

    def gated_confusion(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None):
        """:meth:`confusion` and the gate's penalty per class (float64; an exact 0 for every class with room)."""
        tp, fp, fn, tn, *extra = self.confusion(x, y, loss_mask, hard_tp=self.gate_needs_hard_tp,
                                                direct_tn=bool(self.missed_weight and self.min_specificity))
        hard = extra.pop(0) if self.gate_needs_hard_tp else None
        penalty = self.gate_penalty(tp, fn, hard, fp, extra[0] if extra else None)
        return tp, fp, fn, tn, penalty

    @property
    def gate_needs_hard_tp(self) -> bool:
        """Whether the gate reads the hard prediction (only the ``min_recall = 0`` rule does)."""
        return bool(self.missed_weight) and not self.min_recall

    def gate_settings(self) -> dict:
        """The gate's part of :meth:`settings`: its weight, and its room when it has a weight (a loss without
        the gate records what it always did; a room of 0 on the complement is not recorded)."""
        room = {"min_recall": self.min_recall, **({"min_specificity": self.min_specificity}
                                                  if self.min_specificity else {})}
        return {"missed_weight": self.missed_weight, **(room if self.missed_weight else {})}

    def gate_penalty(self, tp: torch.Tensor, fn: torch.Tensor, hard_tp: Optional[torch.Tensor] = None,
                     fp: Optional[torch.Tensor] = None, tn: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``missed_weight`` times :func:`missed_class_penalty` (and, with a room on the complement,
        :func:`flooded_class_penalty` of ``fp`` and ``tn``) per class (float64): an exact 0 for every class with
        room, so adding it keeps the plain loss's value and gradient bit for bit there."""
        penalty = missed_class_penalty(tp, fn, hard_tp, self.min_recall)
        if self.min_specificity:
            penalty = penalty + flooded_class_penalty(fp, tn, self.min_specificity)
        return self.missed_weight * penalty

    def target_format(self, num_channels: int) -> TargetFormat:
        return TargetFormat(num_channels, self.ignore_index, self.region_ignore_channel)

    def check_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Raise ValueError unless ``x`` is ``(batch, channels, *spatial)`` with channels the activation can use.

        A softmax over one channel is 1 at every voxel: the loss would be a constant with zero gradient and a
        training would learn nothing without a word. One foreground channel is binary (sigmoid) mode.
        """
        check_prediction(x)
        if self.nonlin_kind == "softmax" and x.shape[1] == 1:
            raise ValueError(f"{type(self).__name__}: softmax over a 1-channel prediction {tuple(x.shape)} is 1 at "
                             "every voxel, so the loss is constant with zero gradient. For one binary foreground "
                             "channel use apply_nonlin='sigmoid' (binary mode; None for probabilities), or give "
                             "the prediction one channel per class, background included")
        return x

    def _scored_start(self, x: torch.Tensor) -> int:
        """The first scored channel: channel 0 is background only for mutually exclusive classes (a single
        channel is binary foreground)."""
        return 1 if (not self.include_background and self.nonlin_kind != "sigmoid" and x.shape[1] > 1) else 0

    def confusion(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                  hard_tp: bool = False, direct_tn: bool = False):
        """Soft TP, FP, FN, TN, each (B, K), or (1, K) when pooled over the batch (and DDP ranks), float32, K
        the scored classes; with ``hard_tp`` also the number of each class's voxels predicted as the class,
        pooled the same way; with ``direct_tn`` last TN summed voxel by voxel (the TN returned fourth is the valid
        voxels less TP, FP and FN, which float32 cannot resolve when a class floods the image and TN is a sum of
        tiny terms). With probabilities p, one-hot g and valid voxels m of one class:
        TP = sum m p g, FP = sum m p (1 - g), FN = sum m (1 - p) g, TN = sum m (1 - p)(1 - g).

        All from one soft confusion matrix per sample (:mod:`nnunet_mcc.losses.confusion`): TP is its
        diagonal, TP + FP its row sums (a label map) or its mask column (one-hot and region targets)."""
        self.check_channels(x)
        labels, onehot, valid = self.target_format(x.shape[1]).labels_or_onehot(y, loss_mask, prediction=x,
                                                                                check=self.check_target)
        start, logits = self._scored_start(x), x.flatten(2)
        mask = None if valid is None else valid.to(torch.float32).flatten(2)  # (B, 1, N)
        if labels is not None:
            counts = self._label_counts(logits, labels.flatten(2), mask, start, hard_tp, direct_tn)
        else:
            counts = self._onehot_counts(logits, onehot[:, start:].flatten(2), mask, start, hard_tp, direct_tn)
        tp, sum_p, sum_g, extra = counts
        n_valid = mask.sum(-1) if mask is not None else \
            torch.full(tp.shape[:1] + (1,), float(logits.shape[-1]), device=tp.device)
        fp, fn = sum_p - tp, sum_g - tp
        tn = n_valid - tp - fp - fn
        stats = torch.stack((tp, fp, fn, tn) + extra)  # (4 to 6, B, K)
        if self.batch:
            stats = stats.sum(1, keepdim=True)
            if ddp_active(self.ddp):
                stats = sum_over_ranks(stats)
        return stats.unbind(0)

    def _label_counts(self, logits, labels, mask, start: int, hard_tp: bool, direct_tn: bool):
        """``(TP, TP + FP, TP + FN, extra)`` (B, K) of a label map (B, 1, N): C = p (m g)^T over every channel,
        its diagonal and its row sums."""
        with torch.no_grad():
            onehot = _onehot(labels, logits.shape[1], mask)  # m g (B, C, N)
            scored = onehot[:, start:]
            complement = ((1.0 if mask is None else mask) - scored) if direct_tn else None  # m (1 - g)
        confusion, direct = soft_confusion(logits, onehot, complement, start, nonlin=self.nonlin)
        tp = torch.diagonal(confusion[:, :, start:], dim1=1, dim2=2)
        extra = (self._hard_tp(logits, scored),) if hard_tp else ()
        return tp, confusion.sum(-1), scored.sum(-1), extra + ((direct,) if direct_tn else ())

    def _onehot_counts(self, logits, onehot, mask, start: int, hard_tp: bool, direct_tn: bool):
        """``(TP, TP + FP, TP + FN, extra)`` (B, K) of a one-hot or region target: C = p [m g, m]^T."""
        with torch.no_grad():
            if mask is not None:
                onehot = onehot * mask
            last = torch.ones_like(onehot[:, :1]) if mask is None else mask
            columns = torch.cat((onehot, last), 1)  # (B, K + 1, N)
            complement = ((1.0 if mask is None else mask) - onehot) if direct_tn else None  # m (1 - g)
        confusion, direct = soft_confusion(logits, columns, complement, start, nonlin=self.nonlin)
        tp = torch.diagonal(confusion[:, :, :-1], dim1=1, dim2=2)
        extra = (self._hard_tp(logits, onehot),) if hard_tp else ()
        return tp, confusion[:, :, -1], onehot.sum(-1), extra + ((direct,) if direct_tn else ())

    def _hard_tp(self, logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Per sample and scored class (B, K), the number of the class's valid voxels predicted as the
        class: the largest of all of the logits' channels (the background's included, ties counting for
        each tied class), or probability > 0.5 for sigmoid regions and a single binary channel (of the
        activation, or of the inputs without one). ``logits`` (B, C, N), ``onehot`` (B, K, N) is 0 on masked
        voxels, so they never count."""
        with torch.no_grad():
            logits = logits.detach()
            if self.nonlin_kind == "sigmoid" or logits.shape[1] == 1:
                probs = logits.float() if self.nonlin is None else self.nonlin(logits.float())
                return ((probs[:, logits.shape[1] - onehot.shape[1]:] > 0.5) & (onehot > 0)).sum(-1).float()
            # softmax keeps the logits' order: their maximum is the argmax
            predicted = logits[:, logits.shape[1] - onehot.shape[1]:] >= logits.amax(1, keepdim=True)
            return (predicted & (onehot > 0)).sum(-1).float()


def check_missed_weight(missed_weight: float, nonlin_kind: Optional[str] = None) -> float:
    """``missed_weight`` as a float; ValueError when negative, or set with a custom activation (``nonlin_kind``
    given as ``"custom"``: a loss that reads the hard prediction from the probabilities cannot know it)."""
    if not missed_weight >= 0:
        raise ValueError(f"missed_weight must be >= 0, got {missed_weight}")
    if missed_weight and nonlin_kind == "custom":
        raise ValueError("missed_weight needs apply_nonlin 'softmax', 'sigmoid' or None: the hard "
                         "prediction of a custom activation is unknown")
    return float(missed_weight)


def check_min_recall(value: float, name: str = "min_recall") -> float:
    """A room of the gate (``min_recall``, ``min_specificity``) as a float; ValueError unless 0 <= value <= 1."""
    if not 0 <= value <= 1:
        meaning = ("0: the gate acts only on a class of which no voxel is predicted" if name == "min_recall"
                   else "0: no room on the class's complement")
        raise ValueError(f"{name} must be in [0, 1] ({meaning}), got {value}")
    return float(value)


def missed_class_penalty(tp: torch.Tensor, fn: torch.Tensor, hard_tp: Optional[torch.Tensor] = None,
                         min_recall: float = 0.0, floor: float = 1e-30) -> torch.Tensor:
    r"""The missed-class gate of the confusion-count losses (MCC, GWDL, Tversky): for each class present in
    the target (``TP + FN > 0``) whose soft recall :math:`r = TP / (TP + FN)` has too little room, minus
    the log of the recall over its floor; 0 for every other class. Elementwise, in float64.

    * ``min_recall = m > 0`` (the trainers' default, 0.5): the room is a soft recall of at least ``m``.
      A present class with :math:`r < m` adds :math:`\log m - \log r`, which is 0 at :math:`r = m`
      (the loss stays continuous) and pushes the class until its voxels carry, on average, probability
      ``m``. With ``m >= 0.5`` a class of which no voxel is predicted is always below the room (its
      voxels' probabilities are all at most one half), so this subsumes the rule below, and holds the class
      well above the decision margin, where test-time mirroring cannot erase it.
    * ``min_recall = 0``: the gate acts only on a class of which no voxel is predicted as the class
      (``hard_tp == 0``, which must then be given) and adds :math:`-\log r`. It brings a lost class back to
      the margin only: one voxel predicted switches it off (docs/mcc_rare_classes.md).

    Why a log-recall: once a network stops predicting a class, the probabilities on its voxels saturate
    near 0 and an overlap loss's gradient with respect to their logits vanishes (the softmax or sigmoid
    Jacobian multiplies it by :math:`p (1 - p)`), so the class never comes back. The gradient of
    :math:`\log TP` with respect to the logit of each of the class's voxels is :math:`p_i (1 - p_i) / TP`,
    which sums to about 1 however far the class has saturated. The recall is floored at ``floor`` (a logit
    gap of about 70): below it the penalty keeps its value but has no gradient, so gradients stay finite.
    Wherever no class is gated the penalty is an exact 0 with zero gradient, so the loss it is added to
    keeps its value and gradient bit for bit.
    """
    recall = tp.double() / (tp + fn).double().clamp_min(1e-12)
    with torch.no_grad():
        present = tp + fn > 0
        if min_recall > 0:
            gate = present & (recall < min_recall)
        else:
            if hard_tp is None:
                raise ValueError("missed_class_penalty: min_recall 0 gates on the hard prediction: give hard_tp")
            gate = present & (hard_tp == 0)
    value = -torch.log(recall.clamp_min(floor))
    if min_recall > 0:
        value = value + math.log(min_recall)
    return torch.where(gate, value, torch.zeros_like(recall))


def flooded_class_penalty(fp: torch.Tensor, tn: torch.Tensor, min_specificity: float,
                          floor: float = 1e-30) -> torch.Tensor:
    r"""The gate's other side: for each class whose complement has voxels (``TN + FP > 0``) and whose soft
    specificity :math:`s = TN / (TN + FP)` is below ``min_specificity = m``, :math:`\log m - \log s`; 0 for
    every other class. Elementwise, in float64.

    A class can saturate the other way too: predicted on every voxel with a probability near 1. Its soft counts
    then have TN and FN near 0, the MCC is near 0/0 (the overlap losses near a constant), and the softmax
    Jacobian :math:`p (1 - p)` takes away the gradient that would bring it down, as it does for a class pushed
    to 0 (measured: a 0.5 % class predicted on the whole image for 50 epochs). The gradient of
    :math:`\log TN` with respect to the logit of each of the complement's voxels is :math:`-p_i (1 - p_i) / TN`,
    which sums to about -1 however far the class has flooded. The MCC is symmetric in a class and its complement;
    the gate with both rooms is too: the class keeps a soft recall of at least ``min_recall`` and its complement
    one of at least ``min_specificity``. At initialisation (probabilities near 1 / C) a specificity is about
    1 - 1 / C: with a room of one half this side is off unless a class floods; with the trainers' 0.9 it acts
    from the start, beside the recall side, as a class-balanced cross-entropy would, until the class has both
    rooms (a class predicted on half of a mostly-background image still has a specificity of one half).
    """
    specificity = tn.double() / (tn + fp).double().clamp_min(1e-12)
    with torch.no_grad():
        gate = (tn + fp > 0) & (specificity < min_specificity)
    value = math.log(min_specificity) - torch.log(specificity.clamp_min(floor))
    return torch.where(gate, value, torch.zeros_like(specificity))

"""Pieces shared by the losses: activation, MONAI's ``reduction``, DDP pooling, and :class:`ConfusionLoss`,
the public base of the losses built from soft confusion counts (subclass it to add a loss: see the README's
"Adding a loss")."""

from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

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

    def _probabilities_and_target(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor]):
        """Return float32 probabilities (B, K, N), the target as a float one-hot (B, K, N) and the valid
        mask (B, 1, N) or None, with K the scored channels (background dropped here when excluded)."""
        self.check_channels(x)
        onehot, valid = self.target_format(x.shape[1]).onehot(y, loss_mask, prediction=x, check=self.check_target)
        # float32 from here on: the sums must not overflow or lose mass under fp16/bf16 autocast
        x = x.float()
        probs = self.nonlin(x) if self.nonlin is not None else x
        mask = None if valid is None else valid.to(torch.float32).flatten(2)
        # channel 0 is background only for mutually exclusive classes (a single channel is binary foreground)
        start = 1 if (not self.include_background and self.nonlin_kind != "sigmoid" and x.shape[1] > 1) else 0
        return probs[:, start:].flatten(2), onehot[:, start:].flatten(2), mask

    def confusion(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                  hard_tp: bool = False):
        """Soft TP, FP, FN, TN, each (B, K), or (1, K) when pooled over the batch (and DDP ranks), float32, K
        the scored classes; with ``hard_tp`` also the number of each class's voxels predicted as the class,
        pooled the same way. With probabilities p, one-hot g and valid voxels m of one class:
        TP = sum m p g, FP = sum m p (1 - g), FN = sum m (1 - p) g, TN = sum m (1 - p)(1 - g)."""
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
        extra = (self._hard_tp(x, probs, onehot),) if hard_tp else ()
        stats = torch.stack((tp, fp, fn, tn) + extra)  # (4 or 5, B, K)
        if self.batch:
            stats = stats.sum(1, keepdim=True)
            if ddp_active(self.ddp):
                stats = sum_over_ranks(stats)
        return stats.unbind(0)

    def _hard_tp(self, x: torch.Tensor, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Per sample and scored class (B, K), the number of the class's valid voxels predicted as the
        class: the largest of all of ``x``'s channels (the background's included, ties counting for
        each tied class), or probability > 0.5 for sigmoid regions and a single binary channel.
        ``onehot`` is 0 on masked voxels, so they never count."""
        with torch.no_grad():
            if self.nonlin_kind == "sigmoid" or x.shape[1] == 1:
                return ((probs > 0.5) & (onehot > 0)).sum(-1).float()
            logits = x.detach().flatten(2)  # softmax keeps the logits' order: their maximum is the argmax
            predicted = logits[:, x.shape[1] - onehot.shape[1]:] >= logits.amax(1, keepdim=True)
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

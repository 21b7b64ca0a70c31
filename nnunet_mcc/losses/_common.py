"""Pieces shared by the losses: activation, MONAI's ``reduction``, DDP pooling, the confusion-count base."""

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
    """Base for losses built from soft per-class statistics: handles activation and nnU-Net's target forms
    (through :class:`nnunet_mcc.losses.targets.TargetFormat`).

    Targets: a label map ``(B, 1, *S)`` or ``(B, *S)`` with integer values (softmax), or a one-hot /
    region target ``(B, C, *S)`` with values in {0, 1}; with ``region_ignore_channel`` a region target
    has one more channel, the last marking ignored voxels (nnU-Net's convention).
    """

    def __init__(self, apply_nonlin: Nonlin = "softmax", include_background: bool = False,
                 ignore_index: Optional[int] = None, region_ignore_channel: bool = False,
                 check_target: bool = True, reduction: str = "mean"):
        super().__init__()
        self.nonlin, self.nonlin_kind = resolve_nonlin(apply_nonlin)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index
        self.region_ignore_channel = bool(region_ignore_channel)
        self.check_target = bool(check_target)
        self.reduction = check_reduction(reduction)

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

"""Pieces shared by the overlap losses: activation, target checks, ignore masks, DDP pooling."""

from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

Nonlin = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]


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


def check_logits_and_target(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return the target as (B, 1 or C, *spatial)."""
    if x.ndim < 3:
        raise ValueError(f"prediction must be (batch, channels, *spatial), got shape {tuple(x.shape)}")
    if y.ndim == x.ndim - 1:
        y = y.unsqueeze(1)
    if y.ndim != x.ndim:
        raise ValueError(f"target of shape {tuple(y.shape)} does not fit prediction of shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"target shape {tuple(y.shape)} and prediction shape {tuple(x.shape)} differ in batch or spatial size")
    if y.shape[1] not in (1, x.shape[1]):
        raise ValueError(
            f"target has {y.shape[1]} channels; expected 1 (a label map) or {x.shape[1]} (one-hot / regions)")
    return y


def check_mask(mask: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if mask.ndim == x.ndim - 1:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != x.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"loss_mask must be (batch, 1, *spatial) = {(x.shape[0], 1, *x.shape[2:])}, "
                         f"got {tuple(mask.shape)}")
    return mask


def check_label_values(y: torch.Tensor, num_classes: int, ignore_index: Optional[int]) -> None:
    """Raise a ValueError if a label map holds values outside ``[0, num_classes)`` (ignore label aside)."""
    if y.numel() == 0:
        return
    valid = (y >= 0) & (y < num_classes) & (y == torch.round(y) if y.is_floating_point() else True)
    if ignore_index is not None:
        valid |= y == ignore_index
    if not bool(valid.all()):
        bad = torch.unique(y[~valid])[:5].tolist()
        raise ValueError(f"target holds label values {bad} outside the {num_classes} classes 0..{num_classes - 1}"
                         + (f" (ignore label {ignore_index})" if ignore_index is not None else ""))


def check_binary_values(y: torch.Tensor) -> None:
    if y.dtype != torch.bool and y.numel() and not bool(((y == 0) | (y == 1)).all()):
        bad = torch.unique(y[(y != 0) & (y != 1)])[:5].tolist()
        raise ValueError(f"one-hot / region target must hold only 0 and 1, found {bad}")


def split_ignore_channel(y: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """nnU-Net region convention: the LAST target channel marks ignored voxels. Returns (regions, valid mask)."""
    if y.ndim != x.ndim or y.shape[1] != x.shape[1] + 1:
        raise ValueError(f"with an ignore channel the region target needs {x.shape[1] + 1} channels "
                         f"({x.shape[1]} regions + 1 ignore), got shape {tuple(y.shape)}")
    ignore = y[:, -1:]
    valid = ~ignore if ignore.dtype == torch.bool else ignore == 0
    return y[:, :-1], valid


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


class ConfusionLoss(nn.Module):
    """Base for losses built from soft per-class statistics: handles activation and the target forms.

    Targets: a label map ``(B, 1, *S)`` or ``(B, *S)`` with integer values (softmax), or a one-hot /
    region target ``(B, C, *S)`` with values in {0, 1}; with ``region_ignore_channel`` a region target
    has one more channel, the last marking ignored voxels (nnU-Net's convention).
    """

    def __init__(self, apply_nonlin: Nonlin = "softmax", include_background: bool = False,
                 ignore_index: Optional[int] = None, region_ignore_channel: bool = False,
                 check_target: bool = True):
        super().__init__()
        self.nonlin, self.nonlin_kind = resolve_nonlin(apply_nonlin)
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index
        self.region_ignore_channel = bool(region_ignore_channel)
        self.check_target = bool(check_target)

    def _probabilities_and_target(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor]):
        """Return float32 probabilities (B, C, N), the target as a float one-hot (B, C, N) and the valid
        mask (B, 1, N) or None. Backgound (channel 0) is dropped here when excluded."""
        if self.region_ignore_channel:
            y, valid = split_ignore_channel(y, x)
            loss_mask = valid if loss_mask is None else (check_mask(loss_mask, x).bool() & valid)
        y = check_logits_and_target(x, y)
        loss_mask = check_mask(loss_mask, x)
        num_classes = x.shape[1]
        # float32 from here on: the sums below must not overflow or lose mass under fp16/bf16 autocast
        x = x.float()
        probs = self.nonlin(x) if self.nonlin is not None else x
        with torch.no_grad():
            if y.shape[1] == num_classes and (num_classes > 1 or self.nonlin_kind != "softmax"):
                if self.check_target:
                    check_binary_values(y)
                onehot = y.float()
            else:
                if self.ignore_index is not None:
                    ignored = y == self.ignore_index
                    valid = ~ignored
                    loss_mask = valid if loss_mask is None else (loss_mask.bool() & valid)
                    y = torch.where(ignored, torch.zeros_like(y), y)
                if self.check_target:
                    check_label_values(y, num_classes, None)
                onehot = torch.zeros_like(probs).scatter_(1, y.long(), 1.0)
            mask = None if loss_mask is None else loss_mask.to(torch.float32).flatten(2)
        # channel 0 is background only for mutually exclusive classes (a single channel is binary foreground)
        start = 1 if (not self.include_background and self.nonlin_kind != "sigmoid" and num_classes > 1) else 0
        probs = probs[:, start:].flatten(2)
        onehot = onehot[:, start:].flatten(2)
        return probs, onehot, mask

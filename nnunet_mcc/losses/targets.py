"""nnU-Net's training targets, turned into what losses and metrics need: the package's one home for them.

nnU-Net hands a loss one of these target forms (after its data augmentation):

* a **label map** ``(B, 1, *S)`` of integer class values (softmax training); voxels equal to the
  dataset's ``ignore`` label are unlabelled;
* a **one-hot / region target** ``(B, C, *S)`` of 0/1 values (one channel per class, or per region in
  region-based training with one sigmoid per region);
* a **region target with an ignore channel** ``(B, C + 1, *S)``: the LAST channel marks unlabelled voxels;
* besides the target, nnU-Net's compound losses may pass a ``loss_mask`` ``(B, 1, *S)``, nonzero where valid.

:class:`TargetFormat` holds the label facts that decide the form (taken from nnU-Net's
``LabelManager`` in the trainers) and turns any target into a float one-hot ``(B, C, *S)`` or an
integer label map ``(B, 1, *S)``, with the valid-voxel mask ``(B, 1, *S)`` (``None`` when every voxel
counts). Unlabelled voxels are set to class 0 in both and left out by the mask.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch


def check_prediction(x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError unless ``x`` is ``(batch, channels, *spatial)``."""
    if x.ndim < 3:
        raise ValueError(f"prediction must be (batch, channels, *spatial), got shape {tuple(x.shape)}")
    return x


def check_target_shape(y: torch.Tensor, num_channels: int, prediction: Optional[torch.Tensor] = None,
                       extra_channel: bool = False) -> torch.Tensor:
    """Return the target as ``(B, 1 or C, *S)`` (a ``(B, *S)`` label map gains its channel axis).

    Raises:
        ValueError: a target whose batch, spatial size or channel count does not fit the prediction.
    """
    if prediction is not None:
        check_prediction(prediction)
    if prediction is not None and y.ndim == prediction.ndim - 1:
        y = y.unsqueeze(1)
    if prediction is not None:
        if y.ndim != prediction.ndim:
            raise ValueError(f"target of shape {tuple(y.shape)} does not fit prediction of shape "
                             f"{tuple(prediction.shape)}")
        if y.shape[0] != prediction.shape[0] or y.shape[2:] != prediction.shape[2:]:
            raise ValueError(f"target shape {tuple(y.shape)} and prediction shape {tuple(prediction.shape)} "
                             "differ in batch or spatial size")
    if extra_channel:
        if y.shape[1] != num_channels + 1:
            raise ValueError(f"with an ignore channel the region target needs {num_channels + 1} channels "
                             f"({num_channels} regions + 1 ignore), got shape {tuple(y.shape)}")
    elif y.shape[1] not in (1, num_channels):
        raise ValueError(f"target has {y.shape[1]} channels; expected 1 (a label map) or {num_channels} "
                         "(one-hot / regions)")
    return y


def check_loss_mask(mask: Optional[torch.Tensor], y: torch.Tensor) -> Optional[torch.Tensor]:
    """``loss_mask`` as ``(B, 1, *S)`` bool, or None. Raises ValueError when its shape does not fit."""
    if mask is None:
        return None
    if mask.ndim == y.ndim - 1:
        mask = mask.unsqueeze(1)
    if mask.ndim != y.ndim or mask.shape[0] != y.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != y.shape[2:]:
        raise ValueError(f"loss_mask must be (batch, 1, *spatial) = {(y.shape[0], 1, *y.shape[2:])}, "
                         f"got {tuple(mask.shape)}")
    return mask.bool()


def check_label_values(y: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError if a label map holds values outside ``0..num_classes-1`` or non-integers."""
    if y.numel() == 0:
        return
    valid = (y >= 0) & (y < num_classes)
    if y.is_floating_point():
        valid &= y == torch.round(y)
    if not bool(valid.all()):
        bad = torch.unique(y[~valid])[:5].tolist()
        raise ValueError(f"target holds label values {bad} outside the {num_classes} classes 0..{num_classes - 1}")


def check_binary_values(y: torch.Tensor) -> None:
    """Raise ValueError if a one-hot / region target holds anything but 0 and 1."""
    if y.dtype != torch.bool and y.numel() and not bool(((y == 0) | (y == 1)).all()):
        bad = torch.unique(y[(y != 0) & (y != 1)])[:5].tolist()
        raise ValueError(f"one-hot / region target must hold only 0 and 1, found {bad}")


def _and(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return b if a is None else (a if b is None else a & b)


@dataclass(frozen=True)
class TargetFormat:
    """The label facts that decide how a target is read.

    Args:
        num_channels: C, the prediction's channels (classes for softmax, regions for sigmoid).
        ignore_label: label-map value of unlabelled voxels (nnU-Net's ``ignore`` label), or None.
        region_ignore_channel: the target has C + 1 channels, the last marking unlabelled voxels
            (nnU-Net's region training with an ignore label).

    A target with C channels (C > 1) is read as one-hot, one with 1 channel as a label map; with
    C = 1 (a single binary channel) both readings agree.
    """

    num_channels: int
    ignore_label: Optional[int] = None
    region_ignore_channel: bool = False

    def __post_init__(self):
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
        if self.ignore_label is not None and (isinstance(self.ignore_label, bool)
                                              or not isinstance(self.ignore_label, int)):
            raise ValueError(f"ignore_label must be an int or None, got {self.ignore_label!r}")
        if self.region_ignore_channel and self.ignore_label is not None:
            raise ValueError("a region target marks unlabelled voxels with its last channel, not an ignore_label")

    @property
    def ce_ignore_index(self) -> int:
        """The ``ignore_index`` of torch's (and nnU-Net's) cross-entropy on label maps: the ignore label, or
        torch's default -100 (no voxel ignored)."""
        return -100 if self.ignore_label is None else self.ignore_label

    @classmethod
    def from_dataset_json(cls, dataset_json: dict) -> "TargetFormat":
        """The form a dataset's training targets take, from its dataset.json alone (``nnunet_mcc.labels``'
        rules; compare reads the ignore label through this without building nnU-Net's LabelManager)."""
        from nnunet_mcc import labels

        ignore = labels.ignore_label(dataset_json)
        if labels.is_region_based(dataset_json):
            regions = [k for k in dataset_json["labels"] if k not in ("background", "ignore")]
            return cls(len(regions), None, ignore is not None)
        classes = [k for k in dataset_json["labels"] if k != "ignore"]
        return cls(max(len(classes), 1), ignore)

    @classmethod
    def from_label_manager(cls, label_manager) -> "TargetFormat":
        """The form nnU-Net's training targets take for a dataset (``trainer.label_manager``)."""
        regions = label_manager.has_regions
        return cls(label_manager.num_segmentation_heads, None if regions else label_manager.ignore_label,
                   regions and label_manager.has_ignore_label)

    def _split(self, y: torch.Tensor, loss_mask: Optional[torch.Tensor], prediction: Optional[torch.Tensor],
               check: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor], bool]:
        """(target without the ignore channel, valid mask, is_label_map); ignored label-map voxels set to 0."""
        y = check_target_shape(y, self.num_channels, prediction, self.region_ignore_channel)
        valid = check_loss_mask(loss_mask, y)
        if self.region_ignore_channel:
            ignore = y[:, -1:]
            valid = _and(valid, ~ignore.bool() if ignore.dtype == torch.bool else ignore == 0)
            y = y[:, :-1]
        is_label_map = y.shape[1] == 1 and (self.num_channels > 1 or self.ignore_label is not None)
        if is_label_map:
            if self.ignore_label is not None:
                labelled = y != self.ignore_label
                valid = _and(valid, labelled)
                y = torch.where(labelled, y, torch.zeros_like(y))
            if check:
                check_label_values(y, max(self.num_channels, 2))
        elif check:
            check_binary_values(y)
        return y, valid, is_label_map

    # no_grad as a ``with`` block, not a decorator: torch.compile cannot trace a decorated method of a
    # TargetFormat built inside the compiled loss (a graph break at every call)
    def onehot(self, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
               prediction: Optional[torch.Tensor] = None, check: bool = True
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(one-hot float32 (B, C, *S), valid bool (B, 1, *S) or None)``.

        Raises:
            ValueError: wrong shapes, label values outside the classes, or non-binary one-hot values.
        """
        with torch.no_grad():
            y, valid, is_label_map = self._split(y, loss_mask, prediction, check)
            if not is_label_map:
                return y.float(), valid
            if self.num_channels == 1:  # a binary channel read from a {0, 1} label map
                return (y == 1).float(), valid
            onehot = torch.zeros((y.shape[0], self.num_channels, *y.shape[2:]), device=y.device,
                                 dtype=torch.float32)
            return onehot.scatter_(1, y.long(), 1.0), valid

    def labels_or_onehot(self, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                         prediction: Optional[torch.Tensor] = None, check: bool = True
                         ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(label map int64 (B, 1, *S) or None, one-hot float32 (B, C, *S) or None, valid or None)``: the label
        map where the target is one of several classes (every voxel then has exactly one), else the one-hot or
        region target (as :meth:`onehot`). Raises ValueError as :meth:`onehot`."""
        with torch.no_grad():
            y, valid, is_label_map = self._split(y, loss_mask, prediction, check)
            if is_label_map and self.num_channels > 1:
                return y.long(), None, valid
            return None, ((y == 1).float() if is_label_map else y.float()), valid

    def labels(self, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
               prediction: Optional[torch.Tensor] = None, check: bool = True
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(label map int64 (B, 1, *S), valid bool (B, 1, *S) or None)``; a one-hot target gives its argmax.

        Raises:
            ValueError: as :meth:`onehot`.
        """
        with torch.no_grad():
            y, valid, is_label_map = self._split(y, loss_mask, prediction, check)
            return (y.long() if is_label_map else y.argmax(1, keepdim=True)), valid

    def valid(self, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Only the valid-voxel mask (B, 1, *S), or None when every voxel counts."""
        with torch.no_grad():
            return self._split(y, loss_mask, None, check=False)[1]

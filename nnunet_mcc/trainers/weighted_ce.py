"""Cross-entropy weighted by each class's marginal voxel frequency in the training set (seed 003).

The frequency ``f_c`` of class ``c`` is its share of the labelled voxels over the preprocessed
training cases of the fold (ignore-label voxels left out; nnU-Net's ``-1`` outside the crop counts
as background). The weights are inverse frequencies, normalised so the average voxel weight over
the training set is 1 (the loss keeps the scale of plain CE)::

    w_c = f_c ** -p / sum_j f_j ** (1 - p)        (so that sum_c f_c * w_c = 1)

with ``p = class_weight_power`` (1: inverse frequency as in Chan et al. 2019; 0.5: a milder inverse
square root; 0: plain CE). A balanced dataset gives ``w_c = 1``. Classes absent from the training
cases get weight 1 (they never occur as targets).

Region-based datasets (sigmoid outputs): each region is a binary problem, weighted with BCE's
``pos_weight_r = ((1 - f_r) / f_r) ** p`` so its voxels inside and outside carry equal total weight.

References:
    R. Chan, M. Rottmann, F. Hüger, P. Schlicht, H. Gottschalk. Application of decision rules for
    handling class imbalance in semantic segmentation. arXiv:1901.08394, 2019.
"""

from typing import Optional

import numpy as np
import torch
from torch import nn
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

from nnunet_mcc.trainers.base import ComparisonTrainer


def inverse_frequency_weights(frequencies, power: float = 1.0) -> np.ndarray:
    """``w_c = f_c^-p / sum_j f_j^(1-p)`` over the classes present (f > 0); absent classes get 1."""
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or np.any(f < 0) or not np.any(f > 0):
        raise ValueError(f"frequencies must be a 1D array of non-negative values with one > 0, got {f}")
    if power < 0:
        raise ValueError(f"class_weight_power must be >= 0, got {power}")
    present = f > 0
    weights = np.ones_like(f)
    weights[present] = f[present] ** -power / np.sum(f[present] ** (1 - power))
    return weights


def region_pos_weights(frequencies, power: float = 1.0) -> np.ndarray:
    """BCE ``pos_weight_r = ((1 - f_r) / f_r)^p``; 1 where a region is absent or covers everything."""
    f = np.asarray(frequencies, dtype=np.float64)
    weights = np.ones_like(f)
    usable = (f > 0) & (f < 1)
    weights[usable] = ((1 - f[usable]) / f[usable]) ** power
    return weights


class MaskedBCEWithLogits(nn.Module):
    """Binary cross-entropy per region channel, mean over valid voxels x channels.

    With ``ignore_channel`` the target has one more channel, the last marking ignored voxels
    (nnU-Net's region convention). ``pos_weight``: one weight per region, or None.
    """

    def __init__(self, pos_weight: Optional[torch.Tensor] = None, ignore_channel: bool = False):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())
        self.ignore_channel = ignore_channel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = None
        if self.ignore_channel:
            valid = (target[:, -1:] == 0).float()
            target = target[:, :-1]
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = self.pos_weight.to(logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none",
                                                              pos_weight=pos_weight)
        if valid is None:
            return loss.mean()
        return (loss * valid).sum() / torch.clip(valid.sum() * loss.shape[1], min=1e-8)


class ClassFrequencyWeightedCE:
    """Mixin for nnU-Net trainers: the frequency-weighted (B)CE of this module, built from the fold's
    training cases. Settings: ``class_weight_power`` (class attribute)."""

    class_weight_power: float = 1.0

    def training_label_frequencies(self) -> np.ndarray:
        """Share of each label value 0..max over the labelled voxels of this fold's training cases."""
        labels = self.label_manager.all_labels
        ignore = self.label_manager.ignore_label
        n_bins = max(labels + ([ignore] if ignore is not None else [])) + 2  # +1 shift for nnU-Net's -1
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(tr_keys))
        counts = np.zeros(n_bins, dtype=np.float64)
        for key in dataset.identifiers:
            seg = np.asarray(dataset.load_case(key)[1][:]).astype(np.int64).ravel()
            counts += np.bincount(seg + 1, minlength=n_bins)[:n_bins]
        counts[1] += counts[0]  # -1 (outside nnU-Net's crop) is background
        counts = counts[1:]
        if ignore is not None:
            counts[ignore] = 0
        if counts.sum() == 0:
            raise RuntimeError(f"no labelled voxels in the training cases of fold {self.fold}")
        return counts / counts.sum()

    def class_frequency_weights(self) -> np.ndarray:
        """CE weights per label (label mode) or BCE pos_weight per region (region mode); logged."""
        label_frequencies = self.training_label_frequencies()
        lm = self.label_manager
        if lm.has_regions:
            frequencies = np.array([label_frequencies[list(np.atleast_1d(region))].sum()
                                    for region in lm.foreground_regions])
            weights = region_pos_weights(frequencies, self.class_weight_power)
            kind = "BCE pos_weight per region"
        else:
            frequencies = label_frequencies[:len(lm.all_labels)]
            weights = inverse_frequency_weights(frequencies, self.class_weight_power)
            kind = "CE weight per class"
        self.print_to_log_file(f"Class frequencies in the training cases of fold {self.fold}: "
                               f"{np.round(frequencies, 6).tolist()}; {kind} (power {self.class_weight_power}): "
                               f"{np.round(weights, 4).tolist()}")
        return weights

    def _build_weighted_ce(self) -> nn.Module:
        """The weighted loss for one output (not wrapped for deep supervision)."""
        weights = torch.tensor(self.class_frequency_weights(), dtype=torch.float32, device=self.device)
        lm = self.label_manager
        if lm.has_regions:
            return MaskedBCEWithLogits(weights, ignore_channel=lm.has_ignore_label)
        return RobustCrossEntropyLoss(weight=weights, ignore_index=lm.ignore_label if lm.has_ignore_label else -100)


class nnUNetTrainerWeightedCE(ClassFrequencyWeightedCE, ComparisonTrainer):
    """Class-frequency weighted cross-entropy alone (weighted BCE for regions); see the module docstring."""

    def _build_loss(self):
        return self._wrap_deep_supervision(self._build_weighted_ce())


TRAINERS = [nnUNetTrainerWeightedCE]

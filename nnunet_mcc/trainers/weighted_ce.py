"""Cross-entropy weighted by each class's marginal voxel frequency in the fold's training cases (seed 003).

The frequency ``f_c`` of class ``c`` is its share of the labelled voxels over the preprocessed training
cases of the fold (ignore-label voxels left out; nnU-Net's ``-1`` outside the crop counts as
background). The weight formulas and the masked BCE live in ``nnunet_mcc.losses.weighted_ce``; this
module counts the voxels, once per fold and preprocessed data: the counts are cached beside the plans
(``nnunet_mcc_label_counts_<data identifier>_fold_<f>.json`` in the preprocessed dataset folder) and
reused by later builds of the loss (``--c``, ``--val``) while the split and the preprocessed files stay
the same.
"""

import os
from typing import Optional

import numpy as np
import torch
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from torch import nn

from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json, write_json
from nnunet_mcc.losses.weighted_ce import MaskedBCEWithLogits, inverse_frequency_weights, region_pos_weights
from nnunet_mcc.trainers.base import ComparisonTrainer


def _newest_mtime(folder: str) -> float:
    with os.scandir(folder) as entries:
        return max((e.stat().st_mtime for e in entries if e.is_file()), default=0.0)


class TrainingLabelCounts:
    """Mixin for nnU-Net trainers: voxels per label over the fold's training cases, counted once and cached."""

    def _label_count_cache(self) -> Optional[str]:
        base = getattr(self, "preprocessed_dataset_folder_base", None)
        if not base:
            return None
        identifier = os.path.basename(os.path.normpath(self.preprocessed_dataset_folder))
        return os.path.join(base, f"nnunet_mcc_label_counts_{identifier}_fold_{self.fold}.json")

    def _count_labels(self, tr_keys, n_bins: int) -> np.ndarray:
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(tr_keys))
        counts = np.zeros(n_bins, dtype=np.float64)
        for key in dataset.identifiers:
            seg = np.asarray(dataset.load_case(key)[1][:]).astype(np.int64).ravel()
            counts += np.bincount(seg + 1, minlength=n_bins)[:n_bins]
        return counts

    def training_label_counts(self) -> np.ndarray:
        """Voxels per label value -1 (outside the crop), 0, 1, ... over this fold's training cases (cached)."""
        labels = self.label_manager.all_labels
        ignore = self.label_manager.ignore_label
        n_bins = max(labels + ([ignore] if ignore is not None else [])) + 2  # +1 shift for nnU-Net's -1
        tr_keys, _ = self.do_split()
        cache = self._label_count_cache()
        key = {"training_cases": sorted(tr_keys), "n_bins": n_bins,
               "data_mtime": _newest_mtime(self.preprocessed_dataset_folder) if cache else None}
        if cache and os.path.isfile(cache):
            try:
                cached = read_json(cache, "label-count cache")
                if all(cached.get(k) == v for k, v in key.items()) and len(cached["counts"]) == n_bins:
                    return np.asarray(cached["counts"], dtype=np.float64)
            except (UserError, AttributeError, KeyError, TypeError):
                pass  # an unreadable cache is counted again and rewritten
        counts = self._count_labels(tr_keys, n_bins)
        if cache:
            try:
                write_json(cache, {**key, "counts": counts.tolist()}, "label-count cache")
            except UserError as e:
                self.print_to_log_file(f"Label counts not cached ({e}); they will be counted again next time")
        return counts

    def training_label_frequencies(self) -> np.ndarray:
        """Share of each label value 0..max over the labelled voxels of this fold's training cases."""
        counts = self.training_label_counts().copy()
        ignore = self.label_manager.ignore_label
        counts[1] += counts[0]  # -1 (outside nnU-Net's crop) is background
        counts = counts[1:]
        if ignore is not None:
            counts[ignore] = 0
        if counts.sum() == 0:
            raise RuntimeError(f"no labelled voxels in the training cases of fold {self.fold}")
        return counts / counts.sum()


class ClassFrequencyWeightedCE(TrainingLabelCounts):
    """Mixin for nnU-Net trainers: the frequency-weighted (B)CE of ``nnunet_mcc.losses.weighted_ce``, built
    from the fold's training cases. Settings: ``class_weight_power`` (class attribute)."""

    class_weight_power: float = 1.0

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
        self.class_weight_record = {"class_weight_power": self.class_weight_power, "kind": kind,
                                    "class_frequencies": [round(float(f), 8) for f in frequencies],
                                    "weights": [round(float(w), 6) for w in weights]}
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
        return RobustCrossEntropyLoss(weight=weights, ignore_index=self.target_format.ce_ignore_index)

    def loss_settings(self) -> dict:
        settings = super().loss_settings()
        settings["settings"]["class_weights"] = getattr(self, "class_weight_record", None)
        return settings


class nnUNetTrainerWeightedCE(ClassFrequencyWeightedCE, ComparisonTrainer):
    """Class-frequency weighted cross-entropy alone (weighted BCE for regions); see the module docstring."""

    def _build_loss(self):
        return self._wrap_deep_supervision(self._build_weighted_ce())


TRAINERS = [nnUNetTrainerWeightedCE]

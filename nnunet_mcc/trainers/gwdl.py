"""Trainers with the Generalized Wasserstein Dice loss (seed 000), alone and with cross-entropy.

The class distance matrix comes from, in this order: the environment variable
``NNUNET_MCC_GWDL_MATRIX`` (a JSON file keyed by label names, or a preset name such as ``brats``),
the trainer's ``gwdl_matrix`` attribute (same forms; set by variants such as
``nnUNetTrainerGWDL_BraTS``), the label hierarchy in dataset.json (``evaluation_regions``), and
finally the 0/1 matrix. The matrix is resolved and validated before anything is written, then
recorded in the training log and as ``gwdl_distance_matrix.json`` in the fold's output folder.
"""

import os
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import write_json
from nnunet_mcc.budget import GWDL_MATRIX_VARIABLE
from nnunet_mcc.losses.distance_matrix import (PRESETS, DistanceMatrixError, format_matrix, matrix_to_json,
                                               resolve_distance_matrix)
from nnunet_mcc.losses.gwdl import GeneralizedWassersteinDiceLoss
from nnunet_mcc.trainers.base import GATE_MIN_SPECIFICITY, ComparisonTrainer, gate_identity
from nnunet_mcc.trainers.weighted_ce import TrainingLabelCounts

MATRIX_FILE_NAME = "gwdl_distance_matrix.json"
# GWDL's room for a present label's soft recall, above the decision margin rather than at it. Its loss is nearly
# indifferent between a nested label and its neighbour in a tree matrix (a voxel split half and half between labels
# 0.33 apart costs a sixth of a miss), so for GWDL the gate's room is what holds such a label; at one half (the
# MCC's and Tversky's room, whose own losses push a label past the margin) a rare label sat at the margin, where
# test-time mirroring erased it in 1 of 15 runs on the rare-class dataset and in 1 of 25 on the demo's; at 0.7 in none
# (docs/mcc_rare_classes.md).
GWDL_MIN_RECALL = 0.7


def close_rare_labels(matrix: np.ndarray, names: List[str], foreground_share: np.ndarray, rare_below: float,
                      closer_than: float) -> List[str]:
    """Foreground labels that cover less than ``rare_below`` of the foreground voxels (``foreground_share``
    per label value, background's entry ignored) and lie closer than ``closer_than`` to another foreground
    label: the ones a lenient matrix lets the network give to their neighbour at little cost."""
    out = []
    for label in range(1, len(names)):
        others = [matrix[label, other] for other in range(1, len(names)) if other != label]
        if 0 < foreground_share[label] < rare_below and others and min(others) < closer_than:
            near = min((o for o in range(1, len(names)) if o != label), key=lambda o: matrix[label, o])
            out.append(f"{names[label]} ({foreground_share[label]:.1%} of the foreground, {matrix[label, near]:.2f} "
                       f"from {names[near]})")
    return out


class nnUNetTrainerGWDL(TrainingLabelCounts, ComparisonTrainer):
    """Generalized Wasserstein Dice loss alone (softmax over labels, background weight 0), with the
    missed-label gate (``gwdl_missed_weight = 1``).

    Statistics per sample or pooled over the batch (and DDP ranks) as the plans' ``batch_dice`` says.
    Region-based datasets are refused at initialisation: the loss needs exclusive labels.

    The gate: a label present in the batch whose soft recall is below ``gwdl_min_recall`` (0.7, above the
    margin: ``GWDL_MIN_RECALL``) adds ``log 0.7 - log recall`` (``GeneralizedWassersteinDiceLoss(missed_weight=...,
    min_recall=...)``); a label whose soft specificity is below ``gwdl_min_specificity`` (0.9), one flooding the
    image, adds ``log 0.9 - log specificity``; wherever every present label has a soft recall of at least 0.7 and a
    soft specificity of at least 0.9 the loss is exactly Fidon et al.'s.
    Without it, the paper's loss lost a whole label on the demo's dataset whatever the matrix (tree, 0/1,
    BraTS), the weighting or the learning rate: once the network gives a label's voxels to a neighbour, the
    label's probability saturates and its gradient vanishes (docs/gwdl.md). A gate acting only while no
    voxel was predicted (``gwdl_min_recall = 0``) brought such a label back to the margin only, and a label
    was still lost in 1 of 3 folds; a room of one half (the MCC's) left it at the margin too. A subclass with ``gwdl_missed_weight = 0`` trains the paper's loss and
    warns at start.
    """

    gwdl_matrix: Optional[str] = None  # JSON file path or preset name; the environment variable wins
    gwdl_weighting: str = "default"  # or "GDL"
    gwdl_missed_weight: float = 1.0  # the missed-label gate of GeneralizedWassersteinDiceLoss (0: the paper's loss)
    gwdl_min_recall: float = GWDL_MIN_RECALL  # its room (0: only a label of which no voxel is predicted)
    gwdl_min_specificity: float = GATE_MIN_SPECIFICITY  # the room of a label's complement (0: none)
    # without the gate, the start-up warning names the labels under this share of the foreground voxels that
    # lie closer than this to another foreground label: the cheapest to lose
    gwdl_warn_rare_below: float = 0.02
    gwdl_warn_closer_than: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # checked before nnU-Net creates the output folder and log, so a refused run leaves nothing behind
        if PlansManager(plans).get_label_manager(dataset_json).has_regions:
            raise UserError(
                f"{type(self).__name__}: this dataset is region-based (dataset.json 'labels' holds lists of "
                "values, trained with one sigmoid per region). The Generalized Wasserstein Dice loss compares a "
                "softmax distribution over mutually exclusive labels with the true label, so it cannot train "
                "overlapping regions. Convert the dataset in label mode (one value per label, the hierarchy in "
                "'evaluation_regions'; e.g. nnunet-mcc convert brats15 ... --label-mode labels), or use "
                "nnUNetTrainerMCC / nnUNetTrainerMCC_CE or nnU-Net's own Dice trainers for regions.")
        self.gwdl_matrix_setting, matrix, names, source = self.resolve_matrix(dataset_json)
        self.gwdl_distance_matrix, self.gwdl_label_names, self.gwdl_matrix_source = matrix, names, source
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def resolve_matrix(cls, dataset_json: dict, environ=os.environ):
        """``(setting, M, label names, source)``: the matrix a run of this class uses on ``dataset_json``
        (``NNUNET_MCC_GWDL_MATRIX`` first, then ``gwdl_matrix``, the label hierarchy, the 0/1 matrix)."""
        setting = environ.get(GWDL_MATRIX_VARIABLE, "").strip() or cls.gwdl_matrix
        is_preset = setting in PRESETS
        matrix, names, source = resolve_distance_matrix(dataset_json, matrix_file=None if is_preset else setting,
                                                        preset=setting if is_preset else None)
        return setting, matrix, names, source

    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=os.environ) -> dict:
        try:
            _, matrix, names, _ = cls.resolve_matrix(dataset_json, environ)
        except DistanceMatrixError as e:
            raise UserError(f"{cls.__name__}: {e}") from None
        return {"distance_matrix": [[round(float(v), 6) for v in row] for row in matrix], "label_names": list(names),
                "weighting": cls.gwdl_weighting, **gate_identity(cls.gwdl_missed_weight, cls.gwdl_min_recall,
                                                                        cls.gwdl_min_specificity)}

    def on_train_start(self):
        super().on_train_start()
        if not self.gwdl_missed_weight and self._uses_gwdl_alone():
            self._warn_without_gate()

    def _uses_gwdl_alone(self) -> bool:
        return type(self)._build_loss is nnUNetTrainerGWDL._build_loss  # with CE the CE keeps every label's gradient

    def _warn_without_gate(self) -> None:
        """One line at start: the paper's loss without the gate loses labels (docs/gwdl.md), naming the rare
        labels close to another in the matrix, the cheapest to lose."""
        frequencies = self.training_label_frequencies()[:len(self.gwdl_label_names)].copy()
        frequencies[0] = 0
        share = frequencies / frequencies.sum() if frequencies.sum() else frequencies
        rare = close_rare_labels(self.gwdl_distance_matrix, self.gwdl_label_names, share, self.gwdl_warn_rare_below,
                                 self.gwdl_warn_closer_than)
        self.print_to_log_file(
            "WARNING: GWDL without the missed-label gate (gwdl_missed_weight 0): on the demo's dataset this loss "
            "stopped predicting a whole label in every fold, whatever the matrix, weighting or learning rate, and "
            "nnUNetTrainerGWDL_CE in none (docs/gwdl.md)" + (f"; rare labels close to another in this matrix (from {self.gwdl_matrix_source}), the "
                                f"cheapest to lose: {', '.join(rare)}" if rare else ""))

    def _gwdl_kwargs(self) -> dict:
        # target values were checked by nnU-Net's preprocessing: skip the per-call check (a device sync)
        return {"distance_matrix": self.gwdl_distance_matrix, "weighting": self.gwdl_weighting,
                "batch": self.configuration_manager.batch_dice, "ddp": self.is_ddp, "check_target": False,
                "missed_weight": self.gwdl_missed_weight, "min_recall": self.gwdl_min_recall,
                "min_specificity": self.gwdl_min_specificity}

    def _record_distance_matrix(self) -> None:
        self.print_to_log_file(f"Generalized Wasserstein Dice loss, weighting {self.gwdl_weighting!r}, "
                               f"batch statistics {self.configuration_manager.batch_dice}; class distance matrix "
                               f"from {self.gwdl_matrix_source}:\n"
                               + format_matrix(self.gwdl_distance_matrix, self.gwdl_label_names))
        if self.local_rank == 0:
            write_json(join(self.output_folder, MATRIX_FILE_NAME),
                       matrix_to_json(self.gwdl_distance_matrix, self.gwdl_label_names, self.gwdl_matrix_source),
                       "GWDL distance matrix")

    def _build_loss(self):
        self._record_distance_matrix()
        loss = GeneralizedWassersteinDiceLoss(ignore_index=self.target_format.ignore_label, **self._gwdl_kwargs())
        return self._wrap_deep_supervision(loss)

    def loss_settings(self) -> dict:
        settings = super().loss_settings()  # the matrix, weighting and gate as the loss reports them
        settings["settings"].update({"label_names": list(self.gwdl_label_names),
                                     "matrix_source": self.gwdl_matrix_source})
        return settings


class nnUNetTrainerGWDL_CE(nnUNetTrainerGWDL):
    """Generalized Wasserstein Dice + cross-entropy 1:1, nnU-Net's ``DC_and_CE_loss`` with GWDL in the Dice slot
    (which also handles the ignore label). The cross-entropy keeps a gradient for a label the network has
    stopped predicting, so the GWDL term is the paper's (no gate)."""

    gwdl_missed_weight = 0.0

    def _build_loss(self):
        self._record_distance_matrix()
        loss = DC_and_CE_loss(self._gwdl_kwargs(), {}, weight_ce=1, weight_dice=1,
                              ignore_label=self.target_format.ignore_label,
                              dice_class=GeneralizedWassersteinDiceLoss)
        return self._wrap_deep_supervision(loss)


class nnUNetTrainerGWDL_BraTS(nnUNetTrainerGWDL):
    """GWDL with Fidon et al.'s BraTS matrix, mapped onto dataset.json's labels by name (background,
    necrosis, edema, non_enhancing_tumor, enhancing_tumor, or a subset)."""

    gwdl_matrix = "brats"


class nnUNetTrainerGWDL_CE_BraTS(nnUNetTrainerGWDL_CE):
    """GWDL + CE with the BraTS matrix of the paper (mapped by label name)."""

    gwdl_matrix = "brats"


class nnUNetTrainerGWDL_GDL(nnUNetTrainerGWDL):
    """GWDL with the GDL weighting (inverse label volumes, background included)."""

    gwdl_weighting = "GDL"


TRAINERS = [nnUNetTrainerGWDL, nnUNetTrainerGWDL_CE, nnUNetTrainerGWDL_BraTS, nnUNetTrainerGWDL_CE_BraTS,
            nnUNetTrainerGWDL_GDL]

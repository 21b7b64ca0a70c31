"""Trainers with the Generalized Wasserstein Dice loss (seed 000), alone and with cross-entropy.

The class distance matrix comes from, in this order: the environment variable
``NNUNET_MCC_GWDL_MATRIX`` (a JSON file keyed by label names, or a preset name such as ``brats``),
the trainer's ``gwdl_matrix`` attribute (same forms; set by variants such as
``nnUNetTrainerGWDL_BraTS``), the label hierarchy in dataset.json (``evaluation_regions``), and
finally the 0/1 matrix. The matrix is resolved and validated before anything is written, then
recorded in the training log and as ``gwdl_distance_matrix.json`` in the fold's output folder.
"""

import os
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mcc.errors import UserError
from nnunet_mcc.losses.distance_matrix import (MATRIX_ENV_VARIABLE, PRESETS, format_matrix, matrix_to_json,
                                               resolve_distance_matrix)
from nnunet_mcc.losses.gwdl import GeneralizedWassersteinDiceLoss
from nnunet_mcc.trainers.base import ComparisonTrainer

MATRIX_FILE_NAME = "gwdl_distance_matrix.json"


class nnUNetTrainerGWDL(ComparisonTrainer):
    """Generalized Wasserstein Dice loss alone (softmax over labels, background weight 0).

    Statistics per sample or pooled over the batch (and DDP ranks) as the plans' ``batch_dice`` says.
    Region-based datasets are refused at initialisation: the loss needs exclusive labels.
    """

    gwdl_matrix: Optional[str] = None  # JSON file path or preset name; the environment variable wins
    gwdl_weighting: str = "default"  # or "GDL"

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
        self.gwdl_matrix_setting = os.environ.get(MATRIX_ENV_VARIABLE, "").strip() or self.gwdl_matrix
        is_preset = self.gwdl_matrix_setting in PRESETS
        matrix, names, source = resolve_distance_matrix(
            dataset_json, matrix_file=None if is_preset else self.gwdl_matrix_setting,
            preset=self.gwdl_matrix_setting if is_preset else None)
        self.gwdl_distance_matrix, self.gwdl_label_names, self.gwdl_matrix_source = matrix, names, source
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _gwdl_kwargs(self) -> dict:
        # target values were checked by nnU-Net's preprocessing: skip the per-call check (a device sync)
        return {"distance_matrix": self.gwdl_distance_matrix, "weighting": self.gwdl_weighting,
                "batch": self.configuration_manager.batch_dice, "ddp": self.is_ddp, "check_target": False}

    def _record_distance_matrix(self) -> None:
        self.print_to_log_file(f"Generalized Wasserstein Dice loss, weighting {self.gwdl_weighting!r}, "
                               f"batch statistics {self.configuration_manager.batch_dice}; class distance matrix "
                               f"from {self.gwdl_matrix_source}:\n"
                               + format_matrix(self.gwdl_distance_matrix, self.gwdl_label_names))
        if self.local_rank == 0:
            save_json(matrix_to_json(self.gwdl_distance_matrix, self.gwdl_label_names, self.gwdl_matrix_source),
                      join(self.output_folder, MATRIX_FILE_NAME), sort_keys=False)

    def _build_loss(self):
        self._record_distance_matrix()
        loss = GeneralizedWassersteinDiceLoss(ignore_index=self.label_manager.ignore_label, **self._gwdl_kwargs())
        return self._wrap_deep_supervision(loss)

    def loss_settings(self) -> dict:
        settings = super().loss_settings()
        settings["settings"].update({
            "distance_matrix": [[float(v) for v in row] for row in self.gwdl_distance_matrix],
            "label_names": list(self.gwdl_label_names), "matrix_source": self.gwdl_matrix_source,
            "weighting": self.gwdl_weighting, "batch": bool(self.configuration_manager.batch_dice)})
        return settings


class nnUNetTrainerGWDL_CE(nnUNetTrainerGWDL):
    """Generalized Wasserstein Dice + cross-entropy 1:1, nnU-Net's ``DC_and_CE_loss`` with GWDL in the Dice slot
    (which also handles the ignore label)."""

    def _build_loss(self):
        self._record_distance_matrix()
        loss = DC_and_CE_loss(self._gwdl_kwargs(), {}, weight_ce=1, weight_dice=1,
                              ignore_label=self.label_manager.ignore_label,
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

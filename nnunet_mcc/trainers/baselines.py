"""nnU-Net's own losses with this package's budget knobs and MCC logging, for fair comparisons.

The losses are exactly nnU-Net's (the classes below only add ``ComparisonTrainer``'s knobs), so a
short CPU cross-validation can run the references with the same budget as the new losses. For full
trainings compare against the stock ``nnUNetTrainer`` / ``nnUNetTrainerCELoss`` directly.
"""

from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerDiceLoss import nnUNetTrainerDiceLoss

from nnunet_mcc.trainers.base import ComparisonTrainer


class nnUNetTrainerBaseline(ComparisonTrainer):
    """nnU-Net's default Dice + CE."""


class nnUNetTrainerBaselineCE(ComparisonTrainer, nnUNetTrainerCELoss):
    """nnU-Net's cross-entropy only (no regions)."""


class nnUNetTrainerBaselineDice(ComparisonTrainer, nnUNetTrainerDiceLoss):
    """nnU-Net's soft Dice only."""
TRAINERS = [nnUNetTrainerBaseline, nnUNetTrainerBaselineCE, nnUNetTrainerBaselineDice]

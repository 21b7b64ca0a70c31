"""nnU-Net's own losses with this package's budget knobs and MCC logging, for fair comparisons.

The losses are exactly nnU-Net's (the classes below only add ``ComparisonTrainer``'s knobs), so a
short CPU cross-validation can run the references with the same budget as the new losses. For full
trainings compare against the stock ``nnUNetTrainer`` / ``nnUNetTrainerCELoss`` directly.
"""

from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerDiceLoss import nnUNetTrainerDiceLoss
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss import nnUNetTrainerDiceTopK10Loss

from nnunet_mcc.trainers.base import ComparisonTrainer


class nnUNetTrainerBaseline(ComparisonTrainer):
    """nnU-Net's default Dice + CE."""


class nnUNetTrainerBaselineCE(ComparisonTrainer, nnUNetTrainerCELoss):
    """nnU-Net's cross-entropy only (no regions)."""


class nnUNetTrainerBaselineDice(ComparisonTrainer, nnUNetTrainerDiceLoss):
    """nnU-Net's soft Dice only."""
TRAINERS = [nnUNetTrainerBaseline, nnUNetTrainerBaselineCE, nnUNetTrainerBaselineDice]


class nnUNetTrainerBaselineDiceTopK10(ComparisonTrainer, nnUNetTrainerDiceTopK10Loss):
    """nnU-Net's Dice + TopK10 (the cross-entropy of the hardest 10 % of voxels), no regions."""


class nnUNetTrainerBaselineDiceFocal(ComparisonTrainer):
    """nnU-Net's Dice + CE with the cross-entropy replaced by the focal loss (gamma 2; Lin et al. 2017), 1:1,
    no regions (the focal loss here is a softmax one)."""

    focal_gamma = 2.0

    def _build_loss(self):
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        from nnunet_mcc.losses.focal import FocalLoss

        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__}: the softmax focal loss needs mutually exclusive labels; this "
                             "dataset trains on regions")
        lm = self.label_manager
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1, ignore_label=lm.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)
        loss.ce = FocalLoss(self.focal_gamma, ignore_index=lm.ignore_label)
        return self._wrap_deep_supervision(loss)


TRAINERS.extend([nnUNetTrainerBaselineDiceTopK10, nnUNetTrainerBaselineDiceFocal])

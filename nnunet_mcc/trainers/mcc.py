"""Trainers with the soft MCC loss (seed 000: 1 - MCC) and MCC + cross-entropy."""

from nnunet_mcc.losses import MCCLoss
from nnunet_mcc.trainers.base import ComparisonTrainer


class nnUNetTrainerMCC(ComparisonTrainer):
    """1 - soft MCC. Softmax over classes (background excluded), or sigmoid per region; counts pooled
    over the batch (and DDP ranks) when the plans say ``batch_dice``.

    A class present in the batch of which no voxel is predicted adds ``missed_weight`` times minus the
    log of its soft recall (``MCCLoss(missed_weight=...)``). Early in training a rare class is often
    pushed below the others on all its voxels; its probabilities then saturate near 0 and the soft MCC's
    gradient with respect to the logits vanishes with them, so the plain loss never brings it back. On
    a synthetic 2D dataset with nested classes at 3 %, 1.5 % and 0.5 % of the image, the plain loss lost
    the 0.5 % class on 2 of 3 folds (Dice 0.30 +- 0.53); with the penalty no class was lost and every class scored as with
    nnU-Net's Dice + CE (0.87 +- 0.02), see docs/mcc_rare_classes.md. For every class the network finds
    on at least one voxel the loss is exactly 1 - soft MCC. A subclass with ``missed_weight = 0`` gives
    the plain loss of the seed. ``nnUNetTrainerMCC_CE`` (MCC + cross-entropy) scored the same on that
    ablation and is the safer choice when the classes are very rare.
    """

    missed_weight = 1.0

    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=None) -> dict:
        return {"missed_weight": float(cls.missed_weight)}

    def _mcc_kwargs(self) -> dict:
        return self._confusion_kwargs()

    def _build_loss(self):
        return self._confusion_loss(MCCLoss, missed_weight=self.missed_weight, **self._mcc_kwargs())


class nnUNetTrainerMCC_CE(nnUNetTrainerMCC):
    """Soft MCC + cross-entropy (binary cross-entropy for regions), weighted 1:1 as nnU-Net's Dice + CE.
    The cross-entropy keeps a gradient for a class the network has stopped predicting, so the MCC term
    carries no missed-class penalty here.

    Built from nnU-Net's own compound losses, which handle the ignore label, with MCC in the Dice slot.
    """

    missed_weight = 0.0  # the plain soft MCC in the Dice slot

    def _build_loss(self):
        return self._confusion_loss_with_ce(MCCLoss, **self._mcc_kwargs())


TRAINERS = [nnUNetTrainerMCC, nnUNetTrainerMCC_CE]

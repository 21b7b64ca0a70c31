"""Trainers with the soft MCC loss (seed 000: 1 - MCC) and MCC + cross-entropy."""

from nnunet_mcc.losses import MCCLoss
from nnunet_mcc.trainers.base import GATE_MIN_RECALL, GATE_MIN_SPECIFICITY, ComparisonTrainer, gate_identity


class nnUNetTrainerMCC(ComparisonTrainer):
    """1 - soft MCC. Softmax over classes (background excluded), or sigmoid per region; counts pooled
    over the batch (and DDP ranks) when the plans say ``batch_dice``.

    The missed-class gate: a class present in the batch whose soft recall is below ``missed_min_recall``
    (0.5) adds ``missed_weight`` (1) times ``log 0.5 - log recall`` (``MCCLoss(missed_weight=...,
    min_recall=...)``). Early in training a rare class is often pushed below the others on all its voxels;
    its probabilities then saturate near 0 and the soft MCC's gradient with respect to the logits vanishes
    with them, so the plain loss never brings it back (it lost the 0.5 % class of a synthetic dataset on 2
    of 3 folds). A gate that acted only while no voxel was predicted brought such a class back to the
    decision margin only, where a seed could still lose it (docs/mcc_rare_classes.md). The other side: a
    class whose soft specificity is below ``missed_min_specificity`` (0.9), one flooding the image, adds
    ``log 0.9 - log specificity``; it saturates too, at a probability near 1 everywhere. Wherever every
    present class has a soft recall of at least 0.5 and a soft specificity of at least 0.9 the loss is exactly
    1 - soft MCC, value and gradient.
    A subclass with ``missed_weight = 0`` gives the plain loss of the seed, ``missed_min_recall = 0`` the
    former gate.
    """

    missed_weight = 1.0
    missed_min_recall = GATE_MIN_RECALL
    missed_min_specificity = GATE_MIN_SPECIFICITY

    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=None) -> dict:
        return gate_identity(cls.missed_weight, cls.missed_min_recall, cls.missed_min_specificity)

    def _mcc_kwargs(self) -> dict:
        return self._confusion_kwargs()

    def _build_loss(self):
        return self._confusion_loss(MCCLoss, missed_weight=self.missed_weight, min_recall=self.missed_min_recall,
                                    min_specificity=self.missed_min_specificity, **self._mcc_kwargs())


class nnUNetTrainerMCC_CE(nnUNetTrainerMCC):
    """Soft MCC + cross-entropy (binary cross-entropy for regions), weighted 1:1 as nnU-Net's Dice + CE.
    The cross-entropy keeps a gradient for a class the network has stopped predicting, so the MCC term
    carries no missed-class penalty here.

    Built from nnU-Net's own compound losses, which handle the ignore label, with MCC in the Dice slot.
    """

    missed_weight = 0.0  # the plain soft MCC in the Dice slot

    def _build_loss(self):
        return self._confusion_loss_with_ce(MCCLoss, **self._mcc_kwargs())


class nnUNetTrainerMCC_noGate(nnUNetTrainerMCC):
    """The plain 1 - soft MCC of seed 000, without the missed-class gate: the reference against which the gate
    is measured (docs/mcc_rare_classes.md). A class whose probabilities saturate near 0 (or near 1 over the whole
    image) gets no gradient back from this loss, so it can be lost for good on some seeds."""

    missed_weight = 0.0


TRAINERS = [nnUNetTrainerMCC, nnUNetTrainerMCC_CE, nnUNetTrainerMCC_noGate]

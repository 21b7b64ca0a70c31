"""Trainers with the Tversky loss (Salehi et al. 2017) and Tversky + cross-entropy."""

from nnunet_mcc.losses import TverskyLoss
from nnunet_mcc.trainers.base import GATE_MIN_RECALL, GATE_MIN_SPECIFICITY, ComparisonTrainer, gate_identity


class nnUNetTrainerTversky(ComparisonTrainer):
    """1 - Tversky index, softmax over classes (background excluded) or sigmoid per region, counts pooled over
    the batch (and DDP ranks) when the plans say ``batch_dice``. ``tversky_alpha`` weighs false positives and
    ``tversky_beta`` false negatives (MONAI's meaning; 0.3 / 0.7, Salehi et al.'s choice for small lesions);
    ``tversky_gamma > 1`` gives the Focal Tversky loss (Abraham and Khan: 4/3).

    Like ``nnUNetTrainerMCC`` it adds the missed-class gate (``tversky_missed_weight = 1``, rooms
    ``tversky_min_recall = 0.5`` and ``tversky_min_specificity = 0.9``, the latter for a class flooding the
    image): an overlap loss alone loses its gradient for a class whose softmax has saturated near 0 or 1
    (docs/mcc_rare_classes.md, docs/gwdl.md), and the gate leaves the loss unchanged, bit for bit, wherever
    every present class has a soft recall of at least 0.5 and a soft specificity of at least 0.9. A subclass with
    ``tversky_missed_weight = 0`` trains the paper's loss.
    """

    tversky_alpha = 0.3
    tversky_beta = 0.7
    tversky_gamma = 1.0
    tversky_missed_weight = 1.0
    tversky_min_recall = GATE_MIN_RECALL
    tversky_min_specificity = GATE_MIN_SPECIFICITY

    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=None) -> dict:
        return {"alpha": float(cls.tversky_alpha), "beta": float(cls.tversky_beta),
                "gamma": float(cls.tversky_gamma), **gate_identity(cls.tversky_missed_weight, cls.tversky_min_recall,
                                                                     cls.tversky_min_specificity)}

    def _tversky_kwargs(self) -> dict:
        return {"alpha": self.tversky_alpha, "beta": self.tversky_beta, "gamma": self.tversky_gamma,
                "missed_weight": self.tversky_missed_weight, "min_recall": self.tversky_min_recall,
                "min_specificity": self.tversky_min_specificity}

    def _build_loss(self):
        return self._confusion_loss(TverskyLoss, **self._tversky_kwargs())


class nnUNetTrainerTversky_CE(nnUNetTrainerTversky):
    """Tversky + cross-entropy (binary cross-entropy for regions), 1:1 as nnU-Net's Dice + CE, with the
    Tversky loss in the Dice slot of nnU-Net's compound loss. The cross-entropy keeps a gradient for a class
    the network has stopped predicting, so the Tversky term carries no gate."""

    tversky_missed_weight = 0.0

    def _build_loss(self):
        return self._confusion_loss_with_ce(TverskyLoss, **self._tversky_kwargs())


TRAINERS = [nnUNetTrainerTversky, nnUNetTrainerTversky_CE]

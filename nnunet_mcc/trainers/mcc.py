"""Trainers with the soft MCC loss (seed 000: 1 - MCC) and MCC + cross-entropy."""

from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

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
        # target values were checked by nnU-Net's preprocessing: skip the per-call check (a device sync)
        return {"batch": self.configuration_manager.batch_dice, "ddp": self.is_ddp, "check_target": False}

    def _build_loss(self):
        tf = self.target_format
        if self.label_manager.has_regions:
            loss = MCCLoss("sigmoid", region_ignore_channel=tf.region_ignore_channel,
                           missed_weight=self.missed_weight, **self._mcc_kwargs())
        else:
            loss = MCCLoss("softmax", include_background=False, ignore_index=tf.ignore_label,
                           missed_weight=self.missed_weight, **self._mcc_kwargs())
        return self._wrap_deep_supervision(loss)

    def loss_settings(self) -> dict:
        settings = super().loss_settings()
        mcc = next(m for m in self.loss.modules() if isinstance(m, MCCLoss))
        settings["name"] = "soft MCC" if settings["name"] == "MCCLoss" else f"soft MCC in {settings['name']}"
        settings["settings"].update({"batch": mcc.batch, "include_background": mcc.include_background,
                                     "eps": mcc.eps, "activation": mcc.nonlin_kind,
                                     "missed_weight": mcc.missed_weight})
        return settings


class nnUNetTrainerMCC_CE(nnUNetTrainerMCC):
    """Soft MCC + cross-entropy (binary cross-entropy for regions), weighted 1:1 as nnU-Net's Dice + CE.
    The cross-entropy keeps a gradient for a class the network has stopped predicting, so the MCC term
    carries no missed-class penalty here.

    Built from nnU-Net's own compound losses, which handle the ignore label, with MCC in the Dice slot.
    """

    missed_weight = 0.0  # the plain soft MCC in the Dice slot

    def _build_loss(self):
        lm = self.label_manager
        if lm.has_regions:
            loss = DC_and_BCE_loss({}, self._mcc_kwargs(), weight_ce=1, weight_dice=1,
                                   use_ignore_label=lm.has_ignore_label, dice_class=MCCLoss)
        else:
            loss = DC_and_CE_loss({"include_background": False, **self._mcc_kwargs()}, {}, weight_ce=1,
                                  weight_dice=1, ignore_label=lm.ignore_label, dice_class=MCCLoss)
        return self._wrap_deep_supervision(loss)


TRAINERS = [nnUNetTrainerMCC, nnUNetTrainerMCC_CE]

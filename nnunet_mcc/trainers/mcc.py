"""Trainers with the soft MCC loss (seed 000: 1 - MCC) and MCC + cross-entropy."""

from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

from nnunet_mcc.losses import MCCLoss
from nnunet_mcc.trainers.base import ComparisonTrainer


class nnUNetTrainerMCC(ComparisonTrainer):
    """1 - soft MCC alone. Softmax over classes (background excluded), or sigmoid per region;
    counts pooled over the batch (and DDP ranks) when the plans say ``batch_dice``."""

    def _mcc_kwargs(self) -> dict:
        # target values were checked by nnU-Net's preprocessing: skip the per-call check (a device sync)
        return {"batch": self.configuration_manager.batch_dice, "ddp": self.is_ddp, "check_target": False}

    def _build_loss(self):
        tf = self.target_format
        if self.label_manager.has_regions:
            loss = MCCLoss("sigmoid", region_ignore_channel=tf.region_ignore_channel, **self._mcc_kwargs())
        else:
            loss = MCCLoss("softmax", include_background=False, ignore_index=tf.ignore_label, **self._mcc_kwargs())
        return self._wrap_deep_supervision(loss)

    def loss_settings(self) -> dict:
        settings = super().loss_settings()
        mcc = next(m for m in self.loss.modules() if isinstance(m, MCCLoss))
        settings["name"] = "soft MCC" if settings["name"] == "MCCLoss" else f"soft MCC in {settings['name']}"
        settings["settings"].update({"batch": mcc.batch, "include_background": mcc.include_background,
                                     "eps": mcc.eps, "activation": mcc.nonlin_kind})
        return settings


class nnUNetTrainerMCC_CE(nnUNetTrainerMCC):
    """Soft MCC + cross-entropy (binary cross-entropy for regions), weighted 1:1 as nnU-Net's Dice + CE.

    Built from nnU-Net's own compound losses, which handle the ignore label, with MCC in the Dice slot.
    """

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

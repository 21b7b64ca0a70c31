"""Plain torch loss modules, usable without nnU-Net's trainers."""

from nnunet_mcc.losses.base import ConfusionLoss, missed_class_penalty
from nnunet_mcc.losses.distance_matrix import DistanceMatrixError, resolve_distance_matrix, validate_distance_matrix
from nnunet_mcc.losses.gwdl import GeneralizedWassersteinDiceLoss, generalized_wasserstein_dice_loss
from nnunet_mcc.losses.mcc import MCCLoss, soft_mcc
from nnunet_mcc.losses.segan import adversarial_l1, mask_input, multiscale_l1
from nnunet_mcc.losses.targets import TargetFormat
from nnunet_mcc.losses.tversky import TverskyLoss
from nnunet_mcc.losses.weighted_ce import MaskedBCEWithLogits, inverse_frequency_weights, region_pos_weights

__all__ = ["ConfusionLoss", "MCCLoss", "soft_mcc", "missed_class_penalty",
           "GeneralizedWassersteinDiceLoss", "generalized_wasserstein_dice_loss",
           "DistanceMatrixError", "resolve_distance_matrix", "validate_distance_matrix",
           "TverskyLoss",
           "adversarial_l1", "mask_input", "multiscale_l1", "TargetFormat",
           "MaskedBCEWithLogits", "inverse_frequency_weights", "region_pos_weights"]

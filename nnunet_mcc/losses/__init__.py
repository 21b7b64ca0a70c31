"""Plain torch loss modules, usable without nnU-Net's trainers."""

from nnunet_mcc.losses.distance_matrix import DistanceMatrixError, resolve_distance_matrix, validate_distance_matrix
from nnunet_mcc.losses.gwdl import GeneralizedWassersteinDiceLoss, generalized_wasserstein_dice_loss
from nnunet_mcc.losses.mcc import MCCLoss, soft_mcc
from nnunet_mcc.losses.segan import SegANCritic, adversarial_l1, critic_update, mask_input, multiscale_l1

__all__ = ["MCCLoss", "soft_mcc", "GeneralizedWassersteinDiceLoss", "generalized_wasserstein_dice_loss",
           "DistanceMatrixError", "resolve_distance_matrix", "validate_distance_matrix",
           "SegANCritic", "adversarial_l1", "critic_update", "mask_input", "multiscale_l1"]

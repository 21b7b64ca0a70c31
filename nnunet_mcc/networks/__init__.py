"""Networks of this package beside nnU-Net's own (the SegAN critic)."""

from nnunet_mcc.networks.segan_critic import CRITIC_MODES, SegANCritic

__all__ = ["CRITIC_MODES", "SegANCritic"]

"""SegAN's multi-scale L1 loss (Xue et al., 2018), in plain torch, 2D or 3D.

The critic (:class:`nnunet_mcc.networks.SegANCritic`) sees the input image masked by the segmentation,
once with the predicted probabilities and once with the one-hot ground truth. Every input channel is
multiplied with every class (or region) channel, so ``C_in`` image channels and ``K`` classes give
``C_in * K`` masked channels. The critic returns its features at every scale; the masked input itself
is scale 0. The loss is

.. math::

    \\ell_{mae}(x, x') = \\frac{1}{L} \\sum_{i=0}^{L-1} w_i \\, \\mathrm{mean}\\left| f^i(x) - f^i(x') \\right|

with :math:`f^0` the masked input and :math:`f^i` the critic's features after stage :math:`i`
(:math:`w_i = 1` by default). The segmentor minimises ``seg_loss + lambda * l_mae`` through a frozen
critic (:func:`adversarial_l1`); the critic maximises ``l_mae``; the updates alternate (the critic's
step lives with its trainer, ``nnunet_mcc.trainers.segan``).

References:
    Y. Xue, T. Xu, H. Zhang, L. R. Long, X. Huang. SegAN: Adversarial Network with Multi-scale L1
    Loss for Medical Image Segmentation. Neuroinformatics 16, 2018 (arXiv:1706.01805).
"""

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from nnunet_mcc.losses.base import check_reduction


def mask_input(image: torch.Tensor, segmentation: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every image channel times every segmentation channel: ``(B, C_in, *S) x (B, K, *S) -> (B, K * C_in, *S)``.

    Channels are ordered class-major (all image channels masked by class 0, then class 1, ...), so
    channel block ``k`` is what the per-label critic ``k`` sees. ``valid`` ``(B, 1, *S)`` zeroes ignored voxels.

    Raises:
        ValueError: image and segmentation differ in batch or spatial size.
    """
    if image.ndim != segmentation.ndim or image.shape[0] != segmentation.shape[0] \
            or image.shape[2:] != segmentation.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and segmentation {tuple(segmentation.shape)} must share "
                         "batch and spatial size")
    masked = segmentation.unsqueeze(2) * image.unsqueeze(1)  # (B, K, C_in, *S)
    if valid is not None:
        masked = masked * valid.unsqueeze(1).to(masked.dtype)
    return masked.flatten(1, 2)


def multiscale_l1(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor],
                  scale_weights: Optional[Sequence[float]] = None, reduction: str = "mean") -> torch.Tensor:
    """The multi-scale L1 of two feature pyramids (float32).

    Per sample ``b`` and scale ``i`` the term is ``w_i * mean|f^i_b - g^i_b|`` over channels and voxels.
    ``reduction`` as in MONAI: ``"mean"`` over samples and scales (the SegAN loss), ``"sum"``, or
    ``"none"`` (the ``(B, L)`` terms).

    Raises:
        ValueError: empty or unequal pyramids, a wrong number of ``scale_weights``, an unknown reduction.

    Example:
        >>> import torch
        >>> a = [torch.ones(2, 3, 8, 8), torch.ones(2, 5, 4, 4)]
        >>> b = [torch.zeros(2, 3, 8, 8), torch.ones(2, 5, 4, 4)]
        >>> multiscale_l1(a, b)
        tensor(0.5000)
    """
    check_reduction(reduction)
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(f"need two non-empty feature lists of equal length, got {len(features_a)} and "
                         f"{len(features_b)}")
    if scale_weights is not None and len(scale_weights) != len(features_a):
        raise ValueError(f"scale_weights has {len(scale_weights)} entries for {len(features_a)} scales")
    terms = torch.stack([(a.float() - b.float()).abs().flatten(1).mean(1) for a, b in zip(features_a, features_b)], 1)
    if scale_weights is not None:
        terms = terms * torch.as_tensor(scale_weights, dtype=terms.dtype, device=terms.device)
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.mean()


def critic_features(critic: nn.Module, image: torch.Tensor, segmentation: torch.Tensor,
                    valid: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """The critic's feature pyramid of the image masked by ``segmentation``."""
    return critic(mask_input(image, segmentation, valid))


def adversarial_l1(critic: nn.Module, image: torch.Tensor, prediction: torch.Tensor, target_onehot: torch.Tensor,
                   valid: Optional[torch.Tensor] = None, scale_weights: Optional[Sequence[float]] = None,
                   reduction: str = "mean", l1_function: Optional[Callable] = None) -> torch.Tensor:
    """The segmentor's adversarial term: the multi-scale L1 through a frozen critic.

    The critic's parameters get no gradient (``requires_grad`` is off during the call) and its
    spectral-norm estimates are not updated (eval mode), so this step leaves the critic untouched.
    Pass the bare module, not a DDP wrapper: the critic takes no part in the segmentor's all-reduce.
    ``prediction`` holds probabilities (softmax or sigmoid), ``target_onehot`` the one-hot ground truth.
    ``l1_function``: :func:`multiscale_l1` (the default) or a compiled form of it (the trainers'
    ``nnunet_mcc.trainers.compiling.critic_l1``).
    """
    was_training = critic.training
    flags = [p.requires_grad for p in critic.parameters()]
    critic.eval()
    for p in critic.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            target_features = critic_features(critic, image, target_onehot, valid)
        prediction_features = critic_features(critic, image, prediction, valid)
        return (l1_function or multiscale_l1)(prediction_features, target_features, scale_weights, reduction)
    finally:
        for p, flag in zip(critic.parameters(), flags):
            p.requires_grad_(flag)
        critic.train(was_training)

"""SegAN's critic and multi-scale L1 loss (Xue et al., 2018), in plain torch, 2D or 3D.

The critic sees the input image masked by the segmentation, once with the predicted probabilities
and once with the one-hot ground truth. Every input channel is multiplied with every class (or
region) channel, so ``C_in`` image channels and ``K`` classes give ``C_in * K`` masked channels.
The critic returns its features at every scale; the masked input itself is scale 0. The loss is

.. math::

    \\ell_{mae}(x, x') = \\frac{1}{L} \\sum_{i=0}^{L-1} w_i \\, \\mathrm{mean}\\left| f^i(x) - f^i(x') \\right|

with :math:`f^0` the masked input and :math:`f^i` the critic's features after stage :math:`i`
(:math:`w_i = 1` by default). The segmentor minimises ``seg_loss + lambda * l_mae``; the critic
maximises ``l_mae``; the updates alternate (:func:`critic_update`, then the segmentor's step with
:func:`adversarial_l1` on a frozen critic).

Two modes (seed 003): ``"joint"``, one critic over all ``C_in * K`` channels, and ``"per_label"``, one
critic per class over its ``C_in`` channels (their features are concatenated, so the L1 is the mean
over the critics). The critic has no normalisation layers: stability comes from spectral
normalisation (Miyato et al., 2018), with SegAN's weight clipping as an option of
:func:`critic_update`. No batch statistics keeps the critic exact under DDP.

References:
    Y. Xue, T. Xu, H. Zhang, L. R. Long, X. Huang. SegAN: Adversarial Network with Multi-scale L1
    Loss for Medical Image Segmentation. Neuroinformatics 16, 2018 (arXiv:1706.01805).
"""

from contextlib import nullcontext
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

CRITIC_MODES = ("joint", "per_label")


def mask_input(image: torch.Tensor, segmentation: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every image channel times every segmentation channel: ``(B, C_in, *S) x (B, K, *S) -> (B, K * C_in, *S)``.

    Channels are ordered class-major (all image channels masked by class 0, then class 1, ...), so
    channel block ``k`` is what the per-label critic ``k`` sees. ``valid`` ``(B, 1, *S)`` zeroes ignored voxels.
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
                  scale_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Mean over scales of the mean absolute difference of two feature pyramids (float32)."""
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(f"need two non-empty feature lists of equal length, got {len(features_a)} and "
                         f"{len(features_b)}")
    if scale_weights is not None and len(scale_weights) != len(features_a):
        raise ValueError(f"scale_weights has {len(scale_weights)} entries for {len(features_a)} scales")
    terms = [(a.float() - b.float()).abs().mean() for a, b in zip(features_a, features_b)]
    if scale_weights is not None:
        terms = [w * t for w, t in zip(scale_weights, terms)]
    return torch.stack(terms).mean()


class _CriticTower(nn.Module):
    """Strided conv + LeakyReLU per stage; returns the activation of every stage."""

    def __init__(self, in_channels: int, dim: int, features_per_stage: Sequence[int],
                 strides: Sequence[Union[int, Sequence[int]]], kernel_sizes: Sequence[Union[int, Sequence[int]]],
                 spectral_norm: bool, negative_slope: float):
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        stages = []
        for features, stride, kernel in zip(features_per_stage, strides, kernel_sizes):
            kernel = [kernel] * dim if isinstance(kernel, int) else list(kernel)
            layer = conv(in_channels, features, kernel, stride=stride, padding=[k // 2 for k in kernel])
            stages.append(nn.Sequential(_spectral_norm(layer) if spectral_norm else layer,
                                        nn.LeakyReLU(negative_slope, inplace=True)))
            in_channels = features
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SegANCritic(nn.Module):
    """SegAN critic for ``dim``-D data (2 or 3).

    Args:
        image_channels: ``C_in``, the channels of the image.
        num_classes: ``K``, the class (softmax) or region (sigmoid) channels of the segmentation.
        dim: 2 for 2D convolutions, 3 for 3D.
        features_per_stage: output channels of each stage (each stage is one strided convolution).
        strides: stride of each stage (int or one per axis: anisotropic data downsamples unevenly).
        kernel_sizes: kernel of each stage (int or per axis); default 3 everywhere.
        mode: ``"joint"`` (one critic over the ``K * C_in`` masked channels) or ``"per_label"``
            (``K`` critics, critic ``k`` sees the image masked by class ``k``).
        spectral_norm: spectral normalisation of every convolution (default, recommended).
        negative_slope: of the LeakyReLU (0.2 as in SegAN).

    ``forward(masked)`` takes :func:`mask_input`'s output and returns ``[masked, f^1, ..., f^L]``.
    """

    def __init__(self, image_channels: int, num_classes: int, dim: int, features_per_stage: Sequence[int],
                 strides: Sequence[Union[int, Sequence[int]]], kernel_sizes: Optional[Sequence] = None,
                 mode: str = "joint", spectral_norm: bool = True, negative_slope: float = 0.2):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        if mode not in CRITIC_MODES:
            raise ValueError(f"mode must be one of {CRITIC_MODES}, got {mode!r}")
        if image_channels < 1 or num_classes < 1:
            raise ValueError(f"image_channels and num_classes must be >= 1, got {image_channels}, {num_classes}")
        if not features_per_stage or len(strides) != len(features_per_stage):
            raise ValueError(f"need one stride per stage: {len(features_per_stage)} stages, {len(strides)} strides")
        if any(f < 1 for f in features_per_stage):
            raise ValueError(f"features_per_stage must be positive, got {list(features_per_stage)}")
        kernel_sizes = [3] * len(strides) if kernel_sizes is None else list(kernel_sizes)
        if len(kernel_sizes) != len(strides):
            raise ValueError(f"need one kernel size per stage: {len(strides)} stages, {len(kernel_sizes)} kernels")
        self.image_channels, self.num_classes, self.dim, self.mode = image_channels, num_classes, dim, mode
        towers = 1 if mode == "joint" else num_classes
        tower_in = image_channels * (num_classes if mode == "joint" else 1)
        self.towers = nn.ModuleList(
            _CriticTower(tower_in, dim, features_per_stage, strides, kernel_sizes, spectral_norm, negative_slope)
            for _ in range(towers))

    @property
    def in_channels(self) -> int:
        return self.image_channels * self.num_classes

    def forward(self, masked: torch.Tensor) -> List[torch.Tensor]:
        if masked.ndim != self.dim + 2 or masked.shape[1] != self.in_channels:
            raise ValueError(f"critic expects (B, {self.in_channels}, {self.dim} spatial axes), got "
                             f"{tuple(masked.shape)}")
        if self.mode == "joint":
            return [masked] + self.towers[0](masked)
        per_tower = [tower(chunk) for tower, chunk in zip(self.towers, masked.split(self.image_channels, 1))]
        return [masked] + [torch.cat(scale, 1) for scale in zip(*per_tower)]


def _critic_features(critic: nn.Module, image: torch.Tensor, segmentation: torch.Tensor,
                     valid: Optional[torch.Tensor]) -> List[torch.Tensor]:
    return critic(mask_input(image, segmentation, valid))


def critic_update(critic: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor,
                  prediction: torch.Tensor, target_onehot: torch.Tensor, valid: Optional[torch.Tensor] = None,
                  grad_scaler: Optional["torch.amp.GradScaler"] = None, weight_clip: Optional[float] = None,
                  scale_weights: Optional[Sequence[float]] = None, autocast_device: Optional[str] = None
                  ) -> torch.Tensor:
    """One critic step: maximise the multi-scale L1 between the prediction-masked and the
    ground-truth-masked image. ``prediction`` is detached here (no gradient reaches the segmentor).

    ``critic`` may be wrapped in DDP: prediction and ground truth go through ONE forward call (stacked
    on the batch axis), so DDP's reducer sees each parameter once. ``grad_scaler`` (CUDA mixed
    precision) and ``autocast_device`` ("cuda") are the critic's own. Returns the L1 (detached).
    """
    optimizer.zero_grad(set_to_none=True)
    batch = image.shape[0]
    with torch.no_grad():
        masked = torch.cat([mask_input(image, prediction.detach(), valid), mask_input(image, target_onehot, valid)])
    with torch.autocast(autocast_device, enabled=True) if autocast_device else nullcontext():
        features = critic(masked)
    l1 = multiscale_l1([f[:batch] for f in features], [f[batch:] for f in features], scale_weights)
    critic_loss = -l1  # the critic ascends the L1
    if grad_scaler is not None:
        grad_scaler.scale(critic_loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        critic_loss.backward()
        optimizer.step()
    if weight_clip is not None:
        with torch.no_grad():
            for parameter in critic.parameters():
                parameter.clamp_(-weight_clip, weight_clip)
    return l1.detach()


def adversarial_l1(critic: nn.Module, image: torch.Tensor, prediction: torch.Tensor, target_onehot: torch.Tensor,
                   valid: Optional[torch.Tensor] = None, scale_weights: Optional[Sequence[float]] = None
                   ) -> torch.Tensor:
    """The segmentor's adversarial term: the multi-scale L1 through a frozen critic.

    The critic's parameters get no gradient (``requires_grad`` is off during the call) and its
    spectral-norm estimates are not updated (eval mode), so this step leaves the critic untouched.
    Pass the bare module, not a DDP wrapper: the critic takes no part in the segmentor's all-reduce.
    """
    was_training = critic.training
    flags = [p.requires_grad for p in critic.parameters()]
    critic.eval()
    for p in critic.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            target_features = _critic_features(critic, image, target_onehot, valid)
        prediction_features = _critic_features(critic, image, prediction, valid)
        return multiscale_l1(prediction_features, target_features, scale_weights)
    finally:
        for p, flag in zip(critic.parameters(), flags):
            p.requires_grad_(flag)
        critic.train(was_training)


def onehot_target(target: torch.Tensor, num_channels: int, has_regions: bool,
                  ignore_label: Optional[int] = None, region_ignore_channel: bool = False
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """nnU-Net's training target as a float one-hot ``(B, K, *S)`` and a valid mask ``(B, 1, *S)`` (or None).

    Label mode: ``target`` is the label map ``(B, 1, *S)``; voxels equal to ``ignore_label`` are invalid.
    Region mode: ``target`` is already ``(B, K, *S)``, with one more channel (the last) marking ignored
    voxels when ``region_ignore_channel``.
    """
    with torch.no_grad():
        if has_regions:
            if region_ignore_channel:
                valid = target[:, -1:] == 0
                target = target[:, :-1]
            else:
                valid = None
            if target.shape[1] != num_channels:
                raise ValueError(f"region target has {target.shape[1]} channels, expected {num_channels}")
            return target.float(), valid
        if target.shape[1] != 1:
            raise ValueError(f"label-map target must have one channel, got shape {tuple(target.shape)}")
        labels = target.long()
        valid = None
        if ignore_label is not None:
            valid = labels != ignore_label
            labels = torch.where(valid, labels, torch.zeros_like(labels))
        onehot = torch.zeros((labels.shape[0], num_channels, *labels.shape[2:]), device=target.device)
        return onehot.scatter_(1, labels, 1.0), valid

"""SegAN's critic network (Xue et al., 2018), 2D or 3D, in plain torch.

The critic reads the image masked by a segmentation (:func:`nnunet_mcc.losses.segan.mask_input`) and
returns its features at every scale; the SegAN loss compares those pyramids for the prediction and the
ground truth (:func:`nnunet_mcc.losses.segan.multiscale_l1`). It has no normalisation layers: stability
comes from spectral normalisation (Miyato et al., 2018), and no batch statistics keeps it exact under DDP.

References:
    Y. Xue, T. Xu, H. Zhang, L. R. Long, X. Huang. SegAN: Adversarial Network with Multi-scale L1
    Loss for Medical Image Segmentation. Neuroinformatics 16, 2018 (arXiv:1706.01805).
    T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida. Spectral Normalization for Generative Adversarial
    Networks. ICLR 2018.
"""

from typing import List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

CRITIC_MODES = ("joint", "per_label")


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

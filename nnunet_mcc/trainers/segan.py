"""SegAN adversarial training (seed 003) with nnU-Net's network as the segmentor.

Each training iteration alternates two updates on the same batch:

1. critic step (:func:`critic_update`): the critic (``nnunet_mcc.networks.SegANCritic``, built from the plans) sees the
   image masked by the DETACHED full-resolution prediction and by the ground truth, and ascends
   their multi-scale L1 (its own Adam optimizer, poly learning-rate schedule and, on CUDA, its own
   GradScaler);
2. segmentor step: ``segmentation loss + segan_lambda * multi-scale L1`` through the updated,
   frozen critic. The segmentation loss keeps nnU-Net's deep supervision; the adversarial term
   uses the full-resolution output.

Trainers: ``nnUNetTrainerSegAN`` (CE + lambda * L1, the seed's loss; BCE for region datasets),
``nnUNetTrainerSegANDiceCE`` (nnU-Net's Dice + CE + lambda * L1), ``nnUNetTrainerSegANPerLabel`` (one
critic per label) and ``nnUNetTrainerSegANWeightedCE`` (class-frequency weighted CE + lambda * L1).
Settings are class attributes (subclass to change them); ``NNUNET_MCC_SEGAN_LAMBDA`` and
``NNUNET_MCC_CRITIC_MODE`` override the first two from the environment. They are written to the
training log. The weight of the adversarial term follows :func:`segan_lambda_at`: 0 while the critic
warms up (``critic_warmup_fraction`` of the epochs: the critic trains, the segmentor sees the
segmentation loss only), then a linear ramp to ``segan_lambda`` over ``segan_lambda_ramp_fraction`` of
the epochs (docs/segan.md shows the measured effect). The critic and its optimizer travel in nnU-Net's checkpoints (``--c`` resumes them);
inference needs nothing of the critic.
"""

import io
import os
from contextlib import nullcontext
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_mcc.budget import CRITIC_MODE_VARIABLE, SEGAN_LAMBDA_VARIABLE as LAMBDA_VARIABLE
from nnunet_mcc.budget import critic_mode_from_env, segan_lambda_from_env
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import write_bytes
from nnunet_mcc.losses.segan import adversarial_l1, mask_input, multiscale_l1
from nnunet_mcc.losses.weighted_ce import MaskedBCEWithLogits
from nnunet_mcc.networks.segan_critic import CRITIC_MODES, SegANCritic
from nnunet_mcc.trainers import compiling
from nnunet_mcc.trainers.base import ComparisonTrainer
from nnunet_mcc.trainers.progress import MCCLocalLogger
from nnunet_mcc.trainers.weighted_ce import ClassFrequencyWeightedCE

CHECKPOINT_KEY = "segan_critic"


def segan_lambda_at(epoch: int, num_epochs: int, segan_lambda: float, warmup_fraction: float = 0.0,
                    ramp_fraction: float = 0.0) -> float:
    """The adversarial weight of epoch ``epoch`` (0-based) of ``num_epochs``: 0 during the critic's warm-up
    (the first ``round(warmup_fraction * num_epochs)`` epochs), then ``segan_lambda * k / R`` in the k-th
    epoch (1-based) of a linear ramp of ``R = round(ramp_fraction * num_epochs)`` epochs, then
    ``segan_lambda``. With both fractions 0 it is ``segan_lambda`` throughout (SegAN's schedule)."""
    warmup, ramp = round(warmup_fraction * num_epochs), round(ramp_fraction * num_epochs)
    if epoch < warmup:
        return 0.0
    if ramp > 0:
        return float(segan_lambda) * min(1.0, (epoch - warmup + 1) / ramp)
    return float(segan_lambda)


def critic_update(critic: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor,
                  prediction: torch.Tensor, target_onehot: torch.Tensor, valid: Optional[torch.Tensor] = None,
                  grad_scaler: Optional["torch.amp.GradScaler"] = None, weight_clip: Optional[float] = None,
                  scale_weights: Optional[Sequence[float]] = None, autocast_device: Optional[str] = None,
                  l1_function=multiscale_l1) -> torch.Tensor:
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
    l1 = l1_function([f[:batch] for f in features], [f[batch:] for f in features], scale_weights)
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


class SegANLocalLogger(MCCLocalLogger):
    """The MCC logger plus the critic's loss and the adversarial L1 per epoch, drawn as one more panel."""

    EXTRA_KEYS = MCCLocalLogger.EXTRA_KEYS + ("critic_losses", "adversarial_l1")

    def plot_progress_png(self, output_folder):
        super().plot_progress_png(output_folder)
        if self.skip_next_plot:  # the base logger skipped this epoch's redraw
            return

        def draw(ax, x, series):
            ax.plot(x, series["adversarial_l1"], color="darkorange", label="multi-scale L1 (segmentor)", linewidth=4)
            ax.plot(x, series["critic_losses"], color="black", ls="--", label="critic loss (-L1)", linewidth=3)
            ax.set_ylabel("adversarial terms")

        self.append_panel(output_folder, draw, height=10)


class nnUNetTrainerSegAN(ComparisonTrainer):
    """Cross-entropy (BCE for regions) + ``segan_lambda`` * SegAN multi-scale L1, alternating updates."""

    segan_lambda: float = 1.0            # weight of the multi-scale L1 in the segmentor's loss
    critic_mode: str = "joint"           # "joint": one critic over all classes; "per_label": one per class
    critic_max_stages: int = 5           # at most this many strided stages (fewer if the plans have fewer)
    critic_width_factor: float = 0.5     # critic stage i has this fraction of the U-Net encoder's features
    critic_lr: float = 1e-3              # Adam, poly decay over num_epochs like the segmentor (docs/segan.md)
    critic_betas = (0.5, 0.999)          # SegAN's Adam betas
    critic_spectral_norm: bool = True    # spectral normalisation of every critic convolution
    critic_weight_clip: Optional[float] = None  # SegAN's clipping (0.05) after each critic step, off by default
    critic_scale_weights = None          # per-scale weights of the L1 (None: equal), scale 0 = masked input
    critic_warmup_fraction: float = 0.0  # epochs (share of num_epochs) in which only the critic learns the L1
    segan_lambda_ramp_fraction: float = 0.0  # then a linear ramp of the adversarial weight over this share

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.logger.local_logger = SegANLocalLogger()
        self.segan_lambda, self.critic_mode = self.lambda_and_mode()
        self.critic = self.critic_module = self.critic_optimizer = self.critic_lr_scheduler = None
        self.critic_grad_scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None

    @classmethod
    def lambda_and_mode(cls, environ=os.environ):
        """``segan_lambda`` and ``critic_mode`` of a run of this class (``NNUNET_MCC_SEGAN_LAMBDA`` and
        ``NNUNET_MCC_CRITIC_MODE`` win); UserError naming the variable for a bad value."""
        from_env = segan_lambda_from_env(environ)
        segan_lambda = float(cls.segan_lambda) if from_env is None else from_env
        if not segan_lambda >= 0:
            raise UserError(f"{cls.__name__}: the SegAN weight must be >= 0, got {segan_lambda}"
                            + (f" ({LAMBDA_VARIABLE})" if from_env is not None else ""))
        mode = critic_mode_from_env(environ) or cls.critic_mode
        if mode not in CRITIC_MODES:
            raise UserError(f"{cls.__name__}: critic mode {mode!r} ({CRITIC_MODE_VARIABLE}) must be one of "
                            f"{', '.join(CRITIC_MODES)}")
        return segan_lambda, mode

    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=os.environ) -> dict:
        segan_lambda, mode = cls.lambda_and_mode(environ)
        return {"segan_lambda": segan_lambda, "critic_mode": mode, "critic_lr": cls.critic_lr,
                "critic_warmup_fraction": cls.critic_warmup_fraction,
                "segan_lambda_ramp_fraction": cls.segan_lambda_ramp_fraction}

    # ---- building ---------------------------------------------------------------------------
    def critic_settings(self) -> dict:
        return {"segan_lambda": self.segan_lambda, "critic_warmup_fraction": self.critic_warmup_fraction,
                "segan_lambda_ramp_fraction": self.segan_lambda_ramp_fraction, "critic_mode": self.critic_mode,
                "critic_max_stages": self.critic_max_stages, "critic_width_factor": self.critic_width_factor,
                "critic_lr": self.critic_lr, "critic_betas": list(self.critic_betas),
                "critic_spectral_norm": self.critic_spectral_norm, "critic_weight_clip": self.critic_weight_clip,
                "critic_scale_weights": self.critic_scale_weights}

    def build_critic(self) -> SegANCritic:
        """Critic shaped like the U-Net's encoder after its first stage: same strides (adapted by the
        planner to patch size and spacing) and kernels, ``critic_width_factor`` of its features."""
        arch = self.configuration_manager.network_arch_init_kwargs
        patch = list(self.configuration_manager.patch_size)
        if all(k in arch for k in ("strides", "kernel_sizes", "features_per_stage")):
            n = min(self.critic_max_stages, len(arch["strides"]) - 1)
            strides = [arch["strides"][i] for i in range(1, n + 1)]
            kernels = [arch["kernel_sizes"][i] for i in range(1, n + 1)]
            features = [max(1, int(round(arch["features_per_stage"][i] * self.critic_width_factor)))
                        for i in range(1, n + 1)]
        else:  # another architecture: halve every axis of at least 8 voxels, widths 16, 32, ... up to 256
            strides, kernels, features, size = [], [], [], patch
            while len(strides) < self.critic_max_stages and max(size) >= 8:
                stride = [2 if s >= 8 else 1 for s in size]
                size = [int(np.ceil(s / t)) for s, t in zip(size, stride)]
                strides.append(stride)
                kernels.append(3)
                features.append(min(256, 16 * 2 ** len(features)))
        return SegANCritic(self.num_input_channels, self.label_manager.num_segmentation_heads, len(patch),
                           features, strides, kernels, mode=self.critic_mode, spectral_norm=self.critic_spectral_norm)

    def initialize(self):
        super().initialize()
        self.critic_module = self.build_critic().to(self.device)
        self.critic_optimizer = torch.optim.Adam(self.critic_module.parameters(), self.critic_lr,
                                                 betas=tuple(self.critic_betas))
        self.critic_lr_scheduler = PolyLRScheduler(self.critic_optimizer, self.critic_lr, self.num_epochs)
        self.critic_l1 = compiling.critic_l1(self)  # compiled where nnU-Net compiles (nnunet_mcc/trainers/compiling.py)
        # the critic's own step is all-reduced; the segmentor's step uses the bare module (no DDP hooks)
        self.critic = DDP(self.critic_module, device_ids=[self.local_rank] if self.device.type == "cuda" else None) \
            if self.is_ddp else self.critic_module
        settings = self.critic_settings()
        self.print_to_log_file(f"SegAN settings: {settings}")
        self.print_to_log_file(f"SegAN critic: {sum(p.numel() for p in self.critic_module.parameters())} "
                               f"parameters\n{self.critic_module}", also_print_to_console=False)
        self.logger.update_config({"segan": settings})

    def loss_settings(self) -> dict:
        settings = super().loss_settings()
        settings["name"] = f"{settings['name']} + lambda x SegAN multi-scale L1"
        settings["settings"].update(self.critic_settings())
        return settings

    def _build_segmentation_loss(self) -> nn.Module:
        """The seed's cross-entropy (binary cross-entropy per region for region datasets), one output."""
        lm = self.label_manager
        if lm.has_regions:
            return MaskedBCEWithLogits(ignore_channel=lm.has_ignore_label)
        return RobustCrossEntropyLoss(ignore_index=self.target_format.ce_ignore_index)

    def _build_loss(self):
        return self._wrap_deep_supervision(self._build_segmentation_loss())

    # ---- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.critic.train()
        self.critic_lr_scheduler.step(self.current_epoch)

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else nullcontext()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        lm = self.label_manager

        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            segmentation_loss = self.loss(output, target)
        full_output = output[0] if isinstance(output, (list, tuple)) else output
        full_target = target[0] if isinstance(target, list) else target
        onehot, valid = self.target_format.onehot(full_target, prediction=full_output, check=False)
        probabilities = torch.sigmoid(full_output.float()) if lm.has_regions else torch.softmax(full_output.float(), 1)

        # 1. critic step on the detached prediction: ascend the L1
        critic_l1 = critic_update(self.critic, self.critic_optimizer, data, probabilities.detach(), onehot, valid,
                                  grad_scaler=self.critic_grad_scaler, weight_clip=self.critic_weight_clip,
                                  scale_weights=self.critic_scale_weights,
                                  autocast_device="cuda" if self.device.type == "cuda" else None,
                                  l1_function=self.critic_l1)
        # 2. segmentor step through the updated, frozen critic (segmentation loss alone while it warms up)
        weight = segan_lambda_at(self.current_epoch, self.num_epochs, self.segan_lambda, self.critic_warmup_fraction,
                                 self.segan_lambda_ramp_fraction)
        if weight > 0:
            with self._autocast():
                l1 = adversarial_l1(self.critic_module, data, probabilities, onehot, valid, self.critic_scale_weights,
                                    l1_function=self.critic_l1)
            total = segmentation_loss + weight * l1
        else:
            l1, total = critic_l1, segmentation_loss

        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": total.detach().cpu().numpy(), "critic_loss": (-critic_l1).cpu().numpy(),
                "adversarial_l1": l1.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        means = {}
        for key, source in (("critic_losses", "critic_loss"), ("adversarial_l1", "adversarial_l1")):
            values = [float(o[source]) for o in train_outputs]
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, values)
                values = [v for rank in gathered for v in rank]
            means[key] = float(np.mean(values))
            self.logger.log(key, means[key], self.current_epoch)
        weight = segan_lambda_at(self.current_epoch, self.num_epochs, self.segan_lambda, self.critic_warmup_fraction,
                                 self.segan_lambda_ramp_fraction)
        self.print_to_log_file(f"critic_loss {means['critic_losses']:.4f}, adversarial L1 {means['adversarial_l1']:.4f}"
                               f" (lambda {weight:g} of {self.segan_lambda:g}), critic lr "
                               f"{self.critic_optimizer.param_groups[0]['lr']:.3g}")

    # ---- checkpoints ------------------------------------------------------------------------
    def critic_state(self) -> dict:
        return {"network_weights": self.critic_module.state_dict(),
                "optimizer_state": self.critic_optimizer.state_dict(),
                "grad_scaler_state": self.critic_grad_scaler.state_dict() if self.critic_grad_scaler else None,
                "settings": self.critic_settings()}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (same keys, so stock inference reads it) plus the critic's state, written through
        ``fileio`` (a temporary file first, verified), so an interrupted save never leaves a broken checkpoint."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        network = self.network.module if self.is_ddp else self.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            CHECKPOINT_KEY: self.critic_state(),
        }
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(filename, buffer.getvalue(), "checkpoint")  # atomic, read back and compared

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # read again for the critic: nnU-Net's load_checkpoint only works when given a file name
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self.print_to_log_file("The checkpoint holds no SegAN critic: the critic starts from scratch.")
            return
        self.critic_module.load_state_dict(state["network_weights"])
        self.critic_optimizer.load_state_dict(state["optimizer_state"])
        if self.critic_grad_scaler is not None and state.get("grad_scaler_state") is not None:
            self.critic_grad_scaler.load_state_dict(state["grad_scaler_state"])
        self.print_to_log_file("SegAN critic and its optimizer restored from the checkpoint.")


class nnUNetTrainerSegANDiceCE(nnUNetTrainerSegAN):
    """nnU-Net's own Dice + CE (Dice + BCE for regions) + ``segan_lambda`` * multi-scale L1."""

    def _build_loss(self):
        return nnUNetTrainer._build_loss(self)


class nnUNetTrainerSegANPerLabel(nnUNetTrainerSegAN):
    """CE + lambda * L1 with one critic per label (the seed's second variant)."""

    critic_mode = "per_label"


class nnUNetTrainerSegANWeightedCE(ClassFrequencyWeightedCE, nnUNetTrainerSegAN):
    """Class-frequency weighted CE (see ``weighted_ce``) + ``segan_lambda`` * multi-scale L1. Its loss
    settings: the class weights (from ``ClassFrequencyWeightedCE``) and the critic's (from SegAN)."""

    def _build_segmentation_loss(self) -> nn.Module:
        return self._build_weighted_ce()


TRAINERS = [nnUNetTrainerSegAN, nnUNetTrainerSegANDiceCE, nnUNetTrainerSegANPerLabel, nnUNetTrainerSegANWeightedCE]

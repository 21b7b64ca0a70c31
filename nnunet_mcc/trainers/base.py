"""What every trainer of this package shares: training-budget knobs and MCC in the validation log.

``ComparisonTrainer`` changes nothing of nnU-Net's training itself. It adds:

* budget knobs for smoke runs and CPU demos, read from the environment (documented in the README):
  ``NNUNET_MCC_EPOCHS``, ``NNUNET_MCC_ITERATIONS`` (training iterations per epoch),
  ``NNUNET_MCC_VAL_ITERATIONS``, ``NNUNET_MCC_SAVE_EVERY`` (epochs between checkpoint_latest) and
  ``NNUNET_MCC_PLOT_EVERY`` (epochs between progress.png redraws, which cost seconds each; the last
  epoch is always drawn);
  short variants (``..._5epochs``) set the epochs through the class attribute ``budget_epochs``;
* the hard MCC of every class or region over each epoch's validation batches, logged beside
  nnU-Net's pseudo Dice (``mean_fg_mcc``, ``mcc_per_class_or_region``) and drawn as a fourth
  panel of progress.png;
* ``snapshot_epochs``: checkpoints kept at chosen epochs (``NNUNET_MCC_SNAPSHOT_EPOCHS="5,10"``) so
  a comparison can evaluate the same run after several training lengths.
"""

import os
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mcc.knobs import BUDGET_VARIABLES, SNAPSHOT_VARIABLE
from nnunet_mcc.metrics import mcc_from_counts


def _positive_int_from_env(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"environment variable {name}={value!r} must be a positive integer")
    return number


def snapshot_epochs_from_env() -> List[int]:
    value = os.environ.get(SNAPSHOT_VARIABLE, "").strip()
    if not value:
        return []
    try:
        epochs = sorted({int(v) for v in value.replace(",", " ").split()})
    except ValueError:
        raise ValueError(f"{SNAPSHOT_VARIABLE}={value!r} must be a list of epoch numbers like '5,10,20'") from None
    if any(e < 1 for e in epochs):
        raise ValueError(f"{SNAPSHOT_VARIABLE}={value!r}: epoch numbers start at 1")
    return epochs


class MCCLocalLogger(LocalLogger):
    """nnU-Net's local logger with MCC series and a fourth progress.png panel showing them."""

    EXTRA_KEYS = ("mean_fg_mcc", "mcc_per_class_or_region")

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for key in self.EXTRA_KEYS:
            self.my_fantastic_logging[key] = []
        self.skip_next_plot = False

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        epochs = len(self.my_fantastic_logging.get("mean_fg_dice", []))
        for key in self.EXTRA_KEYS:  # a checkpoint of another trainer has no MCC series: pad with NaN
            self.my_fantastic_logging.setdefault(key, [float("nan")] * epochs)

    def plot_progress_png(self, output_folder):
        """nnU-Net's three panels, then an MCC panel of the same width appended below them."""
        if self.skip_next_plot:
            return
        super().plot_progress_png(output_folder)

        def draw(ax, x, series):
            ax.plot(x, series["mean_fg_mcc"], color="purple", label="pseudo MCC (mean fg)", linewidth=4)
            per_class = np.array(series["mcc_per_class_or_region"], dtype=float)
            if per_class.ndim == 2 and per_class.shape[1] > 1:
                for c in range(per_class.shape[1]):
                    ax.plot(x, per_class[:, c], ls="--", linewidth=2, label=f"MCC class/region {c + 1}")
            ax.set_ylabel("pseudo MCC")

        self.append_panel(output_folder, draw)

    def append_panel(self, output_folder: str, draw, height: float = 14) -> None:
        """Append a panel below the existing progress.png, as wide as nnU-Net's figure.
        ``draw(ax, epochs, series)`` plots the logged series (each cut to the complete epochs)."""
        import matplotlib.image as mpimg
        import matplotlib.pyplot as plt

        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        if epochs == 0:
            return
        path = join(output_folder, "progress.png")
        top = mpimg.imread(path)
        fig, ax = plt.subplots(1, 1, figsize=(top.shape[1] / 100, height), dpi=100)
        draw(ax, list(range(epochs)), {k: v[:epochs] for k, v in self.my_fantastic_logging.items()})
        ax.set_xlabel("epoch")
        ax.legend(loc=(0, 1), ncol=4)
        fig.tight_layout()
        fig.canvas.draw()
        bottom = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255
        plt.close(fig)
        top = top if top.shape[2] == 4 else np.concatenate([top, np.ones_like(top[..., :1])], 2)
        width = min(top.shape[1], bottom.shape[1])
        plt.imsave(path, np.concatenate([top[:, :width], bottom[:, :width]], 0))


class ComparisonTrainer(nnUNetTrainer):
    """Base of this package's trainers (see the module docstring). Loss unchanged: Dice + CE."""

    budget_epochs: Optional[int] = None
    plot_every: int = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.budget_epochs is not None:
            self.num_epochs = self.budget_epochs
        overrides = {}
        for attribute, variable in BUDGET_VARIABLES.items():
            value = _positive_int_from_env(variable)
            if value is not None:
                setattr(self, attribute, value)
                overrides[variable] = value
        self.snapshot_epochs = snapshot_epochs_from_env()
        if overrides:
            self.print_to_log_file(f"Training budget from the environment: {overrides}")
        self.logger.local_logger = MCCLocalLogger()

    # ---- loss helpers for subclasses ---------------------------------------------------------
    def _wrap_deep_supervision(self, loss: torch.nn.Module) -> torch.nn.Module:
        """nnU-Net's deep-supervision weighting (1/2^i, lowest scale off), as in nnUNetTrainer._build_loss."""
        if not self.enable_deep_supervision:
            return loss
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        # DDP without compile complains about unused parameters when the lowest weight is exactly 0
        weights[-1] = 1e-6 if (self.is_ddp and not self._do_i_compile()) else 0
        return DeepSupervisionWrapper(loss, weights / weights.sum())

    # ---- validation MCC -----------------------------------------------------------------------
    def _count_valid_voxels(self, target) -> int:
        target = target[0] if isinstance(target, list) else target
        if not self.label_manager.has_ignore_label:
            return int(target[:, 0].numel())
        if self.label_manager.has_regions:
            return int((target[:, -1] == 0).sum())
        return int((target[:, 0] != self.label_manager.ignore_label).sum())

    def validation_step(self, batch: dict) -> dict:
        n_valid = self._count_valid_voxels(batch["target"])  # before nnU-Net edits the target in place
        result = super().validation_step(batch)
        result["n_valid"] = n_valid
        return result

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        counts = np.array([np.stack([o["tp_hard"], o["fp_hard"], o["fn_hard"]]) for o in val_outputs]).sum(0)
        n_valid = float(sum(o["n_valid"] for o in val_outputs))
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (counts, n_valid))
            counts = sum(g[0] for g in gathered)
            n_valid = sum(g[1] for g in gathered)
        tp, fp, fn = counts
        mcc = mcc_from_counts(tp, fp, fn, n_valid - tp - fp - fn)
        self.logger.log("mcc_per_class_or_region", [float(v) for v in mcc], self.current_epoch)
        self.logger.log("mean_fg_mcc", float(np.nanmean(mcc)) if np.isfinite(mcc).any() else float("nan"),
                        self.current_epoch)

    def on_epoch_end(self):
        self.print_to_log_file("Pseudo MCC", [np.round(v, decimals=4) for v in
                                              self.logger.get_value("mcc_per_class_or_region", step=-1)])
        finished_epoch = self.current_epoch + 1
        self.logger.local_logger.skip_next_plot = \
            finished_epoch % self.plot_every != 0 and finished_epoch != self.num_epochs
        super().on_epoch_end()
        if finished_epoch in self.snapshot_epochs and finished_epoch != self.num_epochs:
            self.save_checkpoint(join(self.output_folder, f"checkpoint_epoch_{finished_epoch}.pth"))

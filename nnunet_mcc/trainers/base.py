"""What every trainer of this package shares: budgets with provenance, MCC in the validation log, snapshots.

``ComparisonTrainer`` changes nothing of nnU-Net's training itself. It adds:

* budget knobs for smoke runs and CPU demos, read from the environment (documented in the README):
  ``NNUNET_MCC_EPOCHS``, ``NNUNET_MCC_ITERATIONS`` (training iterations per epoch),
  ``NNUNET_MCC_VAL_ITERATIONS``, ``NNUNET_MCC_SAVE_EVERY`` (epochs between checkpoint_latest) and
  ``NNUNET_MCC_PLOT_EVERY`` (epochs between progress.png redraws, which cost seconds each; the last
  epoch is always drawn); short variants (``..._5epochs``) set the epochs through the class attribute
  ``budget_epochs``. :meth:`ComparisonTrainer.planned_budget` says what a new run would use;
* a record of how each fold was produced (``nnunet_mcc/provenance.py``): the budget and where each
  value came from, the training and loss settings (``nnunet_mcc_provenance.json``), and the per-epoch
  series of the log (``nnunet_mcc_log.json``);
* a resumed run (``--c``) keeps the budget it was started with: a conflicting environment value stops
  it with one line and exit status 2, before anything changes;
* the hard MCC of every class or region over each epoch's validation batches, logged beside
  nnU-Net's pseudo Dice (``mean_fg_mcc``, ``mcc_per_class_or_region``; a present class that is never
  predicted scores 0) and drawn as a fourth panel of progress.png;
* a seed: the class attribute ``trainer_seed`` (seeded variants ``<Trainer>_seed<S>``, source "trainer
  class"), else ``NNUNET_MCC_SEED`` (source "environment"), seeds Python's, NumPy's and torch's generators
  before the network is built. A class seed with a different ``NNUNET_MCC_SEED`` is refused in ``__init__``
  (one line, exit status 2) before nnU-Net writes anything. The run is reproducible (provenance
  ``deterministic``) only on a CPU with nnU-Net augmenting in its own process (``nnUNet_n_proc_DA=0``): its
  augmentation worker processes draw fresh random seeds, and on CUDA nnU-Net sets ``cudnn.benchmark``;
* the cost of each run (``cost`` in ``nnunet_mcc_log.json``): wall time, training iterations per second
  (training loop only), device, parallel jobs, torch threads and peak memory;
* snapshots (``NNUNET_MCC_SNAPSHOT_EPOCHS="5,10"``): at those epochs ``checkpoint_epoch_<N>.pth`` is kept
  and the fold's validation cases are predicted and evaluated with nnU-Net's own functions into
  ``snapshots/epoch_<N>/summary.json``, for a "score after N iterations" table.
"""

import os
import random
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mcc import __version__, provenance
from nnunet_mcc.budget import (BUDGET_KEYS, BUDGET_VARIABLES, NNUNET_DEFAULT_BUDGET, SCHEDULE_VARIABLES, SEED_VARIABLE,
                               describe_budget, positive_int_from_env, seed_from_env, torch_threads_from_env,
                               snapshot_epochs_from_env)
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import write_json
from nnunet_mcc.losses.base import ConfusionLoss
from nnunet_mcc.losses.focal import FocalLoss
from nnunet_mcc.losses.targets import TargetFormat
from nnunet_mcc.metrics import mcc_score
from nnunet_mcc.trainers.compiling import compile_losses
from nnunet_mcc.trainers.cost import RunCost
from nnunet_mcc.trainers.preemption import Preemption
from nnunet_mcc.trainers.progress import MCCLocalLogger, jsonable
from nnunet_mcc.trainers.snapshots import Snapshots


# The rooms of the missed-class gate of the confusion-count trainers used alone (MCC, GWDL, Tversky): a present
# class is pushed until its voxels carry on average at least GATE_MIN_RECALL of the class's probability (soft
# recall), and every class until the other voxels carry on average at most 1 - GATE_MIN_SPECIFICITY of it (soft
# specificity; in imbalanced data the complement is mostly background, and at 0.5 a class predicted on half the
# image still had room). At initialisation both act, as a class-balanced cross-entropy would; nothing changes once
# every class has both rooms. docs/mcc_rare_classes.md has the evidence. GWDL's recall room is higher
# (trainers/gwdl.py, GWDL_MIN_RECALL): its own loss does not push a nested label past the margin.
GATE_MIN_RECALL = 0.5
GATE_MIN_SPECIFICITY = 0.9


def gate_identity(missed_weight: float, min_recall: float, min_specificity: float = 0.0) -> dict:
    """The gate's part of a trainer's identity, as the loss records it (``ConfusionLoss.gate_settings``): its
    weight, and its rooms when it has a weight (a trainer without the gate keeps the identity it always had)."""
    room = {"min_recall": float(min_recall), **({"min_specificity": float(min_specificity)} if min_specificity else {})}
    return {"missed_weight": float(missed_weight), **(room if missed_weight else {})}


class ComparisonTrainer(RunCost, Snapshots, Preemption, nnUNetTrainer):
    """Base of this package's trainers (see the module docstring). Loss unchanged: Dice + CE."""

    budget_epochs: Optional[int] = None
    trainer_seed: Optional[int] = None  # set by the seeded variants <Trainer>[_<N>epochs]_seed<S>
    plot_every: int = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        try:  # before nnU-Net's __init__, which creates the output folder and its training log
            seed, seed_source = self.seed_with_source()
        except UserError as e:  # one line and exit status 2, as the resume lock in on_train_start
            print(str(e) if type(self).__name__ in str(e) else f"{type(self).__name__}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed, self.seed_source = seed, seed_source
        self._apply_seed()
        defaults = {key: getattr(self, key) for key in BUDGET_KEYS}
        budget, self.budget_sources = self._budget_with_sources(os.environ, defaults)
        for key, value in budget.items():
            setattr(self, key, value)
        overrides = {BUDGET_VARIABLES[k]: v for k, v in budget.items() if self.budget_sources[k].startswith("env")}
        for attribute, variable in SCHEDULE_VARIABLES.items():
            value = positive_int_from_env(variable)
            if value is not None:
                setattr(self, attribute, value)
                overrides[variable] = value
        self.snapshot_epochs = snapshot_epochs_from_env()
        self.target_format = TargetFormat.from_label_manager(self.label_manager)
        if overrides:
            self.print_to_log_file(f"Training budget from the environment: {overrides}")
        self.logger.local_logger = MCCLocalLogger()

    # ---- seed ------------------------------------------------------------------------------------
    @classmethod
    def seed_with_source(cls, environ=os.environ) -> Tuple[Optional[int], Optional[str]]:
        """The seed a run of this class gets and where it comes from: ``trainer_seed`` ("trainer class"), else
        ``NNUNET_MCC_SEED`` ("environment"), else ``(None, None)``. A class seed with another value of the
        variable is a UserError (equal values are fine)."""
        from_env = seed_from_env(environ)
        if cls.trainer_seed is not None:
            if from_env is not None and from_env != cls.trainer_seed:
                raise UserError(f"the trainer {cls.__name__} trains with seed {cls.trainer_seed}, but "
                                f"{SEED_VARIABLE}={from_env}: unset {SEED_VARIABLE} or set it to {cls.trainer_seed}")
            return int(cls.trainer_seed), "trainer class"
        if from_env is not None:
            return from_env, "environment"
        return None, None

    def _apply_seed(self) -> None:
        if self.seed is None:
            return
        random.seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        torch.manual_seed(self.seed)
        where = "the trainer class" if self.seed_source == "trainer class" else SEED_VARIABLE
        self.print_to_log_file(f"Random generators seeded with {self.seed} (from {where})")

    def deterministic(self) -> bool:
        """Whether a rerun reproduces this run: seeded, on the CPU, with nnU-Net's augmentation in the training
        process (``nnUNet_n_proc_DA=0``: its augmentation worker processes draw their own seeds; on CUDA nnU-Net
        sets ``cudnn.benchmark``, which picks kernels by timing)."""
        return (self.seed is not None and os.environ.get("nnUNet_n_proc_DA", "").strip() == "0"
                and self.device.type == "cpu")

    # ---- budget -----------------------------------------------------------------------------
    @classmethod
    def _budget_with_sources(cls, environ, defaults: Optional[Dict[str, int]] = None
                             ) -> Tuple[Dict[str, int], Dict[str, str]]:
        budget = dict(defaults or NNUNET_DEFAULT_BUDGET)
        sources = {key: "nnU-Net default" for key in budget}
        if cls.budget_epochs is not None:
            budget["num_epochs"], sources["num_epochs"] = int(cls.budget_epochs), "trainer class"
        for key in BUDGET_KEYS:
            value = positive_int_from_env(BUDGET_VARIABLES[key], environ)
            if value is not None:
                budget[key], sources[key] = value, f"environment {BUDGET_VARIABLES[key]}"
        return budget, sources

    @classmethod
    def planned_budget(cls, environ=os.environ) -> Dict[str, int]:
        """The budget (``BUDGET_KEYS``) a new run of this class would use under ``environ``."""
        return cls._budget_with_sources(environ)[0]

    def _keep_recorded_budget(self) -> None:
        """On loading a checkpoint of this fold: take the budget recorded when the run started.

        An environment value that contradicts it is remembered, and refused by :meth:`on_train_start`
        when training would continue (``--c``); validating a finished run (``--val``) is not refused.
        """
        try:
            recorded = provenance.recorded_budget(self.output_folder)
        except UserError:
            return  # nothing recorded (a checkpoint brought in by hand): the current settings stand
        changed = [k for k in BUDGET_KEYS if recorded[k] != getattr(self, k)]
        conflicts = [k for k in changed if self.budget_sources[k].startswith("environment")]
        if conflicts:
            self._budget_refusal = (
                f"{type(self).__name__} fold {self.fold}: this run was started with "
                f"{describe_budget(recorded)}, but "
                + ", ".join(f"{BUDGET_VARIABLES[k]}={getattr(self, k)}" for k in conflicts)
                + " would change its schedule midway; a resumed run keeps its budget: unset the variable(s) or "
                  "set the recorded value(s), or train again without --c")
        for key in changed:
            setattr(self, key, recorded[key])
            self.budget_sources[key] = "resumed run"
        if changed:
            self.print_to_log_file(f"Keeping the budget this run was started with: "
                                   f"{describe_budget(recorded)}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # before nnU-Net initializes: the learning-rate schedule is built from num_epochs
        if isinstance(filename_or_checkpoint, str) and not self.was_initialized:
            self._keep_recorded_budget()
        super().load_checkpoint(filename_or_checkpoint)

    # ---- provenance -------------------------------------------------------------------------
    @classmethod
    def identity_settings(cls, dataset_json: dict, environ=os.environ) -> dict:
        """The loss settings that change results and may differ between runs of one trainer name (a changed
        default, an environment variable): part of a run's identity, like its budget. Recorded as
        ``identity`` in the provenance; ``crossval`` never skips or resumes a fold recorded with other ones,
        and ``compare`` pairs only folds that agree. JSON-able; ``{}`` when the class alone fixes its loss.
        Raises UserError for a bad setting, so ``crossval`` refuses it before anything starts."""
        return {}

    def loss_settings(self) -> dict:
        """The loss and the settings of it that change results, as the loss reports them: every loss of this
        package inside ``self.loss`` (a :class:`nnunet_mcc.losses.ConfusionLoss`) gives its ``loss_name`` and
        ``settings()``, so a new loss needs no code here. Subclasses add only what the trainer alone knows
        (where a matrix came from, the critic)."""
        loss = self.loss.loss if isinstance(self.loss, DeepSupervisionWrapper) else self.loss
        modules = loss.modules() if isinstance(loss, torch.nn.Module) else ()  # None before initialize()
        own = [m for m in modules if isinstance(m, ConfusionLoss) or isinstance(m, FocalLoss)]
        name = type(loss).__name__
        if own:
            name = own[0].loss_name if own[0] is loss else f"{own[0].loss_name} in {name}"
        settings = {}
        for module in own:
            settings.update(module.settings())
        return {"name": name, "deep_supervision": self.enable_deep_supervision, "settings": settings}

    def provenance(self) -> dict:
        import nnunetv2
        from importlib.metadata import version

        cm = self.configuration_manager
        return {
            "format": provenance.FORMAT,
            "trainer": type(self).__name__,
            "versions": {"nnunet_mcc": __version__, "nnunetv2": version("nnunetv2"), "torch": torch.__version__,
                         "nnunetv2_path": os.path.dirname(nnunetv2.__file__)},
            "budget": {key: int(getattr(self, key)) for key in BUDGET_KEYS},
            "budget_sources": dict(self.budget_sources),
            "training": {"plans": self.plans_manager.plans_name, "configuration": self.configuration_name,
                         "fold": self.fold, "device": str(self.device), "initial_lr": self.initial_lr,
                         "weight_decay": self.weight_decay, "batch_size": getattr(self, "batch_size", cm.batch_size),
                         "patch_size": [int(p) for p in cm.patch_size], "batch_dice": bool(cm.batch_dice),
                         "oversample_foreground_percent": self.oversample_foreground_percent,
                         "seed": self.seed, "seed_source": self.seed_source,
                         "deterministic": self.deterministic()},
            "loss": self.loss_settings(),
            "identity": type(self).identity_settings(self.dataset_json),
            "snapshot_epochs": list(self.snapshot_epochs),
            "started_at_epoch": int(self.current_epoch),
            "interruptions": list(self.interruptions),
            "allocation": provenance.allocation(),
        }

    def on_train_start(self):
        refusal = getattr(self, "_budget_refusal", None)
        if refusal:  # before nnU-Net writes anything
            self.print_to_log_file(refusal, also_print_to_console=False)
            print(refusal, file=sys.stderr)
            raise SystemExit(2)
        threads = torch_threads_from_env()
        if threads:  # after nnUNetv2_train's torch.set_num_threads(cpu_count) on the CPU
            torch.set_num_threads(threads)
        self._start_cost()
        super().on_train_start()  # nnU-Net writes debug.json here
        self._load_interruptions()
        if self.local_rank == 0:
            write_json(join(self.output_folder, provenance.PROVENANCE_FILE), self.provenance(), "run record")
        self._install_stop_handlers()

    def on_train_end(self):
        self._restore_handlers()
        super().on_train_end()

    def run_training(self):
        try:
            super().run_training()
        finally:  # also when training fails: a long-lived worker process must not keep this run's handlers
            self._restore_handlers()

    def _write_log(self) -> None:
        series = self.logger.local_logger.my_fantastic_logging
        write_json(join(self.output_folder, provenance.LOG_FILE),
                   {"format": provenance.FORMAT, "trainer": type(self).__name__,
                    "iterations_per_epoch": int(self.num_iterations_per_epoch),
                    "epochs_completed": int(self.current_epoch),
                    "cost": self.cost(), "interruptions": list(self.interruptions),
                    "series": {key: jsonable(values) for key, values in series.items()}}, "training log")

    # ---- loss helpers for subclasses ---------------------------------------------------------
    def _wrap_deep_supervision(self, loss: torch.nn.Module) -> torch.nn.Module:
        """nnU-Net's deep-supervision weighting (1/2^i, lowest scale off), as in nnUNetTrainer._build_loss."""
        loss = compile_losses(self, loss)  # where nnU-Net compiles its loss.dc (nnunet_mcc/trainers/compiling.py)
        if not self.enable_deep_supervision:
            return loss
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        # DDP without compile complains about unused parameters when the lowest weight is exactly 0
        weights[-1] = 1e-6 if (self.is_ddp and not self._do_i_compile()) else 0
        return DeepSupervisionWrapper(loss, weights / weights.sum())

    def _confusion_kwargs(self) -> dict:
        """What every confusion-count loss takes from the plans and the run: counts pooled over the batch (and
        DDP ranks) when the plans say ``batch_dice``; no per-call target check (nnU-Net's preprocessing checked
        the values, and the check costs a device sync)."""
        return {"batch": self.configuration_manager.batch_dice, "ddp": self.is_ddp, "check_target": False}

    def _confusion_loss(self, loss_class: type, **kwargs) -> torch.nn.Module:
        """``loss_class`` (a :class:`nnunet_mcc.losses.ConfusionLoss`) alone on this dataset's targets: softmax
        over the classes without background (the ignore label left out), or a sigmoid per region (the ignore
        channel left out); wrapped for deep supervision."""
        tf, kwargs = self.target_format, {**self._confusion_kwargs(), **kwargs}
        if self.label_manager.has_regions:
            loss = loss_class("sigmoid", region_ignore_channel=tf.region_ignore_channel, **kwargs)
        else:
            loss = loss_class("softmax", include_background=False, ignore_index=tf.ignore_label, **kwargs)
        return self._wrap_deep_supervision(loss)

    def _confusion_loss_with_ce(self, loss_class: type, **kwargs) -> torch.nn.Module:
        """``loss_class`` + cross-entropy (binary cross-entropy for regions), 1:1 as nnU-Net's Dice + CE: its own
        compound losses (which handle the ignore label) with ``loss_class`` in the Dice slot."""
        from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

        lm, kwargs = self.label_manager, {**self._confusion_kwargs(), **kwargs}
        if lm.has_regions:
            loss = DC_and_BCE_loss({}, kwargs, weight_ce=1, weight_dice=1, use_ignore_label=lm.has_ignore_label,
                                   dice_class=loss_class)
        else:
            loss = DC_and_CE_loss({"include_background": False, **kwargs}, {}, weight_ce=1, weight_dice=1,
                                  ignore_label=lm.ignore_label, dice_class=loss_class)
        return self._wrap_deep_supervision(loss)

    # ---- validation MCC -----------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict:
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        valid = self.target_format.valid(target)  # before nnU-Net edits the target in place
        result = super().validation_step(batch)
        result["n_valid"] = int(target[:, 0].numel() if valid is None else valid.sum())
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
        mcc = mcc_score(tp, fp, fn, n_valid - tp - fp - fn)
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
        if self.local_rank == 0:
            self._write_log()
        if finished_epoch in self.snapshot_epochs and finished_epoch != self.num_epochs:
            # nnU-Net has counted the epoch already and saves current_epoch + 1: step back as its on_train_end does
            self.current_epoch -= 1
            self.save_checkpoint(join(self.output_folder, f"checkpoint_epoch_{finished_epoch}.pth"))
            self.current_epoch += 1
            self.validate_snapshot(finished_epoch)
        stop = self.stop_requested()
        if stop is not None and self.current_epoch < self.num_epochs:
            self.stop_at_epoch_boundary(stop)

"""What each fold's result records about how it was produced (import-light: no torch, no nnU-Net).

Files in a fold folder ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>/fold_<f>/``:

* ``debug.json``: nnU-Net's own record of every trainer attribute (as strings), written at the start
  of every training, stock trainers included. Its ``num_epochs``, ``num_iterations_per_epoch`` and
  ``num_val_iterations_per_epoch`` are the run's budget.
* ``nnunet_mcc_provenance.json`` (this package's trainers): the budget and where each value came from,
  the training settings and the loss settings that change results (GWDL matrix and its source, SegAN
  lambda, class weights, ...). Written at the start of training and again when a run is resumed.
* ``nnunet_mcc_log.json`` (this package's trainers): the per-epoch series of nnU-Net's logger and the
  validation MCC, rewritten after every epoch, so learning curves survive without checkpoints.
* ``snapshots/epoch_<N>/summary.json`` (this package's trainers, ``NNUNET_MCC_SNAPSHOT_EPOCHS``): nnU-Net's
  per-case evaluation of the fold's validation cases after epoch N, for "score after N iterations".
* ``validation_nomirror/`` (``nnunet_mcc.experiments.mirroring``, on request): the fold's validation cases
  predicted from ``checkpoint_final.pth`` exactly as nnU-Net's final validation does, except without
  test-time mirroring, and its ``summary.json`` (nnU-Net's format): tells a class lost in training from
  one lost by mirroring.
"""

import os
from typing import Dict, Optional

from nnunet_mcc.budget import (AUGMENTATION_WORKERS_VARIABLE, BUDGET_KEYS, EXPORT_WORKERS_VARIABLE,  # noqa: F401
                               NNUNET_DEFAULT_BUDGET, SCHEDULE_VARIABLES, THREAD_VARIABLES, TORCH_THREADS_VARIABLE,
                               available_cores, describe_budget)  # (some read from here too)
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json

PROVENANCE_FILE = "nnunet_mcc_provenance.json"
LOG_FILE = "nnunet_mcc_log.json"
SNAPSHOT_FOLDER = "snapshots"
UNMIRRORED_FOLDER = "validation_nomirror"
FORMAT = 1



def snapshot_summary(fold_folder: str, epoch: int) -> str:
    return os.path.join(fold_folder, SNAPSHOT_FOLDER, f"epoch_{epoch}", "summary.json")


def unmirrored_summary(fold_folder: str) -> str:
    """``validation_nomirror/summary.json``: the fold's validation predicted without test-time mirroring."""
    return os.path.join(fold_folder, UNMIRRORED_FOLDER, "summary.json")


def budget_from_debug_json(fold_folder: str) -> Dict[str, int]:
    """The budget nnU-Net recorded in ``debug.json``; UserError when missing, unreadable or incomplete."""
    path = os.path.join(fold_folder, "debug.json")
    debug = read_json(path, "nnU-Net's training record")
    try:
        return {key: int(debug[key]) for key in BUDGET_KEYS}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"nnU-Net's training record {path} lacks a whole-number {', '.join(BUDGET_KEYS)}") from None


def read_provenance(fold_folder: str) -> Optional[dict]:
    """``nnunet_mcc_provenance.json`` of a fold, None when the fold has none (a stock trainer's)."""
    path = os.path.join(fold_folder, PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    record = read_json(path, "run record")
    if not isinstance(record, dict) or not isinstance(record.get("budget"), dict) \
            or set(BUDGET_KEYS) - set(record["budget"]):
        raise UserError(f"run record {path} has no complete 'budget' ({', '.join(BUDGET_KEYS)})")
    return record


def recorded_budget(fold_folder: str) -> Dict[str, int]:
    """The budget a fold was trained with: this package's record, else nnU-Net's ``debug.json``."""
    record = read_provenance(fold_folder)
    if record is not None:
        return {key: int(record["budget"][key]) for key in BUDGET_KEYS}
    return budget_from_debug_json(fold_folder)


# the scheduler's variables a run records (SLURM's, when it runs in a job)
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                   "SLURM_CPUS_PER_TASK", "SLURM_JOB_PARTITION")
# nnU-Net's worker counts: final validation/export (default 8) and data augmentation (default min(12, cores));
# this package's torch threads (default: nnUNetv2_train's, every core on the CPU); OpenMP's and MKL's threads.
# crossval sets them on the CPU (each run's share of the cores) and SLURM tasks (their allocation) unless the user
# has: ``budget.allocation_environment``
WORKER_VARIABLES = (EXPORT_WORKERS_VARIABLE, AUGMENTATION_WORKERS_VARIABLE, TORCH_THREADS_VARIABLE, *THREAD_VARIABLES)


def allocation(environ=os.environ) -> Dict[str, object]:
    """What the run may use and what it was told to use: the cores it may run on (CPU affinity), SLURM's job
    variables that are set, nnU-Net's worker counts and the threads (None: unset, nnU-Net's and torch's defaults),
    and how often it checkpoints and redraws progress.png (``NNUNET_MCC_SAVE_EVERY``, ``NNUNET_MCC_PLOT_EVERY``;
    None: the trainer's default)."""
    record: Dict[str, object] = {"cpus_available": available_cores()}
    record.update({name.lower(): environ[name] for name in SLURM_VARIABLES if environ.get(name)})
    record.update({name: environ.get(name) or None for name in WORKER_VARIABLES})
    record.update({name: environ.get(name) or None for name in SCHEDULE_VARIABLES.values()})
    return record

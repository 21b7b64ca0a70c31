"""Names of the environment variables this package's trainers read (import-light: no torch, no nnU-Net).

``nnunet_mcc.trainers.base`` applies them; ``nnunet-mcc crossval`` sets them for the runs it starts. Also the
names of seeded trainers (``split_seed``, ``seed_variant_name``), which crossval and compare read without torch.
"""

import os
import re
from typing import List, Optional, Tuple

from nnunet_mcc.errors import UserError

# the training budget, part of a result's identity: trainer attribute -> environment variable
BUDGET_VARIABLES = {
    "num_epochs": "NNUNET_MCC_EPOCHS",
    "num_iterations_per_epoch": "NNUNET_MCC_ITERATIONS",
    "num_val_iterations_per_epoch": "NNUNET_MCC_VAL_ITERATIONS",
}
# when checkpoints and progress.png are written: they change no result
SCHEDULE_VARIABLES = {
    "save_every": "NNUNET_MCC_SAVE_EVERY",
    "plot_every": "NNUNET_MCC_PLOT_EVERY",
}
SNAPSHOT_VARIABLE = "NNUNET_MCC_SNAPSHOT_EPOCHS"
# seeds Python's, NumPy's and torch's generators when a trainer is created (unless the trainer's name carries a
# seed, ``_seed<S>``: then the variable must be unset or equal); a run is reproducible when it is on the CPU and
# nnU-Net also augments in its own process (nnUNet_n_proc_DA=0: its worker processes draw their own random seeds)
SEED_VARIABLE = "NNUNET_MCC_SEED"
# set by ``nnunet-mcc crossval`` for the runs it starts: how many runs share this machine (the run's cost record)
JOBS_VARIABLE = "NNUNET_MCC_JOBS"
# torch threads of each ``crossval --in-process`` worker (0: torch's default)
TORCH_THREADS_VARIABLE = "NNUNET_MCC_TORCH_THREADS"
# the train executable and leading arguments ``crossval`` runs (default: nnUNetv2_train)
TRAIN_COMMAND_VARIABLE = "NNUNET_MCC_TRAIN_COMMAND"
# loss settings, part of a run's identity: the GWDL distance matrix (a JSON file or a preset name), SegAN's
# adversarial weight and critic mode (the trainers parse them and name the variable in any error)
GWDL_MATRIX_VARIABLE = "NNUNET_MCC_GWDL_MATRIX"
SEGAN_LAMBDA_VARIABLE = "NNUNET_MCC_SEGAN_LAMBDA"
CRITIC_MODE_VARIABLE = "NNUNET_MCC_CRITIC_MODE"

# ---- trainer names with a seed: ``<Trainer>[_<N>epochs]_seed<S>`` -----------------------------------------
_SEED_SUFFIX = re.compile(r"^(?P<name>.+?)_seed(?P<seed>0|[1-9][0-9]*)$")


def split_seed(name: str) -> Tuple[str, Optional[int]]:
    """``"nnUNetTrainerMCC_50epochs_seed1"`` -> ``("nnUNetTrainerMCC_50epochs", 1)``; a name without a
    (well-formed: non-negative, no leading zeros, last) seed suffix -> ``(name, None)``."""
    match = _SEED_SUFFIX.match(name)
    if not match:
        return name, None
    return match.group("name"), int(match.group("seed"))


def seed_variant_name(name: str, seed: int) -> str:
    """The trainer that trains ``name`` with ``seed``: ``nnUNetTrainerMCC_50epochs`` + 1 ->
    ``nnUNetTrainerMCC_50epochs_seed1``. ValueError for a negative seed or a name that has a seed already."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a trainer seed is a non-negative integer, got {seed!r}")
    if split_seed(name)[1] is not None:
        raise ValueError(f"{name} carries a seed already")
    return f"{name}_seed{seed}"


# ---- reading the knobs (UserError with the variable's name and value) ------------------------------------
def positive_int_from_env(name: str, environ=os.environ) -> Optional[int]:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"environment variable {name}={value!r} must be a positive integer")
    return number


def snapshot_epochs_from_env(environ=os.environ) -> List[int]:
    value = environ.get(SNAPSHOT_VARIABLE, "").strip()
    if not value:
        return []
    try:
        epochs = sorted({int(v) for v in value.replace(",", " ").split()})
    except ValueError:
        raise UserError(f"{SNAPSHOT_VARIABLE}={value!r} must be a list of epoch numbers like '5,10,20'") from None
    if any(e < 1 for e in epochs):
        raise UserError(f"{SNAPSHOT_VARIABLE}={value!r}: epoch numbers start at 1")
    return epochs


def seed_from_env(environ=os.environ) -> Optional[int]:
    value = environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {SEED_VARIABLE}={value!r} must be a whole number") from None


def check_environment(environ=os.environ) -> None:
    """Every ``NNUNET_MCC_*`` knob the trainers read, parsed as they parse it: the first bad one is a UserError."""
    for name in list(BUDGET_VARIABLES.values()) + list(SCHEDULE_VARIABLES.values()):
        positive_int_from_env(name, environ)
    snapshot_epochs_from_env(environ)
    seed_from_env(environ)

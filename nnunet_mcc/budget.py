"""The training budget and every ``NNUNET_MCC_*`` knob: names, defaults and parsing, in one import-light home
(no torch, no nnU-Net).

* **The budget** (what a result is: two runs compare only with equal budgets) has one vocabulary: nnU-Net's
  trainer attributes (``BUDGET_KEYS``). The environment variables (``BUDGET_VARIABLES``) and the command-line
  options of crossval and demo (``BUDGET_OPTIONS``: ``--epochs``, ``--iterations``, ``--val-iterations``) map
  onto them here; :class:`Budget` is the value compared and printed; :func:`run_environment` is the
  environment a run gets.
* **The other knobs**: the seed, snapshots, checkpoint and plot schedules, the train command, the torch
  threads of in-process workers, and the loss settings read from the environment (GWDL's matrix, SegAN's
  weight and critic mode).
* **The cores of a run** (:func:`allocation_environment`): nnU-Net's worker counts and the threads a run given
  some cores is told to use, the one rule of a SLURM array task and of each of crossval's runs on the CPU
  (:func:`cpu_run_environment`: its share of this machine's cores, and when it redraws progress.png).

``nnunet_mcc.trainers.base`` applies them; ``nnunet-mcc crossval`` sets them for the runs it starts and checks
every one before anything starts (:func:`check_environment`). Also the names of seeded trainers
(``split_seed``, ``seed_variant_name``) and of trainers with a length (``split_epochs``, ``epochs_variant_name``),
which crossval and compare read without torch.
"""

import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mcc.errors import UserError

# ---- the budget ---------------------------------------------------------------------------------------
BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")
# nnUNetTrainer.__init__'s values (checked against a real nnUNetTrainer by the tests)
NNUNET_DEFAULT_BUDGET = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
# command-line option (crossval, demo, the ablation) -> budget key
BUDGET_OPTIONS = {"epochs": "num_epochs", "iterations": "num_iterations_per_epoch",
                  "val_iterations": "num_val_iterations_per_epoch"}

# the budget's environment variables: budget key -> variable
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
# torch threads of a run of this package's trainers, and of each ``crossval --in-process`` worker (unset or 0:
# nnU-Net's choice, every core of the machine on the CPU); 1 makes a seeded CPU run repeatable bit for bit even
# on a busy machine (several threads may sum a convolution's gradient in another order)
TORCH_THREADS_VARIABLE = "NNUNET_MCC_TORCH_THREADS"
# nnU-Net's worker counts: the final validation's export workers (nnU-Net's default 8) and the augmentation workers
# beside the training process (nnU-Net's default min(12, cores); 0: augmentation in the training process)
EXPORT_WORKERS_VARIABLE = "nnUNet_def_n_proc"
AUGMENTATION_WORKERS_VARIABLE = "nnUNet_n_proc_DA"
# the OpenMP and MKL threads of a run's processes (numpy, the augmentation, torch before set_num_threads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# progress.png of crossval's runs on the CPU: redrawn with nnU-Net's periodic checkpoint (every 50 epochs) and at the
# last epoch (always drawn) instead of after every epoch (nnU-Net's default), which cost ~8 s per 20-iteration epoch
# on a busy 2-core machine (0.03 s without the drawing); ~1.4 s on an idle core since the appended panels are drawn
# in 8 bits, still more than such an epoch
CPU_PLOT_EVERY = 50
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


# ---- trainer names with a length: ``<Trainer>_<N>epoch(s)`` (nnU-Net's short style; ``_1epoch`` for one) ----------
_EPOCHS_SUFFIX = re.compile(r"^(?P<name>\w+?)_(?P<epochs>[1-9][0-9]*)epochs?$")


def split_epochs(name: str) -> Tuple[str, Optional[int]]:
    """``"nnUNetTrainerMCC_50epochs"`` -> ``("nnUNetTrainerMCC", 50)``; a name without an epochs suffix in nnU-Net's
    spelling (``_1epoch``, ``_<N>epochs`` for N > 1; a seed suffix must be split off first) -> ``(name, None)``."""
    match = _EPOCHS_SUFFIX.match(name)
    if not match or _with_epochs(match.group("name"), int(match.group("epochs"))) != name:
        return name, None
    return match.group("name"), int(match.group("epochs"))


def _with_epochs(base: str, epochs: int) -> str:
    return f"{base}_{epochs}epoch" + ("s" if epochs > 1 else "")


def epochs_variant_name(name: str, epochs: int) -> str:
    """The trainer that trains ``name`` for ``epochs`` epochs (``nnunet_mcc.trainers.variants``' spelling, checked
    against it by the tests): ``nnUNetTrainerMCC`` or ``nnUNetTrainerMCC_50epochs`` + 100 ->
    ``nnUNetTrainerMCC_100epochs``; a seed suffix stays last (``..._seed1`` -> ``nnUNetTrainerMCC_100epochs_seed1``)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"a trainer's epochs are a positive integer, got {epochs!r}")
    unseeded, seed = split_seed(name)
    named = _with_epochs(split_epochs(unseeded)[0], epochs)
    return named if seed is None else seed_variant_name(named, seed)


@dataclass(frozen=True)
class Budget:
    """What decides how long a run trains; two runs are comparable only with equal budgets."""
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> "Budget":
        """From debug.json (values are strings there) or a provenance/planned budget (integers)."""
        return cls(*(int(str(mapping[k]).strip()) for k in BUDGET_KEYS))

    @property
    def iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def short(self) -> str:
        return f"{self.num_epochs} x {self.num_iterations_per_epoch} (val {self.num_val_iterations_per_epoch})"

    def __str__(self) -> str:
        return describe_budget(asdict(self))


def describe_budget(budget: Mapping[str, int]) -> str:
    """``40 epochs x 50 iterations (2000 iterations, 5 validation iterations per epoch)``."""
    epochs, iterations, val = (budget[k] for k in BUDGET_KEYS)
    return (f"{epochs} epoch{'s' if epochs != 1 else ''} x {iterations} iterations ({epochs * iterations} "
            f"iterations, {val} validation iteration{'s' if val != 1 else ''} per epoch)")


# ---- parsing (UserError naming the argument or variable) --------------------------------------------------
def positive_int(value, what: str, suffix: str = "") -> int:
    """``value`` (an int or its text) as a positive integer; UserError ``"<what> must be a positive
    integer<suffix>"`` otherwise, ``what`` naming the argument or variable."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise UserError(f"{what} must be a positive integer{suffix}")
    return number


def positive_int_from_env(name: str, environ=os.environ) -> Optional[int]:
    value = environ.get(name, "").strip()
    return positive_int(value, f"environment variable {name}={value!r}") if value else None


def check_budget_options(options: Mapping[str, Optional[int]]) -> Dict[str, int]:
    """The given budget options (``BUDGET_OPTIONS`` names, None = not given) checked; UserError naming the
    option."""
    return {name: positive_int(value, f"--{name.replace('_', '-')}", f", got {value}")
            for name, value in options.items() if value is not None}


def run_environment(budget: Optional[Mapping[str, Optional[int]]] = None,
                    snapshot_epochs: Optional[Sequence[int]] = None) -> Dict[str, str]:
    """The environment a run gets for a budget given as options (``{"epochs": 30, ...}``, None = the trainer's)
    and snapshot epochs. UserError for a value that is not a positive integer."""
    env = {BUDGET_VARIABLES[BUDGET_OPTIONS[name]]: str(value)
           for name, value in check_budget_options(budget or {}).items()}
    if snapshot_epochs:
        if min(snapshot_epochs) < 1:
            raise UserError(f"--snapshot-epochs must be epoch numbers >= 1, got {list(snapshot_epochs)}")
        env[SNAPSHOT_VARIABLE] = ",".join(str(e) for e in sorted(set(snapshot_epochs)))
    return env


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


def _number_from_env(name: str, convert, kind: str, environ) -> Optional[float]:
    """``convert`` of the variable's value, None when unset; UserError naming the variable otherwise."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return convert(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be {kind}") from None


def seed_from_env(environ=os.environ) -> Optional[int]:
    return _number_from_env(SEED_VARIABLE, int, "a whole number", environ)


def torch_threads_from_env(environ=os.environ) -> int:
    """Torch threads of a run (0, the default: nnU-Net's and torch's own choice)."""
    value = environ.get(TORCH_THREADS_VARIABLE, "").strip()
    if not value or value == "0":
        return 0
    return positive_int(value, f"environment variable {TORCH_THREADS_VARIABLE}={value!r}", " or 0")


def train_command_from_env(given: Optional[str] = None, environ=os.environ) -> Optional[List[str]]:
    """The train executable and leading arguments crossval runs: ``given`` (``--train-command``), else
    ``NNUNET_MCC_TRAIN_COMMAND``, split as a shell would; None for nnU-Net's own ``nnUNetv2_train``."""
    import shlex

    command = (given or environ.get(TRAIN_COMMAND_VARIABLE, "")).strip()
    if not command:
        return None
    try:
        return shlex.split(command)
    except ValueError as e:
        raise UserError(f"{'--train-command' if given else TRAIN_COMMAND_VARIABLE}={command!r} cannot be split "
                        f"into a command ({e})") from None


def segan_lambda_from_env(environ=os.environ) -> Optional[float]:
    """SegAN's adversarial weight from ``NNUNET_MCC_SEGAN_LAMBDA`` (None when unset; the trainer checks >= 0)."""
    return _number_from_env(SEGAN_LAMBDA_VARIABLE, float, "a number", environ)


def critic_mode_from_env(environ=os.environ) -> Optional[str]:
    """SegAN's critic mode from ``NNUNET_MCC_CRITIC_MODE`` (None when unset; the trainer checks the name)."""
    return environ.get(CRITIC_MODE_VARIABLE, "").strip() or None


def check_environment(environ=os.environ) -> None:
    """Every ``NNUNET_MCC_*`` knob the trainers read, parsed as they parse it: the first bad one is a UserError.
    (The loss settings' values are checked against each trainer by its ``identity_settings`` as well.)"""
    for name in list(BUDGET_VARIABLES.values()) + list(SCHEDULE_VARIABLES.values()):
        positive_int_from_env(name, environ)
    snapshot_epochs_from_env(environ)
    seed_from_env(environ)
    torch_threads_from_env(environ)
    segan_lambda_from_env(environ)



# ---- the cores of a run -------------------------------------------------------------------------------
def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (a SLURM task's, a container's, ``taskset``'s), else the
    machine's CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cores_per_run(jobs: int, cores: Optional[int] = None) -> int:
    """The share of each of ``jobs`` runs at a time on ``cores`` cores (default :func:`available_cores`):
    ``max(1, cores // jobs)``."""
    return max(1, (available_cores() if cores is None else int(cores)) // max(1, int(jobs)))


def allocation_environment(cores: int) -> Dict[str, str]:
    """What a run given ``cores`` cores is told to use: nnU-Net's export workers = cores, augmentation workers =
    cores - 1 (one core: 0, augmentation in the training process), torch, OpenMP and MKL threads = cores. On the CPU
    ``nnUNetv2_train`` would take every core of the machine, and threads that outnumber the cores slow each other
    down many times over. The rule of a SLURM array task (``experiments/scripts.py`` writes it in bash, checked
    against this function by the tests) and of each of crossval's runs on the CPU."""
    cores = max(1, int(cores))
    env = {EXPORT_WORKERS_VARIABLE: str(cores), AUGMENTATION_WORKERS_VARIABLE: str(cores - 1 if cores > 1 else 0),
           TORCH_THREADS_VARIABLE: str(cores)}
    env.update({name: str(cores) for name in THREAD_VARIABLES})
    return env


def cpu_run_environment(jobs: int, environ=os.environ, cores: Optional[int] = None) -> Dict[str, str]:
    """What each of ``jobs`` runs at a time on this machine's CPU gets, every variable only where ``environ`` does
    not set it (a value the user set is kept): its share of the cores, ``allocation_environment(cores_per_run(jobs,
    cores))``, and progress.png redrawn every ``CPU_PLOT_EVERY`` epochs."""
    defaults = dict(allocation_environment(cores_per_run(jobs, cores)),
                    **{SCHEDULE_VARIABLES["plot_every"]: str(CPU_PLOT_EVERY)})
    return {name: value for name, value in defaults.items() if not environ.get(name, "").strip()}

"""``nnunet-mcc crossval``: train every (trainer, fold) with nnU-Net's own ``nnUNetv2_train``.

Each run's state decides what happens to it:

* finished (``validation/summary.json``, with or without checkpoints): skipped, never retrained over;
* trained but not validated (``checkpoint_final.pth`` only): ``nnUNetv2_train ... --val``;
* interrupted (``checkpoint_latest.pth``): resumed with ``nnUNetv2_train ... --c``;
* anything else: trained from the start.

Before anything runs, the budget each existing fold was trained with (nnU-Net's ``debug.json``) is checked
against the budget asked for (``planned_budget`` of this package's trainers under the runs' environment):
a fold trained, validated or interrupted with another budget is never skipped or resumed silently. Each
such fold is named in one line with both budgets and nothing runs (exit status 2), unless
``--retrain-mismatched`` moves it aside (``fold_<f>.budget_<epochs>x<iterations>x<val>``, nothing deleted)
and trains it again. nnU-Net's own trainers have a budget fixed by their class: they are not checked, and
the budget options do not apply to them.

With ``--seeds 0 1 2`` each (trainer, fold) is trained once per seed, as the run of the seeded variant
``<Trainer>_seed<S>`` (its own ``<Trainer>_seed<S>__<plans>__<configuration>/fold_<f>``); only this package's
trainers read a seed.

On the CPU (``-device cpu``) every run gets its share of this machine's cores, the rule of a SLURM array task
(``budget.allocation_environment`` of ``max(1, cores // runs at the same time)`` cores: torch, OpenMP and MKL
threads, nnU-Net's augmentation and export workers), and redraws ``progress.png`` every ``budget.CPU_PLOT_EVERY``
epochs and at the last one; a variable already set in the environment is kept. Otherwise ``nnUNetv2_train`` would
give every run all the cores (measured on 2 cores, ``-j 2``: 5.1 s against 1.46 s per epoch).

With ``--auto-budget`` the runs are judged after each round with compare's convergence criterion, and every run of
a trainer with one not converged is trained again at twice the epochs (``<Trainer>_<2N>epochs[_seed<S>]``, a new
schedule in its own folder; the old one is kept and marked superseded), up to ``--max-epochs``: ``auto_rounds``
here, the bookkeeping and the record compare reads in ``auto_budget.py``.

A failed run does not stop the others; failures are listed at the end and the exit status is 1. Progress:
one line per finished run, or one progress bar with the running runs' epochs when stderr is a terminal.
Instead of training here, ``--write-script`` writes the same logic as a shell script and ``--slurm`` as a
SLURM job array with one task per run (the same state checks run inside each task).

The train command is ``nnUNetv2_train`` next to this Python (or ``--train-command`` /
``$NNUNET_MCC_TRAIN_COMMAND``, e.g. a wrapper): it receives nnUNetv2_train's arguments.
"""

import argparse
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_mcc.budget import (BUDGET_OPTIONS, BUDGET_VARIABLES, TRAIN_COMMAND_VARIABLE, available_cores,
                               check_environment, cores_per_run, cpu_run_environment, run_environment,
                               train_command_from_env)
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import auto_budget as auto
from nnunet_mcc.experiments import locks, results
from nnunet_mcc.experiments.checks import (aside_name, check_budgets, check_seed_environment, check_seeds,
                                           planned_budgets, planned_identities, run_trainers, seedable)
from nnunet_mcc.experiments.runner import RESUME, SKIP, TRAIN, VALIDATE, Run, run_pending, state_text
from nnunet_mcc.experiments.scripts import (DEFAULT_REQUEUES, DEFAULT_SIGNAL_MARGIN, compare_job_script, shell_script,
                                            write_executable)
from nnunet_mcc.experiments.scripts import submit as submit_jobs
from nnunet_mcc.fileio import os_error_cause, write_json
from nnunet_mcc.plans import add_planner_argument



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    add_planner_argument(parser)
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S",
                        help="train each (trainer, fold) once per seed, as <Trainer>_seed<S> (this package's "
                             "trainers only)")
    parser.add_argument("-device", "--device", default="cuda", choices=("cuda", "cpu", "mps"),
                        help="nnUNetv2_train's -device (default: cuda)")
    parser.add_argument("--npz", action="store_true",
                        help="also save validation probabilities (nnU-Net's --npz; compare computes ECE and Brier and "
                             "builds --ensemble from them)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="runs at the same time on this machine (default 1); on the CPU each gets its share of "
                             "the cores, max(1, cores // N) threads, unless NNUNET_MCC_TORCH_THREADS / "
                             "OMP_NUM_THREADS / ... are set")
    parser.add_argument("--epochs", type=int, help="NNUNET_MCC_EPOCHS for this package's trainers")
    parser.add_argument("--iterations", type=int, help="NNUNET_MCC_ITERATIONS (training iterations per epoch)")
    parser.add_argument("--val-iterations", type=int, help="NNUNET_MCC_VAL_ITERATIONS")
    parser.add_argument("--snapshot-epochs", nargs="+", type=int,
                        help="keep checkpoint_epoch_<N>.pth at these epochs (for compare's 'score after N epochs')")
    parser.add_argument("--train-command", help=f"train executable and leading arguments (default: "
                                                f"${TRAIN_COMMAND_VARIABLE} or nnUNetv2_train)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the trainings with nnU-Net's run_training in --jobs long-lived Python processes "
                             "instead of one nnUNetv2_train process each (saves ~10 s start-up per run on small "
                             "CPU budgets; the default command is used)")
    parser.add_argument("--retrain-mismatched", action="store_true",
                        help="a fold trained with another budget than asked (or an unknown one) is moved aside to "
                             "fold_<f>.budget_<epochs>x<iterations>x<val> and trained again (default: stop, exit 2)")
    parser.add_argument("--if-locked", choices=locks.CHOICES, default=locks.SKIP,
                        help="a fold folder another process is training (its lock, experiments/locks.py): skip it "
                             "(default; exit status 3 when nothing failed) or wait for it; either way one line names "
                             "the folder and the holder's pid and host")
    parser.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    parser.add_argument("--write-script", metavar="FILE", help="write a bash script running every run in turn")
    parser.add_argument("--slurm", metavar="FILE", help="write a SLURM job-array script, one task per run")
    parser.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                        help="extra '#SBATCH OPTION' line for --slurm (repeatable), e.g. --slurm-option=--time=48:00:00")
    parser.add_argument("--slurm-signal-margin", type=int, default=DEFAULT_SIGNAL_MARGIN, metavar="SECONDS",
                        help="--slurm: ask for SIGUSR1 this long before the time limit, then stop after the epoch, "
                             f"checkpoint and requeue (default {DEFAULT_SIGNAL_MARGIN}; longer than an epoch; "
                             "0: no warning, no requeue)")
    parser.add_argument("--slurm-requeues", type=int, default=DEFAULT_REQUEUES, metavar="N",
                        help=f"--slurm: requeue a task at most N times (default {DEFAULT_REQUEUES})")
    parser.add_argument("--submit", action="store_true",
                        help="--slurm: submit the array with sbatch, and a compare job that runs when it has ended")
    parser.add_argument("--auto-budget", action="store_true",
                        help="after the runs, judge them with compare's convergence criterion and train every (fold, "
                             "seed) of a trainer with a run not converged again at twice the epochs, as "
                             "<Trainer>_<2N>epochs in its own folder (the old runs are kept, marked superseded), up to "
                             "--max-epochs; the record is $nnUNet_results/<dataset>/nnunet_mcc_auto_budget_<plans>_"
                             "<configuration>.json, for compare --auto-budget")
    parser.add_argument("--max-epochs", type=int, metavar="N",
                        help=f"--auto-budget: train no trainer longer than N epochs (default: "
                             f"{auto.DEFAULT_CAP_FACTOR} x its first budget, two doublings)")
    parser.add_argument("--same-budget", action="store_true",
                        help="--auto-budget: double every trainer while any has a run not converged, so that all have "
                             "runs at the largest budget (for compare --same-budget)")
    parser.add_argument("--after-round", type=int, metavar="K",
                        help="--auto-budget with --slurm, set by the judge job after round K's array: do not submit "
                             "round K again when some of its runs did not finish")


def run(args) -> int:
    budget = {name: getattr(args, name) for name in BUDGET_OPTIONS}
    return crossval(args.dataset, args.configuration, args.trainers, folds=args.folds, plans=args.plans,
                    device=args.device, npz=args.npz, jobs=args.jobs, budget=budget,
                    snapshot_epochs=args.snapshot_epochs, train_command=args.train_command,
                    in_process=args.in_process, dry_run=args.dry_run, retrain_mismatched=args.retrain_mismatched,
                    script=args.write_script, slurm=args.slurm, slurm_options=args.slurm_option, seeds=args.seeds,
                    signal_margin=args.slurm_signal_margin, max_requeues=args.slurm_requeues, submit=args.submit,
                    auto_budget=args.auto_budget, max_epochs=args.max_epochs, same_budget=args.same_budget,
                    after_round=args.after_round, if_locked=args.if_locked)


def share_text(at_once: int, shared: Dict[str, str]) -> str:
    """What crossval sets for each run on the CPU, in one line."""
    cores = available_cores()
    return (f"each run on the CPU ({at_once} at a time on {cores} core{'s' if cores != 1 else ''}: "
            f"{cores_per_run(at_once, cores)} per run; variables already set are kept): "
            + " ".join(f"{k}={v}" for k, v in shared.items()))


def train_executable(train_command: Optional[str] = None) -> List[str]:
    command = train_command_from_env(train_command)
    if command:
        return command
    beside_python = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    if os.path.isfile(beside_python):
        return [beside_python]
    found = shutil.which("nnUNetv2_train")
    if not found:
        raise UserError("nnUNetv2_train not found next to this Python or on PATH (is nnunetv2 installed?)")
    return [found]


def action_for(folder: str) -> str:
    if results.fold_status(folder) == results.FINISHED:  # validation results are never trained over
        return SKIP
    if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        return VALIDATE
    if os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")):
        return RESUME
    return TRAIN


def plan_runs(dataset_name: str, configuration: str, trainers: Sequence[str], folds: Sequence[int], plans: str,
              device: str, npz: bool, executable: List[str]) -> List[Run]:
    results_root = results.nnunet_folder("results")
    runs = []
    for trainer in trainers:
        for fold in folds:
            folder = results.fold_folder(results_root, dataset_name, trainer, plans, configuration, fold)
            action = action_for(folder)
            runs.append(Run(trainer, fold, folder, action, command_for(executable, dataset_name, configuration, fold,
                                                                       trainer, plans, device, npz, action)))
    return runs


def command_for(executable: List[str], dataset_name: str, configuration: str, fold: int, trainer: str, plans: str,
                device: str, npz: bool, action: str) -> List[str]:
    extra = {RESUME: ["--c"], VALIDATE: ["--val"]}.get(action, [])
    return executable + [dataset_name, configuration, str(fold), "-tr", trainer, "-p", plans,
                         "-device", device] + (["--npz"] if npz else []) + extra


def check_inputs(dataset: str, configuration: str, trainers: Sequence[str], folds: Sequence[int], plans: str) -> str:
    if not trainers:
        raise UserError("-tr needs at least one trainer")
    if len(set(trainers)) != len(trainers):
        raise UserError(f"-tr lists a trainer twice: {' '.join(trainers)}")
    if not folds or any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise UserError(f"-f needs distinct fold numbers >= 0, got {folds}")
    dataset_name = results.resolve_dataset(dataset)
    results.load_plans_checked(dataset_name, plans, configuration)
    return dataset_name


def trainer_classes(trainers: Sequence[str], required: bool) -> Dict[str, Optional[type]]:
    """Each name looked up with nnU-Net's own lookup (its package, then ``nnUNet_extTrainer``). With ``required``
    an unknown name is a UserError; otherwise (a custom train command may know more) its class is None."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    found, unknown = {}, []
    for name in trainers:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                found[name] = recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            found[name] = None
            unknown.append(name)
    if unknown and required:
        raise UserError(f"trainer(s) not found by nnU-Net: {', '.join(unknown)} (check the spelling; "
                        f"`nnunet-mcc doctor` lists this package's trainers)")
    return found


def ensure_splits(dataset_name: str, configuration: str, plans: str, folds: Sequence[int]) -> None:
    """Write nnU-Net's default five-fold split before parallel runs, so they never race to create it.
    The same split the first training would write (nnU-Net's generate_crossval_split, seed 12345)."""
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    splits = os.path.join(preprocessed, "splits_final.json")
    if os.path.isfile(splits) or max(folds) > 4:
        return
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    plans_dict = results.load_plans_checked(dataset_name, plans, configuration)
    data_folder = os.path.join(preprocessed, plans_dict["configurations"][configuration].get(
        "data_identifier", f"{plans}_{configuration}"))
    if not os.path.isdir(data_folder):
        return  # let nnU-Net report the missing preprocessed data in the first run's log
    identifiers = sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    write_json(splits, generate_crossval_split(identifiers, seed=12345, n_splits=5), "nnU-Net split file", indent=4)


def crossval(dataset: str, configuration: str, trainers: Sequence[str], folds: Sequence[int] = (0, 1, 2, 3, 4),
             plans: str = "nnUNetPlans", device: str = "cuda", npz: bool = False, jobs: int = 1,
             budget: Optional[Dict[str, Optional[int]]] = None, snapshot_epochs: Optional[Sequence[int]] = None,
             train_command: Optional[str] = None, in_process: bool = False, dry_run: bool = False,
             retrain_mismatched: bool = False, script: Optional[str] = None, slurm: Optional[str] = None,
             slurm_options: Sequence[str] = (), check_trainers: Optional[bool] = None,
             seeds: Optional[Sequence[int]] = None, signal_margin: int = DEFAULT_SIGNAL_MARGIN,
             max_requeues: int = DEFAULT_REQUEUES, submit: bool = False, auto_budget: bool = False,
             max_epochs: Optional[int] = None, same_budget: bool = False, after_round: Optional[int] = None,
             log=print, if_locked: str = locks.SKIP) -> int:
    """Returns 0 when every run is finished, 1 when some failed (listed at the end). With ``seeds`` every trainer is
    trained once per seed, as ``<Trainer>_seed<S>``. With ``auto_budget`` the runs are judged after each round and
    a trainer with a run not converged is trained again at twice the epochs (``auto_budget.py``), up to
    ``max_epochs``."""
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    extra_env = run_environment(budget, snapshot_epochs)
    custom = train_command_from_env(train_command) is not None
    if in_process and custom:
        raise UserError("--in-process runs nnU-Net's own training function: it cannot use --train-command")
    if submit and not slurm:
        raise UserError("--submit submits the --slurm script: give --slurm FILE")
    if signal_margin < 0 or max_requeues < 0:
        raise UserError(f"--slurm-signal-margin and --slurm-requeues must be >= 0, got {signal_margin} and "
                        f"{max_requeues}")
    if retrain_mismatched and (script or slurm):
        raise UserError("--retrain-mismatched moves fold folders aside here: run it without --write-script/--slurm "
                        "(or move the folders aside yourself)")
    check_auto_options(auto_budget, max_epochs, same_budget, after_round, script, slurm)
    check_seeds(trainers, seeds)
    asked_trainers = list(trainers)  # before --seeds turns them into their seeded variants
    dataset_name = check_inputs(dataset, configuration, trainers, folds, plans)
    env = dict(os.environ, **extra_env)
    check_environment(env)  # every NNUNET_MCC_* knob the runs will read, before anything starts
    required = (not custom) if check_trainers is None else check_trainers
    classes = trainer_classes(trainers, required=required or auto_budget)
    if seeds:
        seedable(classes)
        trainers = run_trainers(trainers, seeds)
        classes = trainer_classes(trainers, required=True)  # the seeded variants, found as nnUNetv2_train will
    check_seed_environment(classes, env, seeds)
    planned = planned_budgets(classes, env)
    fixed = [t for t in trainers if classes[t] is not None and planned[t] is None]
    if auto_budget and fixed:
        raise UserError(f"--auto-budget trains longer runs as this package's trainers with more epochs "
                        f"(<Trainer>_<N>epochs): {', '.join(fixed)} keep(s) the budget of the class (nnU-Net's own "
                        f"trainers); for nnU-Net's Dice+CE with the budget knobs use nnUNetTrainerBaseline")
    if fixed and any(BUDGET_VARIABLES[k] in extra_env for k in BUDGET_OPTIONS.values()):
        log(f"note: {', '.join(fixed)}: budget fixed by the trainer class (nnU-Net's own trainers); "
            f"--epochs/--iterations/--val-iterations do not apply to them")
    executable = train_executable(train_command)
    if (script or slurm) and not custom:
        executable = ["nnUNetv2_train"]  # scripts run elsewhere (a cluster node): name nnU-Net's command
    setting = Setting(dataset_name, configuration, plans, list(folds), device, npz, jobs, executable, in_process,
                      dry_run, retrain_mismatched, list(seeds) if seeds else None, log, if_locked=if_locked)
    if auto_budget:
        slurm_job = None
        if slurm:
            common = compare_job_arguments(dataset_name, configuration, asked_trainers, plans, folds)
            slurm_job = {"path": slurm, "options": list(slurm_options or ()), "signal_margin": signal_margin,
                         "max_requeues": max_requeues, "submit": submit, "common": common,
                         "crossval": common + crossval_job_arguments(budget, device, seeds, snapshot_epochs, npz,
                                                                     train_command if custom else None)
                         + auto_job_arguments(max_epochs, same_budget) + slurm_job_arguments(
                             slurm, slurm_options, signal_margin, max_requeues)}
        return auto_rounds(setting, asked_trainers, classes, planned, env, extra_env, max_epochs, same_budget,
                           slurm_job, after_round)
    runs = prepare_runs(setting, trainers, classes, planned, env)
    if script:
        write_executable(script, shell_script(runs, extra_env, None))
        log(f"wrote {script} ({len(runs)} runs)")
    if slurm:
        compare_script = os.path.splitext(slurm)[0] + "_compare.sh"
        write_executable(slurm, shell_script(runs, extra_env, slurm_options or (), signal_margin, max_requeues,
                                             script_path=slurm, compare_script=compare_script))
        common = compare_job_arguments(dataset_name, configuration, asked_trainers, plans, folds)
        crossval_only = crossval_job_arguments(budget, device, seeds, snapshot_epochs)
        write_executable(compare_script, compare_job_script(common + crossval_only, common, slurm_options or ()))
        log(f"wrote {slurm} ({len(runs)} array tasks) and {compare_script} (the comparison, after the array)")
        if submit:
            submit_jobs(slurm, compare_script, log)
    if script or slurm:
        return 0
    return execute_runs(setting, runs, planned, env, extra_env)


@dataclass
class Setting:
    """What every round of one crossval call shares."""
    dataset_name: str
    configuration: str
    plans: str
    folds: List[int]
    device: str
    npz: bool
    jobs: int
    executable: List[str]
    in_process: bool
    dry_run: bool
    retrain_mismatched: bool
    seeds: Optional[List[int]]
    log: Callable = print
    if_locked: str = locks.SKIP  # a fold another process holds: skip or wait (runner.run_pending)


def prepare_runs(s: Setting, trainers: Sequence[str], classes: Dict[str, Optional[type]],
                 planned: Dict[str, Optional[results.Budget]], env: Dict[str, str]) -> List[Run]:
    """Each run's state, its recorded budget and settings checked against the asked ones: a mismatched fold stops
    everything (UserError) or, with ``retrain_mismatched``, is moved aside (said only, in a dry run)."""
    identities = planned_identities(classes, env, s.dataset_name)
    runs = plan_runs(s.dataset_name, s.configuration, trainers, s.folds, s.plans, s.device, s.npz, s.executable)
    mismatched = check_budgets(runs, planned, identities)
    for r in runs:
        if r.note:
            s.log(f"note: {r.trainer} fold {r.fold}: {r.note}")
    if mismatched and not s.retrain_mismatched:
        listed = "; ".join(f"{r.trainer} fold {r.fold} {r.mismatch}" for r in mismatched)
        raise UserError(f"{len(mismatched)} fold(s) were not trained with the budget and loss settings asked for, "
                        f"nothing was run: {listed}. Ask for their budget (--epochs/--iterations/--val-iterations) "
                        f"and settings, or pass --retrain-mismatched to move them aside and train them again")
    for r in mismatched:
        target = aside_name(r.folder, r.aside_tag)
        if s.dry_run:
            s.log(f"{r.trainer} fold {r.fold}: {r.mismatch}: would be moved aside to {os.path.basename(target)}")
        else:
            try:
                os.replace(r.folder, target)
            except OSError as e:
                raise UserError(f"cannot move {r.folder} aside to {target} ({os_error_cause(e)})") from None
            s.log(f"{r.trainer} fold {r.fold}: {r.mismatch}: moved aside to {target}")
        r.action = TRAIN
        r.command = command_for(s.executable, s.dataset_name, s.configuration, r.fold, r.trainer, s.plans, s.device,
                                s.npz, TRAIN)
    return runs


def execute_runs(s: Setting, runs: List[Run], planned: Dict[str, Optional[results.Budget]], env: Dict[str, str],
                 extra_env: Dict[str, str], unset: Sequence[str] = ()) -> int:
    """Train what is not finished (or, in a dry run, say what would run): 0 when every run is finished, 1 when some
    failed. ``unset``: variables the runs do not get (named in a dry run)."""
    env = dict(env)
    pending = [r for r in runs if r.action != SKIP]
    # on the CPU each run gets its share of this machine's cores (among the runs that run at the same time) and
    # progress.png only now and then, unless the user set them
    at_once = max(1, min(s.jobs, len(pending)))
    shared = cpu_run_environment(at_once, env) if s.device == "cpu" else {}
    env.update(shared)
    log = s.log
    if s.seeds and s.dry_run:
        log(f"{len(runs)} runs: {len(runs) // (len(s.seeds) * len(s.folds))} trainer(s) x {len(s.seeds)} seed(s) "
            f"({' '.join(map(str, s.seeds))}) x {len(s.folds)} fold(s)")
    for r in runs:
        if s.dry_run or r.action == SKIP:
            trained = f", trained {r.recorded.short()}" if r.recorded else ""
            state = f" ({state_text(r)})" if s.dry_run and r.action != SKIP else ""  # skipped: finished
            log(f"{r.trainer} fold {r.fold}: {r.action}{state}{trained}" +
                ("" if r.action == SKIP else f"  $ {shlex.join(r.command)}"))
    if shared and (s.dry_run or pending):
        log(share_text(at_once, shared))
    if s.dry_run:
        if extra_env or unset:
            log("environment: " + " ".join([f"{k}={v}" for k, v in extra_env.items()] +
                                           [f"{k} unset" for k in unset]))
        return 0
    if not pending:
        log(f"all {len(runs)} runs finished already")
        return 0
    if s.jobs > 1:
        ensure_splits(s.dataset_name, s.configuration, s.plans, s.folds)
    log_folder = os.path.join(results.nnunet_folder("results"), s.dataset_name, "nnunet_mcc_crossval_logs")
    started = time.time()
    epochs = {t: (b.num_epochs if b is not None else None) for t, b in planned.items()}
    skipped = []
    failures = run_pending(pending, env, s.jobs, log_folder, in_process=s.in_process, epochs=epochs,
                           log=log, worker_job={"dataset_name": s.dataset_name, "configuration": s.configuration,
                                                "plans": s.plans, "device": s.device, "npz": s.npz},
                           if_locked=s.if_locked, replan=lambda r: replan(s, r), skipped=skipped)
    done = len(pending) - len(failures) - len(skipped)
    log(f"{done} of {len(pending)} runs finished in {time.time() - started:.0f} s "
        f"({len(runs) - len(pending)} were finished before)")
    if failures:
        log(f"{len(failures)} run(s) failed:")
        for r, reason, log_file in failures:
            log(f"  {r.trainer} fold {r.fold}: {reason} (log: {log_file})")
        return 1
    if skipped:
        log(f"{len(skipped)} run(s) skipped, in use by another process (named above): "
            f"{', '.join(f'{r.trainer} fold {r.fold}' for r, _ in skipped)}; run again, or with --if-locked wait")
        return SKIPPED_EXIT
    return 0


SKIPPED_EXIT = 3  # nothing failed, but runs held by another process were skipped


def replan(s: Setting, r: Run) -> None:
    """Once a run holds its fold's lock: its action from the folder as it is now (another process may have trained,
    interrupted or validated it meanwhile)."""
    r.action = action_for(r.folder)
    r.command = command_for(s.executable, s.dataset_name, s.configuration, r.fold, r.trainer, s.plans, s.device,
                            s.npz, r.action)


# ---- the arguments of the job after a SLURM array ------------------------------------------------------
def compare_job_arguments(dataset_name: str, configuration: str, trainers: Sequence[str], plans: str,
                          folds: Sequence[int]) -> List[str]:
    """What crossval and compare share: dataset, configuration, trainers as asked, plans, folds."""
    return ["-d", dataset_name, "-c", configuration, "-tr", *trainers, "-p", plans, "-f", *map(str, folds)]


def crossval_job_arguments(budget: Optional[Dict[str, Optional[int]]], device: str, seeds: Optional[Sequence[int]],
                           snapshot_epochs: Optional[Sequence[int]], npz: bool = False,
                           train_command: Optional[str] = None) -> List[str]:
    """crossval's own options that decide which runs exist and how they train."""
    out = [f"--{name.replace('_', '-')}={value}" for name, value in (budget or {}).items() if value is not None]
    out += ["-device", device]
    out += ["--seeds", *map(str, seeds)] if seeds else []
    out += ["--snapshot-epochs", *map(str, snapshot_epochs)] if snapshot_epochs else []
    out += ["--npz"] if npz else []
    out += [f"--train-command={train_command}"] if train_command else []
    return out


def auto_job_arguments(max_epochs: Optional[int], same_budget: bool) -> List[str]:
    return ["--auto-budget"] + ([f"--max-epochs={max_epochs}"] if max_epochs else []) + \
        (["--same-budget"] if same_budget else [])


def slurm_job_arguments(slurm: str, slurm_options: Sequence[str], signal_margin: int, max_requeues: int) -> List[str]:
    return ([f"--slurm={os.path.abspath(slurm)}"] + [f"--slurm-option={o}" for o in slurm_options or ()]
            + [f"--slurm-signal-margin={signal_margin}", f"--slurm-requeues={max_requeues}"])


# ---- --auto-budget: rounds of doubled epochs until compare's judge is satisfied ------------------------
def check_auto_options(auto: bool, max_epochs: Optional[int], same_budget: bool, after_round: Optional[int],
                       script: Optional[str], slurm: Optional[str]) -> None:
    given = [name for name, value in (("--max-epochs", max_epochs), ("--same-budget", same_budget),
                                      ("--after-round", after_round)) if value]
    if given and not auto:
        raise UserError(f"{' and '.join(given)} belong(s) to --auto-budget: add --auto-budget")
    if auto and script:
        raise UserError("--auto-budget judges each round's runs before it trains the next one, which one "
                        "--write-script script cannot do: run crossval --auto-budget here, or with --slurm (a job "
                        "after each array judges the round and submits the next one)")
    if after_round is not None and (after_round < 1 or not slurm):
        raise UserError(f"--after-round is the judge job's (--slurm with --auto-budget): a round number >= 1, got "
                        f"{after_round}")


def auto_rounds(s: Setting, asked: Sequence[str], classes: Dict[str, Optional[type]],
                planned: Dict[str, Optional[results.Budget]], env: Dict[str, str], extra_env: Dict[str, str],
                max_epochs: Optional[int], same_budget: bool, slurm_job: Optional[dict] = None,
                after_round: Optional[int] = None) -> int:
    """The rounds of ``--auto-budget`` (``auto_budget.py``): train a round, judge its runs, train the trainers with a
    run not converged again at twice the epochs (their own folders, ``<Trainer>_<2N>epochs[_seed<S>]``), up to the
    cap. Finished rounds are judged again from their folders, so a call after an interruption picks up where the
    runs stand. A dry run judges the finished rounds and shows the first round with runs left; with ``slurm_job``
    that round is written as an array with a judge job after it, which calls this again with ``after_round``.
    ``classes`` and ``planned``: the first round's runs (nnU-Net's lookup, their budgets under ``env``)."""
    log = s.log
    first = {t: planned[run_trainers([t], s.seeds)[0]] for t in asked}
    if same_budget and len(set(first.values())) > 1:
        raise UserError("--same-budget doubles every trainer together, so they must start from one budget: "
                        + ", ".join(f"{t} {b.short()}" for t, b in first.items()))
    cap = auto.caps({t: b.num_epochs for t, b in first.items()}, max_epochs)
    trainers = [auto.TrainerRounds(t, first[t], cap[t]) for t in asked]
    results_root = results.nnunet_folder("results")
    record = auto.record_path(results_root, s.dataset_name, s.plans, s.configuration)
    names = auto.class_names(s.dataset_name)
    epochs_variable = BUDGET_VARIABLES["num_epochs"]
    log(f"auto budget: the runs of each round are judged by compare's convergence criterion; a trainer with a run not "
        f"converged is trained again at twice the epochs, a new schedule in its own folder <Trainer>_<N>epochs, up "
        "to " + ", ".join(f"{t.trainer} {t.cap}" for t in trainers) + " epochs"
        + ("; every trainer together (--same-budget)" if same_budget else ""))
    round_number = 1
    while True:
        active = [t for t in trainers if t.active]
        by_run = {run: t for t in active for run in run_trainers([t.name], s.seeds)}
        if len(by_run) < len(active) * len(s.seeds or [None]):
            raise UserError(f"auto budget, round {round_number}: two -tr trainers would train as the same trainer ("
                            + ", ".join(t.name for t in active) + "): give each trainer once, without a length")
        round_env, round_extra = dict(env), dict(extra_env)
        unset: List[str] = []
        if round_number > 1:  # the epochs come from the trainer's name (its class); the variable would override it
            round_env.pop(epochs_variable, None)
            round_extra.pop(epochs_variable, None)
            unset = [epochs_variable]
            classes = trainer_classes(list(by_run), required=True)  # found as nnUNetv2_train will find them
            check_seed_environment(classes, round_env, s.seeds)
        round_planned = planned_budgets({run: classes[run] for run in by_run}, round_env)
        wrong = [f"{run} would train {b.short() if b else 'its class budget'}, not {by_run[run].budget.short()}"
                 for run, b in round_planned.items() if b != by_run[run].budget]
        if wrong:
            raise UserError(f"auto budget, round {round_number}: {'; '.join(wrong)} (epochs x iterations): the "
                            f"longer runs must keep the first round's iterations per epoch")
        log(f"auto budget, round {round_number}: " + ", ".join(f"{t.name} ({t.budget.short()})" for t in active))
        runs = prepare_runs(s, list(by_run), {run: classes[run] for run in by_run}, round_planned, round_env)
        pending = [r for r in runs if r.action != SKIP]
        if pending:
            if s.dry_run:
                execute_runs(s, runs, round_planned, round_env, round_extra, unset)
                log(f"auto budget: then the runs of round {round_number} are judged, and a trainer with a run not "
                    f"converged is trained again at twice the epochs (a dry run shows the rounds up to the first "
                    f"one with runs left to train)")
                return 0
            if slurm_job is not None:
                return _submit_round(s, slurm_job, runs, round_extra, unset, round_number, after_round)
            code = execute_runs(s, runs, round_planned, round_env, round_extra)
            if code != 0:
                log(f"auto budget: round {round_number} did not finish, so it is not judged; run the same command "
                    f"again to go on (finished runs are skipped, interrupted ones resumed)")
                return code
        elif not s.dry_run and slurm_job is None:
            log(f"all {len(runs)} runs of round {round_number} finished already")
        verdicts: Dict[str, list] = {t.trainer: [] for t in active}
        for r in runs:
            verdicts[by_run[r.trainer].trainer].append((r.trainer, r.fold, auto.judge_fold(r.folder, names)))
        for t in active:
            t.add_round(verdicts[t.trainer])
        doubled = auto.decide(active, same_budget)
        for t, previous, superseded in doubled:
            if superseded and not s.dry_run:
                for old, new in zip(run_trainers([previous], s.seeds), run_trainers([t.name], s.seeds)):
                    auto.mark_superseded(results.trainer_folder(results_root, s.dataset_name, old, s.plans,
                                                                s.configuration), new, t, s.folds, record)
        for t in active:
            log(f"auto budget, round {round_number}: {auto.round_text(t)}")
        if not s.dry_run:
            auto.write_record(record, s.dataset_name, s.configuration, s.plans,
                              {t.trainer: t.entry(s.folds, s.seeds, same_budget) for t in trainers})
        if not any(t.active for t in trainers):
            break
        round_number += 1
    log("auto budget: " + "; ".join(auto.final_text(t) for t in trainers))
    if not s.dry_run:
        log(f"auto budget: record {record}; compare each trainer at the budget at which its runs converged with "
            f"nnunet-mcc compare ... --auto-budget (--same-budget: every trainer at the largest)")
    return 0


def _submit_round(s: Setting, job: dict, runs: List[Run], extra_env: Dict[str, str], unset: Sequence[str],
                  round_number: int, after_round: Optional[int]) -> int:
    """``--slurm`` with ``--auto-budget``: the round's runs as a job array and, after it, the judge job, which calls
    crossval again (judging this round and submitting the next one, if any) and then compare with the record."""
    if after_round is not None and round_number <= after_round:
        unfinished = [r for r in runs if r.action != SKIP]
        listed = ", ".join(f"{r.trainer} fold {r.fold}" for r in unfinished[:6]) + \
            (f" and {len(unfinished) - 6} more" if len(unfinished) > 6 else "")
        s.log(f"auto budget: round {round_number} still has {len(unfinished)} unfinished run(s) after its array "
              f"ended ({listed}): not submitting it again; see their logs, then run crossval with the same options "
              f"and --slurm FILE --submit to go on")
        return 1
    slurm = job["path"]
    judge_script = os.path.splitext(slurm)[0] + "_compare.sh"
    write_executable(slurm, shell_script(runs, extra_env, job["options"], job["signal_margin"], job["max_requeues"],
                                         script_path=slurm, compare_script=judge_script, unset=unset))
    next_round = job["crossval"] + [f"--after-round={round_number}"]
    write_executable(judge_script, compare_job_script(job["crossval"], job["common"] + ["--auto-budget"],
                                                      job["options"], next_round=next_round))
    s.log(f"wrote {slurm} (round {round_number}: {len(runs)} array tasks) and {judge_script} (after the array: judges "
          f"the round, submits the next one, compares)")
    if job["submit"]:
        submit_jobs(slurm, judge_script, s.log)
    return 0

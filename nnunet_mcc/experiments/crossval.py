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
from typing import Dict, List, Optional, Sequence

from nnunet_mcc.budget import (BUDGET_OPTIONS, BUDGET_VARIABLES, TRAIN_COMMAND_VARIABLE, check_environment,
                               run_environment, train_command_from_env)
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.experiments.checks import (aside_name, check_budgets, check_seed_environment, check_seeds,
                                           planned_budgets, planned_identities, run_trainers, seedable)
from nnunet_mcc.experiments.runner import RESUME, SKIP, TRAIN, VALIDATE, Run, run_pending, state_text
from nnunet_mcc.experiments.scripts import (DEFAULT_REQUEUES, DEFAULT_SIGNAL_MARGIN, compare_job_script, shell_script,
                                            write_executable)
from nnunet_mcc.experiments.scripts import submit as submit_jobs
from nnunet_mcc.fileio import os_error_cause, write_json



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S",
                        help="train each (trainer, fold) once per seed, as <Trainer>_seed<S> (this package's "
                             "trainers only)")
    parser.add_argument("-device", "--device", default="cuda", choices=("cuda", "cpu", "mps"),
                        help="nnUNetv2_train's -device (default: cuda)")
    parser.add_argument("--npz", action="store_true", help="also save validation probabilities (nnU-Net's --npz)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="runs at the same time on this machine (default 1; e.g. 2 on a 2-core CPU with "
                             "OMP_NUM_THREADS=1)")
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


def run(args) -> int:
    budget = {name: getattr(args, name) for name in BUDGET_OPTIONS}
    return crossval(args.dataset, args.configuration, args.trainers, folds=args.folds, plans=args.plans,
                    device=args.device, npz=args.npz, jobs=args.jobs, budget=budget,
                    snapshot_epochs=args.snapshot_epochs, train_command=args.train_command,
                    in_process=args.in_process, dry_run=args.dry_run, retrain_mismatched=args.retrain_mismatched,
                    script=args.write_script, slurm=args.slurm, slurm_options=args.slurm_option, seeds=args.seeds,
                    signal_margin=args.slurm_signal_margin, max_requeues=args.slurm_requeues, submit=args.submit)


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
             max_requeues: int = DEFAULT_REQUEUES, submit: bool = False, log=print) -> int:
    """Returns 0 when every run is finished, 1 when some failed (listed at the end). With ``seeds`` every trainer is
    trained once per seed, as ``<Trainer>_seed<S>``."""
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
    check_seeds(trainers, seeds)
    asked_trainers = list(trainers)  # before --seeds turns them into their seeded variants
    dataset_name = check_inputs(dataset, configuration, trainers, folds, plans)
    env = dict(os.environ, **extra_env)
    check_environment(env)  # every NNUNET_MCC_* knob the runs will read, before anything starts
    required = (not custom) if check_trainers is None else check_trainers
    classes = trainer_classes(trainers, required=required)
    if seeds:
        seedable(classes)
        trainers = run_trainers(trainers, seeds)
        classes = trainer_classes(trainers, required=True)  # the seeded variants, found as nnUNetv2_train will
    check_seed_environment(classes, env, seeds)
    planned = planned_budgets(classes, env)
    fixed = [t for t in trainers if classes[t] is not None and planned[t] is None]
    if fixed and any(BUDGET_VARIABLES[k] in extra_env for k in BUDGET_OPTIONS.values()):
        log(f"note: {', '.join(fixed)}: budget fixed by the trainer class (nnU-Net's own trainers); "
            f"--epochs/--iterations/--val-iterations do not apply to them")
    executable = train_executable(train_command)
    if (script or slurm) and not custom:
        executable = ["nnUNetv2_train"]  # scripts run elsewhere (a cluster node): name nnU-Net's command
    identities = planned_identities(classes, env, dataset_name)
    runs = plan_runs(dataset_name, configuration, trainers, folds, plans, device, npz, executable)
    mismatched = check_budgets(runs, planned, identities)
    for r in runs:
        if r.note:
            log(f"note: {r.trainer} fold {r.fold}: {r.note}")
    if mismatched and not retrain_mismatched:
        listed = "; ".join(f"{r.trainer} fold {r.fold} {r.mismatch}" for r in mismatched)
        raise UserError(f"{len(mismatched)} fold(s) were not trained with the budget and loss settings asked for, "
                        f"nothing was run: {listed}. Ask for their budget (--epochs/--iterations/--val-iterations) "
                        f"and settings, or pass --retrain-mismatched to move them aside and train them again")
    for r in mismatched:
        target = aside_name(r.folder, r.aside_tag)
        if dry_run:
            log(f"{r.trainer} fold {r.fold}: {r.mismatch}: would be moved aside to {os.path.basename(target)}")
        else:
            try:
                os.replace(r.folder, target)
            except OSError as e:
                raise UserError(f"cannot move {r.folder} aside to {target} ({os_error_cause(e)})") from None
            log(f"{r.trainer} fold {r.fold}: {r.mismatch}: moved aside to {target}")
        r.action = TRAIN
        r.command = command_for(executable, dataset_name, configuration, r.fold, r.trainer, plans, device, npz, TRAIN)
    if script:
        write_executable(script, shell_script(runs, extra_env, None))
        log(f"wrote {script} ({len(runs)} runs)")
    if slurm:
        compare_script = os.path.splitext(slurm)[0] + "_compare.sh"
        write_executable(slurm, shell_script(runs, extra_env, slurm_options or (), signal_margin, max_requeues,
                                             script_path=slurm, compare_script=compare_script))
        common = ["-d", dataset_name, "-c", configuration, "-tr", *asked_trainers, "-p", plans,
                  "-f", *map(str, folds)]
        crossval_only = [f"--{name.replace('_', '-')}={value}" for name, value in (budget or {}).items()
                         if value is not None] + ["-device", device]
        crossval_only += ["--seeds", *map(str, seeds)] if seeds else []
        crossval_only += ["--snapshot-epochs", *map(str, snapshot_epochs)] if snapshot_epochs else []
        write_executable(compare_script, compare_job_script(common + crossval_only, common, slurm_options or ()))
        log(f"wrote {slurm} ({len(runs)} array tasks) and {compare_script} (the comparison, after the array)")
        if submit:
            submit_jobs(slurm, compare_script, log)
    if script or slurm:
        return 0
    pending = [r for r in runs if r.action != SKIP]
    if seeds and dry_run:
        log(f"{len(runs)} runs: {len(runs) // (len(seeds) * len(folds))} trainer(s) x {len(seeds)} seed(s) "
            f"({' '.join(map(str, seeds))}) x {len(folds)} fold(s)")
    for r in runs:
        if dry_run or r.action == SKIP:
            trained = f", trained {r.recorded.short()}" if r.recorded else ""
            state = f" ({state_text(r)})" if dry_run and r.action != SKIP else ""  # skipped: finished
            log(f"{r.trainer} fold {r.fold}: {r.action}{state}{trained}" +
                ("" if r.action == SKIP else f"  $ {shlex.join(r.command)}"))
    if dry_run:
        if extra_env:
            log("environment: " + " ".join(f"{k}={v}" for k, v in extra_env.items()))
        return 0
    if not pending:
        log(f"all {len(runs)} runs finished already")
        return 0
    if jobs > 1:
        ensure_splits(dataset_name, configuration, plans, folds)
    log_folder = os.path.join(results.nnunet_folder("results"), dataset_name, "nnunet_mcc_crossval_logs")
    started = time.time()
    epochs = {t: (b.num_epochs if b is not None else None) for t, b in planned.items()}
    failures = run_pending(pending, env, jobs, log_folder, in_process=in_process, device=device, epochs=epochs,
                           log=log, worker_job={"dataset_name": dataset_name, "configuration": configuration,
                                                "plans": plans, "device": device, "npz": npz})
    log(f"{len(pending) - len(failures)} of {len(pending)} runs finished in {time.time() - started:.0f} s "
        f"({len(runs) - len(pending)} were finished before)")
    if failures:
        log(f"{len(failures)} run(s) failed:")
        for r, reason, log_file in failures:
            log(f"  {r.trainer} fold {r.fold}: {reason} (log: {log_file})")
        return 1
    return 0

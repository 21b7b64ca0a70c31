"""The bash script and the SLURM job array ``nnunet-mcc crossval --write-script / --slurm`` writes: the same state
checks as crossval (skip a finished run, validate a trained one, resume an interrupted one), made when each
run starts; and the compare job that ``--slurm ... --submit`` starts when the array has ended.

A SLURM array task

* **stays inside its allocation**: unless they are set already, nnU-Net's worker counts follow the cores the task
  may use, ``cores = $SLURM_CPUS_PER_TASK``, else the CPU affinity of the task (``len(os.sched_getaffinity(0))``):
  ``nnUNet_def_n_proc = cores`` (the final validation's export workers) and ``nnUNet_n_proc_DA = cores - 1``
  (augmentation workers beside the training process; with one core, 0: augmentation in the training process),
  and this package's trainers use ``cores`` torch threads (``NNUNET_MCC_TORCH_THREADS``; on the CPU
  ``nnUNetv2_train`` would take every core of the node, and OpenMP threads that outnumber the cores slow each
  other down many times over: measured 14 s against 0.2 s per epoch for two 1-CPU tasks on a 2-core node), as do
  OpenMP and MKL (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``): ``nnunet_mcc.budget.allocation_environment``, the
  rule crossval also gives each of its runs on the CPU;
* **loses no finished epoch to a time limit**: it asks SLURM for a warning (``--signal=B:USR1@<margin>``, to the
  batch shell only), runs the training in the background, and forwards USR1 (and TERM) to it. This package's
  trainers then finish their epoch, write ``checkpoint_latest.pth`` and exit 75
  (``nnunet_mcc.trainers.preemption``); the task requeues itself (``scontrol requeue``, at most
  ``--slurm-requeues`` times, counted by ``$SLURM_RESTART_COUNT``) and its next start resumes with ``--c``.
  Stock nnU-Net trainers in the same array are requeued too but stop at once on the signal, so they resume from
  their last periodic checkpoint (every 50 epochs); for this package's trainers the script sets
  ``NNUNET_MCC_SAVE_EVERY`` to 5 unless it is set, against a kill without warning. A task is requeued only after
  the warning it asked for: TERM is also what ``scancel`` sends, and a cluster that preempts with requeueing
  requeues by itself (the checkpoint is written either way).
"""

import os
import shlex
from typing import Dict, List, Optional, Sequence

from nnunet_mcc.budget import (AUGMENTATION_WORKERS_VARIABLE, EXPORT_WORKERS_VARIABLE, JOBS_VARIABLE,
                               SCHEDULE_VARIABLES, THREAD_VARIABLES, TORCH_THREADS_VARIABLE)
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.runner import Run
from nnunet_mcc.fileio import os_error_cause, write_text

DEFAULT_SIGNAL_MARGIN = 600  # seconds before the time limit; an epoch must fit in it
DEFAULT_REQUEUES = 3
SAVE_EVERY_ON_SLURM = 5

_RUN_FUNCTION = r'''
# run_fold FOLDER TRAIN-COMMAND...: skip a finished run (validation results are never trained over),
# validate a trained one, resume an interrupted one (nnUNetv2_train --c keeps the budget it started with)
run_fold() {
    local folder="$1"; shift
    RUN_FOLDER="$folder"
    if [ -f "$folder/validation/summary.json" ]; then
        echo "finished already: $folder"; return 0
    elif [ -f "$folder/checkpoint_final.pth" ]; then
        supervised "$@" --val
    elif [ -f "$folder/checkpoint_latest.pth" ]; then
        supervised "$@" --c
    else
        supervised "$@"
    fi
}
'''

_DIRECT = r'''
supervised() { "$@"; }
'''

# the batch shell gets SLURM's signals: it runs the training in the background, passes them on, and waits
_SUPERVISED = r'''
SIGNALLED=""
TRAPPED=""
CHILD=""
forward() {
    SIGNALLED="$1"
    TRAPPED=1
    echo "nnunet-mcc: SIG$1 received, passing it to the training (it stops after its current epoch)"
    if [ -n "$CHILD" ]; then kill -"$1" "$CHILD" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
supervised() {
    "$@" &
    CHILD=$!
    if [ -n "$SIGNALLED" ]; then kill -"$SIGNALLED" "$CHILD" 2>/dev/null; fi
    local status
    while true; do
        TRAPPED=""
        wait "$CHILD"; status=$?
        # a trapped signal ends the wait, not the training: wait again, which returns the training's own status
        # once it has ended (also when it ended in the meantime)
        [ -z "$TRAPPED" ] && break
    done
    CHILD=""
    return $status
}
'''

# nnU-Net's worker counts and the threads from the task's cores (see the module docstring): budget.py's
# allocation_environment(cores), written in bash because the cores are known only when the task runs
_ALLOCATION = (
    "\n# nnU-Net's worker processes and the threads within this task's allocation, unless set:\n"
    "# cores = SLURM_CPUS_PER_TASK, else the CPU affinity; export workers = cores, augmentation workers = cores - 1\n"
    "# (0: augmentation in the training process), torch threads of this package's trainers (nnUNetv2_train would\n"
    "# take every core), OpenMP and MKL threads = cores\n"
    "cores=\"${SLURM_CPUS_PER_TASK:-$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))' 2>/dev/null"
    " || nproc)}\"\n"
    f'export {EXPORT_WORKERS_VARIABLE}="${{{EXPORT_WORKERS_VARIABLE}:-$cores}}"\n'
    f'export {AUGMENTATION_WORKERS_VARIABLE}="${{{AUGMENTATION_WORKERS_VARIABLE}:-$(( cores > 1 ? cores - 1 : 0 ))}}"\n'
    + "".join(f'export {name}="${{{name}:-$cores}}"\n' for name in (TORCH_THREADS_VARIABLE, *THREAD_VARIABLES)))


def _requeue_block(max_requeues: int) -> List[str]:
    return [
        f"MAX_REQUEUES={int(max_requeues)}",
        'eval "run_fold ${RUNS[$SLURM_ARRAY_TASK_ID]}"',
        "status=$?",
        'if [ "$SIGNALLED" = USR1 ] && [ ! -f "$RUN_FOLDER/validation/summary.json" ]; then',
        '    restarts="${SLURM_RESTART_COUNT:-0}"',
        '    if [ "$restarts" -lt "$MAX_REQUEUES" ]; then',
        '        task="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-}}${SLURM_ARRAY_JOB_ID:+_$SLURM_ARRAY_TASK_ID}"',
        '        echo "nnunet-mcc: requeueing $task (requeue $((restarts + 1)) of at most $MAX_REQUEUES);'
        ' it resumes from checkpoint_latest.pth"',
        '        scontrol requeue "$task" && exit 0',
        '        echo "nnunet-mcc: scontrol requeue failed: resubmit this script to go on"',
        "    else",
        '        echo "nnunet-mcc: stopped after $restarts requeues (the most: $MAX_REQUEUES): resubmit this script to'
        ' go on"',
        "    fi",
        "fi",
        "exit $status",
        "",
    ]


def shell_script(runs: Sequence[Run], extra_env: Dict[str, str], slurm_options: Optional[Sequence[str]],
                 signal_margin: int = DEFAULT_SIGNAL_MARGIN, max_requeues: int = DEFAULT_REQUEUES,
                 script_path: Optional[str] = None, compare_script: Optional[str] = None,
                 unset: Sequence[str] = ()) -> str:
    """A bash script running every run (state checks at run time); with ``slurm_options`` a job array that
    respects its allocation and requeues itself after SLURM's warning (``signal_margin`` seconds before the time
    limit; 0: no warning, no requeue). ``unset``: variables the runs must not inherit from the submitting shell
    (``crossval --auto-budget``'s longer runs take their epochs from the trainer's name, not NNUNET_MCC_EPOCHS)."""
    slurm = slurm_options is not None
    lines = ["#!/bin/bash"]
    if slurm:
        lines += ["#SBATCH --job-name=nnunet-mcc-crossval", f"#SBATCH --array=0-{len(runs) - 1}",
                  "#SBATCH --output=nnunet-mcc-crossval_%A_%a.log", "#SBATCH --open-mode=append"]
        if signal_margin > 0:
            lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{int(signal_margin)}"]
        lines += [f"#SBATCH {option}" for option in slurm_options]
        lines += ["# written by `nnunet-mcc crossval --slurm`. Submit the array, then the comparison after it:",
                  f"#   jobid=$(sbatch --parsable {shlex.quote(script_path or 'THIS_SCRIPT')})"]
        if compare_script:
            lines.append(f"#   sbatch --dependency=afterany:${{jobid%%;*}} {shlex.quote(compare_script)}")
        lines.append("# (or let `nnunet-mcc crossval ... --slurm FILE --submit` do both)")
    else:
        lines.append("# written by `nnunet-mcc crossval --write-script`")
    lines += ["# nnU-Net's folders must be set in the environment",
              "set -u", ': "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in extra_env.items()]
    lines += [f"unset {name}  # the epochs come from the trainer's name" for name in unset]
    if slurm:
        save_every = SCHEDULE_VARIABLES["save_every"]
        lines.append(_ALLOCATION)
        lines.append(f'export {save_every}="${{{save_every}:-{SAVE_EVERY_ON_SLURM}}}"'
                     "  # this package's trainers: a checkpoint every few epochs too")
        lines.append(_SUPERVISED if signal_margin > 0 else _DIRECT)
    else:
        lines.append(f"export {JOBS_VARIABLE}=1  # one run at a time (recorded in each run's cost)")
        lines.append(_DIRECT)
    lines.append(_RUN_FUNCTION)
    # the state is checked when the script runs, so the commands are written without --c/--val
    commands = [[c for c in r.command if c not in ("--c", "--val")] for r in runs]
    folders = [r.folder.replace(os.environ.get("nnUNet_results", "\0"), "${nnUNet_results}", 1) for r in runs]
    entries = [f'"{f}" {shlex.join(c)}' for f, c in zip(folders, commands)]
    if slurm:
        lines.append("RUNS=(")
        lines += [f"    {shlex.quote(e)}" for e in entries]
        lines.append(")")
        if signal_margin > 0:
            lines += _requeue_block(max_requeues)
        else:
            lines += ['eval "run_fold ${RUNS[$SLURM_ARRAY_TASK_ID]}"', ""]
    else:
        lines += ["failed=0"] + [f"run_fold {e} || {{ echo \"FAILED: {e}\"; failed=1; }}" for e in entries]
        lines += ["exit $failed", ""]
    return "\n".join(lines)


def compare_job_script(crossval_args: Sequence[str], compare_args: Sequence[str],
                       slurm_options: Sequence[str], next_round: Optional[Sequence[str]] = None) -> str:
    """The job that runs after the array (``--dependency=afterany``): every run's state, then the comparison,
    whose report lists the folds that did not finish. GPU requests of the array are not passed on. With
    ``next_round`` (crossval's arguments, ``--auto-budget``) it first judges the round that has ended and submits
    the next one (an array and this job again after it), if any; the comparison is then the one so far."""
    lines = ["#!/bin/bash", "#SBATCH --job-name=nnunet-mcc-compare", "#SBATCH --output=nnunet-mcc-compare_%j.log"]
    lines += [f"#SBATCH {option}" for option in slurm_options if not option.lstrip("-").startswith("gres")]
    lines += ["# written by `nnunet-mcc crossval --slurm`: runs when the array has ended",
              "set -u", ': "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"',
              "echo 'nnunet-mcc: the state of every run'",
              shlex.join(["nnunet-mcc", "crossval", *crossval_args, "--dry-run"])]
    if next_round is not None:
        lines += ["echo 'nnunet-mcc: judging the round that has ended; the next round, if any, is submitted'",
                  shlex.join(["nnunet-mcc", "crossval", *next_round, "--submit"])
                  + " || echo 'nnunet-mcc: no next round was submitted (above)'"]
    lines += [shlex.join(["nnunet-mcc", "compare", *compare_args]), ""]
    return "\n".join(lines)


def write_executable(path: str, text: str) -> None:
    write_text(path, text, "script")
    try:
        os.chmod(path, 0o755)
    except OSError as e:
        raise UserError(f"{path}: cannot make the script executable ({os_error_cause(e)})") from None


def submit(script: str, compare_script: str, log=print) -> List[str]:
    """``sbatch`` the array, then the compare job with ``--dependency=afterany`` on it; returns both job ids."""
    import shutil

    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError("--submit: sbatch not found on PATH (is this a SLURM login node?); the scripts are written, "
                        f"submit them as their headers say: {script}, {compare_script}")
    array = _sbatch([sbatch, "--parsable", script])
    comparison = _sbatch([sbatch, "--parsable", f"--dependency=afterany:{array}", compare_script])
    log(f"submitted the array as job {array} and the comparison as job {comparison}, which runs when the array has "
        f"ended (squeue -j {array},{comparison})")
    return [array, comparison]


def _sbatch(command: List[str]) -> str:
    import subprocess

    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--submit: {shlex.join(command)} failed ({e})") from None
    job = proc.stdout.strip().split(";")[0]  # --parsable: "<id>" or "<id>;<cluster>"
    if proc.returncode != 0 or not job:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise UserError(f"--submit: {shlex.join(command)} failed: {reason}")
    return job

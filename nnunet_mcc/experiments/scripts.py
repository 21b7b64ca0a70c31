"""The bash script and the SLURM job array ``nnunet-mcc crossval --write-script / --slurm`` writes: the same state
checks as crossval (skip a finished run, validate a trained one, resume an interrupted one), made when each
run starts."""

import os
import shlex
from typing import Dict, Optional, Sequence

from nnunet_mcc.budget import JOBS_VARIABLE
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.runner import Run
from nnunet_mcc.fileio import os_error_cause, write_text

_RUN_FUNCTION = r'''
# run_fold FOLDER TRAIN-COMMAND...: skip a finished run (validation results are never trained over),
# validate a trained one, resume an interrupted one (nnUNetv2_train --c keeps the budget it started with)
run_fold() {
    local folder="$1"; shift
    if [ -f "$folder/validation/summary.json" ]; then
        echo "finished already: $folder"; return 0
    elif [ -f "$folder/checkpoint_final.pth" ]; then
        "$@" --val
    elif [ -f "$folder/checkpoint_latest.pth" ]; then
        "$@" --c
    else
        "$@"
    fi
}
'''


def shell_script(runs: Sequence[Run], extra_env: Dict[str, str], slurm_options: Optional[Sequence[str]]) -> str:
    """A bash script running every run (state checks at run time); with ``slurm_options`` a job array."""
    lines = ["#!/bin/bash"]
    if slurm_options is not None:
        lines += ["#SBATCH --job-name=nnunet-mcc-crossval", f"#SBATCH --array=0-{len(runs) - 1}",
                  "#SBATCH --output=nnunet-mcc-crossval_%A_%a.log"]
        lines += [f"#SBATCH {option}" for option in slurm_options]
    lines += ["# written by `nnunet-mcc crossval`: nnU-Net's folders must be set in the environment",
              "set -u", ': "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in extra_env.items()]
    if slurm_options is None:
        lines.append(f"export {JOBS_VARIABLE}=1  # one run at a time (recorded in each run's cost)")
    lines.append(_RUN_FUNCTION)
    # the state is checked when the script runs, so the commands are written without --c/--val
    commands = [[c for c in r.command if c not in ("--c", "--val")] for r in runs]
    folders = [r.folder.replace(os.environ.get("nnUNet_results", "\0"), "${nnUNet_results}", 1) for r in runs]
    entries = [f'"{f}" {shlex.join(c)}' for f, c in zip(folders, commands)]
    if slurm_options is not None:
        lines.append("RUNS=(")
        lines += [f"    {shlex.quote(e)}" for e in entries]
        lines += [")", 'eval "run_fold ${RUNS[$SLURM_ARRAY_TASK_ID]}"', ""]
    else:
        lines += ["failed=0"] + [f"run_fold {e} || {{ echo \"FAILED: {e}\"; failed=1; }}" for e in entries]
        lines += ["exit $failed", ""]
    return "\n".join(lines)


def write_executable(path: str, text: str) -> None:
    write_text(path, text, "script")
    try:
        os.chmod(path, 0o755)
    except OSError as e:
        raise UserError(f"{path}: cannot make the script executable ({os_error_cause(e)})") from None

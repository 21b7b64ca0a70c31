"""The SLURM job array and compare job ``crossval --slurm`` writes, run by bash with SLURM's variables set and fake
``scontrol`` / ``sbatch`` commands: the allocation, the warning signal passed to the training, the requeue, and
``--submit``. (tests/test_slurm_cluster.py runs them on a real one-node cluster when SLURM is installed.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.crossval import crossval
from test_crossval import CONFIG, classes, fake  # noqa: F401  (the fake dataset, trainers and train command)

TRAIN_UNTIL_SIGNAL = r'''
import json, os, signal, sys, time
args = sys.argv[1:]
dataset, config, fold = args[0], args[1], args[2]
trainer = args[args.index("-tr") + 1]
folder = os.path.join(os.environ["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__{config}", f"fold_{fold}")
os.makedirs(folder, exist_ok=True)
record = {"flags": [a for a in args if a in ("--c", "--val")], "signal": None,
          **{k: os.environ.get(k) for k in ("nnUNet_def_n_proc", "nnUNet_n_proc_DA", "NNUNET_MCC_SAVE_EVERY",
                                           "NNUNET_MCC_TORCH_THREADS")}}
def stop(signum, frame):  # as this package's trainers do: checkpoint at the epoch's end, exit 75
    record["signal"] = signal.Signals(signum).name
    open(os.path.join(folder, "checkpoint_latest.pth"), "w").close()
    with open(os.environ["FAKE_RECORD"], "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
open(os.environ["FAKE_STARTED"], "w").close()
if os.environ.get("FAKE_WAIT_FOR_SIGNAL"):
    time.sleep(60)
with open(os.environ["FAKE_RECORD"], "a") as f:
    f.write(json.dumps(record) + "\n")
open(os.path.join(folder, "checkpoint_final.pth"), "w").close()
os.makedirs(os.path.join(folder, "validation"))
open(os.path.join(folder, "validation", "summary.json"), "w").write("{}")
'''

RECORDING_COMMAND = '#!/bin/bash\necho "$(basename "$0") $*" >> "$FAKE_SLURM_CALLS"\n{reply}\n'


@pytest.fixture
def cluster(fake, tmp_path, monkeypatch):  # noqa: F811
    """Fake ``scontrol`` and ``sbatch`` on PATH (recording their arguments), a train command that waits for
    SIGUSR1, and a ``run`` that starts an array task as SLURM would."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "scontrol").write_text(RECORDING_COMMAND.format(reply="exit 0"))
    (bin_folder / "sbatch").write_text(RECORDING_COMMAND.format(
        reply='echo "$(( $(wc -l < "$FAKE_SLURM_CALLS") + 100 ));cluster"'))
    for name in ("scontrol", "sbatch"):
        os.chmod(bin_folder / name, 0o755)
    train = tmp_path / "train_until_signal.py"
    train.write_text(TRAIN_UNTIL_SIGNAL)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_CALLS", str(tmp_path / "slurm_calls.txt"))
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.jsonl"))
    monkeypatch.setenv("FAKE_STARTED", str(tmp_path / "started"))

    def run(script, restarts=0, signal_after_start=False, **env):
        started = tmp_path / "started"
        if started.exists():
            started.unlink()
        environ = dict(os.environ, SLURM_ARRAY_JOB_ID="123", SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="124",
                       SLURM_RESTART_COUNT=str(restarts), **env)
        if signal_after_start:
            environ["FAKE_WAIT_FOR_SIGNAL"] = "1"
        proc = subprocess.Popen(["bash", script], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if signal_after_start:
            deadline = time.time() + 60
            while not started.exists() and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1 does: to the batch shell only
        out, _ = proc.communicate(timeout=120)
        return proc.returncode, out

    def slurm_calls():
        path = tmp_path / "slurm_calls.txt"
        return path.read_text().splitlines() if path.exists() else []

    def records():
        path = tmp_path / "record.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        return [json.loads(line) for line in lines]

    return {"run": run, "slurm_calls": slurm_calls, "records": records,
            "train_command": f"{sys.executable} {train}"}


def test_a_warned_task_checkpoints_requeues_and_resumes_within_its_allocation(fake, cluster, tmp_path):  # noqa: F811
    slurm = str(tmp_path / "array.sbatch")
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=cluster["train_command"],
                    slurm=slurm, slurm_options=["--time=1:00:00"], signal_margin=300, max_requeues=2) == 0
    text = open(slurm).read()
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text and "--open-mode=append" in text
    compare_script = str(tmp_path / "array_compare.sh")
    assert f"sbatch --dependency=afterany:${{jobid%%;*}} {compare_script}" in text

    # the warning: passed to the training, which checkpoints and exits 75; the task requeues itself
    code, out = cluster["run"](slurm, signal_after_start=True, SLURM_CPUS_PER_TASK="1")
    assert code == 0, out
    assert cluster["slurm_calls"]() == ["scontrol requeue 123_0"]
    [record] = cluster["records"]()
    assert record["signal"] == "SIGUSR1" and record["flags"] == []
    # one core: nnU-Net's export workers 1, augmentation in the training process; a checkpoint every 5 epochs
    assert (record["nnUNet_def_n_proc"], record["nnUNet_n_proc_DA"], record["NNUNET_MCC_SAVE_EVERY"],
            record["NNUNET_MCC_TORCH_THREADS"]) == ("1", "0", "5", "1")
    assert "requeue 1 of at most 2" in out

    # the requeued task resumes with --c and finishes; the user's own worker counts are kept
    code, out = cluster["run"](slurm, restarts=1, SLURM_CPUS_PER_TASK="4", nnUNet_def_n_proc="2")
    assert code == 0, out
    [record] = cluster["records"]()
    assert record["flags"] == ["--c"] and (record["nnUNet_def_n_proc"], record["nnUNet_n_proc_DA"]) == ("2", "3")
    assert record["NNUNET_MCC_TORCH_THREADS"] == "4"
    assert cluster["slurm_calls"]() == ["scontrol requeue 123_0"]  # no second requeue


def test_no_requeue_past_the_limit_nor_without_the_warning(fake, cluster, tmp_path):  # noqa: F811
    slurm = str(tmp_path / "array.sbatch")
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=cluster["train_command"],
                    slurm=slurm, max_requeues=2) == 0
    code, out = cluster["run"](slurm, restarts=2, signal_after_start=True)
    assert code == 75 and "stopped after 2 requeues" in out and cluster["slurm_calls"]() == []
    # without --slurm-signal-margin the script asks for no signal and never requeues
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=cluster["train_command"],
                    slurm=slurm, signal_margin=0) == 0
    text = open(slurm).read()
    assert "--signal" not in text and "--requeue" not in text and "scontrol" not in text


def test_submit_starts_the_array_and_a_compare_job_after_it(fake, classes, cluster, tmp_path, capsys):  # noqa: F811
    slurm = str(tmp_path / "array.sbatch")
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=cluster["train_command"],
                    slurm=slurm, slurm_options=["--gres=gpu:1", "--partition=short"], seeds=[0, 1],
                    budget={"epochs": 3}, submit=True) == 0
    compare_script = str(tmp_path / "array_compare.sh")
    assert cluster["slurm_calls"]() == [f"sbatch --parsable {slurm}",
                                        f"sbatch --parsable --dependency=afterany:101 {compare_script}"]
    out = capsys.readouterr().out
    assert "submitted the array as job 101 and the comparison as job 102" in out
    text = open(compare_script).read()
    assert "#SBATCH --partition=short" in text and "gres" not in text  # the comparison needs no GPU
    assert "nnunet-mcc crossval -d Dataset555_Fake -c 2d -tr A B -p nnUNetPlans -f 0 1 --epochs=3 -device cpu " \
           "--seeds 0 1 --dry-run" in text
    assert "nnunet-mcc compare -d Dataset555_Fake -c 2d -tr A B -p nnUNetPlans -f 0 1\n" in text


@pytest.mark.parametrize("case", ["no_slurm", "no_sbatch", "sbatch_fails", "negative_margin"])
def test_submit_problems_are_one_line(fake, cluster, tmp_path, monkeypatch, case):  # noqa: F811
    kwargs = dict(slurm=str(tmp_path / "array.sbatch"), submit=True)
    if case == "no_slurm":
        kwargs = dict(submit=True)
        message = "--submit submits the --slurm script"
    elif case == "no_sbatch":
        monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
        message = "sbatch not found on PATH"
    elif case == "sbatch_fails":
        (tmp_path / "bin" / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
        message = "failed: sbatch: error: invalid partition"
    else:
        kwargs["signal_margin"] = -1
        message = "must be >= 0"
    with pytest.raises(UserError, match=message):
        crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=cluster["train_command"], **kwargs)

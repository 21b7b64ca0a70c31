"""Preemption loses no finished epoch: on SIGUSR1 (SLURM's warning before a time limit) a trainer of this package
finishes its epoch, writes checkpoint_latest.pth, records the interruption and exits 75; ``--c`` resumes it. The
checkpoint is the state an uninterrupted seeded run has at that epoch boundary, bit for bit, and a run resumed from
it matches one resumed from the uninterrupted run's checkpoint (CPU, augmentation in the training process)."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from nnunet_mcc import provenance
from nnunet_mcc.trainers.preemption import PREEMPTED_EXIT_CODE
from nnunet_e2e import BIN, run, trainer_output

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerMCC"
EPOCHS = 40  # a stop must land before the last epoch: ample room after the first


def _train_command(dataset, resume=False):
    return [os.path.join(BIN, "nnUNetv2_train"), dataset, "2d_small", "0", "-tr", TRAINER, "-device", "cpu"] + \
        (["--c"] if resume else [])


def _epochs_logged(fold: str) -> int:
    try:
        with open(os.path.join(fold, provenance.LOG_FILE)) as f:
            return int(json.load(f)["epochs_completed"])
    except (OSError, ValueError, KeyError):
        return 0


def _weights(path: str) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return {"epoch": checkpoint["current_epoch"], "network": checkpoint["network_weights"],
            "optimizer": checkpoint["optimizer_state"]["state"]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    assert a["network"].keys() == b["network"].keys()
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    for index, state in a["optimizer"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b["optimizer"][index][name]), (index, name)


def test_a_signal_stops_at_an_epoch_boundary_and_the_run_resumes_exactly(prepared, nnunet_env, tmp_path):
    dataset = prepared("2d_multiclass")
    # one torch thread: several may sum a gradient in another order on a busy machine
    env = dict(nnunet_env, NNUNET_MCC_EPOCHS=str(EPOCHS), NNUNET_MCC_ITERATIONS="2", NNUNET_MCC_VAL_ITERATIONS="1",
               NNUNET_MCC_TORCH_THREADS="1")
    fold = trainer_output(env["nnUNet_results"], dataset, TRAINER, "2d_small")

    # SIGUSR1 once the first epoch is logged: the run ends its epoch, checkpoints and exits 75
    process = subprocess.Popen(_train_command(dataset), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while _epochs_logged(fold) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "Traceback" not in stderr
    stopped = _weights(os.path.join(fold, "checkpoint_latest.pth"))
    k = stopped["epoch"]
    assert 1 <= k < EPOCHS and not os.path.exists(os.path.join(fold, "checkpoint_final.pth"))
    with open(os.path.join(fold, provenance.LOG_FILE)) as f:
        log = json.load(f)
    assert log["epochs_completed"] == k and [i["after_epoch"] for i in log["interruptions"]] == [k]
    assert log["interruptions"][0]["signal"] == "SIGUSR1"

    # resumed with --c: it finishes, and its records show where it was interrupted
    run(_train_command(dataset, resume=True), env)
    with open(os.path.join(fold, provenance.LOG_FILE)) as f:
        log = json.load(f)
    with open(os.path.join(fold, provenance.PROVENANCE_FILE)) as f:
        record = json.load(f)
    assert log["epochs_completed"] == EPOCHS and [i["after_epoch"] for i in log["interruptions"]] == [k]
    assert record["started_at_epoch"] == k and record["interruptions"] == log["interruptions"]
    assert record["allocation"]["cpus_available"] >= 1 and record["allocation"]["nnUNet_n_proc_DA"] == "0"
    assert log["cost"]["torch_threads"] == 1  # NNUNET_MCC_TORCH_THREADS over nnUNetv2_train's every-core default
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

    # an uninterrupted run with the same seed: its state after epoch k is the checkpoint the signal wrote
    reference_env = dict(env, nnUNet_results=str(tmp_path / "reference"), NNUNET_MCC_SNAPSHOT_EPOCHS=str(k))
    run(_train_command(dataset), reference_env)
    reference = trainer_output(reference_env["nnUNet_results"], dataset, TRAINER, "2d_small")
    _assert_same(stopped, _weights(os.path.join(reference, f"checkpoint_epoch_{k}.pth")))

    # and a run resumed from that checkpoint ends where the interrupted run ended
    again_env = dict(env, nnUNet_results=str(tmp_path / "again"))
    again = trainer_output(again_env["nnUNet_results"], dataset, TRAINER, "2d_small")
    os.makedirs(again)
    for name in ("debug.json", provenance.PROVENANCE_FILE, provenance.LOG_FILE):
        shutil.copy(os.path.join(reference, name), again)
    shutil.copy(os.path.join(reference, f"checkpoint_epoch_{k}.pth"), os.path.join(again, "checkpoint_latest.pth"))
    run(_train_command(dataset, resume=True), again_env)
    _assert_same(_weights(os.path.join(fold, "checkpoint_final.pth")),
                 _weights(os.path.join(again, "checkpoint_final.pth")))


class _Rank:
    """What ``Preemption.stop_requested`` reads of a trainer under DDP."""
    is_ddp = True
    device = torch.device("cpu")

    def __init__(self, stop_signal):
        self._stop_signal = stop_signal


def _stop_worker(rank, world):
    from nnunet_mcc.trainers.preemption import Preemption

    # only rank 1 got the signal; every rank must stop after the same epoch
    return Preemption.stop_requested(_Rank(signal.SIGUSR1 if rank == 1 else None))


def test_every_ddp_rank_stops_when_one_was_signalled(tmp_path):
    from ddp_harness import run_ranks

    assert run_ranks(_stop_worker, 2, tmp_path) == ["SIGUSR1", "SIGUSR1"]

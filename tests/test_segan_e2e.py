"""SegAN trainers through nnU-Net's real command-line tools: interrupted, resumed with --c, predicted.

A training with a checkpoint after every epoch is killed as soon as ``checkpoint_latest.pth``
appears. Resuming it with ``--c`` and an epoch budget equal to the checkpoint's epoch trains no
further epoch, so the final checkpoint holds exactly the state the trainer restored: its critic,
critic optimizer and network must equal the interrupted run's. Stock ``nnUNetv2_predict`` then
segments the test case.
"""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_e2e import BIN, predict, train, trainer_output
from nnunet_mcc.budget import BUDGET_VARIABLES

pytestmark = pytest.mark.e2e

CASES = [("2d_multiclass", "2d_small", "nnUNetTrainerSegAN"),
         ("3d_multiclass", "3d_fullres_small", "nnUNetTrainerSegANWeightedCE")]


INTERRUPTED_BUDGET = {"NNUNET_MCC_EPOCHS": 10, "NNUNET_MCC_ITERATIONS": 2}


def _train_until_first_checkpoint(env, dataset, configuration, trainer, output, log_path, timeout=400) -> None:
    env = {**env, **{k: str(v) for k, v in INTERRUPTED_BUDGET.items()}, "NNUNET_MCC_VAL_ITERATIONS": "1",
           "NNUNET_MCC_SAVE_EVERY": "1", "NNUNET_MCC_PLOT_EVERY": "1000"}
    log = open(log_path, "w")
    proc = subprocess.Popen([os.path.join(BIN, "nnUNetv2_train"), dataset, configuration, "0", "-tr", trainer,
                             "-device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    latest = os.path.join(output, "checkpoint_latest.pth")
    try:
        deadline = time.time() + timeout
        while not os.path.isfile(latest):
            assert proc.poll() is None, f"training exited ({proc.returncode}) before a checkpoint, see {log.name}"
            assert time.time() < deadline, "no checkpoint_latest.pth in time"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be interrupted"


def _assert_same(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_same(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


@pytest.mark.parametrize("key,configuration,trainer", CASES)
def test_interrupted_segan_training_resumes_critic_and_predicts_with_stock_nnunet(
        prepared, nnunet_env, tmp_path, key, configuration, trainer):
    dataset = prepared(key)
    for variable in ("NNUNET_MCC_SEGAN_LAMBDA", "NNUNET_MCC_CRITIC_MODE"):  # the class defaults are under test
        nnunet_env.pop(variable, None)
    output = trainer_output(nnunet_env["nnUNet_results"], dataset, trainer, configuration)
    _train_until_first_checkpoint(nnunet_env, dataset, configuration, trainer, output,
                                  str(tmp_path / "interrupted_run.log"))
    saved = torch.load(os.path.join(output, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == trainer and saved["current_epoch"] >= 1
    critic = saved["segan_critic"]
    assert critic["optimizer_state"]["state"], "the critic optimizer never stepped"
    assert len(saved["logging"]["critic_losses"]) == saved["current_epoch"]

    # resumed from a shell without the budget variables, the run finishes its recorded schedule; the
    # critic's and the segmentor's optimizers continue their step counts (restored, not started again)
    resumed_env = {k: v for k, v in nnunet_env.items() if k not in BUDGET_VARIABLES.values()}
    train(resumed_env, dataset, configuration, trainer, extra=["--c"])
    final = torch.load(os.path.join(output, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == INTERRUPTED_BUDGET["NNUNET_MCC_EPOCHS"]
    total_steps = INTERRUPTED_BUDGET["NNUNET_MCC_EPOCHS"] * INTERRUPTED_BUDGET["NNUNET_MCC_ITERATIONS"]
    critic_steps = [int(s["step"]) for s in final["segan_critic"]["optimizer_state"]["state"].values()]
    assert critic_steps and set(critic_steps) == {total_steps}
    assert critic["optimizer_state"]["state"][0]["step"] < total_steps
    _assert_same(final["segan_critic"]["settings"], critic["settings"], "critic settings")
    logs = "".join(open(os.path.join(output, f)).read() for f in os.listdir(output) if f.startswith("training_log"))
    assert "SegAN critic and its optimizer restored" in logs
    assert "'segan_lambda': 1.0" in logs  # settings recorded in the training log

    raw = os.path.join(nnunet_env["nnUNet_raw"], dataset)
    written = predict(nnunet_env, dataset, configuration, trainer, os.path.join(raw, "imagesTs"),
                      str(tmp_path / "pred"))
    segmentations = [f for f in written if f.endswith(".nii.gz")]
    assert len(segmentations) == 1
    image = sitk.ReadImage(os.path.join(raw, "imagesTs", segmentations[0].replace(".nii.gz", "_0000.nii.gz")))
    segmentation = sitk.ReadImage(str(tmp_path / "pred" / segmentations[0]))
    assert segmentation.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1, 2, 3}

import os

import pytest

from nnunet_e2e import run

pytestmark = pytest.mark.e2e  # the installed command in a fresh process


def test_doctor_passes_on_this_installation(nnunet_env):
    proc = run(["nnunet-mcc", "doctor"], nnunet_env)
    assert "All checks passed." in proc.stdout
    assert "ok   nnUNetTrainerMCC\n" in proc.stdout and "BAD" not in proc.stdout
    assert nnunet_env["nnUNet_raw"] in proc.stdout


def test_doctor_explains_a_missing_registration(nnunet_env):
    env = dict(nnunet_env, NNUNET_MCC_NO_AUTOREGISTER="1")
    env.pop("nnUNet_results")
    proc = run(["nnunet-mcc", "doctor"], env, check=False)
    assert proc.returncode == 1
    assert "PROBLEM: our folder is not in nnUNet_extTrainer" in proc.stdout
    assert "export nnUNet_extTrainer=" in proc.stdout and os.path.join("nnunet_mcc", "nnunet_ext") in proc.stdout
    assert "nnUNet_results       -  [not set]" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr

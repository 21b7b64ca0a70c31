"""The budget and the knobs, in one home (nnunet_mcc.budget): names, parsing and the environment a run gets."""

import pytest

from nnunet_mcc import budget
from nnunet_mcc.errors import UserError


def test_one_vocabulary_maps_options_and_variables_onto_nnunets_attributes():
    assert set(budget.BUDGET_OPTIONS.values()) == set(budget.BUDGET_KEYS) == set(budget.BUDGET_VARIABLES)
    env = budget.run_environment({"epochs": 3, "iterations": None, "val_iterations": 2}, snapshot_epochs=[2, 1, 2])
    assert env == {"NNUNET_MCC_EPOCHS": "3", "NNUNET_MCC_VAL_ITERATIONS": "2", "NNUNET_MCC_SNAPSHOT_EPOCHS": "1,2"}
    b = budget.Budget.from_mapping({"num_epochs": "4", "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 1})
    assert (b.iterations, b.short()) == (20, "4 x 5 (val 1)")
    assert str(b) == "4 epochs x 5 iterations (20 iterations, 1 validation iteration per epoch)"


@pytest.mark.parametrize("call,message", [
    (lambda: budget.run_environment({"iterations": 0}), "--iterations must be a positive integer, got 0"),
    (lambda: budget.check_budget_options({"val_iterations": -2}), "--val-iterations must be a positive integer"),
    (lambda: budget.positive_int_from_env("NNUNET_MCC_EPOCHS", {"NNUNET_MCC_EPOCHS": "2.5"}),
     "NNUNET_MCC_EPOCHS='2.5' must be a positive integer"),
    (lambda: budget.run_environment(snapshot_epochs=[0]), "--snapshot-epochs must be epoch numbers >= 1"),
    (lambda: budget.torch_threads_from_env({"NNUNET_MCC_TORCH_THREADS": "two"}),
     "NNUNET_MCC_TORCH_THREADS='two' must be a positive integer or 0"),
    (lambda: budget.check_environment({"NNUNET_MCC_SEGAN_LAMBDA": "big"}), "NNUNET_MCC_SEGAN_LAMBDA='big' must be a number"),
    (lambda: budget.train_command_from_env(None, {"NNUNET_MCC_TRAIN_COMMAND": "wrap 'unclosed"}),
     "NNUNET_MCC_TRAIN_COMMAND=.* cannot be split"),
])
def test_a_bad_value_is_one_line_naming_the_option_or_variable(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_knob_readers_and_their_defaults():
    assert budget.torch_threads_from_env({}) == 0 and budget.torch_threads_from_env({"NNUNET_MCC_TORCH_THREADS": "3"}) == 3
    assert budget.segan_lambda_from_env({}) is None and budget.segan_lambda_from_env({"NNUNET_MCC_SEGAN_LAMBDA": "0.1"}) == 0.1
    assert budget.critic_mode_from_env({"NNUNET_MCC_CRITIC_MODE": " per_label "}) == "per_label"
    environ = {"NNUNET_MCC_TRAIN_COMMAND": "srun nnUNetv2_train"}
    assert budget.train_command_from_env(None, environ) == ["srun", "nnUNetv2_train"]
    assert budget.train_command_from_env("my-wrapper --x 'a b'", environ) == ["my-wrapper", "--x", "a b"]
    assert budget.train_command_from_env(None, {}) is None


# ---- the cores of a run: one rule for a SLURM task and for crossval's CPU runs ----------------------------
def test_the_share_of_the_cores_and_what_the_user_set_is_kept():
    assert [budget.cores_per_run(jobs, 4) for jobs in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    assert budget.allocation_environment(1) == {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0",
                                                "NNUNET_MCC_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
                                                "MKL_NUM_THREADS": "1"}
    assert budget.allocation_environment(3)["nnUNet_n_proc_DA"] == "2"
    env = budget.cpu_run_environment(2, {}, cores=4)
    assert env == dict(budget.allocation_environment(2), NNUNET_MCC_PLOT_EVERY=str(budget.CPU_PLOT_EVERY))
    # a value in the environment (even 0: nnU-Net's own choice) is the user's: not overridden
    user = {"NNUNET_MCC_TORCH_THREADS": "0", "OMP_NUM_THREADS": "8", "NNUNET_MCC_PLOT_EVERY": "1",
            "MKL_NUM_THREADS": " "}
    env = budget.cpu_run_environment(2, user, cores=4)
    assert not set(env) & {"NNUNET_MCC_TORCH_THREADS", "OMP_NUM_THREADS", "NNUNET_MCC_PLOT_EVERY"}
    assert env["MKL_NUM_THREADS"] == "2"  # blank counts as unset, as in the SLURM script's ${VAR:-...}


@pytest.mark.parametrize("cores", [1, 2, 3, 5])
def test_the_slurm_scripts_bash_applies_the_same_rule(cores):
    import os
    import subprocess

    from nnunet_mcc.experiments.scripts import _ALLOCATION

    names = list(budget.allocation_environment(1))
    env = {k: v for k, v in os.environ.items() if k not in names}
    script = _ALLOCATION + "".join(f'echo "{name}=${name}"\n' for name in names)
    out = subprocess.run(["bash", "-c", script], env=dict(env, SLURM_CPUS_PER_TASK=str(cores)), capture_output=True,
                         text=True, check=True).stdout
    assert dict(line.split("=", 1) for line in out.splitlines()) == budget.allocation_environment(cores)
    kept = subprocess.run(["bash", "-c", script], env=dict(env, SLURM_CPUS_PER_TASK=str(cores), OMP_NUM_THREADS="7"),
                          capture_output=True, text=True, check=True).stdout
    assert "OMP_NUM_THREADS=7" in kept.splitlines()


def test_the_run_record_says_what_the_run_was_told_to_use():
    from nnunet_mcc import provenance

    record = provenance.allocation(dict(budget.cpu_run_environment(2, {}, cores=2), SLURM_JOB_ID="7"))
    assert record["cpus_available"] == budget.available_cores() and record["slurm_job_id"] == "7"
    assert (record["NNUNET_MCC_TORCH_THREADS"], record["OMP_NUM_THREADS"], record["MKL_NUM_THREADS"],
            record["nnUNet_n_proc_DA"], record["nnUNet_def_n_proc"]) == ("1", "1", "1", "0", "1")
    assert record["NNUNET_MCC_PLOT_EVERY"] == "50" and record["NNUNET_MCC_SAVE_EVERY"] is None
    assert provenance.allocation({})["NNUNET_MCC_TORCH_THREADS"] is None  # unset: nnU-Net's choice

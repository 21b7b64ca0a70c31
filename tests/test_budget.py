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

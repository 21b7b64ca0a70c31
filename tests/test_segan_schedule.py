"""SegAN's adversarial weight over training (``segan_lambda_at``) and its settings as part of a run's identity."""

import pytest

from nnunet_mcc.errors import UserError
from nnunet_mcc.trainers.segan import nnUNetTrainerSegAN, nnUNetTrainerSegANPerLabel, segan_lambda_at


def test_without_warm_up_the_weight_is_constant():
    assert [segan_lambda_at(e, 30, 1.0) for e in range(30)] == [1.0] * 30


def test_warm_up_then_a_linear_ramp_then_the_full_weight():
    """100 epochs, warm-up 10 %, ramp 20 %: 0 for epochs 0-9, k / 20 in the k-th ramp epoch (10-29), then 1."""
    weights = [segan_lambda_at(e, 100, 2.0, 0.1, 0.2) for e in range(100)]
    assert weights[:10] == [0.0] * 10
    assert weights[10:30] == pytest.approx([2.0 * k / 20 for k in range(1, 21)])
    assert weights[30:] == [2.0] * 70


def test_short_runs_round_the_phases():
    """30 epochs: warm-up round(3) = 3 epochs, ramp round(6) = 6; 4 epochs: no warm-up, a 1-epoch ramp."""
    assert [segan_lambda_at(e, 30, 1.0, 0.1, 0.2) for e in range(10)] == pytest.approx(
        [0, 0, 0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1, 1])
    assert [segan_lambda_at(e, 4, 1.0, 0.1, 0.2) for e in range(4)] == [1.0] * 4


def test_identity_holds_the_weight_schedule_and_critic_and_reads_the_environment():
    identity = nnUNetTrainerSegAN.identity_settings({}, environ={})
    assert identity == {"segan_lambda": nnUNetTrainerSegAN.segan_lambda, "critic_mode": "joint",
                        "critic_lr": nnUNetTrainerSegAN.critic_lr,
                        "critic_warmup_fraction": nnUNetTrainerSegAN.critic_warmup_fraction,
                        "segan_lambda_ramp_fraction": nnUNetTrainerSegAN.segan_lambda_ramp_fraction}
    assert nnUNetTrainerSegANPerLabel.identity_settings({}, environ={})["critic_mode"] == "per_label"
    changed = nnUNetTrainerSegAN.identity_settings({}, environ={"NNUNET_MCC_SEGAN_LAMBDA": "0.5"})
    assert changed["segan_lambda"] == 0.5


@pytest.mark.parametrize("environ, message", [
    ({"NNUNET_MCC_SEGAN_LAMBDA": "lots"}, r"NNUNET_MCC_SEGAN_LAMBDA='lots' must be a number"),
    ({"NNUNET_MCC_SEGAN_LAMBDA": "-1"}, r"the SegAN weight must be >= 0, got -1.0 \(NNUNET_MCC_SEGAN_LAMBDA\)"),
    ({"NNUNET_MCC_CRITIC_MODE": "both"}, r"critic mode 'both' \(NNUNET_MCC_CRITIC_MODE\) must be one of"),
])
def test_bad_settings_are_user_errors_naming_the_variable(environ, message):
    with pytest.raises(UserError, match=message):
        nnUNetTrainerSegAN.lambda_and_mode(environ)

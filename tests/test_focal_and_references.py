"""The focal loss and the stock references Dice + TopK10 / Dice + Focal as trainers of this package."""

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_mcc.losses.focal import FocalLoss


def test_hand_worked_value_and_cross_entropy_at_gamma_zero():
    x = torch.zeros(1, 2, 1, 2)  # p_t = 0.5 everywhere
    y = torch.tensor([[[[0, 1]]]])
    assert FocalLoss(2.0)(x, y).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g)
    y = torch.randint(0, 4, (3, 1, 5, 6), generator=g)
    assert FocalLoss(0.0)(x, y).item() == pytest.approx(F.cross_entropy(x, y[:, 0]).item(), rel=1e-6)
    assert FocalLoss(2.0)(x, y).item() < FocalLoss(0.0)(x, y).item()


def test_ignore_label_and_extreme_logits():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (2, 1, 4, 4), generator=g)
    y_ignored = y.clone()
    y_ignored[:, :, :2] = 3
    kept = FocalLoss(2.0, ignore_index=3, reduction="none")(x, y_ignored)
    assert torch.all(kept[:, :2] == 0)
    full = FocalLoss(2.0, reduction="none")(x, y)
    assert torch.allclose(kept[:, 2:], full[:, 2:])
    assert FocalLoss(2.0, ignore_index=3)(x, y_ignored).item() == pytest.approx(full[:, 2:].mean().item(), rel=1e-6)
    assert FocalLoss(2.0, ignore_index=3)(x, torch.full_like(y, 3)).item() == 0  # nothing valid
    huge = (torch.randn(2, 3, 4, 4, generator=g) * 1e4).half().requires_grad_()
    loss = FocalLoss(2.0)(huge, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()


@pytest.mark.parametrize("kwargs, message", [(dict(gamma=-1), "gamma must be >= 0"),
                                             (dict(reduction="avg"), "reduction must be one of"),
                                             (dict(ignore_index=1.5), "ignore_index must be an int")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalLoss(**kwargs)


def test_references_are_found_and_carry_the_budget_knobs():
    from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss import nnUNetTrainerDiceTopK10Loss

    from nnunet_mcc.trainers import ComparisonTrainer, __all__, trainer_class

    for name in ("nnUNetTrainerBaselineDiceTopK10", "nnUNetTrainerBaselineDiceFocal"):
        assert name in __all__ and f"{name}_1epoch" in __all__
        assert issubclass(trainer_class(name), ComparisonTrainer)
    assert issubclass(trainer_class("nnUNetTrainerBaselineDiceTopK10"), nnUNetTrainerDiceTopK10Loss)
    assert trainer_class("nnUNetTrainerBaselineDiceFocal_5epochs").planned_budget({})["num_epochs"] == 5

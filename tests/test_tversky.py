"""The Tversky / Focal Tversky loss: hand-worked values, MONAI's TverskyLoss, the missed-class gate, numerics."""

import math

import pytest
import torch

from nnunet_mcc.losses import MCCLoss, TverskyLoss


def test_hand_worked_value_on_probabilities():
    # one sample, one scored channel (sigmoid-free: probabilities given), 4 voxels
    p = torch.tensor([[[[0.9, 0.6, 0.2, 0.0]]]])  # (B=1, C=1, 1, 4)
    g = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    # TP = 0.9 + 0.2 = 1.1, FP = 0.6, FN = 0.1 + 0.8 = 0.9
    loss = TverskyLoss(None, alpha=0.3, beta=0.7, smooth_nr=0, smooth_dr=0)(p, g)
    assert loss.item() == pytest.approx(1 - 1.1 / (1.1 + 0.3 * 0.6 + 0.7 * 0.9), abs=1e-7)
    focal = TverskyLoss(None, alpha=0.3, beta=0.7, gamma=4 / 3, smooth_nr=0, smooth_dr=0)(p, g)
    assert focal.item() == pytest.approx(loss.item() ** 0.75, abs=1e-7)


def test_half_and_half_is_the_soft_dice_and_one_and_one_the_soft_jaccard():
    torch.manual_seed(0)
    p, g = torch.rand(2, 3, 5, 5), (torch.rand(2, 3, 5, 5) > 0.6).float()
    tp, fp, fn = (p * g).sum((2, 3)), (p * (1 - g)).sum((2, 3)), ((1 - p) * g).sum((2, 3))
    dice = TverskyLoss(None, alpha=0.5, beta=0.5, include_background=True, smooth_nr=0, smooth_dr=0, reduction="none")(p, g)
    jaccard = TverskyLoss(None, alpha=1, beta=1, include_background=True, smooth_nr=0, smooth_dr=0, reduction="none")(p, g)
    torch.testing.assert_close(dice, 1 - 2 * tp / (2 * tp + fp + fn))
    torch.testing.assert_close(jaccard, 1 - tp / (tp + fp + fn))


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.5, 0.5), (0.7, 0.3), (0.0, 1.0)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_matches_monai_softmax(alpha, beta, batch, include_background):
    monai = pytest.importorskip("monai.losses", reason="MONAI is not installed")
    torch.manual_seed(1)
    x = torch.randn(3, 4, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (3, 1, 6, 7, 5))
    ours = TverskyLoss("softmax", alpha=alpha, beta=beta, batch=batch, include_background=include_background)(x, y)
    reference = monai.TverskyLoss(softmax=True, to_onehot_y=True, alpha=alpha, beta=beta, batch=batch,
                                  include_background=include_background)(x, y)
    grad_ours, = torch.autograd.grad(ours, x)
    grad_reference, = torch.autograd.grad(reference, x)
    torch.testing.assert_close(ours, reference.to(ours.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ours.double(), grad_reference, rtol=1e-5, atol=1e-9)


def test_matches_monai_sigmoid_regions():
    monai = pytest.importorskip("monai.losses", reason="MONAI is not installed")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = (torch.rand(2, 3, 8, 8) > 0.7).float()
    ours = TverskyLoss("sigmoid", alpha=0.2, beta=0.8)(x, y)
    reference = monai.TverskyLoss(sigmoid=True, alpha=0.2, beta=0.8)(x, y)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_ignore_label_voxels_count_nowhere():
    torch.manual_seed(3)
    x = torch.randn(1, 3, 4, 10)
    y = torch.randint(0, 3, (1, 1, 4, 10))
    y_ignored = y.clone()
    y_ignored[..., 6:] = 5  # the ignore label
    loss = TverskyLoss("softmax", ignore_index=5, reduction="none")(x, y_ignored)
    cropped = TverskyLoss("softmax", reduction="none")(x[..., :6].contiguous(), y[..., :6].contiguous())
    torch.testing.assert_close(loss, cropped)


def test_gate_is_an_exact_zero_when_every_present_class_is_predicted():
    torch.manual_seed(4)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    x = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 3, 1, 2).double() * 3 + torch.randn(2, 3, 6, 6,
                                                                                                 dtype=torch.float64)
    x.requires_grad_(True)
    for batch in (False, True):
        plain = TverskyLoss("softmax", batch=batch, missed_weight=0.0)(x, y)
        gated = TverskyLoss("softmax", batch=batch, missed_weight=1.0)(x, y)
        assert torch.equal(plain, gated)
        assert torch.equal(*(torch.autograd.grad(v, x)[0] for v in (plain, gated)))


def test_gate_pushes_a_saturated_class_back():
    y = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    y[..., 2:4, 2:4] = 2  # class 2 present
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[:, 2] = -40.0  # and saturated near p = 0 everywhere: never predicted
    x.requires_grad_(True)
    grads = {}
    for w in (0.0, 1.0):
        grad, = torch.autograd.grad(TverskyLoss("softmax", batch=True, missed_weight=w)(x, y), x)
        grads[w] = grad[0, 2, 2:4, 2:4].abs().sum().item()
    assert grads[0.0] < 1e-12  # the plain loss has lost its gradient
    assert grads[1.0] > 0.1  # -log(soft recall) brings it back: about 1 / (number of scored classes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [1.0, 4 / 3])
def test_finite_under_autocast_extreme_logits_and_empty_masks(dtype, gamma):
    loss_fn = TverskyLoss("softmax", gamma=gamma, batch=True, missed_weight=1.0)
    for scale in (1.0, 1e4):
        x = (torch.randn(2, 3, 8, 8) * scale).requires_grad_(True)
        for y in (torch.randint(0, 3, (2, 1, 8, 8)), torch.zeros(2, 1, 8, 8, dtype=torch.long)):
            with torch.autocast("cpu", dtype=dtype):
                value = loss_fn(x.to(dtype), y)
            grad, = torch.autograd.grad(value, x)
            assert torch.isfinite(value) and torch.isfinite(grad).all()
    perfect = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 3, 1, 2).float() * 50
    perfect.requires_grad_(True)
    value = loss_fn(perfect, y)
    assert torch.isfinite(torch.autograd.grad(value, perfect)[0]).all() and value.item() < 1e-3


@pytest.mark.parametrize("kwargs,message", [
    ({"alpha": -0.1}, "alpha must be >= 0"), ({"beta": -1}, "beta must be >= 0"),
    ({"alpha": 0, "beta": 0}, "alpha \\+ beta must be > 0"), ({"gamma": 0.5}, "gamma must be >= 1"),
    ({"smooth_dr": -1}, "smooth_dr must be >= 0"), ({"reduction": "max"}, "reduction must be one of"),
    ({"missed_weight": -1}, "missed_weight must be >= 0"),
])
def test_bad_arguments_are_refused_with_their_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TverskyLoss("softmax", **kwargs)


def test_a_loss_reports_the_settings_that_change_results():
    settings = TverskyLoss("softmax", alpha=0.2, beta=0.8, gamma=4 / 3, batch=True).settings()
    assert settings["alpha"] == 0.2 and settings["beta"] == 0.8 and settings["batch"] is True
    assert math.isclose(settings["gamma"], 4 / 3) and TverskyLoss("softmax", gamma=2).loss_name == "Focal Tversky"
    assert MCCLoss("softmax", eps=1e-6).settings()["eps"] == 1e-6


def _ddp_data():
    g = torch.Generator().manual_seed(5)
    labels = torch.zeros(4, 1, 16, 16, dtype=torch.long)
    labels[:, :, 4:12, 4:12] = 1
    labels[:, :, 6:9, 6:9] = 2
    return torch.randn(4, 1, 16, 16, generator=g), labels


def _shifted(logits: torch.Tensor) -> torch.Tensor:
    """Class 2 pushed 30 below the others in every sample: missed on both ranks, so the gate pools over them."""
    shift = torch.zeros_like(logits)
    shift[:, 2] = -30
    return logits + shift


def _tversky_ddp_worker(rank, world):
    from ddp_harness import mean_loss_and_grads

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)
    image, labels = _ddp_data()
    part = slice(rank * 2, rank * 2 + 2)
    model = torch.nn.parallel.DistributedDataParallel(conv)  # kept alive: its hooks average the gradients
    loss = TverskyLoss("softmax", gamma=4 / 3, batch=True, ddp=True, missed_weight=1.0)
    return mean_loss_and_grads(loss(_shifted(model(image[part])), labels[part]), conv)


@pytest.mark.e2e  # spawns gloo processes
def test_pooled_over_two_ddp_ranks_equals_one_process(tmp_path):
    from ddp_harness import assert_one_process_matches, run_ranks

    ranks = run_ranks(_tversky_ddp_worker, 2, tmp_path)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)
    image, labels = _ddp_data()
    value = TverskyLoss("softmax", gamma=4 / 3, batch=True, missed_weight=1.0)(_shifted(conv(image)), labels)
    assert float(value.detach()) > 1  # the gate is on
    assert_one_process_matches(ranks[0], value, conv)

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

from nnunet_mcc.losses import MCCLoss, soft_mcc


def hand_mcc(tp, fp, fn, tn):
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def onehot_logits(labels: torch.Tensor, num_classes: int, scale: float = 1e4) -> torch.Tensor:
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:])).scatter_(1, labels.long(), 1)
    return (2 * onehot - 1) * scale


# ---------------------------------------------------------------- values worked out by hand
def test_binary_probabilities_hand_value():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1]).view(1, 1, 4)
    g = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 4)
    # TP = .9+.6, FP = .2+.1, FN = .1+.4, TN = .8+.9
    expected = 1 - (1.5 * 1.7 - 0.3 * 0.5) / math.sqrt(1.8 * 2.0 * 2.0 * 2.2)
    assert MCCLoss(apply_nonlin=None)(p, g).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1 - 2.4 / math.sqrt(15.84))


def test_softmax_one_vs_rest_hand_value():
    # 3 classes, 4 voxels, probabilities given directly (no activation); background excluded
    p = torch.tensor([[0.7, 0.1, 0.2, 0.6],
                      [0.2, 0.8, 0.1, 0.3],
                      [0.1, 0.1, 0.7, 0.1]]).view(1, 3, 4)
    y = torch.tensor([0, 1, 2, 1]).view(1, 1, 4)
    # class 1: g = [0,1,0,1], p = [.2,.8,.1,.3] -> TP 1.1, FP .3, FN .9, TN 1.7
    # class 2: g = [0,0,1,0], p = [.1,.1,.7,.1] -> TP .7, FP .3, FN .3, TN 2.7
    expected = 1 - (hand_mcc(1.1, 0.3, 0.9, 1.7) + hand_mcc(0.7, 0.3, 0.3, 2.7)) / 2
    assert MCCLoss(apply_nonlin=None)(p, y).item() == pytest.approx(expected, abs=1e-6)
    # with background: class 0: g = [1,0,0,0], p = [.7,.1,.2,.6] -> TP .7, FP .9, FN .3, TN 2.1
    expected_bg = 1 - (hand_mcc(0.7, 0.9, 0.3, 2.1) + hand_mcc(1.1, 0.3, 0.9, 1.7) + hand_mcc(0.7, 0.3, 0.3, 2.7)) / 3
    assert MCCLoss(apply_nonlin=None, include_background=True)(p, y).item() == pytest.approx(expected_bg, abs=1e-6)


def test_counts_pooled_over_batch_versus_per_sample():
    p = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.3, 0.4, 0.8, 0.7]]).view(2, 1, 4)
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(2, 1, 4)
    s0 = (1.5, 0.3, 0.5, 1.7)
    s1 = (1.5, 0.7, 0.5, 1.3)  # TP .8+.7, FP .3+.4, FN .2+.3, TN .7+.6
    pooled = 1 - hand_mcc(*(a + b for a, b in zip(s0, s1)))
    per_sample = 1 - (hand_mcc(*s0) + hand_mcc(*s1)) / 2
    assert MCCLoss(apply_nonlin=None, batch=True)(p, g).item() == pytest.approx(pooled, abs=1e-6)
    assert MCCLoss(apply_nonlin=None, batch=False)(p, g).item() == pytest.approx(per_sample, abs=1e-6)
    assert pooled != pytest.approx(per_sample, abs=1e-3)


def test_soft_mcc_is_scale_invariant_and_handles_huge_counts():
    counts = torch.tensor([7.0e5, 1.0e4, 3.0e4, 4.19e6])  # a 2x128^3 patch: raw products ~1e24
    expected = hand_mcc(*counts.double().tolist())
    assert soft_mcc(*counts).item() == pytest.approx(expected, rel=1e-9)
    assert soft_mcc(*(counts * 1e-6)).item() == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("batch", [True, False])
def test_perfect_is_zero_and_inverted_is_two(batch):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (2, 1, 6, 6, 6))
    y[:, :, 0, 0, 0] = 1
    y[:, :, 0, 0, 1] = 0
    logits = onehot_logits(y, 2)
    assert MCCLoss(batch=batch)(logits, y).item() == pytest.approx(0.0, abs=1e-6)
    assert MCCLoss(batch=batch)(-logits, y).item() == pytest.approx(2.0, abs=1e-6)
    binary = (2 * y.float() - 1) * 1e4
    assert MCCLoss("sigmoid", batch=batch)(binary, y.float()).item() == pytest.approx(0.0, abs=1e-6)
    assert MCCLoss("sigmoid", batch=batch)(-binary, y.float()).item() == pytest.approx(2.0, abs=1e-6)


def test_symmetric_in_classes():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 7)
    y = torch.randint(0, 4, (2, 1, 5, 7))
    perm = torch.tensor([2, 0, 3, 1])  # new class i is old class perm[i]
    inverse = torch.argsort(perm)
    loss = MCCLoss(include_background=True)(x, y)
    permuted = MCCLoss(include_background=True)(x[:, perm], inverse[y])
    assert permuted.item() == pytest.approx(loss.item(), abs=1e-6)


def test_ignored_voxels_change_nothing():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16)
    y = torch.randint(0, 3, (2, 1, 16))
    ignore = torch.zeros_like(y, dtype=torch.bool)
    ignore[:, :, 10:] = True
    y_ignored = torch.where(ignore, torch.full_like(y, 7), y)
    loss = MCCLoss(ignore_index=7)
    reference = loss(x, y_ignored)
    # logits at ignored voxels are irrelevant
    x2 = x.clone()
    x2[..., 10:] = torch.randn(2, 3, 6) * 100
    assert loss(x2, y_ignored).item() == pytest.approx(reference.item(), abs=1e-6)
    # and it equals the loss on the valid voxels alone
    assert MCCLoss()(x[..., :10], y[..., :10]).item() == pytest.approx(reference.item(), abs=1e-6)
    # gradient is exactly zero at ignored voxels
    x3 = x.clone().requires_grad_(True)
    loss(x3, y_ignored).backward()
    assert torch.all(x3.grad[..., 10:] == 0) and torch.any(x3.grad[..., :10] != 0)


def test_region_ignore_channel_equals_loss_mask():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8)
    regions = torch.randint(0, 2, (2, 3, 8, 8)).float()
    ignore = (torch.rand(2, 1, 8, 8) < 0.3).float()
    with_channel = MCCLoss("sigmoid", region_ignore_channel=True)(x, torch.cat([regions, ignore], 1))
    with_mask = MCCLoss("sigmoid")(x, regions, loss_mask=1 - ignore)
    assert with_channel.item() == pytest.approx(with_mask.item(), abs=1e-6)


def test_inside_nnunet_compound_losses():
    """MCC in the Dice slot of nnU-Net's own DC_and_CE_loss / DC_and_BCE_loss (what nnUNetTrainerMCC_CE builds)."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 6)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    y[:, :, :2] = 9  # ignore label
    only_mcc = DC_and_CE_loss({"include_background": False}, {}, weight_ce=0, weight_dice=1, ignore_label=9,
                              dice_class=MCCLoss)
    assert only_mcc(x, y).item() == pytest.approx(MCCLoss(ignore_index=9)(x, y).item(), abs=1e-6)
    both = DC_and_CE_loss({}, {}, weight_ce=1, weight_dice=1, ignore_label=9, dice_class=MCCLoss)
    ce = torch.nn.functional.cross_entropy(x, y[:, 0], ignore_index=9)
    assert both(x, y).item() == pytest.approx(MCCLoss(ignore_index=9)(x, y).item() + ce.item(), abs=1e-5)
    regions = torch.randint(0, 2, (2, 2, 6, 6)).float()
    ignore = torch.zeros(2, 1, 6, 6)
    ignore[..., :3] = 1
    target = torch.cat([regions, ignore], 1)
    xr = torch.randn(2, 2, 6, 6)
    bce_mcc = DC_and_BCE_loss({}, {}, weight_ce=1, weight_dice=1, use_ignore_label=True, dice_class=MCCLoss)
    bce_only = DC_and_BCE_loss({}, {}, weight_ce=1, weight_dice=0, use_ignore_label=True, dice_class=MCCLoss)
    mcc_part = bce_mcc(xr, target).item() - bce_only(xr, target).item()
    assert mcc_part == pytest.approx(MCCLoss("sigmoid", region_ignore_channel=True)(xr, target).item(), abs=1e-5)


# ---------------------------------------------------------------- degenerate inputs
def test_empty_ground_truth_and_fully_ignored_patch_are_finite():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for y, kwargs in [(torch.zeros(2, 1, 4, 4, dtype=torch.long), {}),
                      (torch.full((2, 1, 4, 4), 5), {"ignore_index": 5})]:
        for batch in (True, False):
            loss = MCCLoss(batch=batch, **kwargs)(x, y)
            loss.backward()
            assert torch.isfinite(loss) and 0 <= loss.item() <= 2
            assert torch.isfinite(x.grad).all()
            x.grad = None
    # undefined MCC counts as 0: an empty class with a perfect prediction gives loss 1, not NaN
    assert MCCLoss("sigmoid")(torch.full((1, 1, 4), -1e4), torch.zeros(1, 1, 4)).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("x_shape, y, kwargs, message", [
    ((2, 3, 4, 4), torch.zeros(2, 1, 5, 4), {}, "differ in batch or spatial size"),
    ((2, 3, 4, 4), torch.zeros(3, 1, 4, 4), {}, "differ in batch or spatial size"),
    ((2, 3, 4, 4), torch.zeros(2, 2, 4, 4), {}, "expected 1 (a label map) or 3"),
    ((2, 3, 4, 4), torch.full((2, 1, 4, 4), 3.0), {}, "outside the 3 classes"),
    ((2, 3, 4, 4), torch.full((2, 1, 4, 4), -1.0), {}, "outside the 3 classes"),
    ((2, 2, 4, 4), torch.zeros(2, 2, 4, 4), {"apply_nonlin": "sigmoid", "region_ignore_channel": True},
     "needs 3 channels (2 regions + 1 ignore)"),
    ((2, 2, 4, 4), torch.full((2, 2, 4, 4), 2.0), {"apply_nonlin": "sigmoid"}, "only 0 and 1"),
    ((4,), torch.zeros(4), {}, "must be (batch, channels, *spatial)"),
])
def test_bad_input_raises_clear_value_error(x_shape, y, kwargs, message):
    with pytest.raises(ValueError) as error:
        MCCLoss(**kwargs)(torch.randn(*x_shape), y)
    assert message in str(error.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="apply_nonlin"):
        MCCLoss(apply_nonlin="relu")
    with pytest.raises(ValueError, match="eps"):
        MCCLoss(eps=0)
    with pytest.raises(ValueError, match="ignore_index"):
        MCCLoss(ignore_index=1.5)


# ---------------------------------------------------------------- property sweeps
@settings(max_examples=60, deadline=None)
@given(batch_size=st.integers(1, 3), classes=st.integers(2, 5), spatial=st.sampled_from([(5,), (3, 4), (2, 3, 4)]),
       scale=st.sampled_from([0.0, 1.0, 30.0, 1e4]), fill=st.sampled_from(["random", "empty", "full"]),
       batch=st.booleans(), sigmoid=st.booleans(), seed=st.integers(0, 10_000))
def test_property_finite_in_range_with_finite_gradients(batch_size, classes, spatial, scale, fill, batch, sigmoid,
                                                         seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch_size, classes, *spatial, generator=g) * scale).requires_grad_(True)
    if sigmoid:
        y = torch.randint(0, 2, (batch_size, classes, *spatial), generator=g).float()
        y = torch.zeros_like(y) if fill == "empty" else torch.ones_like(y) if fill == "full" else y
        loss = MCCLoss("sigmoid", batch=batch)(x, y)
    else:
        y = torch.randint(0, classes, (batch_size, 1, *spatial), generator=g)
        y = torch.zeros_like(y) if fill == "empty" else torch.full_like(y, classes - 1) if fill == "full" else y
        loss = MCCLoss(batch=batch)(x, y)
    loss.backward()
    assert torch.isfinite(loss) and -1e-6 <= loss.item() <= 2 + 1e-6
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_autocast_matches_fp32(dtype, tolerance):
    torch.manual_seed(5)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    data = torch.randn(2, 1, 12, 12, 12)
    y = (data[:, :1] > 1.0).long() + (data[:, :1] > 1.8).long()
    loss = MCCLoss()
    reference = loss(net(data), y)
    with torch.autocast("cpu", dtype=dtype):
        low = net(data)
        assert low.dtype == dtype
        mixed = loss(low, y)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(reference.item(), abs=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_extreme_logits_and_large_patch_are_finite(dtype):
    # 2 x 64^3 voxels: the raw product under the root (~1e22) overflows fp16 and nearly fp32
    y = torch.zeros(2, 1, 64, 64, 64, dtype=torch.long)
    y[:, :, 20:30, 20:30, 20:30] = 1
    for logits in (onehot_logits(y, 2, 6e4), -onehot_logits(y, 2, 6e4), torch.zeros(2, 2, 64, 64, 64)):
        x = logits.to(dtype).requires_grad_(True)
        loss = MCCLoss()(x, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    assert MCCLoss()(onehot_logits(y, 2, 6e4).to(dtype), y).item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- a softmax over one channel
def test_softmax_over_one_channel_is_refused_and_binary_modes_still_work():
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    x = torch.randn(2, 1, 6, 6, requires_grad=True)
    y = (torch.rand(2, 1, 6, 6) > 0.7).long()
    # softmax over 1 channel is 1 everywhere: before the check, a constant loss 1 with zero gradient
    for nonlin in ("softmax", softmax_helper_dim1):
        for kwargs in ({}, {"missed_weight": 1.0} if nonlin == "softmax" else {}, {"batch": False}):
            with pytest.raises(ValueError, match=r"softmax over a 1-channel prediction.*sigmoid"):
                MCCLoss(nonlin, **kwargs)(x, y)
    # binary mode (sigmoid logits or probabilities) and 2-channel softmax are unchanged
    for nonlin, prediction in (("sigmoid", x), (None, torch.sigmoid(x))):
        loss = MCCLoss(nonlin)(prediction, y.float())
        loss.backward()
        assert torch.isfinite(loss) and x.grad.abs().sum() > 0
        x.grad = None
    two = torch.cat([-x, x], 1)
    assert MCCLoss("softmax")(two, y).item() == pytest.approx(MCCLoss("sigmoid")(2 * x, y.float()).item(), abs=1e-5)

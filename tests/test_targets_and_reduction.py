"""The one home of nnU-Net's target convention, and MONAI's ``reduction`` on every loss."""

import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_mcc.losses import (GeneralizedWassersteinDiceLoss, MaskedBCEWithLogits, MCCLoss, TargetFormat,
                               multiscale_l1)

LABELS = torch.tensor([[[[0, 1], [2, 3]]]])  # (1, 1, 2, 2); 3 is the ignore label below


def test_label_map_with_ignore_label_gives_onehot_labels_and_mask():
    onehot, valid = TargetFormat(3, ignore_label=3).onehot(LABELS)
    assert onehot.dtype == torch.float32 and onehot.shape == (1, 3, 2, 2)
    assert onehot[0, :, 0, 1].tolist() == [0, 1, 0] and onehot[0, :, 1, 1].tolist() == [1, 0, 0]  # ignored -> 0
    assert valid[0, 0].tolist() == [[True, True], [True, False]]
    labels, valid2 = TargetFormat(3, ignore_label=3).labels(LABELS.squeeze(1), prediction=torch.zeros(1, 3, 2, 2))
    assert labels[0, 0].tolist() == [[0, 1], [2, 0]] and torch.equal(valid, valid2)


def test_onehot_target_and_loss_mask_and_region_ignore_channel():
    onehot = torch.nn.functional.one_hot(torch.tensor([[0, 1], [2, 1]]), 3).permute(2, 0, 1)[None].float()
    mask = torch.tensor([[[[1, 0], [1, 1]]]])
    same, valid = TargetFormat(3).onehot(onehot, loss_mask=mask)
    assert torch.equal(same, onehot) and valid[0, 0].tolist() == [[True, False], [True, True]]
    labels, _ = TargetFormat(3).labels(onehot)
    assert labels[0, 0].tolist() == [[0, 1], [2, 1]]
    regions = torch.tensor([[[[1, 0]], [[1, 1]], [[0, 1]]]])  # 2 regions + the ignore channel
    out, valid = TargetFormat(2, region_ignore_channel=True).onehot(regions, loss_mask=torch.ones(1, 1, 1, 2))
    assert out.shape == (1, 2, 1, 2) and valid[0, 0].tolist() == [[True, False]]
    assert TargetFormat(2).valid(regions[:, :2]) is None


def test_single_binary_channel_reads_a_label_map_with_ignore():
    onehot, valid = TargetFormat(1, ignore_label=2).onehot(torch.tensor([[[[0, 1, 2]]]]))
    assert onehot[0, 0].tolist() == [[0, 1, 0]] and valid[0, 0].tolist() == [[True, True, False]]


@pytest.mark.parametrize("labels, regions_order, expected", [
    ({"background": 0, "a": 1, "b": 2}, None, TargetFormat(3)),
    ({"background": 0, "a": 1, "b": 2, "ignore": 3}, None, TargetFormat(3, ignore_label=3)),
    ({"background": 0, "whole": [1, 2], "core": 2}, [1, 2], TargetFormat(2)),
    ({"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, [1, 2], TargetFormat(2, region_ignore_channel=True)),
])
def test_label_facts_come_from_nnunets_label_manager(labels, regions_order, expected):
    assert TargetFormat.from_label_manager(LabelManager(labels, regions_order)) == expected


@pytest.mark.parametrize("fmt, y, message", [
    (TargetFormat(3), torch.zeros(1, 2, 2, 2), "expected 1 (a label map) or 3"),
    (TargetFormat(3), torch.full((1, 1, 2, 2), 5), "outside the 3 classes"),
    (TargetFormat(2, region_ignore_channel=True), torch.zeros(1, 2, 2, 2), "needs 3 channels"),
    (TargetFormat(2), torch.full((1, 2, 2, 2), 0.5), "only 0 and 1"),
])
def test_bad_targets_are_clear_value_errors(fmt, y, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fmt.onehot(y)


def test_bad_formats_are_refused():
    with pytest.raises(ValueError, match="ignore_label must be an int"):
        TargetFormat(3, ignore_label=1.5)
    with pytest.raises(ValueError, match="last channel"):
        TargetFormat(3, ignore_label=3, region_ignore_channel=True)
    with pytest.raises(ValueError, match="loss_mask must be"):
        TargetFormat(3).onehot(LABELS.clamp(max=2), loss_mask=torch.ones(1, 2, 2, 2))


# ---------------------------------------------------------------- reduction
def _inputs(seed=0, b=3, k=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, 6, 6, generator=g), torch.randint(0, k, (b, 1, 6, 6), generator=g)


def test_mcc_reduction_none_is_per_sample_per_class_and_mean_sum_agree():
    x, y = _inputs()
    per = MCCLoss(batch=False, reduction="none")(x, y)
    assert per.shape == (3, 3)  # 3 samples x 3 foreground classes
    for b in range(3):  # each row is the loss of that sample alone
        alone = MCCLoss(batch=False, reduction="none")(x[b:b + 1], y[b:b + 1])
        torch.testing.assert_close(per[b], alone[0])
    torch.testing.assert_close(MCCLoss(batch=False)(x, y), per.mean())
    torch.testing.assert_close(MCCLoss(batch=False, reduction="sum")(x, y), per.sum())
    pooled = MCCLoss(batch=True, reduction="none")(x, y)
    assert pooled.shape == (1, 3)
    torch.testing.assert_close(MCCLoss(batch=True)(x, y), pooled.mean())


def test_gwdl_reduction_none_is_per_sample():
    x, y = _inputs(1, k=3)
    matrix = [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]
    per = GeneralizedWassersteinDiceLoss(matrix, reduction="none")(x, y)
    assert per.shape == (3,)
    torch.testing.assert_close(per[1:2], GeneralizedWassersteinDiceLoss(matrix, reduction="none")(x[1:2], y[1:2]))
    torch.testing.assert_close(GeneralizedWassersteinDiceLoss(matrix)(x, y), per.mean())
    torch.testing.assert_close(GeneralizedWassersteinDiceLoss(matrix, reduction="sum")(x, y), per.sum())
    assert GeneralizedWassersteinDiceLoss(matrix, batch=True, reduction="none")(x, y).shape == (1,)


def test_masked_bce_reduction_none_is_elementwise_and_zero_where_ignored():
    x = torch.randn(2, 2, 4, 4)
    regions = torch.randint(0, 2, (2, 2, 4, 4))
    ignore = torch.zeros(2, 1, 4, 4)
    ignore[:, :, 0] = 1
    target = torch.cat([regions, ignore], 1)
    loss = MaskedBCEWithLogits(ignore_channel=True, reduction="none")(x, target)
    assert loss.shape == (2, 2, 4, 4) and float(loss[:, :, 0].abs().sum()) == 0
    torch.testing.assert_close(MaskedBCEWithLogits(ignore_channel=True, reduction="sum")(x, target), loss.sum())
    torch.testing.assert_close(MaskedBCEWithLogits(ignore_channel=True)(x, target), loss.sum() / (2 * 2 * 12))


def test_multiscale_l1_reduction_none_is_per_sample_per_scale():
    a = [torch.ones(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    b = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    b[1][1] = 2.0
    terms = multiscale_l1(a, b, reduction="none")
    assert terms.tolist() == [[1.0, 0.0], [1.0, 2.0]]
    assert float(multiscale_l1(a, b)) == pytest.approx(1.0) and float(multiscale_l1(a, b, reduction="sum")) == 4.0
    assert multiscale_l1(a, b, scale_weights=[1.0, 0.5], reduction="none").tolist() == [[1.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("make", [lambda r: MCCLoss(reduction=r), lambda r: MaskedBCEWithLogits(reduction=r),
                                  lambda r: GeneralizedWassersteinDiceLoss([[0, 1], [1, 0]], reduction=r)])
def test_unknown_reduction_is_refused(make):
    with pytest.raises(ValueError, match="reduction must be one of"):
        make("avg")


def test_docstring_examples_of_the_losses_run():
    import doctest

    import nnunet_mcc.losses.gwdl
    import nnunet_mcc.losses.mcc
    import nnunet_mcc.losses.segan
    import nnunet_mcc.losses.weighted_ce

    for module in (nnunet_mcc.losses.mcc, nnunet_mcc.losses.gwdl, nnunet_mcc.losses.segan,
                   nnunet_mcc.losses.weighted_ce):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__

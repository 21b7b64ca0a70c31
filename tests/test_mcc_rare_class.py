"""A class whose softmax probability has saturated near 0: what the soft MCC's gradient does, and the
``missed_weight`` penalty (minus the log of the soft recall) that keeps a gradient for a present class of
which the network predicts no voxel (docs/mcc_rare_classes.md). Hand-made tensors, no training."""

import math
from types import SimpleNamespace

import pytest
import torch

from nnunet_mcc.losses import MCCLoss, missed_class_penalty
from nnunet_mcc.losses.targets import TargetFormat


def nested_labels(batch: int = 2, size: int = 32) -> torch.Tensor:
    """Three nested classes, as in the ablation's dataset: 1 around 2 around 3 (16 voxels per sample)."""
    y = torch.zeros(batch, 1, size, size, dtype=torch.long)
    y[:, :, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    y[:, :, size // 2 - 5:size // 2 + 5, size // 2 - 5:size // 2 + 5] = 2
    y[:, :, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] = 3
    return y


def logits_with_class_3_gap(y: torch.Tensor, gap: float, seed: int = 0) -> torch.Tensor:
    """Logits that predict classes 0-2 correctly and put class 3 ``gap`` below everything: its probability
    is about exp(-gap) everywhere, so it is predicted nowhere (saturated near 0)."""
    g = torch.Generator().manual_seed(seed)
    z = 0.5 * torch.randn(y.shape[0], 4, *y.shape[2:], generator=g)
    onehot = torch.nn.functional.one_hot(y[:, 0].clamp_max(2), 4).permute(0, 3, 1, 2).float()
    z = z + 4 * onehot  # class-3 voxels are predicted as class 2, their enclosing class
    z[:, 3] -= gap
    return z


def gradient(loss: torch.nn.Module, z: torch.Tensor, y: torch.Tensor):
    z = z.clone().requires_grad_(True)
    value = loss(z, y)
    value.backward()
    return value.detach(), z.grad


@pytest.mark.parametrize("gap", [10.0, 20.0, 40.0])
def test_saturated_class_plain_mcc_gradient_is_finite_but_vanishes(gap):
    """The seed's loss: finite, but the push on the class's logits shrinks as sqrt(p) ~ exp(-gap / 2)."""
    y = nested_labels()
    value, g = gradient(MCCLoss(), logits_with_class_3_gap(y, gap), y)
    own = y[:, 0] == 3
    assert math.isfinite(float(value)) and torch.isfinite(g).all()
    push = -float(g[:, 3][own].sum())
    assert 0 <= push < 10 * math.exp(-gap / 2)


@pytest.mark.parametrize("gap", [10.0, 20.0, 40.0, 60.0])
@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
def test_saturated_class_keeps_a_gradient_with_the_penalty(gap, batch):
    """With the penalty the push on the class's logits sums to w / K (K = 3 scored classes; per sample,
    each sample's share is 1 / B of it) however far the class has saturated, and the value is the plain
    loss plus w / K times minus the log of the class's soft recall."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, gap)
    assert not (z.argmax(1) == 3).any()  # predicted nowhere
    value, g = gradient(MCCLoss(batch=batch, missed_weight=1.0), z, y)
    plain, _ = gradient(MCCLoss(batch=batch), z, y)
    own = y[:, 0] == 3
    assert torch.isfinite(g).all() and math.isfinite(float(value))
    assert float(-g[:, 3][own].sum()) == pytest.approx(1 / 3, rel=1e-3)
    p = torch.softmax(z.double(), 1)[:, 3]
    if batch:
        penalty = -math.log(float((p * own).sum() / own.sum()))
    else:
        penalty = float((-torch.log((p * own).sum((1, 2)) / own.sum((1, 2)))).mean())
    assert gap < penalty < gap + 10  # class 3's voxels sit 4 + gap below class 2: -log p is about that
    assert float(value) == pytest.approx(float(plain) + penalty / 3, rel=1e-5)


@pytest.mark.parametrize("gap", [200.0, 1e4])
def test_past_the_floor_the_penalty_is_finite_without_gradient(gap):
    """float32's softmax is exactly 0 beyond a gap of about 104: the recall is floored at 1e-30, so the
    value is finite (-log 1e-30 / K added) and the gradient is finite and 0 from the penalty."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, gap)
    value, g = gradient(MCCLoss(missed_weight=1.0), z, y)
    plain, plain_g = gradient(MCCLoss(), z, y)
    assert torch.isfinite(g).all()
    assert float(value) == pytest.approx(float(plain) - math.log(1e-30) / 3, rel=1e-6)
    torch.testing.assert_close(g, plain_g)


def test_saturated_region_keeps_a_gradient_with_the_penalty():
    """Sigmoid regions (nnU-Net's region training): the innermost region's logit is -20 everywhere."""
    y = nested_labels()
    regions = torch.cat([(y >= c).float() for c in (1, 2, 3)], 1)
    z = 4 * (2 * regions - 1)
    z[:, 2] = -20.0
    _, plain = gradient(MCCLoss("sigmoid"), z, regions)
    _, g = gradient(MCCLoss("sigmoid", missed_weight=1.0), z, regions)
    own = regions[:, 2] > 0
    assert torch.isfinite(g).all()
    assert 0 <= -float(plain[:, 2][own].sum()) < 10 * math.exp(-20 / 2)
    assert -float(g[:, 2][own].sum()) == pytest.approx(1 / 3, rel=1e-3)


@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_exactly_the_plain_loss_wherever_every_present_class_is_found(batch, mode):
    """Bit for bit the value and gradients of the seed's loss when every present class is predicted on at
    least one of its voxels (in every sample when not pooled), also for a class absent and not predicted."""
    torch.manual_seed(0)
    y = nested_labels()
    if mode == "softmax":
        z, target = logits_with_class_3_gap(y, 0.0), y
        z[:, 3] += 2 + 4 * (y[:, 0] == 3) * torch.rand(y[:, 0].shape)  # class 3 wins on part of its voxels
        assert all(((z.argmax(1) == c) & (y[:, 0] == c)).flatten(1).any(1).all() for c in (1, 2, 3))
    else:
        target = torch.cat([(y >= c).float() for c in (1, 2, 3)], 1)  # nested regions
        z = 3 * (2 * target - 1) + torch.randn(target.shape)
    for absent in (False, True):
        if absent and mode == "softmax":
            target = torch.where(y == 3, 2, y)
            z = logits_with_class_3_gap(y, 20.0)
        plain_value, plain_grad = gradient(MCCLoss(mode, batch=batch), z, target)
        value, grad = gradient(MCCLoss(mode, batch=batch, missed_weight=1.0), z, target)
        assert torch.equal(value, plain_value) and torch.equal(grad, plain_grad)
        per_class = [MCCLoss(mode, batch=batch, missed_weight=w, reduction="none")(z, target) for w in (0.0, 1.0)]
        assert torch.equal(per_class[0], per_class[1])


def test_only_the_missed_class_is_penalised():
    tp = torch.tensor([[4.0, 0.5, 0.0, 3.0]])
    fn = torch.tensor([[4.0, 7.5, 0.0, 1.0]])
    hard_tp = torch.tensor([[7.0, 0.0, 0.0, 1.0]])  # class 1 missed, class 2 absent, class 3 found on a voxel
    penalty = missed_class_penalty(tp, fn, hard_tp)
    assert penalty[0].tolist() == pytest.approx([0.0, math.log(16), 0.0, 0.0])


def test_reduction_none_adds_the_penalty_to_the_missed_class_only():
    y = nested_labels()
    z = logits_with_class_3_gap(y, 20.0)
    plain = MCCLoss(batch=False, reduction="none")(z, y)
    with_penalty = MCCLoss(batch=False, reduction="none", missed_weight=2.0)(z, y)
    assert with_penalty.shape == plain.shape == (2, 3)
    assert torch.equal(with_penalty[:, :2], plain[:, :2])
    p = torch.softmax(z.double(), 1)[:, 3].flatten(1)
    own = (y[:, 0] == 3).flatten(1)
    expected = plain[:, 2].double() - 2 * torch.log((p * own).sum(1) / own.sum(1))
    torch.testing.assert_close(with_penalty[:, 2].double(), expected, rtol=1e-6, atol=0)


def test_a_class_predicted_only_off_its_voxels_is_missed():
    """Stray false positives do not switch the penalty off: what counts is the class's own voxels."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, 20.0)
    z[:, 3, 0, :4] += 40  # class 3 predicted on 4 background voxels per sample
    assert (z.argmax(1) == 3).any()
    value, g = gradient(MCCLoss(missed_weight=1.0), z, y)
    own = y[:, 0] == 3
    assert float(value) > float(gradient(MCCLoss(), z, y)[0]) + 1
    assert -float(g[:, 3][own].sum()) == pytest.approx(1 / 3, rel=1e-3)


def test_ignored_voxels_count_as_not_predicted():
    """A class predicted only on ignored voxels is not predicted: the penalty applies, and ignored voxels
    get no gradient."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, 20.0)
    y_ignore = y.clone()
    y_ignore[:, 0, :2] = 4  # the first two rows carry the ignore label
    z[:, 3, :2] += 60  # class 3 "predicted" only there
    value, g = gradient(MCCLoss(ignore_index=4, missed_weight=1.0), z, y_ignore)
    assert float(value) > float(gradient(MCCLoss(ignore_index=4), z, y_ignore)[0]) + 1
    assert torch.equal(g[..., :2, :], torch.zeros_like(g[..., :2, :]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_penalty_is_finite_in_half_precision(dtype):
    y = nested_labels()
    z = logits_with_class_3_gap(y, 30.0).to(dtype)
    value, g = gradient(MCCLoss(missed_weight=1.0), z, y)
    assert math.isfinite(float(value)) and torch.isfinite(g.float()).all()
    assert -float(g[:, 3][y[:, 0] == 3].float().sum()) == pytest.approx(1 / 3, rel=2e-2)


def test_rejects_bad_weights():
    with pytest.raises(ValueError, match="missed_weight must be >= 0"):
        MCCLoss(missed_weight=-1.0)
    with pytest.raises(ValueError, match="missed_weight needs apply_nonlin"):
        MCCLoss(lambda x: x.exp(), missed_weight=1.0)


def built_loss(trainer_class, regions: bool):
    """The loss a trainer builds, from a trainer object with just the settings ``_build_loss`` reads."""
    trainer = object.__new__(trainer_class)
    trainer.label_manager = SimpleNamespace(has_regions=regions, has_ignore_label=False, ignore_label=None,
                                            num_segmentation_heads=3)
    trainer.target_format = TargetFormat.from_label_manager(trainer.label_manager)
    trainer.configuration_manager = SimpleNamespace(batch_dice=True)
    trainer.is_ddp, trainer.enable_deep_supervision = False, False
    return trainer._build_loss()


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_trainer_uses_the_penalty_and_mcc_ce_does_not(regions):
    from nnunet_mcc.trainers.mcc import nnUNetTrainerMCC, nnUNetTrainerMCC_CE

    assert built_loss(nnUNetTrainerMCC, regions).missed_weight == 1.0
    assert built_loss(nnUNetTrainerMCC_CE, regions).dc.missed_weight == 0.0


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
def test_hard_counts_are_the_argmax_hits_of_each_class(include_background, batch):
    """The gate's count: voxels of each scored class whose argmax over all channels is that class,
    ignored voxels left out, summed over the batch when pooled."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 9, 11, generator=g)
    y = torch.randint(0, 5, (3, 1, 9, 11), generator=g)  # 4 is the ignore label
    loss = MCCLoss(include_background=include_background, ignore_index=4, batch=batch)
    hard = loss.confusion(z, y, hard_tp=True)[4]
    labels, predicted = y[:, 0], z.argmax(1)
    expected = torch.stack([((labels == c) & (predicted == c)).flatten(1).sum(1)
                            for c in range(0 if include_background else 1, 4)], 1).float()
    if batch:
        expected = expected.sum(0, keepdim=True)
    assert torch.equal(hard, expected)

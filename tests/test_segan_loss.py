"""SegAN critic and multi-scale L1: hand-worked values, masking, the alternating update."""

import pytest
import torch
from torch import nn

from nnunet_mcc.losses.segan import adversarial_l1, mask_input, multiscale_l1
from nnunet_mcc.losses.targets import TargetFormat
from nnunet_mcc.networks import SegANCritic
from nnunet_mcc.trainers.segan import critic_update

IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
PRED_FG = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
PREDICTION = torch.stack([1 - PRED_FG, PRED_FG])[None]  # (1, 2, 2, 2) softmax-like
TRUTH = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]]])


def _set_conv(conv: nn.Module, weight, bias):
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32).view_as(conv.weight))
        conv.bias.fill_(bias)


def _tiny_joint_critic() -> SegANCritic:
    # stage 1: 1x1 conv over the 2 masked channels, weights (1, -2), bias 0.5, LeakyReLU 0.2;
    # stage 2: 3x3 conv of ones, stride 2, padding 1 -> one value, the sum of the 2x2 map
    critic = SegANCritic(1, 2, dim=2, features_per_stage=[1, 1], strides=[1, 2], kernel_sizes=[1, 3],
                         spectral_norm=False)
    first, second = (stage[0] for stage in critic.towers[0].stages)
    _set_conv(first, [1.0, -2.0], 0.5)
    _set_conv(second, [1.0] * 9, 0.0)
    return critic


def test_mask_input_orders_channels_class_major_and_zeroes_ignored_voxels():
    image = torch.arange(2 * 2 * 3, dtype=torch.float32).view(1, 2, 2, 3)
    segmentation = torch.rand(1, 3, 2, 3)
    valid = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    valid[0, 0, 1, 2] = False
    masked = mask_input(image, segmentation, valid)
    assert masked.shape == (1, 6, 2, 3)
    for k in range(3):
        for c in range(2):
            expected = image[0, c] * segmentation[0, k] * valid[0, 0]
            torch.testing.assert_close(masked[0, k * 2 + c], expected)
    assert float(masked[0, :, 1, 2].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="batch and spatial"):
        mask_input(image, torch.rand(1, 3, 3, 3))


def test_multiscale_l1_matches_hand_value_for_a_tiny_joint_critic():
    # masked prediction: class 0 [[0,1],[3,4]], class 1 [[1,1],[0,0]]; ground truth: [[0,0],[3,4]], [[1,2],[0,0]]
    # scale 0: |diff| sums to 2 over 8 values -> 0.25
    # stage 1: pre-activations pred [[-1.5,-0.5],[3.5,4.5]], truth [[-1.5,-3.5],[3.5,4.5]];
    #          after LeakyReLU(0.2) they differ by |-0.1 - -0.7| = 0.6 at one of 4 voxels -> 0.15
    # stage 2: sums 7.6 and 7.0 -> 0.6;  mean over the three scales = (0.25 + 0.15 + 0.6) / 3 = 1/3
    critic = _tiny_joint_critic()
    with torch.no_grad():
        features_pred = critic(mask_input(IMAGE, PREDICTION))
        features_true = critic(mask_input(IMAGE, TRUTH))
    assert [f.shape[-1] for f in features_pred] == [2, 2, 1]
    assert float(features_pred[2]) == pytest.approx(7.6)
    assert float(multiscale_l1(features_pred, features_true)) == pytest.approx(1 / 3)
    # per-scale weights multiply each term: (1*0.25 + 0*0.15 + 2*0.6) / 3
    assert float(multiscale_l1(features_pred, features_true, [1, 0, 2])) == pytest.approx(1.45 / 3)


def test_per_label_critic_matches_hand_value():
    # tower 0 (class 0, weight 1): differences [[0,1],[0,0]]; tower 1 (class 1, weight -1):
    # LeakyReLU(-[[1,1],[0,0]]) vs LeakyReLU(-[[1,2],[0,0]]) differ by 0.2 at one voxel.
    # stage 1 holds both towers: (1 + 0.2) / 8 = 0.15; scale 0: 0.25 -> mean 0.2
    critic = SegANCritic(1, 2, dim=2, features_per_stage=[1], strides=[1], kernel_sizes=[1], mode="per_label",
                         spectral_norm=False)
    _set_conv(critic.towers[0].stages[0][0], [1.0], 0.0)
    _set_conv(critic.towers[1].stages[0][0], [-1.0], 0.0)
    l1 = multiscale_l1(critic(mask_input(IMAGE, PREDICTION)), critic(mask_input(IMAGE, TRUTH)))
    assert float(l1.detach()) == pytest.approx(0.2)


def test_critic_shapes_3d_anisotropic_and_argument_checks():
    critic = SegANCritic(2, 3, dim=3, features_per_stage=[4, 8], strides=[(1, 2, 2), 2])
    features = critic(torch.rand(2, 6, 4, 16, 16))
    assert [tuple(f.shape) for f in features] == [(2, 6, 4, 16, 16), (2, 4, 4, 8, 8), (2, 8, 2, 4, 4)]
    with pytest.raises(ValueError, match="mode"):
        SegANCritic(1, 2, 2, [4], [2], mode="many")
    with pytest.raises(ValueError, match="one stride per stage"):
        SegANCritic(1, 2, 2, [4, 8], [2])
    with pytest.raises(ValueError, match=r"expects \(B, 6"):
        critic(torch.rand(1, 5, 4, 16, 16))


def test_onehot_target_label_map_with_ignore_and_regions_with_ignore_channel():
    labels = torch.tensor([[[[0, 1], [2, 3]]]], dtype=torch.float32)  # 3 = ignore label
    onehot, valid = TargetFormat(3, ignore_label=3).onehot(labels)
    assert onehot[0, :, 0, 1].tolist() == [0, 1, 0] and onehot[0, :, 1, 0].tolist() == [0, 0, 1]
    assert valid[0, 0].tolist() == [[True, True], [True, False]]
    regions = torch.tensor([[[[1, 0]], [[1, 1]], [[0, 1]]]], dtype=torch.float32)  # 2 regions + ignore channel
    onehot, valid = TargetFormat(2, region_ignore_channel=True).onehot(regions)
    assert onehot.shape == (1, 2, 1, 2) and valid[0, 0].tolist() == [[True, False]]


def _setup(spectral_norm: bool, seed: int = 0):
    torch.manual_seed(seed)
    segmentor = nn.Conv2d(2, 3, 3, padding=1)
    critic = SegANCritic(2, 3, dim=2, features_per_stage=[4, 8], strides=[2, 2], spectral_norm=spectral_norm)
    image = torch.randn(2, 2, 8, 8)
    labels = torch.randint(0, 3, (2, 1, 8, 8)).float()
    onehot, _ = TargetFormat(3).onehot(labels)
    return segmentor, critic, image, labels, onehot


def _l1_eval(critic, image, probabilities, onehot):
    with torch.no_grad():
        critic.eval()
        value = multiscale_l1(critic(mask_input(image, probabilities)), critic(mask_input(image, onehot)))
        critic.train()
    return float(value)


def test_alternating_step_critic_ascends_segmentor_descends_and_no_gradient_leaks():
    segmentor, critic, image, labels, onehot = _setup(spectral_norm=False)
    critic_optimizer = torch.optim.SGD(critic.parameters(), lr=0.05)
    segmentor_optimizer = torch.optim.SGD(segmentor.parameters(), lr=0.05)
    probabilities = torch.softmax(segmentor(image), 1)

    l1_before = _l1_eval(critic, image, probabilities.detach(), onehot)
    reported = critic_update(critic, critic_optimizer, image, probabilities, onehot)
    assert float(reported) == pytest.approx(l1_before, rel=1e-5)
    assert _l1_eval(critic, image, probabilities.detach(), onehot) > l1_before  # the critic ascended
    assert all(p.grad is None for p in segmentor.parameters())  # critic step: nothing reached the segmentor

    critic_after_its_step = {k: v.clone() for k, v in critic.state_dict().items()}
    critic_optimizer.zero_grad(set_to_none=True)
    lam = 0.5

    def total_loss():
        probs = torch.softmax(segmentor(image), 1)
        ce = nn.functional.cross_entropy(segmentor(image), labels[:, 0].long())
        return ce + lam * adversarial_l1(critic, image, probs, onehot)

    total = total_loss()
    total.backward()
    assert all(p.grad is None for p in critic.parameters())  # segmentor step: nothing reached the critic
    assert all(p.requires_grad for p in critic.parameters()) and critic.training  # flags restored
    segmentor_optimizer.step()
    with torch.no_grad():
        assert float(total_loss()) < float(total)  # the segmentor descended on the total
    for key, value in critic.state_dict().items():
        torch.testing.assert_close(value, critic_after_its_step[key])


def test_segmentor_step_leaves_spectral_norm_estimates_untouched_and_clipping_bounds_weights():
    segmentor, critic, image, labels, onehot = _setup(spectral_norm=True)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2, betas=(0.5, 0.999))
    probabilities = torch.softmax(segmentor(image), 1)
    critic_update(critic, optimizer, image, probabilities, onehot, weight_clip=0.05)
    assert max(float(p.detach().abs().max()) for p in critic.parameters()) <= 0.05 + 1e-7
    state = {k: v.clone() for k, v in critic.state_dict().items()}
    adversarial_l1(critic, image, probabilities, onehot).backward()
    assert any(k.endswith("_u") for k in state)  # the spectral-norm power-iteration vectors are in the state
    for key, value in critic.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert segmentor.weight.grad is not None and float(segmentor.weight.grad.abs().sum()) > 0

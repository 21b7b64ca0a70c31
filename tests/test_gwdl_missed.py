"""GWDL's missed-label gate (``GeneralizedWassersteinDiceLoss(missed_weight=w)``): a rare label close to
another in the distance matrix saturates and loses its gradient; the gate adds minus the log of its soft
recall while none of its voxels is predicted, and nothing otherwise (docs/gwdl.md). Hand-made tensors."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ddp_harness import run_ranks
from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss as GWDL
from nnunet_mcc.trainers.gwdl import close_rare_labels
from test_mcc_rare_class import gradient, logits_with_class_3_gap, nested_labels

# the demo's tree distances: edema (1) around non-enhancing (2) around enhancing (3)
TREE = np.array([[0, 1, 1, 1], [1, 0, 2 / 3, 2 / 3], [1, 2 / 3, 0, 1 / 3], [1, 2 / 3, 1 / 3, 0]])


@pytest.mark.parametrize("gap", [10.0, 20.0, 40.0])
def test_saturated_label_plain_gradient_vanishes(gap):
    """The paper's loss: missing label 3 costs little and its logits get a push of order exp(-gap)."""
    y = nested_labels()
    value, g = gradient(GWDL(TREE, batch=True), logits_with_class_3_gap(y, gap), y)
    push = -float(g[:, 3][y[:, 0] == 3].sum())
    assert math.isfinite(float(value)) and torch.isfinite(g).all()
    assert 0 <= push < 10 * math.exp(-gap)
    assert float(value) < 0.1  # a whole label missed, yet the loss is small: the close neighbour takes it


@pytest.mark.parametrize("gap", [10.0, 20.0, 40.0, 60.0])
@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
def test_saturated_label_keeps_a_gradient_with_the_gate(gap, batch):
    """With the gate the push on the missed label's logits sums to w however far it has saturated, and the
    value is the paper's plus w times minus the log of the label's soft recall (by hand)."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, gap)
    w = 2.0
    plain, _ = gradient(GWDL(TREE, batch=batch), z, y)
    value, g = gradient(GWDL(TREE, batch=batch, missed_weight=w), z, y)
    own = y[:, 0] == 3
    assert -float(g[:, 3][own].sum()) == pytest.approx(w, rel=1e-3)
    p = torch.softmax(z.double(), 1)[:, 3]
    if batch:
        penalty = -math.log(float(p[own].sum() / own.sum()))
    else:
        penalty = float(np.mean([-math.log(float(p[b][own[b]].mean())) for b in range(y.shape[0])]))
    assert float(value) == pytest.approx(float(plain) + w * penalty, rel=1e-5)


@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bit_for_bit_the_paper_wherever_every_present_label_is_found(batch, reduction):
    """Value and gradient equal Fidon et al.'s loss bit for bit when every present label is the argmax on at
    least one of its voxels (in every sample when not pooled), also when a label is absent altogether."""
    torch.manual_seed(0)
    y = nested_labels()
    z = logits_with_class_3_gap(y, 0.0)
    z[:, 3] += 2 + 4 * (y[:, 0] == 3) * torch.rand(y[:, 0].shape)
    assert all(((z.argmax(1) == c) & (y[:, 0] == c)).flatten(1).any(1).all() for c in (1, 2, 3))
    absent_y = torch.where(y == 3, 2, y)  # label 3 absent, and predicted nowhere
    absent_z = logits_with_class_3_gap(y, 20.0)
    for target, logits in ((y, z), (absent_y, absent_z)):
        plain, gated = (GWDL(TREE, batch=batch, reduction=reduction, missed_weight=w) for w in (0.0, 1.0))
        if reduction == "none":
            assert torch.equal(gated(logits, target), plain(logits, target))
            continue
        plain_value, plain_grad = gradient(plain, logits, target)
        value, grad = gradient(gated, logits, target)
        assert torch.equal(value, plain_value) and torch.equal(grad, plain_grad)


def test_a_label_predicted_only_off_its_voxels_is_missed():
    """Stray predictions elsewhere do not switch the gate off: what counts is the label's own voxels."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, 20.0)
    z[:, 3, 0, :4] += 40  # label 3 predicted on 4 background voxels per sample
    assert (z.argmax(1) == 3).any()
    value, g = gradient(GWDL(TREE, batch=True, missed_weight=1.0), z, y)
    assert float(value) > float(gradient(GWDL(TREE, batch=True), z, y)[0]) + 1
    assert -float(g[:, 3][y[:, 0] == 3].sum()) == pytest.approx(1.0, rel=1e-3)


def test_ignored_voxels_are_neither_present_nor_predicted():
    """A label predicted only on ignored voxels is missed, a label present only on ignored voxels is absent,
    and ignored voxels get no gradient."""
    y = nested_labels()
    z = logits_with_class_3_gap(y, 20.0)
    y_ignore = y.clone()
    y_ignore[:, 0, :2] = 4  # the first two rows carry the ignore label
    z[:, 3, :2] += 60  # label 3 "predicted" only there
    value, g = gradient(GWDL(TREE, batch=True, ignore_index=4, missed_weight=1.0), z, y_ignore)
    assert float(value) > float(gradient(GWDL(TREE, batch=True, ignore_index=4), z, y_ignore)[0]) + 1
    assert torch.equal(g[..., :2, :], torch.zeros_like(g[..., :2, :]))
    only_ignored = torch.where(y == 3, 4, y)  # label 3's voxels all ignored: not present, no gate
    assert torch.equal(gradient(GWDL(TREE, batch=True, ignore_index=4, missed_weight=1.0), z, only_ignored)[0],
                       gradient(GWDL(TREE, batch=True, ignore_index=4), z, only_ignored)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gap", [20.0, 1e4])
def test_gate_is_finite_in_half_precision_and_past_the_floor(dtype, gap):
    y = nested_labels()
    z = logits_with_class_3_gap(y, gap).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        value = GWDL(TREE, batch=True, missed_weight=1.0)(z, y)
    value.backward()
    assert math.isfinite(float(value.detach())) and torch.isfinite(z.grad).all()


def test_rejects_a_negative_weight():
    with pytest.raises(ValueError, match="missed_weight must be >= 0"):
        GWDL(TREE, missed_weight=-1.0)


def test_close_rare_labels_names_what_a_lenient_matrix_lets_go():
    names = ["background", "edema", "non_enhancing_tumor", "enhancing_tumor"]
    share = np.array([0.0, 0.5, 0.49, 0.01])
    assert close_rare_labels(TREE, names, share, 0.02, 0.5) == [
        "enhancing_tumor (1.0% of the foreground, 0.33 from non_enhancing_tumor)"]
    assert close_rare_labels(TREE, names, share, 0.005, 0.5) == []  # not rare enough
    assert close_rare_labels(1 - np.eye(4), names, share, 0.02, 0.5) == []  # 0/1: nothing is close


def _ddp_worker(rank, world):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    model = torch.nn.parallel.DistributedDataParallel(conv)
    image, labels = _ddp_data()
    part = slice(rank * 2, rank * 2 + 2)
    value = GWDL(TREE, batch=True, ddp=True, missed_weight=1.0)(model(image[part]) + _gap(labels[part]), labels[part])
    value.backward()
    total = value.detach().clone()
    dist.all_reduce(total)
    return {"loss": total / world, "grads": [p.grad.clone() for p in conv.parameters()]}


def _ddp_data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 1, 32, 32, generator=g), nested_labels(4)


def _gap(labels):
    """Label 3 pushed 30 below the others: missed in the whole batch, so the gate pools over both ranks."""
    shift = torch.zeros(labels.shape[0], 4, *labels.shape[2:])
    shift[:, 3] = -30
    return shift


@pytest.mark.e2e  # spawns gloo processes
def test_gate_under_ddp_equals_one_process(tmp_path):
    """Pooled over 2 gloo ranks x 2 samples: loss and averaged gradients of 1 process x 4 samples."""
    ddp = run_ranks(_ddp_worker, 2, tmp_path)[0]
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    image, labels = _ddp_data()
    value = GWDL(TREE, batch=True, missed_weight=1.0)(conv(image) + _gap(labels), labels)
    value.backward()
    assert float(value.detach()) > 1  # the gate is on
    assert ddp["loss"].item() == pytest.approx(value.item(), rel=1e-6)
    for got, expected in zip(ddp["grads"], [p.grad for p in conv.parameters()]):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)

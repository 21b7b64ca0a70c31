"""The missed-class gate with its rooms (``min_recall``, ``min_specificity``), shared by every confusion-count loss
used alone: MCC, GWDL and Tversky. A present class whose soft recall is below its room adds ``w (log m - log
recall)``, a class whose soft specificity is below its room (a class flooding the image) ``w (log m - log
specificity)``; wherever every class has room, the loss is the plain one, value and gradient bit for bit."""

import math

import pytest
import torch

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss, MCCLoss, TverskyLoss, missed_class_penalty
from nnunet_mcc.losses.base import flooded_class_penalty

TREE = [[0, 1, 1, 1], [1, 0, 0.67, 0.67], [1, 0.67, 0, 0.33], [1, 0.67, 0.33, 0]]
ROOMS = dict(missed_weight=1.0, min_recall=0.5, min_specificity=0.5)  # the trainers' gate
LOSSES = {
    "MCC": lambda **kw: MCCLoss("softmax", **kw),
    "GWDL": lambda **kw: GeneralizedWassersteinDiceLoss(TREE, **kw),
    "Tversky": lambda **kw: TverskyLoss("softmax", **kw),
}


def _labels(seed: int = 0, shape=(2, 1, 12, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, shape, generator=g)
    y[:, :, :2, :2] = torch.arange(4).view(1, 1, 2, 2)[..., :2, :2].expand(shape[0], 1, 2, 2)  # every class present
    return y


def _logits(y: torch.Tensor, true_boost: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(y[:, 0], 4).permute(0, 3, 1, 2).float()
    return (torch.randn(onehot.shape, generator=g) + true_boost * onehot).requires_grad_(True)


def _value_and_gradient(loss, z, y):
    z = z.detach().clone().requires_grad_(True)
    value = loss(z, y)
    value.sum().backward()
    return value.detach(), z.grad


def _gates(make, z, y, rooms, all_rooms):
    """Value and gradient of the plain loss, with the gate of ``rooms`` and with ``all_rooms``, pooled."""
    return [_value_and_gradient(make(batch=True, **kwargs), z, y)
            for kwargs in ({}, dict(missed_weight=1.0, **rooms), all_rooms)]


def _soft_recall(z: torch.Tensor, y: torch.Tensor, c: int) -> float:
    p = torch.softmax(z.detach(), 1)[:, c]
    mask = y[:, 0] == c
    return float(p[mask].sum() / mask.sum())


def test_hand_worked_values():
    tp, fn = torch.tensor([[0.2, 0.6, 0.0, 0.0]]), torch.tensor([[0.8, 0.4, 0.0, 2.0]])
    hard = torch.tensor([[3.0, 5.0, 0.0, 0.0]])
    room = missed_class_penalty(tp, fn, min_recall=0.5)
    # recall 0.2 < 0.5: log 0.5 - log 0.2 = log 2.5 (float32 inputs); recall 0.6: room; absent: 0;
    # recall 0, past the floor: log 0.5 - log 1e-30
    assert room[0, 0].item() == pytest.approx(math.log(2.5), rel=1e-6)
    assert room[0, 1].item() == 0 and room[0, 2].item() == 0
    assert room[0, 3].item() == pytest.approx(math.log(0.5) - math.log(1e-30), rel=1e-12)
    # the former rule (min_recall 0) reads the hard prediction: class 0 is predicted on 3 voxels, so no penalty
    former = missed_class_penalty(tp, fn, hard, min_recall=0.0)
    assert former[0, 0].item() == 0 and former[0, 3].item() == pytest.approx(-math.log(1e-30))
    with pytest.raises(ValueError, match="give hard_tp"):
        missed_class_penalty(tp, fn, min_recall=0.0)


def test_hand_worked_flood_values():
    fp, tn = torch.tensor([[8.0, 1.0, 0.0, 5.0]]), torch.tensor([[2.0, 9.0, 0.0, 0.0]])
    value = flooded_class_penalty(fp, tn, 0.5)
    # specificity 0.2: log 2.5; 0.9: room; no complement: 0; 0 (every other voxel flooded): log 0.5 - log 1e-30
    assert value[0, 0].item() == pytest.approx(math.log(2.5), rel=1e-6)
    assert value[0, 1].item() == 0 and value[0, 2].item() == 0
    assert value[0, 3].item() == pytest.approx(math.log(0.5) - math.log(1e-30), rel=1e-12)


def test_the_penalty_is_continuous_at_the_room():
    for recall in (0.5 - 1e-9, 0.5, 0.5 + 1e-9):
        value = missed_class_penalty(torch.tensor([recall]), torch.tensor([1 - recall]), min_recall=0.5)
        assert abs(value.item()) < 1e-8


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bit_for_bit_the_plain_loss_wherever_every_present_class_has_room(name, batch, reduction):
    y = _labels()
    z = _logits(y, true_boost=4.0)
    assert min(_soft_recall(z, y, c) for c in (1, 2, 3)) >= 0.5  # the case under test: every class has room
    plain = LOSSES[name](batch=batch, reduction=reduction)
    gated = LOSSES[name](batch=batch, reduction=reduction, **ROOMS)
    (v0, g0), (v1, g1) = _value_and_gradient(plain, z, y), _value_and_gradient(gated, z, y)
    assert torch.equal(v0, v1) and torch.equal(g0, g1)


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_class_at_the_margin_is_pushed_past_it_where_the_former_gate_is_silent(name):
    """Class 3 is predicted on some of its voxels (the former gate is off) but with a soft recall well under
    one half: the room's gate adds ``log 0.5 - log recall`` and pushes up its logits on its own voxels."""
    y = _labels()
    z = _logits(y, true_boost=4.0).detach()
    z[:, 3] -= 3.0 * (y[:, 0] == 3).float()  # class 3 near the margin on its voxels
    recall = _soft_recall(z, y, 3)
    hits = ((z.argmax(1) == 3) & (y[:, 0] == 3)).sum().item()
    assert 0 < recall < 0.5 and hits > 0
    (v_plain, g_plain), (v_former, g_former), (v_room, g_room) = _gates(LOSSES[name], z, y, dict(min_recall=0.0),
                                                                          ROOMS)
    assert torch.equal(v_former, v_plain) and torch.equal(g_former, g_plain)
    scale = 1 / 3 if name in ("MCC", "Tversky") else 1.0  # the mean over the three foreground classes
    # the other classes have room: the whole difference is class 3's penalty
    assert (v_room - v_plain).item() == pytest.approx(scale * (math.log(0.5) - math.log(recall)), rel=1e-4)
    push = (g_room - g_plain)[:, 3][y[:, 0] == 3]
    assert (push < 0).all()  # lowering the loss raises class 3's logits on its voxels


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gap", [0.0, 80.0, 6e4])
def test_finite_under_autocast_and_extreme_logits(name, dtype, gap):
    y = _labels()
    z = _logits(y, true_boost=0.0).detach()
    z[:, 3] -= gap * (y[:, 0] == 3).float()  # class 3 lost, as far as the dtype allows
    z = z.to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        value = LOSSES[name](batch=True, **ROOMS)(z, y)
    value.backward()
    assert torch.isfinite(value).all() and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_empty_target_and_fully_ignored_batch_add_nothing(name):
    y = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    z = torch.randn(2, 4, 8, 8)
    plain, gated = LOSSES[name](batch=True), LOSSES[name](batch=True, missed_weight=1.0, min_recall=0.5)
    (v0, g0), (v1, g1) = _value_and_gradient(plain, z, y), _value_and_gradient(gated, z, y)
    assert torch.equal(v0, v1) and torch.equal(g0, g1)  # with the room on the complement a flood is gated, below


@pytest.mark.parametrize("name", list(LOSSES))
def test_settings_record_the_rooms_only_with_a_weight_and_bad_rooms_are_refused(name):
    assert "min_recall" not in LOSSES[name]().settings()
    assert "min_specificity" not in LOSSES[name](missed_weight=1.0, min_recall=0.5).settings()
    assert {k: v for k, v in LOSSES[name](**ROOMS).settings().items() if k in ROOMS} == ROOMS
    for key in ("min_recall", "min_specificity"):
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match=f"{key} must be in"):
                LOSSES[name](**{**ROOMS, key: bad})


BINARY = {  # one foreground class, as a softmax over two channels
    "MCC": lambda **kw: MCCLoss("softmax", **kw),
    "GWDL": lambda **kw: GeneralizedWassersteinDiceLoss([[0, 1], [1, 0]], **kw),
    "Tversky": lambda **kw: TverskyLoss("softmax", **kw),
}


@pytest.mark.parametrize("name", list(BINARY))
def test_a_flooding_class_is_pushed_back_where_the_recall_side_is_silent(name):
    """The class predicted on every voxel with a probability near 1: its recall has room, its complement none.
    The plain loss's push on its logits off its voxels nearly vanishes (the softmax saturates at 1); the room on
    the complement adds ``log 0.5 - log specificity`` and pushes them down with a sum of about 1."""
    y = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    y[:, :, 2:5, 3:6] = 1
    z = _logits(y, true_boost=0.0).detach()[:, :2]
    z[:, 1] += 12.0  # the class floods the image
    others = y[:, 0] == 0
    specificity = float((1 - torch.softmax(z, 1)[:, 1])[others].mean())
    assert specificity < 1e-3
    (v_plain, g_plain), (v_recall, g_recall), (v_both, g_both) = _gates(BINARY[name], z, y, dict(min_recall=0.5),
                                                                        ROOMS)
    assert torch.equal(v_recall, v_plain) and torch.equal(g_recall, g_plain)
    assert (v_both - v_plain).item() == pytest.approx(math.log(0.5) - math.log(specificity), rel=1e-4)
    push = (g_both - g_plain)[:, 1][others]
    assert (push > 0).all()  # lowering the loss lowers the class's logits off its voxels
    assert push.sum().item() == pytest.approx(1.0, rel=0.05)
    assert g_plain[:, 1][others].abs().sum().item() < 0.05


def test_a_sigmoid_region_below_the_room_is_gated():
    y = torch.zeros(1, 2, 8, 8)
    y[:, 0, :4] = 1
    y[:, 1, :2] = 1
    z = torch.full((1, 2, 8, 8), -6.0)
    z[:, 0, :4] = 6.0  # region 0 found, region 1 lost: sigmoid(-6) recall ~ 0.0025
    value, grad = _value_and_gradient(MCCLoss("sigmoid", batch=True, missed_weight=1.0, min_recall=0.5,
                                              reduction="none"), z, y)
    plain = MCCLoss("sigmoid", batch=True, reduction="none")(z, y)
    recall = torch.sigmoid(torch.tensor(-6.0)).item()
    assert value[0, 0] == plain[0, 0]
    assert (value[0, 1] - plain[0, 1]).item() == pytest.approx(math.log(0.5 / recall), rel=1e-4)
    assert (grad[:, 1, :2] < 0).all()


def test_the_gwdl_trainers_room_holds_a_nested_label_above_the_margin():
    """A label whose voxels share its probability with its neighbour 0.33 away in the tree matrix (soft recall
    0.6: the argmax on those voxels, but a flip of the image can tip it): the MCC's room of one half leaves the
    paper's loss unchanged there, bit for bit, while GWDL's trainer room (0.7) adds ``log 0.7 - log recall`` and
    raises the label's logits on its voxels."""
    from nnunet_mcc.trainers.base import GATE_MIN_RECALL, GATE_MIN_SPECIFICITY
    from nnunet_mcc.trainers.gwdl import nnUNetTrainerGWDL

    room = nnUNetTrainerGWDL.gwdl_min_recall
    assert room > 0.6 > GATE_MIN_RECALL
    y = _labels()
    y[:, :, 2:][(y[:, :, 2:] == 3) & (torch.arange(y[:, :, 2:].numel()).view_as(y[:, :, 2:]) % 4 != 0)] = 1  # rare
    z = _logits(y, true_boost=6.0).detach()
    own = y[:, 0] == 3
    for c, p in enumerate((1e-4, 1e-4, 0.4, 0.6)):
        z[:, c][own] = math.log(p)
    recall = _soft_recall(z, y, 3)
    assert recall == pytest.approx(0.6, abs=1e-3) and min(_soft_recall(z, y, c) for c in (1, 2)) >= room

    def gwdl(min_recall):
        return LOSSES["GWDL"](batch=True, missed_weight=nnUNetTrainerGWDL.gwdl_missed_weight, min_recall=min_recall,
                              min_specificity=GATE_MIN_SPECIFICITY)

    (v_plain, g_plain), (v_half, g_half), (v_room, g_room) = (
        _value_and_gradient(loss, z, y) for loss in (LOSSES["GWDL"](batch=True), gwdl(GATE_MIN_RECALL), gwdl(room)))
    assert torch.equal(v_half, v_plain) and torch.equal(g_half, g_plain)
    assert (v_room - v_plain).item() == pytest.approx(math.log(room) - math.log(recall), rel=1e-4)
    assert ((g_room - g_plain)[:, 3][own] < 0).all()

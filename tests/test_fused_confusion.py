"""The fused soft confusion (one batched matrix product per sample) gives the values and gradients of the
formulas it replaced: the old reductions over a dense one-hot (``ConfusionLoss.confusion``) and GWDL's
``Q = M p``, gather and scatter_adds, kept here as the reference. fp32, to 1e-6, on random and edge inputs."""

import pytest
import torch

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss, MCCLoss, TverskyLoss
from nnunet_mcc.losses.base import ddp_active, sum_over_ranks

MATRIX = [[0, 1, 1, 1], [1, 0, 0.5, 0.7], [1, 0.5, 0, 0.6], [1, 0.7, 0.6, 0]]


# ---- the replaced formulas, as they were ------------------------------------------------------------------
def old_confusion(self, x, y, loss_mask=None, hard_tp=False, direct_tn=False):
    self.check_channels(x)
    onehot, valid = self.target_format(x.shape[1]).onehot(y, loss_mask, prediction=x, check=self.check_target)
    x = x.float()
    probs = self.nonlin(x) if self.nonlin is not None else x
    mask = None if valid is None else valid.to(torch.float32).flatten(2)
    start = 1 if (not self.include_background and self.nonlin_kind != "sigmoid" and x.shape[1] > 1) else 0
    probs, onehot = probs[:, start:].flatten(2), onehot[:, start:].flatten(2)
    if mask is not None:
        probs, onehot, n_valid = probs * mask, onehot * mask, mask.sum(-1)
    else:
        n_valid = torch.full(probs.shape[:1] + (1,), float(probs.shape[-1]))
    tp = (probs * onehot).sum(-1)
    fp, fn = probs.sum(-1) - tp, onehot.sum(-1) - tp
    tn = n_valid - tp - fp - fn
    extra = ()
    if hard_tp:
        with torch.no_grad():
            if self.nonlin_kind == "sigmoid" or x.shape[1] == 1:
                hard = ((probs > 0.5) & (onehot > 0)).sum(-1).float()
            else:
                logits = x.detach().flatten(2)
                hard = ((logits[:, x.shape[1] - onehot.shape[1]:] >= logits.amax(1, keepdim=True))
                        & (onehot > 0)).sum(-1).float()
        extra += (hard,)
    if direct_tn:
        v = 1.0 if mask is None else mask
        extra += (((v - probs) * (v - onehot)).sum(-1),)
    stats = torch.stack((tp, fp, fn, tn) + extra)
    if self.batch:
        stats = stats.sum(1, keepdim=True)
        if ddp_active(self.ddp):
            stats = sum_over_ranks(stats)
    return stats.unbind(0)


def old_statistics(self, x, y, loss_mask=None, recall=False, hard=True, mass=False):
    labels, weights = self._labels_and_weights(x, y, loss_mask)
    x = x.float().flatten(2)
    matrix = self.distance_matrix
    probs = torch.softmax(x, 1) if self.nonlin_kind == "softmax" else (self.nonlin(x) if self.nonlin else x)
    w = torch.matmul(matrix, probs).gather(1, labels.unsqueeze(1)).squeeze(1)
    counts = torch.ones_like(w) if weights is None else weights
    if weights is not None:
        w = w * weights
    per_voxel = [counts, w]
    if recall:
        true_x = x.gather(1, labels.unsqueeze(1)).squeeze(1)
        per_voxel.append(probs.gather(1, labels.unsqueeze(1)).squeeze(1) * counts)
        if hard:
            per_voxel.append((true_x >= x.detach().amax(1)).float() * counts)
    zeros = torch.zeros(w.shape[0], self.num_classes)
    stats = torch.stack([zeros.scatter_add(1, labels, v) for v in per_voxel], 1)
    if mass:
        stats = torch.cat([stats, ((1 - probs) * counts.unsqueeze(1)).sum(-1).unsqueeze(1)], 1)
    if self.batch:
        stats = stats.sum(0, keepdim=True)
    return stats.unbind(1)


def with_old_formulas(loss):
    """A copy of ``loss`` computing with the replaced formulas."""
    old = type(loss).__new__(type(loss))
    old.__dict__.update(loss.__dict__)
    old.__dict__["_modules"] = dict(loss._modules)
    if isinstance(loss, GeneralizedWassersteinDiceLoss):
        old.statistics = old_statistics.__get__(old)
    else:
        old.confusion = old_confusion.__get__(old)
    return old


# ---- inputs -----------------------------------------------------------------------------------------------
def _inputs(seed=0, classes=4, shape=(2, 4, 6, 5), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], classes, *shape[1:]), generator=g, dtype=torch.float64).float() * scale
    labels = torch.randint(0, classes, (shape[0], 1, *shape[1:]), generator=g)
    return logits, labels, g


def _cases():
    logits, labels, g = _inputs()
    ignore = labels.clone()
    ignore[:, :, :2] = 4
    empty = torch.zeros_like(labels)  # no foreground at all
    missing = labels.clone()
    missing[missing == 3] = 1  # class 3 absent from the target
    extreme = logits * 40  # saturated softmax
    regions = (torch.rand((2, 4, 4, 6, 5), generator=g) > 0.6).float()  # 3 regions + the ignore channel
    mask = torch.rand((2, 1, 4, 6, 5), generator=g) > 0.3
    gate = dict(missed_weight=1.0, min_recall=0.5, min_specificity=0.9)
    hard_gate = dict(missed_weight=1.0, min_recall=0.0)
    cases = {}
    for batch in (False, True):
        b = f"batch={batch}"
        cases.update({
            f"mcc {b}": (MCCLoss(batch=batch), logits, labels, None),
            f"mcc gated {b}": (MCCLoss(batch=batch, **gate), logits, labels, None),
            f"mcc hard gate ignore {b}": (MCCLoss(batch=batch, ignore_index=4, **hard_gate), logits, ignore, None),
            f"mcc empty {b}": (MCCLoss(batch=batch, **gate), logits, empty, None),
            f"mcc absent class extreme {b}": (MCCLoss(batch=batch, **gate), extreme, missing, None),
            f"mcc loss_mask background {b}": (MCCLoss(batch=batch, include_background=True, **gate), logits,
                                              labels, mask),
            f"mcc sigmoid regions {b}": (MCCLoss("sigmoid", batch=batch, region_ignore_channel=True, **gate),
                                         logits[:, :3], regions, None),
            f"mcc probabilities {b}": (MCCLoss(None, batch=batch, **hard_gate), torch.softmax(logits, 1), labels,
                                       None),
            f"tversky focal gated {b}": (TverskyLoss(gamma=4 / 3, batch=batch, **gate), logits, ignore.clamp_max(3),
                                         mask),
            f"tversky sigmoid hard gate {b}": (TverskyLoss("sigmoid", batch=batch, region_ignore_channel=True,
                                                           **hard_gate), extreme[:, :3], regions, None),
            f"gwdl {b}": (GeneralizedWassersteinDiceLoss(MATRIX, batch=batch), logits, labels, None),
            f"gwdl gated flood ignore {b}": (GeneralizedWassersteinDiceLoss(MATRIX, batch=batch, ignore_index=4,
                                                                            **gate), extreme, ignore, None),
            f"gwdl GDL hard gate mask {b}": (GeneralizedWassersteinDiceLoss(MATRIX, weighting="GDL", batch=batch,
                                                                            **hard_gate), logits, missing, mask),
            f"gwdl probabilities {b}": (GeneralizedWassersteinDiceLoss(MATRIX, apply_nonlin=None, batch=batch,
                                                                       **gate), torch.softmax(logits, 1), empty,
                                        None),
        })
    return cases


CASES = _cases()


def _value_and_grad(loss, x, y, mask, reduction="mean"):
    loss.reduction = reduction
    leaf = x.clone().requires_grad_()
    value = loss(leaf, y, mask)
    value.sum().backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_old_formulas_in_value_and_gradient(name):
    loss, x, y, mask = CASES[name]
    for reduction in ("none", "mean"):
        new, new_grad = _value_and_grad(loss, x, y, mask, reduction)
        old, old_grad = _value_and_grad(with_old_formulas(loss), x, y, mask, reduction)
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(new_grad, old_grad, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(new_grad).all()


@pytest.mark.parametrize("name", ["mcc hard gate ignore batch=False", "mcc sigmoid regions batch=True",
                                  "mcc loss_mask background batch=False"])
def test_counts_equal_old_counts(name):
    loss, x, y, mask = CASES[name]
    new = loss.confusion(x, y, mask, hard_tp=True, direct_tn=True)
    old = old_confusion(loss, x, y, mask, hard_tp=True, direct_tn=True)
    assert len(new) == len(old) == 6
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_gwdl_statistics_equal_old_statistics():
    loss, x, y, mask = CASES["gwdl GDL hard gate mask batch=False"]
    new = loss.statistics(x, y, mask, recall=True, hard=True, mass=True)
    old = old_statistics(loss, x, y, mask, recall=True, hard=True, mass=True)
    assert len(new) == len(old) == 5
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mcc gated batch=True", "tversky focal gated batch=False",
                                  "gwdl gated flood ignore batch=True", "mcc absent class extreme batch=False"])
def test_autocast_stays_finite_and_close(name, dtype):
    loss, x, y, mask = CASES[name]
    loss.reduction = "mean"
    reference = float(loss(x, y, mask))
    leaf = x.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        value = loss(leaf, y, mask)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(leaf.grad).all()
    assert abs(float(value.detach()) - reference) < 0.05

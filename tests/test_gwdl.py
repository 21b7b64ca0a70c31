"""Generalized Wasserstein Dice loss and its class distance matrices: values, rules, DDP, autocast."""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddp_harness import run_ranks
from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss as GWDL
from nnunet_mcc.losses.distance_matrix import (BRATS_MATRIX, DistanceMatrixError, dataset_label_names,
                                               hierarchy_distance_matrix, load_matrix_file, matrix_from_names,
                                               matrix_to_json, resolve_distance_matrix, validate_distance_matrix)

M3 = np.array([[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]])

# two samples of three voxels, probabilities given directly (apply_nonlin=None), labels 0/1/2
PROBS = torch.tensor([
    [[0.8, 0.2, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.6]],  # sample 0: voxel j is column j
    [[1.0, 0.5, 0.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0]],  # sample 1
])
LABELS = torch.tensor([[[0, 1, 2]], [[0, 0, 1]]])
# per voxel W = sum_c M[g, c] p_c:
#   sample 0: 0.1 + 0.1 = 0.2 (label 0); 0.2 + 0.5*0.2 = 0.3 (label 1); 0.1 + 0.5*0.3 = 0.25 (label 2)
#   sample 1: 0 (label 0); 0.5 (label 0); 0 (label 1)


def loss(probs=PROBS, labels=LABELS, **kwargs):
    kwargs.setdefault("smooth", 0.0)
    return GWDL(kwargs.pop("matrix", M3), apply_nonlin=None, **kwargs)(probs, labels).item()


# ---- hand-worked values -------------------------------------------------------------------------
def test_default_weighting_by_hand():
    # sample 0: TP = (1 - 0.3) + (1 - 0.25) = 1.45, sum W = 0.75 -> 1 - 2.9 / 3.65
    assert loss(PROBS[:1], LABELS[:1]) == pytest.approx(0.75 / 3.65, abs=1e-6)
    # sample 1: TP = 1 - 0 = 1, sum W = 0.5 -> 1 - 2 / 2.5
    assert loss(PROBS[1:], LABELS[1:]) == pytest.approx(0.2, abs=1e-6)
    # per sample: the mean; pooled: TP = 2.45, sum W = 1.25 -> 1.25 / 6.15
    assert loss() == pytest.approx((0.75 / 3.65 + 0.2) / 2, abs=1e-6)
    assert loss(batch=True) == pytest.approx(1.25 / 6.15, abs=1e-6)


def test_gdl_weighting_by_hand():
    # sample 0: volumes (1, 1, 1) -> alpha = 1/2 each; TP = (0.8 + 0.7 + 0.75) / 2 = 1.125,
    # weighted error 0.75 / 2 = 0.375 -> loss 0.375 / 2.625 = 1/7
    assert loss(PROBS[:1], LABELS[:1], weighting="GDL") == pytest.approx(1 / 7, abs=1e-6)
    # sample 1: volumes (2, 1, 0) -> alpha (1/3, 1/2, 1); TP = (2 - 0.5)/3 + 1/2 = 1, error 0.5/3 -> 1/13
    assert loss(PROBS[1:], LABELS[1:], weighting="GDL") == pytest.approx(1 / 13, abs=1e-6)
    assert loss(weighting="GDL") == pytest.approx((1 / 7 + 1 / 13) / 2, abs=1e-6)
    # pooled: volumes (3, 2, 1) -> alpha (1/4, 1/3, 1/2); W sums per label (0.7, 0.3, 0.25)
    tp = (3 - 0.7) / 4 + (2 - 0.3) / 3 + (1 - 0.25) / 2
    error = 0.7 / 4 + 0.3 / 3 + 0.25 / 2
    assert loss(weighting="GDL", batch=True) == pytest.approx(error / (2 * tp + error), abs=1e-6)


def test_ignore_label_and_loss_mask_drop_voxels():
    # a fourth voxel with label 3 = ignore, whatever its prediction, changes nothing
    probs = torch.cat([PROBS, torch.tensor([[[0.0], [0.0], [1.0]], [[0.0], [1.0], [0.0]]])], 2)
    labels = torch.cat([LABELS, torch.full((2, 1, 1), 3)], 2)
    for kwargs in ({}, {"batch": True}, {"weighting": "GDL"}):
        assert loss(probs, labels, ignore_index=3, **kwargs) == pytest.approx(loss(**kwargs), abs=1e-6)
        mask = labels != 3
        masked = GWDL(M3, apply_nonlin=None, smooth=0.0, **kwargs)(probs, torch.where(mask, labels, 0), mask)
        assert masked.item() == pytest.approx(loss(**kwargs), abs=1e-6)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        loss(probs, labels)


def test_one_hot_target_equals_label_map():
    onehot = torch.zeros_like(PROBS).scatter_(1, LABELS, 1.0)
    assert loss(PROBS, onehot) == pytest.approx(loss(), abs=1e-7)


def test_zero_one_matrix_is_foreground_soft_dice():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 5, 4)
    y = (torch.rand(3, 1, 6, 5, 4) < 0.3).long()
    p1, g = torch.softmax(x, 1)[:, 1], y[:, 0].float()
    s = 1e-5
    per_sample = 1 - (2 * (p1 * g).sum((1, 2, 3)) + s) / (p1.sum((1, 2, 3)) + g.sum((1, 2, 3)) + s)
    pooled = 1 - (2 * (p1 * g).sum() + s) / (p1.sum() + g.sum() + s)
    m = [[0, 1], [1, 0]]
    assert GWDL(m)(x, y).item() == pytest.approx(per_sample.mean().item(), abs=1e-6)
    assert GWDL(m, batch=True)(x, y).item() == pytest.approx(pooled.item(), abs=1e-6)


def test_batch_equals_mean_of_single_samples():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 7, 6, 5)
    y = torch.randint(0, 5, (4, 1, 7, 6, 5))
    for weighting in ("default", "GDL"):
        criterion = GWDL(BRATS_MATRIX, weighting=weighting)
        singles = [criterion(x[i:i + 1], y[i:i + 1]).item() for i in range(4)]
        assert criterion(x, y).item() == pytest.approx(float(np.mean(singles)), abs=1e-6)
        # and samples really differ, so mixing them up would be caught
        assert max(singles) - min(singles) > 1e-3


def test_nnunet_compound_loss_slot_with_ignore_label():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 5, 5)
    y = torch.randint(0, 4, (2, 1, 5, 5, 5)).float()  # 3 = ignore
    compound = DC_and_CE_loss({"distance_matrix": M3, "batch": True}, {}, ignore_label=3, dice_class=GWDL)(x, y)
    expected = GWDL(M3, batch=True, ignore_index=3)(x, y) + RobustCrossEntropyLoss(ignore_index=3)(x, y[:, 0])
    assert compound.item() == pytest.approx(expected.item(), abs=1e-5)


# ---- robustness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_float32(dtype):
    torch.manual_seed(4)
    conv = torch.nn.Conv3d(2, 5, 3, padding=1)
    image = torch.randn(2, 2, 16, 16, 16)
    y = torch.randint(0, 5, (2, 1, 16, 16, 16))
    for batch in (False, True):
        criterion = GWDL(BRATS_MATRIX, batch=batch)
        with torch.autocast("cpu", dtype=dtype):
            logits = conv(image)
            value = criterion(logits, y)
        assert logits.dtype == dtype and value.dtype == torch.float32
        assert value.item() == pytest.approx(criterion(logits.float(), y).item(), abs=1e-6)
        assert value.item() == pytest.approx(criterion(conv(image), y).item(), abs=2e-2)


def test_empty_foreground_is_finite():
    x = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    y = torch.zeros(2, 1, 6, 6, 6, dtype=torch.long)
    for kwargs in ({}, {"batch": True}, {"weighting": "GDL"}):
        value = GWDL(M3, **kwargs)(x, y)
        value.backward()
        assert torch.isfinite(value) and 0 <= value.item() <= 1
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        x.grad = None
    # a confident all-background prediction of an empty patch has (almost) no loss
    confident = torch.zeros(1, 3, 4, 4, 4)
    confident[:, 0] = 30
    assert GWDL(M3)(confident, torch.zeros(1, 1, 4, 4, 4)).item() < 1e-3


def test_argument_and_shape_errors():
    with pytest.raises(ValueError, match="sigmoid"):
        GWDL(M3, apply_nonlin="sigmoid")
    with pytest.raises(ValueError, match="weighting"):
        GWDL(M3, weighting="volume")
    with pytest.raises(ValueError, match="3 x 3"):
        GWDL(M3)(torch.randn(1, 4, 3, 3), torch.zeros(1, 1, 3, 3))
    with pytest.raises(DistanceMatrixError, match="symmetric"):
        GWDL([[0, 1, 1], [1, 0, 0.5], [1, 0.4, 0]])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 5), b=st.integers(1, 3), n=st.integers(1, 40), scale=st.floats(0.0, 50.0),
       weighting=st.sampled_from(["default", "GDL"]), batch=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_finite_in_range_finite_grads(k, b, n, scale, weighting, batch, seed):
    g = torch.Generator().manual_seed(seed)
    upper = torch.rand(k, k, generator=g, dtype=torch.float64)
    m = torch.triu(upper, 1) + torch.triu(upper, 1).T
    m[0, :] = m[:, 0] = 1
    m.fill_diagonal_(0)
    x = (torch.randn(b, k, n, generator=g) * scale).requires_grad_()
    y = torch.randint(0, k, (b, 1, n), generator=g)
    value = GWDL(m, weighting=weighting, batch=batch)(x, y)
    value.backward()
    assert torch.isfinite(value) and -1e-6 <= value.item() <= 1 + 1e-6
    assert torch.isfinite(x.grad).all()


# ---- distance matrices --------------------------------------------------------------------------
@pytest.mark.parametrize("matrix, rule", [
    ([[0, 1, 1], [1, 0, 1]], "must be square"),
    ([[0, 1, 1], [1, 0, 1], [1, 1, 0]], "must be 4 x 4"),
    ([[0, 1, 1, 1], [1, 0, np.nan, 1], [1, np.nan, 0, 1], [1, 1, 1, 0]], "finite"),
    ([[0, 1, 1, 1], [1, 0.1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]], "diagonal must be zero"),
    ([[0, 1, 1, 1], [1, 0, -0.5, 1], [1, -0.5, 0, 1], [1, 1, 1, 0]], "non-negative"),
    ([[0, 1, 1, 1], [1, 0, 0.5, 1], [1, 0.6, 0, 1], [1, 1, 1, 0]], "symmetric"),
    ([[0, 1, 0.8, 1], [1, 0, 0.5, 1], [0.8, 0.5, 0, 1], [1, 1, 1, 0]], "background must be 1"),
    ([[0, 1, 1, 1], [1, 0, 1.5, 1], [1, 1.5, 0, 1], [1, 1, 1, 0]], "may exceed 1"),
])
def test_every_matrix_rule(matrix, rule):
    names = ["background", "a", "b", "c"]
    with pytest.raises(DistanceMatrixError, match=rule) as info:
        validate_distance_matrix(matrix, names)
    if rule not in ("must be square", "must be 4 x 4"):
        assert "M[" in str(info.value)  # names the offending entry


def _write(tmp_path, content, name="m.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


def test_permuted_label_order_gives_the_same_loss(tmp_path):
    by_name = {"necrosis": {"background": 1, "edema": 0.6, "enhancing_tumor": 0.5},
               "edema": {"background": 1, "enhancing_tumor": 0.7}, "enhancing_tumor": {"background": 1}}
    order_a = ["background", "necrosis", "edema", "enhancing_tumor"]
    order_b = ["background", "enhancing_tumor", "necrosis", "edema"]
    path = _write(tmp_path, by_name)
    m_a, _, _ = resolve_distance_matrix({"labels": {n: i for i, n in enumerate(order_a)}}, matrix_file=path)
    m_b, names_b, _ = resolve_distance_matrix({"labels": {n: i for i, n in enumerate(order_b)}}, matrix_file=path)
    assert names_b == order_b and m_b[1, 2] == 0.5 and m_a[1, 2] == 0.6
    torch.manual_seed(5)
    x_a = torch.randn(2, 4, 6, 6, 6)
    y_a = torch.randint(0, 4, (2, 1, 6, 6, 6))
    perm = [order_a.index(n) for n in order_b]  # channel j of B is channel perm[j] of A
    x_b = x_a[:, perm]
    y_b = torch.tensor([order_b.index(n) for n in order_a])[y_a]
    for kwargs in ({}, {"batch": True}, {"weighting": "GDL"}):
        expected = GWDL(m_a, **kwargs)(x_a, y_a).item()
        assert GWDL(m_b, **kwargs)(x_b, y_b).item() == pytest.approx(expected, abs=1e-6)
    # the classic bug: A's matrix used unchanged on B's label order gives another loss
    assert abs(GWDL(m_a)(x_b, y_b).item() - GWDL(m_a)(x_a, y_a).item()) > 1e-4


def test_labels_and_matrix_form_and_round_trip(tmp_path):
    names = ["background", "edema", "necrosis"]
    content = {"labels": ["background", "necrosis", "edema"], "matrix": [[0, 1, 1], [1, 0, 0.6], [1, 0.6, 0]]}
    m = load_matrix_file(_write(tmp_path, content), names)
    assert m.tolist() == [[0, 1, 1], [1, 0, 0.6], [1, 0.6, 0]]
    written = matrix_to_json(m, names, "test")
    assert matrix_from_names(written, names, "again").tolist() == m.tolist()


def test_matrix_file_errors(tmp_path):
    names = ["background", "necrosis", "edema"]
    with pytest.raises(DistanceMatrixError, match="does not exist"):
        load_matrix_file(str(tmp_path / "missing.json"), names)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DistanceMatrixError, match="not valid JSON"):
        load_matrix_file(str(bad), names)
    with pytest.raises(DistanceMatrixError, match=r"names not in dataset.json: \['oedema'\]"):
        load_matrix_file(_write(tmp_path, {"necrosis": {"background": 1, "oedema": 0.5}, "oedema": {"background": 1}}),
                         names)
    with pytest.raises(DistanceMatrixError, match="no distance given between necrosis and edema"):
        load_matrix_file(_write(tmp_path, {"necrosis": {"background": 1}, "edema": {"background": 1}}), names)
    with pytest.raises(DistanceMatrixError, match="background must be 1"):
        resolve_distance_matrix({"labels": {n: i for i, n in enumerate(names)}},
                                matrix_file=_write(tmp_path, {"necrosis": {"background": 0.9, "edema": 0.5},
                                                              "edema": {"background": 1}}))


def test_brats_preset_mapped_by_name():
    labels = {"background": 0, "enhancing_tumor": 1, "edema": 2, "necrosis": 3, "ignore": 4}
    m, names, source = resolve_distance_matrix({"labels": labels}, preset="brats")
    assert names == ["background", "enhancing_tumor", "edema", "necrosis"] and "preset" in source
    # paper (original order): edema-enhancing 0.7, necrosis-enhancing 0.5, necrosis-edema 0.6
    assert m[1, 2] == 0.7 and m[1, 3] == 0.5 and m[2, 3] == 0.6 and (m[1:, 0] == 1).all()
    with pytest.raises(DistanceMatrixError, match=r"cannot place"):
        resolve_distance_matrix({"labels": {"background": 0, "tumour": 1}}, preset="brats")


def test_hierarchy_tree_distances_and_fallbacks():
    labels = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumor": 3, "enhancing_tumor": 4}
    regions = {"whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": [4]}
    m, _, source = resolve_distance_matrix({"labels": labels, "evaluation_regions": regions})
    # depths: whole tumor 1, tumor core 2, enhancing 3 -> d = 1 - depth(deepest common region) / 4
    expected = np.array([[0, 1, 1, 1, 1],
                         [1, 0, .75, .5, .5],
                         [1, .75, 0, .75, .75],
                         [1, .5, .75, 0, .5],
                         [1, .5, .75, .5, 0]])
    np.testing.assert_allclose(m, expected)
    assert "evaluation_regions" in source
    m01, _, source = resolve_distance_matrix({"labels": labels})
    np.testing.assert_array_equal(m01, 1 - np.eye(5))
    assert "0/1" in source
    with pytest.raises(DistanceMatrixError, match="do not form a hierarchy"):
        hierarchy_distance_matrix({"a": [1, 2], "b": [2, 3]}, ["background", "x", "y", "z"])
    with pytest.raises(DistanceMatrixError, match="not foreground label values"):
        hierarchy_distance_matrix({"a": [0, 1]}, ["background", "x"])


def test_region_dataset_and_bad_labels_refused():
    with pytest.raises(DistanceMatrixError, match="defines regions"):
        dataset_label_names({"labels": {"background": 0, "whole": [1, 2], "core": 2}})
    with pytest.raises(DistanceMatrixError, match="not consecutive"):
        dataset_label_names({"labels": {"background": 0, "a": 2}})


# ---- DDP: 2 gloo processes == one process with the whole batch ----------------------------------
def _ddp_worker(rank, world):
    results = {}
    for batch in (True, False):
        torch.manual_seed(0)
        conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        model = torch.nn.parallel.DistributedDataParallel(conv)
        image, labels = _ddp_data()
        part = slice(rank * 2, rank * 2 + 2)
        value = GWDL(M3, batch=batch, ddp=True, ignore_index=3)(model(image[part]), labels[part])
        value.backward()
        # pooled: every rank holds the global loss; per sample: each its share, scaled by the world size
        mean_over_ranks = value.detach().clone()
        dist.all_reduce(mean_over_ranks)
        results[batch] = {"loss": mean_over_ranks / world, "rank_loss": value.detach(),
                          "grads": [p.grad.clone() for p in conv.parameters()]}
    return results


def _ddp_data():
    g = torch.Generator().manual_seed(7)
    image = torch.randn(4, 1, 6, 6, 6, generator=g)
    labels = torch.randint(0, 4, (4, 1, 6, 6, 6), generator=g)  # 3 = ignore
    labels[1] = 0  # one sample without foreground
    return image, labels


@pytest.mark.e2e  # spawns gloo processes
def test_ddp_two_processes_equal_one_process(tmp_path):
    """Loss and DDP-averaged parameter gradients of 2 gloo ranks x 2 samples == 1 process x 4 samples."""
    ddp = run_ranks(_ddp_worker, 2, tmp_path)[0]
    for batch in (True, False):
        torch.manual_seed(0)
        conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        image, labels = _ddp_data()
        value = GWDL(M3, batch=batch, ignore_index=3)(conv(image), labels)
        value.backward()
        assert ddp[batch]["loss"].item() == pytest.approx(value.item(), abs=1e-6)
        if batch:
            assert ddp[batch]["rank_loss"].item() == pytest.approx(value.item(), abs=1e-6)
        for got, expected in zip(ddp[batch]["grads"], [p.grad for p in conv.parameters()]):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_closed_form_gradient_matches_autograd():
    """The softmax path's hand-written backward against autograd through a generic softmax callable."""
    torch.manual_seed(6)
    x = torch.randn(2, 5, 4, 5, 6)
    y = torch.randint(0, 6, (2, 1, 4, 5, 6))  # 5 = ignore
    for kwargs in ({}, {"batch": True, "weighting": "GDL"}):
        fused_x, generic_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        fused = GWDL(BRATS_MATRIX, ignore_index=5, **kwargs)
        generic = GWDL(BRATS_MATRIX, apply_nonlin=lambda t: torch.softmax(t, 1), ignore_index=5, **kwargs)
        assert fused.nonlin_kind == "softmax" and generic.nonlin_kind == "custom"
        a, b = fused(fused_x, y), generic(generic_x, y)
        (a * 3).backward()
        (b * 3).backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
        torch.testing.assert_close(fused_x.grad, generic_x.grad, atol=1e-7, rtol=1e-4)
        assert fused_x.grad.abs().sum() > 0


# ---- trainers: matrix sources and the region refusal, checked before nnU-Net's own __init__ ----
def test_trainer_matrix_sources_and_region_refusal(monkeypatch, tmp_path):
    from nnunet_mcc.errors import UserError
    from nnunet_mcc.trainers import base
    from nnunet_mcc.trainers.gwdl import nnUNetTrainerGWDL, nnUNetTrainerGWDL_BraTS

    reached = []
    monkeypatch.setattr(base.ComparisonTrainer, "__init__", lambda self, *args, **kwargs: reached.append(1))
    monkeypatch.delenv("NNUNET_MCC_GWDL_MATRIX", raising=False)
    labels = {"background": 0, "edema": 1, "necrosis": 2, "enhancing_tumor": 3}
    brats = nnUNetTrainerGWDL_BraTS({}, "3d_fullres", 0, {"labels": labels})
    assert brats.gwdl_distance_matrix[1, 2] == 0.6 and brats.gwdl_distance_matrix[1, 3] == 0.7
    assert nnUNetTrainerGWDL({}, "3d_fullres", 0, {"labels": labels}).gwdl_distance_matrix[1, 2] == 1
    # the environment variable wins over the variant's preset
    monkeypatch.setenv("NNUNET_MCC_GWDL_MATRIX", _write(tmp_path, {"edema": {"background": 1, "necrosis": 0.3,
                                                                              "enhancing_tumor": 0.2},
                                                                    "necrosis": {"background": 1,
                                                                                 "enhancing_tumor": 0.1},
                                                                    "enhancing_tumor": {"background": 1}}))
    assert nnUNetTrainerGWDL_BraTS({}, "3d_fullres", 0, {"labels": labels}).gwdl_distance_matrix[1, 2] == 0.3
    assert len(reached) == 3
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    with pytest.raises(UserError, match="region-based"):
        nnUNetTrainerGWDL({}, "3d_fullres", 0, regions)
    monkeypatch.setenv("NNUNET_MCC_GWDL_MATRIX", str(tmp_path / "nope.json"))
    with pytest.raises(DistanceMatrixError, match="does not exist"):
        nnUNetTrainerGWDL({}, "3d_fullres", 0, {"labels": labels})
    assert len(reached) == 3  # refused before nnU-Net's __init__ (which creates the output folder)

"""Class-frequency weighted cross-entropy: the weight formulas, the frequency count, the region BCE."""

import json
import os
import types

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_mcc.losses.weighted_ce import MaskedBCEWithLogits, inverse_frequency_weights, region_pos_weights
from nnunet_mcc.trainers.weighted_ce import ClassFrequencyWeightedCE


def test_inverse_frequency_weights_hand_values():
    # p = 1: w_c = 1 / (3 f_c)
    np.testing.assert_allclose(inverse_frequency_weights([0.7, 0.2, 0.1]), [1 / 2.1, 1 / 0.6, 1 / 0.3])
    # p = 0.5: w_c = f_c^-0.5 / (sqrt(.64) + sqrt(.36)) = f_c^-0.5 / 1.4 -> [1.25, 1.6667] / 1.4
    np.testing.assert_allclose(inverse_frequency_weights([0.64, 0.36], 0.5), [1.25 / 1.4, (1 / 0.6) / 1.4])
    # p = 0 is plain CE; a balanced dataset gives 1 everywhere; an absent class gets 1
    np.testing.assert_allclose(inverse_frequency_weights([0.9, 0.1], 0.0), [1.0, 1.0])
    np.testing.assert_allclose(inverse_frequency_weights([0.25] * 4), [1.0] * 4)
    np.testing.assert_allclose(inverse_frequency_weights([0.8, 0.0, 0.2]), [1 / 1.6, 1.0, 1 / 0.4])
    for frequencies in ([0.5, 0.3, 0.2], [0.99, 0.009, 0.001]):  # mean voxel weight over the data set is 1
        assert np.dot(frequencies, inverse_frequency_weights(frequencies)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        inverse_frequency_weights([0.0, 0.0])
    with pytest.raises(ValueError, match="power"):
        inverse_frequency_weights([0.5, 0.5], -1)


def test_region_pos_weights_hand_values():
    np.testing.assert_allclose(region_pos_weights([0.2, 0.5, 0.0, 1.0]), [4.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(region_pos_weights([0.2], 0.5), [2.0])


def test_masked_bce_matches_torch_on_valid_voxels_with_pos_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    regions = (torch.rand(2, 3, 4, 5) > 0.5).float()
    ignore = (torch.rand(2, 1, 4, 5) > 0.7).float()
    pos_weight = torch.tensor([1.0, 2.0, 3.0])
    loss = MaskedBCEWithLogits(pos_weight, ignore_channel=True)(logits, torch.cat([regions, ignore], 1))
    valid = (ignore == 0).expand_as(logits)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[valid], regions[valid], pos_weight=pos_weight.view(1, 3, 1, 1).expand_as(logits)[valid])
    torch.testing.assert_close(loss, expected)
    plain = MaskedBCEWithLogits()(logits, regions)
    torch.testing.assert_close(plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, regions))


class _ArrayDataset:
    """Stands in for nnU-Net's preprocessed dataset class: identifier -> (data, seg, seg_prev, properties)."""

    SEGS = {"a": np.array([[-1, 0, 1, 1], [2, 2, 2, 3]]),  # -1: outside the crop (background); 3: ignore
            "b": np.array([[0, 0, 0, 0], [0, 1, 3, 3]]),
            "val": np.array([[2, 2, 2, 2], [2, 2, 2, 2]])}

    def __init__(self, folder, identifiers):
        self.identifiers = sorted(identifiers)

    def load_case(self, identifier):
        return None, self.SEGS[identifier][None], None, {}


def _stub_trainer(labels: dict, regions_class_order=None):
    stub = types.SimpleNamespace(label_manager=LabelManager(labels, regions_class_order), dataset_class=_ArrayDataset,
                                 preprocessed_dataset_folder="unused", fold=0, class_weight_power=1.0,
                                 do_split=lambda: (["a", "b"], ["val"]), logged=[])
    stub.print_to_log_file = lambda *args: stub.logged.append(" ".join(map(str, args)))
    for name in ("training_label_frequencies", "training_label_counts", "_label_count_cache", "_count_labels"):
        setattr(stub, name, types.MethodType(getattr(ClassFrequencyWeightedCE, name), stub))
    return stub


def test_training_frequencies_skip_ignore_and_validation_cases_and_count_minus_one_as_background():
    stub = _stub_trainer({"background": 0, "one": 1, "two": 2, "ignore": 3})
    # training cases a, b: background 1 (-1) + 1 + 5 = 7, label 1: 3, label 2: 3, ignore: 3 left out -> 13 voxels
    np.testing.assert_allclose(stub.training_label_frequencies()[:3], [7 / 13, 3 / 13, 3 / 13])
    weights = ClassFrequencyWeightedCE.class_frequency_weights(stub)
    np.testing.assert_allclose(weights, [13 / 21, 13 / 9, 13 / 9])
    assert "CE weight per class" in stub.logged[0]


def test_region_frequencies_sum_their_labels():
    stub = _stub_trainer({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    # cases a, b: 3 is no label of this dataset.json (nnU-Net's integrity check forbids it) and is not counted:
    # 13 voxels, label 1: 3, label 2: 3 -> whole 6/13, core 3/13 -> pos_weight ((13-6)/6, (13-3)/3)
    weights = ClassFrequencyWeightedCE.class_frequency_weights(stub)
    np.testing.assert_allclose(weights, [7 / 6, 10 / 3])
    assert "pos_weight per region" in stub.logged[0]


@pytest.mark.e2e
def test_trainer_frequencies_match_raw_labels_of_the_training_cases(prepared, e2e_cache, tmp_path, monkeypatch):
    from nnunet_mcc.trainers.weighted_ce import nnUNetTrainerWeightedCE

    dataset = prepared("2d_multiclass")
    preprocessed = os.path.join(e2e_cache, "preprocessed")
    monkeypatch.setenv("nnUNet_preprocessed", preprocessed)  # nnU-Net reads its paths when used
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with open(os.path.join(preprocessed, dataset, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(preprocessed, dataset, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False  # set by nnU-Net's get_trainer_from_args
    trainer = nnUNetTrainerWeightedCE(plans, "2d_small", 0, dataset_json, device=torch.device("cpu"))
    frequencies = trainer.training_label_frequencies()

    with open(os.path.join(preprocessed, dataset, "splits_final.json")) as f:
        training_cases = json.load(f)[0]["train"]
    counts = np.zeros(4)
    for case in training_cases:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(e2e_cache, "raw", dataset, "labelsTr",
                                                                    f"{case}.nii.gz")))
        counts += np.bincount(labels.ravel().astype(int), minlength=4)
    np.testing.assert_allclose(frequencies, counts / counts.sum())
    loss = trainer._build_weighted_ce()
    np.testing.assert_allclose(loss.weight.numpy(), 1 / (4 * counts / counts.sum()), rtol=1e-6)

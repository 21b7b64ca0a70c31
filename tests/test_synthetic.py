import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mcc.plans import add_small_configuration
from nnunet_mcc.synthetic import SyntheticSpec, make_case, make_synthetic_dataset


def _labels(folder):
    files = sorted(os.listdir(os.path.join(folder, "labelsTr")))
    return [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f))) for f in files]


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1])
def test_foreground_fraction_is_what_was_asked(fraction):
    rng = np.random.default_rng(0)
    spec = SyntheticSpec(shape=(64, 64, 64), num_foreground_classes=2, foreground_fraction=fraction)
    measured = np.mean([(make_case(spec, rng)[1] > 0).mean() for _ in range(4)])
    assert measured == pytest.approx(fraction, rel=0.35)


def test_nested_classes_contain_each_other():
    rng = np.random.default_rng(1)
    _, seg = make_case(SyntheticSpec(shape=(48, 48, 48), num_foreground_classes=3, nested=True,
                                     foreground_fraction=0.08), rng)
    counts = np.bincount(seg.ravel(), minlength=4)
    assert (counts[1:] > 0).all()
    # every voxel of class >= c lies inside the object of class c-1: the union shrinks with c
    assert (seg >= 1).sum() > (seg >= 2).sum() > (seg >= 3).sum() > 0


@pytest.mark.e2e  # nnU-Net's integrity check starts worker processes
def test_same_seed_same_dataset_and_valid_for_nnunet(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    spec = SyntheticSpec(num_cases=3, shape=(16, 16, 16), num_foreground_classes=3, nested=True, regions=True,
                         num_channels=2, num_test_cases=1, ignore_fraction=0.1, seed=7)
    a = make_synthetic_dataset(str(tmp_path / "a"), 990, "Syn", spec)
    b = make_synthetic_dataset(str(tmp_path / "b"), 990, "Syn", spec)
    for x, y in zip(_labels(a), _labels(b)):
        np.testing.assert_array_equal(x, y)
    image_a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(a, "imagesTr", "syn_000_0001.nii.gz")))
    image_b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(b, "imagesTr", "syn_000_0001.nii.gz")))
    np.testing.assert_array_equal(image_a, image_b)
    with open(os.path.join(a, "dataset.json")) as f:
        meta = json.load(f)
    assert meta["labels"] == {"background": 0, "class1": [1, 2, 3], "class2": [2, 3], "class3": 3, "ignore": 4}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 3
    assert len(os.listdir(os.path.join(a, "imagesTs"))) == 2
    assert max(np.unique(x).max() for x in _labels(a)) == 4
    verify_dataset_integrity(a, 1)
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(str(tmp_path / "a"), 990, "Syn", spec)


def test_2d_dataset(tmp_path):
    from dataset_fixtures import verify

    folder = make_synthetic_dataset(str(tmp_path), 991, "Flat", SyntheticSpec(num_cases=2, shape=(40, 48),
                                                                              num_foreground_classes=2,
                                                                              num_channels=2))
    seg = _labels(folder)[0]
    assert seg.shape == (40, 48) and set(np.unique(seg)) <= {0, 1, 2}
    verify(folder)  # nnU-Net's integrity check (the end-to-end datasets are planned without it)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape=(4, 32, 32)), "every size >= 8"),
    (dict(foreground_fraction=0.7), "foreground_fraction"),
    (dict(regions=True), "regions=True needs nested=True"),
    (dict(num_foreground_classes=2, class_weights=(1.0,)), "one weight per foreground class"),
    (dict(spacing=(1.0, 1.0)), "one value per axis"),
])
def test_bad_specs(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_synthetic_dataset(str(tmp_path), 992, "Bad", SyntheticSpec(**kwargs))
    assert not any(p.name.startswith("Dataset") for p in tmp_path.iterdir())


def test_small_configuration_is_added_next_to_the_base(tmp_path):
    plans = {"configurations": {"3d_fullres": {"data_identifier": "x", "batch_size": 2, "architecture": {
        "arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
                        "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
                        "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4}}}}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    assert add_small_configuration(str(path), "3d_fullres", "tiny", n_stages=3, base_features=8) == "tiny"
    new = json.loads(path.read_text())["configurations"]
    arch = new["tiny"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [8, 16, 32] and arch["n_stages"] == 3
    assert len(arch["strides"]) == 3 and len(arch["n_conv_per_stage_decoder"]) == 2
    assert new["tiny"]["data_identifier"] == "x" and new["3d_fullres"] == plans["configurations"]["3d_fullres"]
    with pytest.raises(ValueError, match="no configuration '2d'"):
        add_small_configuration(str(path), "2d")

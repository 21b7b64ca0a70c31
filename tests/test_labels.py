"""dataset.json's labels and evaluation regions, read in one place (nnunet_mcc.labels)."""

import pytest

from nnunet_mcc import labels
from nnunet_mcc.errors import UserError
from nnunet_mcc.losses.distance_matrix import BRATS_LABEL_NAMES, DistanceMatrixError, dataset_label_names

BRATS_LIKE = {"labels": {"background": 0, "edema": 1, "non_enhancing_tumor": 2, "enhancing_tumor": 3, "ignore": 4},
              "evaluation_regions": {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3}}


def test_a_one_value_list_is_a_label_and_a_longer_one_a_region_as_in_nnunet():
    one_value = {"labels": {"background": 0, "a": [1], "b": 2}}
    assert not labels.is_region_based(one_value) and labels.label_names_by_value(one_value) == ["background", "a", "b"]
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": [2]}}
    assert labels.is_region_based(regions) and labels.region_entries(regions) == ["whole"]
    with pytest.raises(labels.DatasetLabelsError, match=r"defines regions \(whole\)"):
        labels.label_names_by_value(regions)


def test_summary_keys_ignore_and_evaluation_regions():
    assert labels.summary_key_names({"labels": {"background": 0, "a": 1, "r": [1, 2], "s": [3], "ignore": 9}}) == {
        "0": "background", "(0,)": "background", "1": "a", "(1,)": "a", "(1, 2)": "r", "(3,)": "s", "3": "s"}
    assert labels.ignore_label(BRATS_LIKE) == 4 and labels.ignore_label({"labels": {"background": 0}}) is None
    assert labels.evaluation_regions(BRATS_LIKE) == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3),
                                                     "enhancing": (3,)}
    region_based = {"labels": {"background": 0, "whole": [1, 2]}, "evaluation_regions": {"x": [1]}}
    assert labels.evaluation_regions(region_based) == {}  # its regions are its classes


@pytest.mark.parametrize("regions,message", [
    ({"x": []}, "must be a non-empty list of label values"),
    ({"x": [1, "2"]}, "must be a non-empty list of label values"),
    ({"x": [0, 1]}, r"holds \[0\], not foreground label values"),
    ({"x": [4]}, r"holds \[4\], not foreground"),  # the ignore label is no class
    ([1, 2], "must map a region name"),
])
def test_bad_evaluation_regions_are_refused_naming_the_region(regions, message):
    with pytest.raises(labels.DatasetLabelsError, match=message) as raised:
        labels.evaluation_regions({**BRATS_LIKE, "evaluation_regions": regions})
    assert isinstance(raised.value, UserError) and isinstance(raised.value, ValueError)


def test_the_distance_matrix_reads_the_same_labels_and_the_brats_names_once():
    assert dataset_label_names(BRATS_LIKE) == ["background", "edema", "non_enhancing_tumor", "enhancing_tumor"]
    with pytest.raises(DistanceMatrixError, match="Generalized Wasserstein Dice loss needs mutually exclusive"):
        dataset_label_names({"labels": {"background": 0, "whole": [1, 2]}})
    assert BRATS_LABEL_NAMES == tuple(labels.BRATS_LABELS)
    from nnunet_mcc.dataset_conversion import brats15

    assert brats15.BRATS_LABELS is labels.BRATS_LABELS


def test_the_target_form_from_dataset_json_agrees_with_nnunets_label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_mcc.losses.targets import TargetFormat

    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": 4},
               "regions_class_order": [1, 2, 3]}
    for dataset_json in (BRATS_LIKE, regions, {"labels": {"background": 0, "a": 1}}):
        manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
        assert TargetFormat.from_dataset_json(dataset_json) == TargetFormat.from_label_manager(manager)


def test_the_names_of_nnunets_per_class_pseudo_dice_in_its_order():
    from nnunet_mcc.labels import pseudo_dice_names

    # labels: foreground by value (nnU-Net's foreground_labels), the ignore label left out
    assert pseudo_dice_names({"labels": {"background": 0, "core": 2, "edema": 1, "ignore": 3}}) == ["edema", "core"]
    # regions: in the order of ``labels`` (nnU-Net's foreground_regions)
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
    assert pseudo_dice_names({"labels": regions}) == ["whole", "core", "enhancing"]
    assert pseudo_dice_names({}) == [] and pseudo_dice_names({"labels": {"a": "x"}}) == []

"""``nnunet-mcc export``: convert, export the ground truth as if it were a prediction, get the source back."""

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_fixtures import convert, make_brats15, make_promise12

# geometry that single-precision NIfTI headers cannot hold exactly
SPACING, ORIGIN = (0.9375, 0.9375, 1.1), (-119.53, 93.17, -71.9)


def export(capsys, *argv):
    """``nnunet-mcc export ARGV`` in this process: (exit code, stdout, stderr)."""
    from nnunet_mcc.cli import main

    capsys.readouterr()
    rc = main(["export", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_same_image(path, reference_path, array):
    back, ref = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert back.GetPixelID() == sitk.sitkUInt8
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == \
        (ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())  # exactly, not to float32 precision


@pytest.fixture(scope="module")
def brats_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_export_src")
    return str(root), make_brats15(str(root), n_hgg=2, n_lgg=1, n_test=0, shape=(8, 12, 12), spacing=SPACING,
                                   origin=ORIGIN)


@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_brats_round_trip(mode, brats_src, raw, capsys, tmp_path):
    src, arrays = brats_src
    assert convert(capsys, "brats15", src, "--label-mode", mode, "-j", "1")[0] == 0
    ds = os.path.join(raw, "Dataset501_BraTS15" + ("_regions" if mode == "regions" else ""))
    rc, out, err = export(capsys, "brats15", os.path.join(ds, "labelsTr"), tmp_path / "out", "--subset", "training")
    assert rc == 0, err
    vsd = json.load(open(os.path.join(ds, "dataset.json")))["vsd_flair_ids"]["training"]
    assert len(os.listdir(tmp_path / "out")) == 3
    for rel, a in arrays.items():
        case_dir = os.path.join(src, rel)
        flair = next(d for d in os.listdir(case_dir) if "MR_Flair" in d)
        ot = next(d for d in os.listdir(case_dir) if ".OT." in d)
        case_id = "_".join(rel.split(os.sep)[1:])
        assert vsd[case_id] == flair.rsplit(".", 1)[1]
        # the challenge's name: VSD.<description>.<VSD id of the Flair image>.mha
        exported = tmp_path / "out" / f"VSD.nnUNet.{vsd[case_id]}.mha"
        _assert_same_image(exported, os.path.join(case_dir, ot, ot + ".mha"), a["OT"])
    assert f"Wrote 3 brats15 segmentations to {tmp_path / 'out'}" in out


def test_promise_round_trip(raw, capsys, tmp_path):
    src = tmp_path / "src"
    cases = make_promise12(str(src), per_part=(1, 1, 1), n_test=1)
    assert convert(capsys, "promise12", src, "-j", "1")[0] == 0
    ds = os.path.join(raw, "Dataset502_PROMISE12")
    rc, _, err = export(capsys, "promise12", os.path.join(ds, "labelsTr"), tmp_path / "out", "--subset", "training")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"Case0{k}_segmentation.{e}" for k in range(3)
                                                          for e in ("mhd", "raw"))
    for name, c in cases.items():
        if name.startswith("test/"):
            continue
        exported = tmp_path / "out" / f"{name}_segmentation.mhd"
        assert "ElementType = MET_UCHAR" in exported.read_text()
        _assert_same_image(exported, src / f"TrainingData_Part{c['part']}" / f"{name}_segmentation.mhd", c["label"])

    # a prediction folder as nnU-Net writes it (dataset.json inside): the test cases by default
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(os.path.join(ds, "dataset.json"), pred)
    test_img = sitk.ReadImage(os.path.join(ds, "imagesTs", "Case00_0000.nii.gz"))
    guess = (sitk.GetArrayFromImage(test_img) > 500).astype(np.uint8)
    prediction = sitk.GetImageFromArray(guess)
    prediction.CopyInformation(test_img)
    sitk.WriteImage(prediction, str(pred / "Case00.nii.gz"))
    rc, _, err = export(capsys, "promise12", pred, tmp_path / "submission")
    assert rc == 0, err
    _assert_same_image(tmp_path / "submission" / "Case00_segmentation.mhd", src / "TestData" / "Case00.mhd", guess)


def _expect_export_error(capsys, out_dir, argv, *fragments):
    rc, _, err = export(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == ["keep.txt"]


def test_export_bad_input(raw, capsys, tmp_path):
    src = tmp_path / "src"
    make_promise12(str(src), per_part=(1, 1, 0), n_test=0)
    assert convert(capsys, "promise12", src, "-j", "1")[0] == 0
    labels = os.path.join(raw, "Dataset502_PROMISE12", "labelsTr")
    out = tmp_path / "out"
    # test cases asked for, training cases given
    _expect_export_error(capsys, out, ["promise12", labels, out], "Case00.nii.gz: case Case00 is not a test case")
    # no dataset.json anywhere near
    lonely = tmp_path / "lonely"
    shutil.copytree(labels, lonely)
    _expect_export_error(capsys, out, ["promise12", lonely, out], f"{lonely}: no dataset.json")
    # a prediction that is not on the case's grid
    pred = tmp_path / "pred"
    shutil.copytree(labels, pred)
    shutil.copy(os.path.join(raw, "Dataset502_PROMISE12", "dataset.json"), pred)
    img = sitk.ReadImage(str(pred / "Case01.nii.gz"))
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(pred / "Case01.nii.gz"))
    _expect_export_error(capsys, out, ["promise12", pred, out, "--subset", "training"],
                         str(pred / "Case01.nii.gz"), "is not that of case Case01")
    # values that are not prostate labels
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "Case00.nii.gz")))
    a[0, 0, 0] = 3
    bad = sitk.GetImageFromArray(a)
    bad.CopyInformation(sitk.ReadImage(str(pred / "Case00.nii.gz")))
    sitk.WriteImage(bad, str(pred / "Case00.nii.gz"))
    _expect_export_error(capsys, out, ["promise12", pred, out, "--subset", "training"],
                         str(pred / "Case00.nii.gz"), "label values [3] outside the expected set [0, 1]")
    # an output folder holding something else is not replaced silently
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _expect_export_error(capsys, out, ["promise12", labels, out, "--subset", "training",
                                       "--dataset-json", os.path.join(raw, "Dataset502_PROMISE12", "dataset.json")],
                         f"{out}: folder exists and is not empty; pass --overwrite")
    # a dataset.json of another dataset
    _expect_export_error(capsys, out, ["brats15", labels, tmp_path / "out2", "--subset", "training"],
                         "dataset.json: not the dataset.json of a dataset written by `nnunet-mcc convert brats15`")

"""PROMISE12 converter end to end: parts merged, geometry kept, labels exact, export back to .mhd."""

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_fixtures import convert, make_promise12, read_array, store_flipped, verify
from nnunet_mcc.dataset_conversion import promise12


@pytest.fixture(scope="module")
def promise_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("promise_src")
    cases = make_promise12(str(root), per_part=(2, 2, 1), n_test=1)
    return str(root), cases


def test_end_to_end_geometry_and_labels(promise_src, raw, capsys, tmp_path):
    src, cases = promise_src
    rc, out, err = convert(capsys, "promise12", src, "-j", "2")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset502_PROMISE12")
    dj = json.load(open(os.path.join(ds, "dataset.json")))
    assert dj["labels"] == {"background": 0, "prostate": 1} and dj["numTraining"] == 5
    assert dj["channel_names"] == {"0": "T2"}
    assert sorted(os.listdir(os.path.join(ds, "imagesTs"))) == ["Case00_0000.nii.gz"]
    fg = total = 0
    for name, c in cases.items():
        if name.startswith("test/"):
            np.testing.assert_array_equal(read_array(os.path.join(ds, "imagesTs", "Case00_0000.nii.gz")), c["image"])
            continue
        img = sitk.ReadImage(os.path.join(ds, "imagesTr", f"{name}_0000.nii.gz"))
        seg = sitk.ReadImage(os.path.join(ds, "labelsTr", f"{name}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), c["image"])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), c["label"])
        src_img = sitk.ReadImage(os.path.join(src, f"TrainingData_Part{c['part']}", name + ".mhd"))
        for im in (img, seg):  # anisotropic spacing, origin and direction kept
            np.testing.assert_allclose(im.GetSpacing(), c["spacing"], rtol=1e-6)
            np.testing.assert_allclose(im.GetOrigin(), src_img.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(im.GetDirection(), src_img.GetDirection(), atol=1e-6)
        fg += int(c["label"].sum())
        total += c["label"].size
    assert dj["class_voxel_fractions"]["prostate"] == pytest.approx(fg / total, abs=1e-7)
    assert "TrainingData_Part2: 2 training cases" in out and "TestData: 1 test cases" in out
    verify(ds)

    # predictions back to the challenge's MetaImage format
    written = promise12.export_predictions(os.path.join(ds, "labelsTr"), str(tmp_path / "export"))
    assert len(written) == 5
    header = open(tmp_path / "export" / "Case03_segmentation.mhd").read()
    assert "ElementType = MET_UCHAR" in header and "ElementDataFile = Case03_segmentation.raw" in header
    back = sitk.ReadImage(str(tmp_path / "export" / "Case03_segmentation.mhd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), cases["Case03"]["label"])
    np.testing.assert_allclose(back.GetSpacing(), cases["Case03"]["spacing"], rtol=1e-6)


def test_repeated_case_name_and_single_part(promise_src, raw, capsys, tmp_path):
    src, cases = promise_src
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    for f in ("Case04.mhd", "Case04.raw", "Case04_segmentation.mhd", "Case04_segmentation.raw"):
        os.rename(copy / "TrainingData_Part3" / f, copy / "TrainingData_Part3" / f.replace("Case04", "Case01"))
    for f in ("Case01.mhd", "Case01_segmentation.mhd"):  # headers name their data file
        p = copy / "TrainingData_Part3" / f
        p.write_text(p.read_text().replace("Case04", "Case01"))
    rc, _, err = convert(capsys, "promise12", copy, "-j", "1")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset502_PROMISE12")
    ids = sorted(f[:-7] for f in os.listdir(os.path.join(ds, "labelsTr")))
    assert ids == ["Case00", "Case02", "Case03", "TrainingData_Part1_Case01", "TrainingData_Part3_Case01"]
    np.testing.assert_array_equal(read_array(os.path.join(ds, "labelsTr", "TrainingData_Part3_Case01.nii.gz")),
                                  cases["Case04"]["label"])
    # the training folder itself
    rc, out, err = convert(capsys, "promise12", os.path.join(src, "TrainingData_Part2"), "-d", "42", "-j", "1")
    assert rc == 0, err
    assert sorted(os.listdir(os.path.join(raw, "Dataset042_PROMISE12", "labelsTr"))) == ["Case02.nii.gz",
                                                                                          "Case03.nii.gz"]


def test_flipped_label_is_resampled_and_named(promise_src, raw, capsys, tmp_path):
    src, cases = promise_src
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    seg = copy / "TrainingData_Part2" / "Case02_segmentation.mhd"
    store_flipped(str(seg), axis=1)
    rc, out, err = convert(capsys, "promise12", copy, "-j", "1")
    assert rc == 0, err
    written = read_array(os.path.join(raw, "Dataset502_PROMISE12", "labelsTr", "Case02.nii.gz"))
    np.testing.assert_array_equal(written, cases["Case02"]["label"])
    assert f"note: {seg}: label stored with another geometry than Case02.mhd (axes flipped: y)" in out


def test_a_non_ascii_data_file_name_converts(raw, capsys, tmp_path):
    # SimpleITK writes the header's ElementDataFile in UTF-8 (the bytes the OS opens); read as Latin-1 it
    # named a missing "CÃ¤se 05.raw", and the space in the name read as a list of several data files
    from dataset_fixtures import _prostate

    image, label = _prostate((7, 20, 24), np.random.default_rng(5))
    folder = tmp_path / "src" / "TrainingData_Part1"
    folder.mkdir(parents=True)
    for array, name in ((image, "Cäse 05.mhd"), (label, "Cäse 05_segmentation.mhd")):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.6, 0.6, 3.0))
        sitk.WriteImage(img, str(folder / name))
    assert "ElementDataFile = Cäse 05.raw".encode() in (folder / "Cäse 05.mhd").read_bytes()
    rc, out, err = convert(capsys, "promise12", tmp_path / "src", "-j", "1")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset502_PROMISE12")
    (case,) = os.listdir(os.path.join(ds, "labelsTr"))
    np.testing.assert_array_equal(read_array(os.path.join(ds, "labelsTr", case)), label)
    np.testing.assert_array_equal(read_array(os.path.join(ds, "imagesTr", case[:-7] + "_0000.nii.gz")), image)
    verify(ds)

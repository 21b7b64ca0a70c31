"""BRATS 2015 converter: every label mode end to end on a faithful small copy of the release."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_fixtures import convert, make_brats15, read_array, store_flipped, verify
from nnunet_mcc.dataset_conversion import brats15

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODS = ("T1", "T1c", "T2", "Flair")


@pytest.fixture(scope="module")
def brats_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_src")
    arrays = make_brats15(str(root), n_hgg=3, n_lgg=2, n_test=1)
    return str(root), arrays


def _case_id(rel: str) -> str:
    parts = rel.split(os.sep)
    return f"{parts[1]}_{parts[2]}" if parts[0] == "BRATS2015_Training" else parts[-1]


def test_labels_mode_end_to_end(brats_src, raw, capsys):
    src, arrays = brats_src
    rc, out, err = convert(capsys, "brats15", src, "-j", "2")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset501_BraTS15")
    dj = json.load(open(os.path.join(ds, "dataset.json")))
    assert dj["labels"] == brats15.BRATS_LABELS
    assert dj["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "Flair"}
    assert dj["evaluation_regions"] == {"whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": [4]}
    assert dj["numTraining"] == 5
    # the case name repeated under HGG and LGG gives two distinct ids
    assert sorted(os.listdir(os.path.join(ds, "labelsTr")))[:1] == ["HGG_brats_2013_pat0001_1.nii.gz"]
    assert os.path.isfile(os.path.join(ds, "labelsTr", "LGG_brats_2013_pat0001_1.nii.gz"))
    counts = np.zeros(5)
    for rel, a in arrays.items():
        cid = _case_id(rel)
        training = "OT" in a
        folder = "imagesTr" if training else "imagesTs"
        ref = sitk.ReadImage(os.path.join(ds, folder, f"{cid}_0000.nii.gz"))
        for ch, mod in enumerate(MODS):  # fixed channel order, voxels and dtype unchanged
            img = sitk.ReadImage(os.path.join(ds, folder, f"{cid}_{ch:04d}.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), a[mod])
            assert img.GetPixelID() == sitk.sitkInt16
        if training:
            lab = sitk.ReadImage(os.path.join(ds, "labelsTr", cid + ".nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), a["OT"])
            assert lab.GetSpacing() == ref.GetSpacing() and lab.GetOrigin() == ref.GetOrigin()
            counts += np.bincount(a["OT"].ravel(), minlength=5)
    fractions = dj["class_voxel_fractions"]
    np.testing.assert_allclose([fractions[k] for k in brats15.BRATS_LABELS], counts / counts.sum(), atol=1e-7)
    assert "5 training cases, 1 test cases" in out and "BRATS2015_Training/HGG: 3 training cases" in out
    verify(ds)


def test_regions_mode_paints_back_exact_labels(brats_src, raw, capsys):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    src, arrays = brats_src
    rc, _, err = convert(capsys, "brats15", src, "--label-mode", "regions", "-j", "1")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset501_BraTS15_regions")
    dj = json.load(open(os.path.join(ds, "dataset.json")))
    manager = LabelManager(dj["labels"], regions_class_order=dj["regions_class_order"])
    assert manager.has_regions and len(manager.foreground_regions) == 4
    for rel, a in arrays.items():
        if "OT" not in a:
            continue
        seg = read_array(os.path.join(ds, "labelsTr", _case_id(rel) + ".nii.gz"))
        # what nnU-Net trains on: one binary mask per region of dataset.json ...
        masks = np.stack([np.isin(seg, np.atleast_1d(r)) for r in manager.foreground_regions]).astype(np.float32)
        # ... and what its inference paints back from them
        np.testing.assert_array_equal(manager.convert_probabilities_to_segmentation(masks), a["OT"])
        np.testing.assert_array_equal(brats15.regions_to_brats_labels(masks), a["OT"])
    # the three evaluation regions alone cannot tell necrosis (1) from non-enhancing tumour (3)
    three = LabelManager({"background": 0, "whole_tumor": (1, 2, 3, 4), "tumor_core": (1, 3, 4),
                          "enhancing_tumor": 4}, regions_class_order=(2, 3, 4))
    painted = three.convert_probabilities_to_segmentation(
        np.stack([np.isin(np.array([1, 3]), np.atleast_1d(r)) for r in three.foreground_regions]).astype(float))
    assert painted[0] == painted[1]
    verify(ds)


def test_whole_tumor_mode(brats_src, raw, capsys):
    src, arrays = brats_src
    rc, _, err = convert(capsys, "brats15", src, "--label-mode", "whole-tumor", "-d", "77", "-j", "1")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset077_BraTS15_wholetumor")
    assert json.load(open(os.path.join(ds, "dataset.json")))["labels"] == {"background": 0, "whole_tumor": 1}
    for rel, a in arrays.items():
        if "OT" in a:
            seg = read_array(os.path.join(ds, "labelsTr", _case_id(rel) + ".nii.gz"))
            np.testing.assert_array_equal(seg, (a["OT"] > 0).astype(np.uint8))
            back = brats15.to_brats_labels(seg, "whole-tumor")
            np.testing.assert_array_equal(back > 0, a["OT"] > 0)  # whole tumour is kept exactly
    verify(ds)


def test_training_folder_itself_and_overwrite_idempotent(brats_src, raw, capsys):
    src, _ = brats_src
    train = os.path.join(src, "BRATS2015_Training")
    assert convert(capsys, "brats15", train, "-j", "1")[0] == 0
    ds = os.path.join(raw, "Dataset501_BraTS15")
    assert not os.path.exists(os.path.join(ds, "imagesTs")) and len(os.listdir(os.path.join(ds, "labelsTr"))) == 5

    def digest():
        h = {}
        for root, _, files in os.walk(ds):
            for f in files:
                h[os.path.relpath(os.path.join(root, f), ds)] = hashlib.sha1(open(os.path.join(root, f), "rb").read()).hexdigest()
        return h

    first = digest()
    rc, _, err = convert(capsys, "brats15", train, "-j", "1")
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert digest() == first
    assert convert(capsys, "brats15", train, "-j", "2", "--overwrite")[0] == 0
    assert digest() == first  # same source, same bytes
    assert [e for e in os.listdir(raw) if e.startswith(".")] == []


def test_export_predictions_to_brats_labels(brats_src, raw, capsys, tmp_path):
    src, arrays = brats_src
    assert convert(capsys, "brats15", src, "--label-mode", "regions", "-j", "1")[0] == 0
    labels = os.path.join(raw, "Dataset501_BraTS15_regions", "labelsTr")
    written = brats15.export_predictions(labels, str(tmp_path / "out"), "regions")
    assert len(written) == 5
    a = arrays[os.path.join("BRATS2015_Training", "LGG", "brats_2013_pat0001_1")]
    np.testing.assert_array_equal(read_array(str(tmp_path / "out" / "LGG_brats_2013_pat0001_1.mha")), a["OT"])
    with pytest.raises(Exception, match="not possible in label mode"):
        brats15.to_brats_labels(np.array([0, 1, 2]), "whole-tumor")


def test_split_70_20_10(brats_src, raw, capsys, tmp_path, monkeypatch):
    from nnunet_mcc.dataset_conversion.splits import seeded_split

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    src, _ = brats_src
    rc, out, err = convert(capsys, "brats15", src, "-j", "1", "--split", "70/20/10", "--split-seed", "3")
    assert rc == 0, err
    rec = json.load(open(os.path.join(raw, "Dataset501_BraTS15", "split_70_20_10.json")))
    ids = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "Dataset501_BraTS15", "labelsTr")))
    assert sorted(rec["train"] + rec["val"] + rec["test"]) == ids
    assert (len(rec["train"]), len(rec["val"]), len(rec["test"])) == (3, 1, 1)  # 5 cases: 1.0 -> 1, 0.5 -> 1 (half up)
    assert rec == {"seed": 3, "fractions": [0.7, 0.2, 0.1], **seeded_split(ids, (0.7, 0.2, 0.1), 3)}
    final = json.load(open(tmp_path / "pre" / "Dataset501_BraTS15" / "splits_final.json"))
    assert final == [{"train": rec["train"], "val": rec["val"]}]
    big = [f"c{i:03d}" for i in range(274)]
    s = seeded_split(big, (0.7, 0.2, 0.1), 0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (192, 55, 27)
    assert s == seeded_split(list(reversed(big)), (0.7, 0.2, 0.1), 0) != seeded_split(big, (0.7, 0.2, 0.1), 1)


@pytest.mark.parametrize("form", ["module", "file"])
def test_runs_as_script_from_a_clone(brats_src, tmp_path, form):
    src, _ = brats_src
    # nothing on the path, and no start-up hook importing an installed copy: the clone's own package runs
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "PYTHONPATH": "", "NNUNET_MCC_NO_AUTOREGISTER": "1"}
    cmd = [sys.executable, "-m", "nnunet_mcc.dataset_conversion.brats15"] if form == "module" else \
        [sys.executable, os.path.join("dataset_conversion", "Dataset501_BraTS15.py")]
    proc = subprocess.run(cmd + [os.path.join(src, "BRATS2015_Training"), "-j", "1", "--label-mode", "whole-tumor"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(tmp_path / "raw" / "Dataset501_BraTS15_wholetumor" / "labelsTr")) == 5


def test_flipped_label_is_resampled_and_named(tmp_path, raw, capsys):
    """A label stored with its z axis flipped (same voxels in space) comes out on T1's grid, not mirrored."""
    arrays = make_brats15(str(tmp_path / "src"), n_hgg=1, n_lgg=1, n_test=0, shape=(8, 12, 12))
    rel = os.path.join("BRATS2015_Training", "HGG", "brats_2013_pat0001_1")
    ot_dir = next(d for d in os.listdir(tmp_path / "src" / rel) if ".OT." in d)
    ot = str(tmp_path / "src" / rel / ot_dir / (ot_dir + ".mha"))
    store_flipped(ot, axis=2)
    assert not np.array_equal(read_array(ot), arrays[rel]["OT"])  # the stored voxel order is mirrored
    rc, out, err = convert(capsys, "brats15", tmp_path / "src", "-j", "1")
    assert rc == 0, err
    written = read_array(os.path.join(raw, "Dataset501_BraTS15", "labelsTr", "HGG_brats_2013_pat0001_1.nii.gz"))
    np.testing.assert_array_equal(written, arrays[rel]["OT"])
    assert f"note: {ot}: label stored with another geometry than" in out and "axes flipped: z" in out

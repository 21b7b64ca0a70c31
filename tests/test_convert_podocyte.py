"""Podocyte converter end to end: H-AI-L tiles, index / gray / RGB masks, image formats, split folders."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dataset_fixtures import GRAY_SHADES, PALETTE, convert, make_podocyte, verify
from nnunet_mcc.dataset_conversion import podocyte


def _check(ds, tiles, rgb=True):
    for key, t in tiles.items():
        split, stem = key.split("/")
        img = np.asarray(Image.open(os.path.join(ds, "imagesTr" if split == "train" else "imagesTs",
                                                 f"{stem}_0000.png")))
        np.testing.assert_array_equal(img, t["image"] if rgb else t["image"][..., 0])  # decoded pixels, exactly
        mask = np.asarray(Image.open(os.path.join(ds, "labelsTr" if split == "train" else "labelsTs", stem + ".png")))
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask, t["mask"])


def test_hail_tiles_end_to_end(tmp_path, raw, capsys):
    tiles = make_podocyte(str(tmp_path / "src"), "hail", n_train=4, n_test=2)
    rc, out, err = convert(capsys, "podocyte", tmp_path / "src", "-j", "2")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset503_Podocyte")
    dj = json.load(open(os.path.join(ds, "dataset.json")))
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    assert dj["labels"] == {"background": 0, "glomeruli": 1, "podocyte": 2, "non_podocyte": 3}
    assert dj["numTraining"] == 4 and len(os.listdir(os.path.join(ds, "imagesTs"))) == 2
    _check(ds, tiles)
    masks = np.concatenate([t["mask"].ravel() for k, t in tiles.items() if k.startswith("train/")])
    expected = np.bincount(masks, minlength=4) / masks.size
    np.testing.assert_allclose(list(dj["class_voxel_fractions"].values()), expected, atol=1e-7)
    assert "train: 4 training tiles" in out and "test: 2 test tiles" in out
    verify(ds)


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_declared_gray_and_colour_masks(tmp_path, raw, capsys, kind):
    tiles = make_podocyte(str(tmp_path / "src"), kind, n_train=3, n_test=1)
    if kind == "gray":
        mapping = ",".join(f"{v}={name}" for v, name in zip(GRAY_SHADES, podocyte.DEFAULT_CLASSES))
    else:
        mapping = ",".join("#%02x%02x%02x=%d" % (*c, i) for i, c in enumerate(PALETTE))
    rc, _, err = convert(capsys, "podocyte", tmp_path / "src", "--mask-map", mapping, "-j", "1")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset503_Podocyte")
    _check(ds, tiles)
    verify(ds)


def test_png_tif_pairs_without_split_folders_and_class_names(tmp_path, raw, capsys):
    tiles = make_podocyte(str(tmp_path / "png"), "png", n_train=3, split_folders=False)
    rc, _, err = convert(capsys, "podocyte", tmp_path / "png", "-j", "1", "--classes", "bg,glom,podo,other")
    assert rc == 0, err
    ds = os.path.join(raw, "Dataset503_Podocyte")
    assert json.load(open(os.path.join(ds, "dataset.json")))["labels"] == {"bg": 0, "glom": 1, "podo": 2, "other": 3}
    assert not os.path.exists(os.path.join(ds, "imagesTs"))
    _check(ds, tiles)
    tiles = make_podocyte(str(tmp_path / "tif"), "tif", n_train=2, n_test=1)
    rc, _, err = convert(capsys, "podocyte", tmp_path / "tif", "-d", "504", "-j", "1")
    assert rc == 0, err
    _check(os.path.join(raw, "Dataset504_Podocyte"), tiles)


def test_mask_map_parsing():
    classes = podocyte.DEFAULT_CLASSES
    assert podocyte.parse_mask_map("0=0, 85=glomeruli;170=2,255=non_podocyte", classes) == {0: 0, 85: 1, 170: 2,
                                                                                            255: 3}
    assert podocyte.parse_mask_map("#FF0000=1,0-255-0=podocyte", classes) == {(255, 0, 0): 1, (0, 255, 0): 2}
    for bad, msg in [("85=tumour", "not a class index"), ("85=7", "outside 0..3"), ("85", "not VALUE=CLASS"),
                     ("0=0,#ff0000=1", "mixes gray values and colours"), ("1-2=1", "neither a gray value")]:
        with pytest.raises(Exception, match=msg):
            podocyte.parse_mask_map(bad, classes)
    gray = np.array([[0, 85], [170, 255]], np.uint8)
    np.testing.assert_array_equal(podocyte.decode_mask(gray, "m.png", classes, {0: 0, 85: 1, 170: 2, 255: 3}),
                                  [[0, 1], [2, 3]])

"""Small, faithful copies of the real dataset layouts (same trees, names, formats, dtypes, headers).

* BRATS 2015: ``BRATS2015_Training/{HGG,LGG}/<case>/VSD.Brain.XX.O.MR_<Mod>.<id>/<same>.mha``
  (int16, compressed MetaImage, 1 mm) and ``VSD.Brain_3more.XX.O.OT.<id>/<same>.mha`` (labels 0-4);
  ``BRATS2015_Testing/HGG_LGG/<case>/`` without ground truth. As in the real release, the case name
  ``brats_2013_pat0001_1`` exists under both HGG and LGG.
* PROMISE12: ``TrainingData_Part{1,2,3}/CaseNN.mhd/.raw`` (MET_SHORT) with
  ``CaseNN_segmentation.mhd/.raw`` (MET_CHAR, {0, 1}); ``TestData/CaseNN.mhd/.raw``; anisotropic.
* Podocyte: H-AI-L tiles ``regions/*.jpeg`` (RGB) + ``masks/*.png`` (uint8 class index), optionally
  under ``train/`` and ``test/``; variants with grayscale-shade or RGB colour-coded masks.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BRATS_MODS = ("Flair", "T1", "T1c", "T2")


def _write_mha(array: np.ndarray, path: str, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               compress: bool = True) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path, useCompression=compress)


def brats_labels(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Nested tumour: edema around a core holding necrosis, non-enhancing and enhancing parts."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [rng.uniform(0.4, 0.6) * s for s in shape]
    r2 = ((z - c[0]) / (0.35 * shape[0])) ** 2 + ((y - c[1]) / (0.35 * shape[1])) ** 2 + \
        ((x - c[2]) / (0.35 * shape[2])) ** 2
    seg = np.zeros(shape, dtype=np.uint8)
    seg[r2 <= 1.0] = 2
    seg[r2 <= 0.45] = 4
    seg[(r2 <= 0.25) & (x < c[2])] = 1
    seg[(r2 <= 0.25) & (x >= c[2])] = 3
    return seg


def brats_case(case_dir: str, shape, rng, vsd_id: int, with_label: bool = True,
               modalities: Sequence[str] = BRATS_MODS, label_dtype=np.uint8, spacing=(1.0, 1.0, 1.0),
               origin=(0.0, 0.0, 0.0)) -> Dict[str, np.ndarray]:
    seg = brats_labels(shape, rng)
    arrays = {}
    for i, mod in enumerate(modalities):
        name = f"VSD.Brain.XX.O.MR_{mod}.{vsd_id + i}"
        img = (rng.normal(300 + 100 * i, 40, size=shape) + 200 * seg).clip(0, 32000).astype(np.int16)
        _write_mha(img, os.path.join(case_dir, name, name + ".mha"), spacing, origin)
        arrays[mod] = img
    if with_label:
        name = f"VSD.Brain_3more.XX.O.OT.{vsd_id + 4}"
        _write_mha(seg.astype(label_dtype), os.path.join(case_dir, name, name + ".mha"), spacing, origin)
        arrays["OT"] = seg
    return arrays


def make_brats15(root: str, n_hgg: int = 3, n_lgg: int = 2, n_test: int = 1, shape=(16, 24, 24),
                 seed: int = 0, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Dict[str, Dict[str, np.ndarray]]:
    """Write the layout under ``root``; returns {relative case folder: {modality or 'OT': array}}.

    Flair of the k-th case written has the VSD id 54000 + 5k, as in the release's file names."""
    rng = np.random.default_rng(seed)
    out = {}
    vsd = 54000
    names = {"HGG": ["brats_2013_pat0001_1"] + [f"brats_tcia_pat{100 + i}_{i + 1:04d}" for i in range(n_hgg - 1)],
             "LGG": ["brats_2013_pat0001_1"] + [f"brats_tcia_pat{200 + i}_{i + 1:04d}" for i in range(n_lgg - 1)]}
    for grade in ("HGG", "LGG"):
        for name in names[grade][:n_hgg if grade == "HGG" else n_lgg]:
            rel = os.path.join("BRATS2015_Training", grade, name)
            out[rel] = brats_case(os.path.join(root, rel), shape, rng, vsd, spacing=spacing, origin=origin)
            vsd += 5
    for i in range(n_test):
        rel = os.path.join("BRATS2015_Testing", "HGG_LGG", f"brats_tcia_pat{300 + i}_{i + 1:04d}")
        out[rel] = brats_case(os.path.join(root, rel), shape, rng, vsd, with_label=False, spacing=spacing,
                              origin=origin)
        vsd += 5
    return out


def make_promise12(root: str, per_part: Sequence[int] = (2, 2, 1), n_test: int = 1, seed: int = 0,
                   shapes: Optional[List[Tuple[int, int, int]]] = None) -> Dict[str, Dict[str, object]]:
    """Write TrainingData_Part1..3 and TestData; returns {case name: {"image", "label", "spacing", ...}}."""
    rng = np.random.default_rng(seed)
    out = {}
    k = 0
    centres = [(0.625, 0.625, 3.6), (0.27, 0.27, 2.2), (0.4, 0.4, 3.0), (0.75, 0.75, 4.0)]
    for part, n in enumerate(per_part, start=1):
        for _ in range(n):
            name = f"Case{k:02d}"
            shape = shapes[k] if shapes and k < len(shapes) else (int(rng.integers(6, 10)), 20, 24)
            spacing = centres[k % len(centres)]
            img, seg = _prostate(shape, rng)
            folder = os.path.join(root, f"TrainingData_Part{part}")
            origin = (-80.0 + k, -90.5, 12.25 * k)
            _write_mha(img, os.path.join(folder, name + ".mhd"), spacing, origin, compress=False)
            _write_mha(seg, os.path.join(folder, name + "_segmentation.mhd"), spacing, origin, compress=False)
            out[name] = {"image": img, "label": seg, "spacing": spacing, "origin": origin, "part": part}
            k += 1
    for t in range(n_test):
        name = f"Case{t:02d}"
        img, _ = _prostate((7, 20, 24), rng)
        _write_mha(img, os.path.join(root, "TestData", name + ".mhd"), (0.5, 0.5, 3.0), compress=False)
        out["test/" + name] = {"image": img}
    return out


def _prostate(shape, rng) -> Tuple[np.ndarray, np.ndarray]:
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    r2 = ((z - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - shape[1] / 2) / 5) ** 2 + ((x - shape[2] / 2) / 6) ** 2
    seg = (r2 <= 1).astype(np.int8)  # MET_CHAR
    img = (rng.normal(400, 60, size=shape) + 300.0 * seg).clip(0, 4000).astype(np.int16)  # MET_SHORT
    return img, seg


PODOCYTE_CLASSES = ("background", "glomeruli", "podocyte", "non_podocyte")
GRAY_SHADES = (0, 85, 170, 255)
PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))


def podocyte_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.ogrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    mask = np.zeros((size, size), np.uint8)
    mask[(y - cy) ** 2 + (x - cx) ** 2 <= (0.35 * size) ** 2] = 1
    for cls in (2, 3, 2, 3):
        ny, nx = rng.uniform(0.2, 0.8, 2) * size
        mask[(y - ny) ** 2 + (x - nx) ** 2 <= (0.06 * size) ** 2 + 1] = cls
    return mask


def make_podocyte(root: str, kind: str = "hail", n_train: int = 4, n_test: int = 2, size: int = 32,
                  seed: int = 0, split_folders: bool = True) -> Dict[str, Dict[str, np.ndarray]]:
    """kind: 'hail' (regions/*.jpeg + masks/*.png index), 'png' / 'tif' (images/ + masks/ index),
    'gray' (grayscale-shade masks GRAY_SHADES), 'rgb' (colour-coded masks PALETTE)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    img_dir, mask_dir, ext = {"hail": ("regions", "masks", ".jpeg"), "png": ("images", "masks", ".png"),
                              "tif": ("images", "labels", ".tif"), "gray": ("images", "masks", ".png"),
                              "rgb": ("images", "masks", ".png")}[kind]
    for split, n in (("train", n_train), ("test", n_test)):
        base = os.path.join(root, split) if split_folders else root
        if n == 0 or (not split_folders and split == "test"):
            continue
        os.makedirs(os.path.join(base, img_dir), exist_ok=True)
        os.makedirs(os.path.join(base, mask_dir), exist_ok=True)
        for i in range(n):
            stem = f"{'S' if split == 'train' else 'T'}{i:03d}_glom_{i % 2}"
            mask = podocyte_mask(size, rng)
            colours = np.array([[235, 225, 235], [200, 120, 190], [90, 40, 130], [120, 60, 160]], np.float64)
            rgb = (colours[mask] + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
            img_path = os.path.join(base, img_dir, stem + ext)
            Image.fromarray(rgb).save(img_path, **({"quality": 90} if ext == ".jpeg" else {}))
            if kind == "gray":
                stored = np.array(GRAY_SHADES, np.uint8)[mask]
            elif kind == "rgb":
                stored = np.array(PALETTE, np.uint8)[mask]
            else:
                stored = mask
            Image.fromarray(stored).save(os.path.join(base, mask_dir, stem + (".tif" if kind == "tif" else ".png")))
            out[f"{split}/{stem}"] = {"image": np.asarray(Image.open(img_path).convert("RGB")), "mask": mask}
    return out


def convert(capsys, *argv) -> Tuple[int, str, str]:
    """``nnunet-mcc convert ARGV`` in this process: (exit code, stdout, stderr)."""
    from nnunet_mcc.cli import main

    capsys.readouterr()
    rc = main(["convert", *[str(a) for a in argv], "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def store_flipped(path: str, axis: int = 2, keep_origin: bool = False) -> None:
    """Rewrite an image stored with ITK axis ``axis`` reversed: the same voxels in physical space, their
    order and the direction flipped (the origin moves to the other end), as some tools write labels.
    ``keep_origin``: flip without moving the origin, so the image covers the mirrored region instead."""
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    flipped = sitk.Flip(img, [i == axis for i in range(3)], flipAboutOrigin=False)
    if keep_origin:
        flipped.SetOrigin(img.GetOrigin())
    assert flipped.GetDirection() != img.GetDirection()
    sitk.WriteImage(flipped, path, useCompression=path.endswith(".mha"))


def read_array(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def verify(folder: str) -> None:
    """nnU-Net's own integrity check (the one ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` runs).

    Its worker is forked from this process instead of spawned: the same checks, without starting a new
    interpreter that imports nnU-Net and torch again (seconds per call).
    """
    import multiprocessing
    from unittest import mock

    from nnunetv2.experiment_planning import verify_dataset_integrity as nnunet_verify

    fork = multiprocessing.get_context("fork")
    with mock.patch.object(nnunet_verify.multiprocessing, "get_context", lambda method=None: fork):
        nnunet_verify.verify_dataset_integrity(folder, 1)

"""BRATS 2015 (SMIR/VSD release) -> nnU-Net raw dataset.

Source layout::

    SRC/BRATS2015_Training/{HGG,LGG}/<case>/VSD.Brain.XX.O.MR_<Mod>.<id>/VSD.Brain.XX.O.MR_<Mod>.<id>.mha
    SRC/BRATS2015_Training/{HGG,LGG}/<case>/VSD.Brain_3more.XX.O.OT.<id>/VSD.Brain_3more.XX.O.OT.<id>.mha
    SRC/BRATS2015_Testing/HGG_LGG/<case>/...  (the four MR sequences, no ground truth)

Channels are written in the fixed order T1, T1c, T2, Flair. Labels: 0 background, 1 necrosis,
2 edema, 3 non-enhancing tumour, 4 enhancing tumour. Three label modes:

* ``labels`` (default): the five classes as they are, with ``evaluation_regions`` (whole tumour
  {1,2,3,4}, tumour core {1,3,4}, enhancing {4}) in dataset.json for the evaluation.
* ``regions``: nnU-Net region-based training on whole tumour, tumour core, enhancing tumour and a
  fourth region, necrosis {1}. The three evaluation regions alone cannot tell necrosis from
  non-enhancing tumour (both are "core, not enhancing"); the fourth region can, so painting the
  regions back in ``regions_class_order`` (2, 3, 4, 1) gives the exact BraTS labels.
* ``whole-tumor``: binary, tumour = any label > 0 (the seeds' task).

Label files keep the BraTS values in ``labels`` and ``regions`` modes (regions are defined on them),
so nnU-Net's predictions are BraTS label maps already; :func:`to_brats_labels` and
:func:`export_predictions` check and write them back, as ``VSD.<description>.<id>.mha`` named by the
VSD id of the case's Flair image, which dataset.json records (``vsd_flair_ids``) with each case's
source geometry.

Run: ``nnunet-mcc convert brats15 SRC [-d 501] [--label-mode labels|regions|whole-tumor]``, or
``python dataset_conversion/Dataset501_BraTS15.py SRC ...`` from a clone; back:
``nnunet-mcc export brats15 PRED_DIR OUT``.
"""

import argparse
import os
import re
import sys
from functools import partial
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_mcc.dataset_conversion import common, export
from nnunet_mcc.dataset_conversion.common import Case, CaseResult, UserError
from nnunet_mcc.labels import BRATS_LABELS

MODALITIES = ("T1", "T1c", "T2", "Flair")  # channel order of the converted dataset
EVALUATION_REGIONS = {"whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": [4]}
LABEL_MODES = ("labels", "regions", "whole-tumor")
# regions mode: region name -> BraTS labels it holds, painted back in this order with these values
REGIONS = {"whole_tumor": (1, 2, 3, 4), "tumor_core": (1, 3, 4), "enhancing_tumor": (4,), "necrosis": (1,)}
REGIONS_CLASS_ORDER = (2, 3, 4, 1)
DEFAULT_ID, DEFAULT_NAME = 501, "BraTS15"

_T1C = {"t1c", "t1ce", "t1gd", "t1post", "t1contrast", "t1_c"}
_GROUND_TRUTH = {"ot", "seg", "segmentation", "label", "labels", "gt", "truth", "groundtruth", "mask"}


def classify(name: str) -> Optional[str]:
    """'T1', 'T1c', 'T2', 'Flair', 'OT' (ground truth) or None, from a file or folder name."""
    tokens = set(common.normalize(common.strip_suffix(name)).split("_"))
    if tokens & _GROUND_TRUTH:
        return "OT"
    if "flair" in tokens:
        return "Flair"
    if tokens & _T1C:
        return "T1c"
    if "t1" in tokens:
        return "T1"
    if "t2" in tokens:
        return "T2"
    return None


def label_dict(label_mode: str) -> Tuple[Dict[str, object], Optional[Tuple[int, ...]]]:
    """dataset.json labels and regions_class_order for a label mode."""
    if label_mode == "labels":
        return dict(BRATS_LABELS), None
    if label_mode == "regions":
        labels: Dict[str, object] = {"background": 0}
        for name, members in REGIONS.items():
            labels[name] = list(members) if len(members) > 1 else members[0]
        return labels, REGIONS_CLASS_ORDER
    if label_mode == "whole-tumor":
        return {"background": 0, "whole_tumor": 1}, None
    raise UserError(f"--label-mode {label_mode!r}: choose one of {', '.join(LABEL_MODES)}")


def encode_labels(brats: np.ndarray, label_mode: str) -> np.ndarray:
    """BraTS labels -> the values written to labelsTr for a label mode."""
    if label_mode == "whole-tumor":
        return (brats > 0).astype(np.uint8)
    return brats.astype(np.uint8)


def regions_to_brats_labels(region_masks: np.ndarray) -> np.ndarray:
    """Region masks (whole tumour, tumour core, enhancing, necrosis; first axis) -> BraTS labels.

    Uses nnU-Net's own painting (``LabelManager.convert_probabilities_to_segmentation``) with this
    dataset's regions_class_order, exactly as nnU-Net does at inference.
    """
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels, order = label_dict("regions")
    manager = LabelManager(labels, regions_class_order=order)
    region_masks = np.asarray(region_masks)
    if region_masks.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region masks ({', '.join(REGIONS)}), got {region_masks.shape[0]}")
    return manager.convert_probabilities_to_segmentation(region_masks.astype(np.float32)).astype(np.uint8)


def to_brats_labels(segmentation: np.ndarray, label_mode: str) -> np.ndarray:
    """A segmentation written by nnU-Net for a dataset of this converter -> BraTS labels (uint8).

    ``labels``/``regions``: nnU-Net already writes BraTS values (regions are painted back), they are
    checked. ``whole-tumor``: tumour becomes 2 (edema, the label that is whole tumour only), so the
    whole-tumour score is right and tumour core / enhancing are predicted empty.
    """
    seg = np.asarray(segmentation)
    allowed = (0, 1) if label_mode == "whole-tumor" else tuple(range(5))
    label_dict(label_mode)  # checks the mode
    bad = sorted(set(np.unique(seg).tolist()) - set(allowed))
    if bad:
        raise UserError(f"prediction holds values {bad}, not possible in label mode {label_mode!r}")
    if label_mode == "whole-tumor":
        return (seg > 0).astype(np.uint8) * 2
    return seg.astype(np.uint8)


def export_predictions(prediction_folder: str, output_folder: str, label_mode: Optional[str] = None,
                       file_ending: Optional[str] = None, output_ending: str = ".mha", *,
                       dataset_json: Optional[str] = None, subset: str = "test", description: str = "nnUNet",
                       naming: Optional[str] = None, overwrite: bool = False) -> List[str]:
    """Write every prediction of ``prediction_folder`` as a BraTS label map (uint8, values 0-4).

    With ``dataset_json`` (the converted dataset's, as nnU-Net copies it into its prediction folders)
    the label mode and file ending come from it, each file gets its case's source geometry exactly,
    and ``naming="vsd"`` (the default then) names it ``VSD.<description>.<Flair VSD id>.mha`` as the
    BRATS 2015 evaluation expects; without, files are named ``<case><output_ending>`` and keep the
    prediction's geometry. ``subset``: whether the predicted cases are the dataset's test or training cases.
    """
    record = export.read_dataset_json(dataset_json, "BRATS 2015", "brats15") if dataset_json else {}
    label_mode = label_mode or record.get("label_mode")
    if label_mode is None:
        raise UserError(f"{prediction_folder}: label mode unknown: give it (--label-mode) or the dataset.json")
    label_dict(label_mode)
    naming = naming or ("vsd" if record else "case")
    if naming not in ("vsd", "case"):
        raise UserError(f"--naming {naming!r}: choose vsd or case")
    if naming == "vsd" and not re.fullmatch(r"[A-Za-z0-9_\-]+", description):
        raise UserError(f"--description {description!r}: use letters, digits, '_' or '-' only (the evaluation "
                        "splits file names at dots)")
    names = None
    if naming == "vsd":
        if not record:
            raise UserError("VSD names need the dataset.json the conversion wrote (it records the VSD ids)")
        ids = export.subset_map(record, "vsd_flair_ids", subset, dataset_json)
        names = {case: f"VSD.{description}.{ids[case]}" if case in ids else None
                 for case in export.subset_map(record, "source_cases", subset, dataset_json)}

    def brats_labels(array: np.ndarray, path: str) -> np.ndarray:
        try:
            return to_brats_labels(array, label_mode)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    return export.export_folder(prediction_folder, output_folder, brats_labels,
                                file_ending=file_ending or record.get("file_ending", ".nii.gz"),
                                output_ending=output_ending, names=names,
                                geometries=export.subset_map(record, "source_geometry", subset, dataset_json)
                                if record else None, compress=True, overwrite=overwrite,
                                what=f"{subset} case of {dataset_json}" if record else "")


# ---------------------------------------------------------------- finding the cases
def _case_files(case_dir: str, rel: str, training: bool) -> Tuple[List[str], Optional[str]]:
    """The four modality files (channel order) and the ground truth of one case folder."""
    found: Dict[str, List[str]] = {}
    for root, f in common.walk_files(case_dir, max_depth=3):
        if not common.has_suffix(f) or f.lower().endswith((".raw", ".zraw")):
            continue
        kind = classify(f) or classify(os.path.basename(root))
        if kind:
            found.setdefault(kind, []).append(os.path.join(root, f))
    for kind, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(os.path.relpath(p, case_dir) for p in paths)
            what = "ground-truth files" if kind == "OT" else f"{kind} images"
            raise UserError(f"{rel}: {len(paths)} {what} for one case ({names})")
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        have = ", ".join(m for m in MODALITIES if m in found) or "none"
        raise UserError(f"{rel}: missing the {', '.join(missing)} image (found: {have})")
    label = found.get("OT", [None])[0]
    if training and label is None:
        raise UserError(f"{rel}: training case has no ground truth (a file or folder named like '*.OT.*')")
    return [found[m][0] for m in MODALITIES], label


def _case_dirs(folder: str) -> List[str]:
    return [d for d in common.subfolders(folder)]


def vsd_id(path: str) -> Optional[str]:
    """The VSD id in a release file name (``VSD.Brain.XX.O.MR_Flair.54193.mha`` -> ``54193``), or None."""
    m = re.search(r"\.(\d+)$", common.strip_suffix(os.path.basename(path)))
    return m.group(1) if m else None


def find_cases(src: str) -> Tuple[List[Case], List[str]]:
    """Training (HGG, LGG) and testing cases, plus lines describing what was found."""
    src = common.check_source_folder(src)
    training_dirs = common.find_child(src, r".*train.*")
    testing_dirs = common.find_child(src, r".*test.*")
    grade_parent = None
    if len(training_dirs) > 1:
        raise UserError(f"{src}: several training folders ({', '.join(training_dirs)}); keep one")
    if training_dirs:
        grade_parent = os.path.join(src, training_dirs[0])
    elif common.find_child(src, r"hgg|lgg"):
        grade_parent = src  # SRC is the training folder itself
    else:
        raise UserError(f"{src}: no BRATS2015_Training folder and no HGG/LGG folders found")
    grades = common.find_child(grade_parent, r"hgg|lgg")
    if not grades:
        raise UserError(f"{grade_parent}: no HGG or LGG folder found")
    cases: List[Case] = []
    found_lines = []
    for grade in grades:
        grade_dir = os.path.join(grade_parent, grade)
        names = _case_dirs(grade_dir)
        if not names:
            raise UserError(f"{grade_dir}: folder is empty (no case folders)")
        for name in names:
            rel = os.path.relpath(os.path.join(grade_dir, name), src)
            images, label = _case_files(os.path.join(grade_dir, name), rel, training=True)
            grade_tag = common.normalize(grade).upper()
            cases.append(Case(common.safe_id(f"{grade_tag}_{name}"), images, label, rel, True,
                              {"grade": grade_tag, "vsd_id": vsd_id(images[MODALITIES.index("Flair")])}))
        found_lines.append(f"{os.path.relpath(grade_dir, src)}: {len(names)} training cases")
    if len(testing_dirs) > 1:
        raise UserError(f"{src}: several testing folders ({', '.join(testing_dirs)}); keep one")
    if testing_dirs:
        test_dir = os.path.join(src, testing_dirs[0])
        inner = common.find_child(test_dir, r"hgg_lgg|hgg|lgg")
        groups = [os.path.join(test_dir, g) for g in inner] or [test_dir]
        entries: List[Tuple[str, str, str]] = []
        for g in groups:
            for name in _case_dirs(g):
                entries.append((name, os.path.basename(g), os.path.join(g, name)))
        if not entries:
            raise UserError(f"{test_dir}: folder is empty (no case folders)")
        ids = common.disambiguate([(n, g) for n, g, _ in entries])
        for case_id, (name, _, path) in zip(ids, entries):
            rel = os.path.relpath(path, src)
            images, label = _case_files(path, rel, training=False)
            cases.append(Case(case_id, images, label, rel, False,
                              {"vsd_id": vsd_id(images[MODALITIES.index("Flair")])}))
        found_lines.append(f"{os.path.relpath(test_dir, src)}: {len(entries)} test cases")
    return cases, found_lines


# ---------------------------------------------------------------- converting one case
def convert_case(case: Case, out_dir: str, label_mode: str, file_ending: str) -> CaseResult:
    import SimpleITK as sitk

    ref = common.read_sitk(case.images[0])
    ref_path = case.images[0]
    images, notes = [ref], []
    for path in case.images[1:]:
        img, note = common.onto_grid(common.read_sitk(path), ref, path, ref_path)
        images.append(img)
        notes += [note] if note else []
    for img, path in zip(images, case.images):
        if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            common.check_finite(sitk.GetArrayViewFromImage(img), path)
    sub = "imagesTr" if case.training else "imagesTs"
    for ch, img in enumerate(images):  # one geometry for every channel and the label: T1's
        common.write_sitk(img, os.path.join(out_dir, sub, f"{case.case_id}_{ch:04d}{file_ending}"))
    counts = None
    if case.label:
        seg_img, note = common.onto_grid(common.read_sitk(case.label), ref, case.label, ref_path, what="label")
        notes += [note] if note else []
        brats, counts = common.checked_labels(sitk.GetArrayViewFromImage(seg_img), case.label, range(5))
        if label_mode != "whole-tumor" and seg_img.GetPixelID() == sitk.sitkUInt8:
            out = seg_img  # already the values and type to write: skip a copy of 10^7 voxels
        else:
            out = sitk.GetImageFromArray(encode_labels(brats, label_mode))
            out.CopyInformation(ref)
        common.write_sitk(out, os.path.join(out_dir, "labelsTr" if case.training else "labelsTs",
                                            case.case_id + file_ending))
        if label_mode == "whole-tumor":
            counts = np.array([counts[0], counts[1:].sum()])
    return CaseResult(case.case_id, case.training, counts, notes, common.geometry(ref))


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert BRATS 2015 (BRATS2015_Training/{HGG,LGG} and BRATS2015_Testing) into "
                          "$nnUNet_raw/DatasetXXX_Name. Channels: " + ", ".join(
                              f"{i}={m}" for i, m in enumerate(MODALITIES)) + ".")
    parser.add_argument("--label-mode", choices=LABEL_MODES, default="labels",
                        help="labels: 5 BraTS classes (default); regions: whole tumor, tumor core, enhancing "
                             "(+ necrosis, so labels paint back exactly) as nnU-Net regions; whole-tumor: binary")
    parser.add_argument("--file-ending", choices=(".nii.gz", ".mha", ".nrrd"), default=".nii.gz",
                        help="format of the written files (default .nii.gz)")
    common.add_common_arguments(parser, DEFAULT_ID, DEFAULT_NAME + "[_regions|_wholetumor]")


def run(args: argparse.Namespace) -> int:
    labels, order = label_dict(args.label_mode)
    split = common.split_option(args)
    name = args.name or DEFAULT_NAME + {"labels": "", "regions": "_regions", "whole-tumor": "_wholetumor"}[
        args.label_mode]
    raw = common.raw_root()
    cases, found = find_cases(args.src)
    target = common.check_dataset_id(args.dataset_id, name, raw, args.overwrite)
    print(f"Found in {os.path.abspath(args.src)}:")
    for line in found:
        print(f"  {line}")
    extra = {"label_mode": args.label_mode, "channel_order": list(MODALITIES),
             "reference": "https://www.smir.ch/BRATS/Start2015", "release": "BRATS 2015",
             "source_cases": common.source_map(cases),
             "vsd_flair_ids": {part: {c.case_id: c.extra["vsd_id"] for c in cases
                                      if c.training == (part == "training") and c.extra.get("vsd_id")}
                               for part in ("training", "test")}}
    if args.label_mode == "labels":
        extra["evaluation_regions"] = EVALUATION_REGIONS
    if order is not None:
        extra["regions_class_order"] = order
    common.convert_dataset(
        target, cases, partial(convert_case, label_mode=args.label_mode, file_ending=args.file_ending),
        jobs=args.jobs, desc="BRATS15", channel_names=dict(enumerate(MODALITIES)), labels=labels,
        file_ending=args.file_ending, json_extra=extra, progress=False if args.no_progress else None,
        with_test_labels=any(c.label and not c.training for c in cases), split=split)
    return 0


if __name__ == "__main__":
    from nnunet_mcc.dataset_conversion.cli import script_main

    sys.exit(script_main("brats15"))

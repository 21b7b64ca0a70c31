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
:func:`export_predictions` check and write them back.

Run: ``nnunet-mcc convert brats15 SRC [-d 501] [--label-mode labels|regions|whole-tumor]``.
"""

import argparse
import os
import sys
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a file from a clone: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np

from nnunet_mcc.dataset_conversion import common
from nnunet_mcc.dataset_conversion.common import Case, CaseResult, UserError

MODALITIES = ("T1", "T1c", "T2", "Flair")  # channel order of the converted dataset
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumor": 3, "enhancing_tumor": 4}
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


def export_predictions(prediction_folder: str, output_folder: str, label_mode: str,
                       file_ending: str = ".nii.gz", output_ending: str = ".mha") -> List[str]:
    """Write every prediction of ``prediction_folder`` as a BraTS label map (``<case><output_ending>``)."""
    import SimpleITK as sitk

    if not os.path.isdir(prediction_folder):
        raise UserError(f"{prediction_folder}: prediction folder does not exist")
    files = [f for f in common.list_dir(prediction_folder) if f.endswith(file_ending)]
    if not files:
        raise UserError(f"{prediction_folder}: no {file_ending} predictions found")
    os.makedirs(output_folder, exist_ok=True)
    written = []
    for f in files:
        img = common.read_sitk(os.path.join(prediction_folder, f))
        out = sitk.GetImageFromArray(to_brats_labels(sitk.GetArrayFromImage(img), label_mode))
        out.CopyInformation(img)
        path = os.path.join(output_folder, f[:-len(file_ending)] + output_ending)
        common.write_sitk(out, path)
        written.append(path)
    return written


# ---------------------------------------------------------------- finding the cases
def _case_files(case_dir: str, rel: str, training: bool) -> Tuple[List[str], Optional[str]]:
    """The four modality files (channel order) and the ground truth of one case folder."""
    found: Dict[str, List[str]] = {}
    for root, dirs, files in os.walk(case_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if root[len(case_dir):].count(os.sep) >= 3:
            dirs[:] = []
        for f in sorted(files):
            if f.startswith(".") or not common.has_suffix(f) or f.lower().endswith((".raw", ".zraw")):
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
            cases.append(Case(common.safe_id(f"{grade_tag}_{name}"), images, label, rel, True, {"grade": grade_tag}))
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
            cases.append(Case(case_id, images, label, rel, False))
        found_lines.append(f"{os.path.relpath(test_dir, src)}: {len(entries)} test cases")
    return cases, found_lines


# ---------------------------------------------------------------- converting one case
def convert_case(case: Case, out_dir: str, label_mode: str, file_ending: str) -> CaseResult:
    import SimpleITK as sitk

    images = []
    ref, ref_path = None, ""
    for path in case.images:
        img = common.read_sitk(path)
        if ref is None:
            ref, ref_path = img, path
        else:
            common.check_same_grid(img, ref, path, ref_path)
        if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            common.check_finite(sitk.GetArrayViewFromImage(img), path)
        images.append(img)
    notes = []
    sub = "imagesTr" if case.training else "imagesTs"
    for ch, img in enumerate(images):
        if ch and not _same_frame(img, ref):
            notes.append(f"{case.source}: {MODALITIES[ch]} origin/direction differ from T1; T1's were used")
        img.CopyInformation(ref)  # one geometry for every channel and the label: the images'
        common.write_sitk(img, os.path.join(out_dir, sub, f"{case.case_id}_{ch:04d}{file_ending}"))
    counts = None
    if case.label:
        seg_img = common.read_sitk(case.label)
        common.check_same_grid(seg_img, ref, case.label, ref_path, what="label")
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
    return CaseResult(case.case_id, case.training, counts, notes)


def _same_frame(a, b) -> bool:
    return np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) and \
        np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)


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
    common_arguments(parser, DEFAULT_ID, DEFAULT_NAME + "[_regions|_wholetumor]")


def common_arguments(parser: argparse.ArgumentParser, default_id: int, default_name: str) -> None:
    parser.add_argument("src", metavar="SRC", help="folder the download was unpacked into (or its training folder)")
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=f"nnU-Net dataset id (default {default_id})")
    parser.add_argument("--name", default=None, help=f"dataset name (default {default_name})")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel processes (default: every core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")
    parser.add_argument("--split", default=None, metavar="TRAIN/VAL/TEST",
                        help="also write a seeded train/validation/test split, e.g. 70/20/10 (see docs)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --split (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def finish_split(args: argparse.Namespace, target: str, cases: Sequence[Case]) -> None:
    if args.split:
        from nnunet_mcc.dataset_conversion import splits

        splits.write_split_files(target, [c.case_id for c in cases if c.training], args.split, args.split_seed)


def run(args: argparse.Namespace) -> int:
    labels, order = label_dict(args.label_mode)
    if args.split:
        from nnunet_mcc.dataset_conversion import splits
        splits.parse_fractions(args.split)
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
             "source_cases": common.source_map(cases)}
    if args.label_mode == "labels":
        extra["evaluation_regions"] = EVALUATION_REGIONS
    if order is not None:
        extra["regions_class_order"] = order
    common.convert_dataset(
        target, cases, partial(convert_case, label_mode=args.label_mode, file_ending=args.file_ending),
        jobs=args.jobs, desc="BRATS15", channel_names=dict(enumerate(MODALITIES)), labels=labels,
        file_ending=args.file_ending, json_extra=extra, progress=False if args.no_progress else None,
        with_test_labels=any(c.label and not c.training for c in cases))
    finish_split(args, target, cases)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.script_main("brats15", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

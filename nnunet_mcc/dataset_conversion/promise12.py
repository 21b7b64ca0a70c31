"""PROMISE12 (prostate MR, MICCAI 2012) -> nnU-Net raw dataset.

Source layout::

    SRC/TrainingData_Part{1,2,3}/CaseNN.mhd + CaseNN.raw                      (MET_SHORT image)
    SRC/TrainingData_Part{1,2,3}/CaseNN_segmentation.mhd + ...segmentation.raw (MET_CHAR, {0, 1})
    SRC/TestData/CaseNN.mhd + CaseNN.raw                                      (no labels)

The three training parts are merged (Case00-Case49) and TestData goes to imagesTs. Images are read
with SimpleITK and written with their spacing, origin and direction unchanged (the data are strongly
anisotropic, 2.2-4 mm between slices; nnU-Net's planner takes care of it); labels are put on the
image's grid (resampled, every voxel kept, when stored with another orientation; see
:func:`common.onto_grid`). One channel, "T2" (z-score normalisation in nnU-Net). A case name that
appears in two parts gets the part as prefix (``TrainingData_Part2_Case07``) so that ids stay unique
and stable. :func:`export_predictions` writes nnU-Net's predictions back as
``CaseNN_segmentation.mhd/.raw`` (MET_UCHAR) with the source geometry, the format the challenge expects.

Run: ``nnunet-mcc convert promise12 SRC [-d 502]``, or ``python dataset_conversion/Dataset502_PROMISE12.py
SRC ...`` from a clone; back: ``nnunet-mcc export promise12 PRED_DIR OUT``.
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_mcc.dataset_conversion import common, export
from nnunet_mcc.dataset_conversion.common import Case, CaseResult, UserError

DEFAULT_ID, DEFAULT_NAME = 502, "PROMISE12"
LABELS = {"background": 0, "prostate": 1}
SOURCE_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii", ".nrrd")
_LABEL_NAME = re.compile(r"^(?P<case>.+?)_(segmentation|seg|label|labels|gt|mask|truth)$")


def split_name(filename: str) -> Tuple[str, bool]:
    """(normalised case name, is ground truth) from a file name."""
    stem = common.normalize(common.strip_suffix(filename, SOURCE_SUFFIXES))
    m = _LABEL_NAME.match(stem)
    return (m.group("case"), True) if m else (stem, False)


def _scan(folder: str, src: str, group: str, training: bool) -> Dict[str, Dict[str, object]]:
    """{case key: {"name", "image", "label", "group"}} of one folder."""
    found: Dict[str, Dict[str, object]] = {}
    files = [f for f in common.list_dir(folder)
             if os.path.isfile(os.path.join(folder, f)) and common.has_suffix(f, SOURCE_SUFFIXES)]
    for f in files:
        key, is_label = split_name(f)
        entry = found.setdefault(key, {"name": None, "image": None, "label": None, "group": group})
        slot = "label" if is_label else "image"
        path = os.path.join(folder, f)
        if entry[slot] is not None:
            what = "ground-truth files" if is_label else "images"
            raise UserError(f"{os.path.relpath(folder, src)}: two {what} for case {key} "
                            f"({os.path.basename(entry[slot])}, {f})")
        entry[slot] = path
        if not is_label:
            entry["name"] = common.strip_suffix(f, SOURCE_SUFFIXES)
    for key, entry in found.items():
        if entry["image"] is None:
            raise UserError(f"{entry['label']}: ground truth without its image ({key}.mhd)")
        if training and entry["label"] is None:
            raise UserError(f"{entry['image']}: training case has no ground truth "
                            f"(expected {entry['name']}_segmentation.mhd beside it)")
    return found


def find_cases(src: str) -> Tuple[List[Case], List[str]]:
    src = common.check_source_folder(src)
    train_dirs = common.find_child(src, r".*train.*")
    test_dirs = common.find_child(src, r".*test.*")
    groups: List[Tuple[str, bool]] = [(os.path.join(src, d), True) for d in train_dirs]
    if not train_dirs:
        # SRC is a training folder itself (one part, or all parts already merged)
        if not any(common.has_suffix(f, SOURCE_SUFFIXES) for f in common.list_dir(src)):
            raise UserError(f"{src}: no TrainingData_Part1..3 folders and no .mhd files found")
        groups.append((src, True))
    groups += [(os.path.join(src, d), False) for d in test_dirs]
    cases: List[Case] = []
    lines = []
    for training in (True, False):
        entries = []
        for folder, is_train in groups:
            if is_train != training:
                continue
            found = _scan(folder, src, os.path.basename(folder), training)
            if not found:
                raise UserError(f"{folder}: folder is empty (no .mhd images)")
            lines.append(f"{os.path.relpath(folder, src) if folder != src else '.'}: {len(found)} "
                         f"{'training' if training else 'test'} cases")
            entries += [found[k] for k in sorted(found)]
        ids = common.disambiguate([(e["name"], e["group"]) for e in entries])
        for case_id, e in zip(ids, entries):
            cases.append(Case(case_id, [e["image"]], e["label"], os.path.relpath(e["image"], src), training))
    return cases, lines


def convert_case(case: Case, out_dir: str) -> CaseResult:
    import SimpleITK as sitk

    img = common.read_sitk(case.images[0])
    common.check_finite(sitk.GetArrayViewFromImage(img), case.images[0])
    sub = "imagesTr" if case.training else "imagesTs"
    common.write_sitk(img, os.path.join(out_dir, sub, f"{case.case_id}_0000.nii.gz"))
    counts, notes = None, []
    if case.label:
        seg_img, note = common.onto_grid(common.read_sitk(case.label), img, case.label, case.images[0], what="label")
        notes += [note] if note else []
        seg = common.label_values(sitk.GetArrayFromImage(seg_img), case.label, (0, 1)).astype(np.uint8)
        out = sitk.GetImageFromArray(seg)
        out.CopyInformation(img)  # the label takes the image's geometry
        common.write_sitk(out, os.path.join(out_dir, "labelsTr" if case.training else "labelsTs",
                                            case.case_id + ".nii.gz"))
        counts = np.bincount(seg.ravel(), minlength=2)
    return CaseResult(case.case_id, case.training, counts, notes, common.geometry(img))


def export_predictions(prediction_folder: str, output_folder: str, file_ending: Optional[str] = None, *,
                       dataset_json: Optional[str] = None, subset: str = "test", overwrite: bool = False) -> List[str]:
    """nnU-Net predictions ``<case>.nii.gz`` -> ``CaseNN_segmentation.mhd/.raw`` (MET_UCHAR, {0, 1}).

    With ``dataset_json`` (the converted dataset's) files are named after the source images and get
    their geometry exactly; without, they are named ``<case>_segmentation`` and keep the prediction's.
    ``subset``: whether the predicted cases are the dataset's test or training cases.
    """
    record = export.read_dataset_json(dataset_json, "PROMISE12", "promise12") if dataset_json else {}
    names = None
    if record:
        sources = export.subset_map(record, "source_cases", subset, dataset_json)
        stems = {case: common.strip_suffix(os.path.basename(src), SOURCE_SUFFIXES) for case, src in sources.items()}
        repeated = {s for s in stems.values() if list(stems.values()).count(s) > 1}
        names = {case: case if stem in repeated else stem for case, stem in stems.items()}

    def prostate(array: np.ndarray, path: str) -> np.ndarray:
        return common.label_values(array, path, (0, 1))

    return export.export_folder(prediction_folder, output_folder, prostate,
                                file_ending=file_ending or record.get("file_ending", ".nii.gz"),
                                output_ending="_segmentation.mhd",
                                names=names or None, geometries=export.subset_map(
                                    record, "source_geometry", subset, dataset_json) if record else None,
                                compress=False, overwrite=overwrite, what=f"{subset} case of {dataset_json}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert PROMISE12 (TrainingData_Part1..3 merged, TestData into imagesTs) into "
                          "$nnUNet_raw/DatasetXXX_Name.")
    common.add_common_arguments(parser, DEFAULT_ID, DEFAULT_NAME)


def run(args: argparse.Namespace) -> int:
    split = common.split_option(args)
    raw = common.raw_root()
    cases, found = find_cases(args.src)
    target = common.check_dataset_id(args.dataset_id, args.name or DEFAULT_NAME, raw, args.overwrite)
    print(f"Found in {os.path.abspath(args.src)}:")
    for line in found:
        print(f"  {line}")
    extra = {"reference": "https://promise12.grand-challenge.org", "release": "PROMISE12",
             "source_cases": common.source_map(cases)}
    common.convert_dataset(target, cases, convert_case, jobs=args.jobs, desc="PROMISE12",
                           channel_names={0: "T2"}, labels=dict(LABELS), file_ending=".nii.gz", json_extra=extra,
                           progress=False if args.no_progress else None,
                           with_test_labels=any(c.label and not c.training for c in cases), split=split)
    return 0


if __name__ == "__main__":
    from nnunet_mcc.dataset_conversion.cli import script_main

    sys.exit(script_main("promise12"))

"""``nnunet-mcc export {brats15,promise12} PRED_DIR OUT``: nnU-Net predictions in the challenge's format.

* ``brats15``: BraTS labels 0-4 (uint8) as ``VSD.<description>.<id>.mha``, the id being the VSD id
  of the case's Flair image (the name the BRATS 2015 evaluation expects); regions and whole-tumour
  predictions are turned back into BraTS labels.
* ``promise12``: ``CaseNN_segmentation.mhd`` + ``.raw`` (MET_UCHAR, {0, 1}).

Both need the dataset.json the conversion wrote: it records each case's source geometry (written
back exactly: NIfTI stores it only in single precision), the source names and the label mode.
nnU-Net copies it into every prediction folder; for other folders (``labelsTr``, a folder of your
own) it is looked up in the parent folder, or given with ``--dataset-json``. The output folder is
written as a whole (a temporary folder moved into place), every file checked after writing.
"""

import argparse
import importlib
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from nnunet_mcc import fileio
from nnunet_mcc.dataset_conversion import common
from nnunet_mcc.errors import UserError

EXPORTERS = {
    "brats15": ("nnunet_mcc.dataset_conversion.brats15",
                "BraTS label maps VSD.<description>.<Flair VSD id>.mha (labels 0-4)"),
    "promise12": ("nnunet_mcc.dataset_conversion.promise12", "CaseNN_segmentation.mhd/.raw (MET_UCHAR, 0/1)"),
}


# ---------------------------------------------------------------- the converted dataset's record
def find_dataset_json(prediction_folder: str, given: Optional[str]) -> str:
    """``given``, else dataset.json in the prediction folder (nnU-Net puts it there), else in its parent."""
    if given:
        if not os.path.isfile(given):
            raise UserError(f"--dataset-json {given}: file does not exist")
        return given
    for folder in (prediction_folder, os.path.dirname(os.path.abspath(prediction_folder))):
        path = os.path.join(folder, "dataset.json")
        if os.path.isfile(path):
            return path
    raise UserError(f"{prediction_folder}: no dataset.json in it or its parent folder; pass --dataset-json "
                    "$nnUNet_raw/DatasetXXX_Name/dataset.json")


def read_dataset_json(path: str, release: str, converter: str) -> dict:
    record = fileio.read_json(path, "dataset.json")
    if not isinstance(record, dict) or record.get("release") != release:
        raise UserError(f"{path}: not the dataset.json of a dataset written by `nnunet-mcc convert {converter}`")
    return record


def subset_map(record: dict, key: str, subset: str, path: Optional[str]) -> Dict[str, object]:
    """``record[key][subset]``: {case id: value} for the test or training cases."""
    if subset not in ("test", "training"):
        raise UserError(f"--subset {subset!r}: choose test or training")
    value = record.get(key)
    if not isinstance(value, dict) or not isinstance(value.get(subset), dict):
        raise UserError(f"{path}: has no {key!r} (written by an older nnunet-mcc): convert the dataset again")
    return value[subset]


# ---------------------------------------------------------------- writing the files
def _apply_geometry(out, pred, record: Dict[str, list], path: str, case: str, what: str) -> None:
    """Give ``out`` the recorded source geometry, after checking the prediction lies on that grid."""
    ok = list(pred.GetSize()) == list(record["size"]) and \
        np.allclose(pred.GetSpacing(), record["spacing"], rtol=1e-4, atol=1e-5) and \
        np.allclose(pred.GetOrigin(), record["origin"], atol=1e-3) and \
        np.allclose(pred.GetDirection(), record["direction"], atol=1e-4)
    if not ok:
        raise UserError(f"{path}: its grid (size {tuple(pred.GetSize())}, spacing "
                        f"{tuple(round(s, 4) for s in pred.GetSpacing())}) is not that of case {case} "
                        f"(size {tuple(record['size'])}, spacing {tuple(round(s, 4) for s in record['spacing'])}), "
                        f"the {what}")
    out.SetSpacing(record["spacing"])
    out.SetOrigin(record["origin"])
    out.SetDirection(record["direction"])


def export_folder(prediction_folder: str, output_folder: str, to_labels: Callable[[np.ndarray, str], np.ndarray], *,
                  file_ending: str, output_ending: str, names: Optional[Dict[str, str]] = None,
                  geometries: Optional[Dict[str, Dict[str, list]]] = None, compress: bool = True,
                  overwrite: bool = False, what: str = "") -> List[str]:
    """Every ``<case><file_ending>`` of ``prediction_folder`` -> ``<name><output_ending>`` in ``output_folder``.

    ``to_labels(array, path)`` checks and converts the voxels (uint8 out); ``names`` maps case ids to
    file names (default: the case id; None: no name known, refused), ``geometries`` to the source geometry to write (default: the
    prediction's). With either map, a case missing from it is refused. ``output_folder`` is written as
    a whole; an existing one that is not empty is replaced only with ``overwrite``.
    """
    import SimpleITK as sitk

    if not os.path.isdir(prediction_folder):
        raise UserError(f"{prediction_folder}: prediction folder does not exist")
    files = [f for f in common.list_dir(prediction_folder) if f.endswith(file_ending)]
    if not files:
        raise UserError(f"{prediction_folder}: no {file_ending} predictions found")
    cases = [f[:-len(file_ending)] for f in files]
    for mapping in (names, geometries):
        missing = [c for c in cases if mapping is not None and c not in mapping]
        if missing:
            raise UserError(f"{os.path.join(prediction_folder, files[cases.index(missing[0])])}: case {missing[0]} is "
                            f"not a {what}" + (f" ({len(missing)} such files)" if len(missing) > 1 else ""))
    stems = [names[c] if names else c for c in cases]
    if None in stems:
        case = cases[stems.index(None)]
        raise UserError(f"{os.path.join(prediction_folder, files[cases.index(case)])}: no file name is known for "
                        f"case {case} (its source file name holds no id); name the files by case id instead")
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise UserError(f"{prediction_folder}: two predictions would both be written as {twice[0]}{output_ending}")
    if os.path.exists(output_folder):
        if not os.path.isdir(output_folder):
            raise UserError(f"{output_folder}: is a file, expected an output folder")
        if common.list_dir(output_folder) and not overwrite:
            raise UserError(f"{output_folder}: folder exists and is not empty; pass --overwrite to replace it")
    written = []
    tmp = ""
    try:
        with common.sigterm_as_interrupt(), fileio.atomic_folder(output_folder, "export folder") as tmp:
            for f, case, stem in zip(files, cases, stems):
                path = os.path.join(prediction_folder, f)
                pred = common.read_sitk(path)
                out = sitk.GetImageFromArray(to_labels(sitk.GetArrayViewFromImage(pred), path).astype(np.uint8))
                if geometries is not None:
                    _apply_geometry(out, pred, geometries[case], path, case, what)
                else:
                    out.CopyInformation(pred)
                common.write_sitk(out, os.path.join(tmp, stem + output_ending), compress=compress)
                written.append(os.path.join(output_folder, stem + output_ending))
    except UserError as e:
        if tmp:
            raise UserError(str(e).replace(tmp, output_folder)) from None
        raise
    return written


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub.required = True
    for name, (module_name, help_text) in EXPORTERS.items():
        p = sub.add_parser(name, help=help_text, description=f"nnU-Net predictions -> {help_text}.")
        p.set_defaults(_exporter=module_name)
        p.add_argument("pred_dir", metavar="PRED_DIR", help="nnU-Net's prediction folder (or labelsTr, ...)")
        p.add_argument("out", metavar="OUT", help="output folder (created; replaced only with --overwrite)")
        p.add_argument("--dataset-json", default=None, help="dataset.json of the converted dataset (default: "
                       "PRED_DIR/dataset.json, else the one in PRED_DIR's parent)")
        p.add_argument("--subset", choices=("test", "training"), default="test",
                       help="whether the predictions are of the dataset's test cases (default) or training cases")
        p.add_argument("--overwrite", action="store_true", help="replace OUT when it is not empty")
        if name == "brats15":
            p.add_argument("--description", default="nnUNet",
                           help="the <description> in VSD.<description>.<id>.mha (default nnUNet)")
            p.add_argument("--naming", choices=("vsd", "case"), default="vsd",
                           help="vsd: VSD.<description>.<Flair VSD id>.mha (default); case: <case id>.mha")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(args._exporter)
    dataset_json = find_dataset_json(args.pred_dir, args.dataset_json)
    extra = {"description": args.description, "naming": args.naming} if args.dataset == "brats15" else {}
    written = module.export_predictions(args.pred_dir, args.out, dataset_json=dataset_json, subset=args.subset,
                                        overwrite=args.overwrite, **extra)
    print(f"Wrote {len(written)} {args.dataset} segmentations to {os.path.abspath(args.out)} "
          f"(source geometry and names from {dataset_json})")
    return 0

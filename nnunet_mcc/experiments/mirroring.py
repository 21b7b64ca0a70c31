"""A finished fold's validation without test-time mirroring, to tell a class lost in training from one lost by
mirroring.

nnU-Net's final validation (``nnUNetTrainer.perform_actual_validation``) predicts each validation case of the
fold from its preprocessed data with ``nnUNetPredictor``'s sliding window (tile step 0.5, Gaussian weighting,
mirroring on), exports the segmentation with ``export_prediction_from_logits`` and scores the folder against
``gt_segmentations`` with ``compute_metrics_on_folder`` into ``validation/summary.json``.
:func:`validate_without_mirroring` takes the same steps with the same nnU-Net functions from the fold's
``checkpoint_final.pth``, with ``use_mirroring=False`` as the only change, into ``validation_nomirror/``
(``nnunet_mcc.provenance.UNMIRRORED_FOLDER``). ``nnunet-mcc compare`` reads that summary, when present, to say
in ``collapsed.csv`` whether a collapsed class was lost in training or by mirroring.
"""

import json
import os
from typing import List, Optional

from nnunet_mcc import provenance
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.fileio import atomic_folder, read_json, write_bytes

CHECKPOINT = "checkpoint_final.pth"


def validate_without_mirroring(fold_folder: str, device: str = "cpu", num_processes: int = 0) -> str:
    """Predict and score the validation cases of a finished fold without test-time mirroring.

    ``fold_folder`` is ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>`` with
    ``checkpoint_final.pth``; the cases are the fold's ``val`` entry of ``splits_final.json`` in
    ``$nnUNet_preprocessed/<dataset>/`` (the ones nnU-Net validated, checked against ``validation/summary.json``
    when it exists), read from the configuration's preprocessed data as nnU-Net's validation reads them.
    The segmentations go into ``fold_<f>/validation_nomirror/`` (replaced as a whole) and nnU-Net's
    ``compute_metrics_on_folder`` scores them with the plans' labels or regions and ignore label into its
    ``summary.json``, which is read back and checked before it is put in place. Prediction and export run in
    this process on ``device`` ("cpu", "cuda", "cuda:1", "mps"); ``num_processes`` sizes the evaluation's worker
    pool (nnU-Net's evaluation always runs in one: 0 or 1 means one worker). Returns the summary's path."""
    return _validate(fold_folder, device, num_processes, use_mirroring=False,
                     target=os.path.join(os.path.abspath(fold_folder), provenance.UNMIRRORED_FOLDER))


def _validate(fold_folder: str, device: str, num_processes: int, use_mirroring: bool, target: str) -> str:
    """The steps of nnU-Net's final validation into ``target``; ``use_mirroring`` is the one knob (the public
    function turns it off; the tests turn it on to reproduce ``validation/summary.json``)."""
    fold_folder = os.path.abspath(fold_folder)
    fold = _fold_of(fold_folder)
    if not os.path.isfile(os.path.join(fold_folder, CHECKPOINT)):
        raise UserError(f"{fold_folder} has no {CHECKPOINT}: only a finished training can be validated again "
                        f"(nnU-Net writes it at the end of training)")
    if num_processes < 0:
        raise UserError(f"num_processes must be 0 or more, got {num_processes}")
    model_folder = os.path.dirname(fold_folder)
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(model_folder, name)):
            raise UserError(f"{model_folder} has no {name} (nnU-Net copies it there when training starts): not an "
                            f"nnU-Net results folder")
    torch_device = _device(device)
    dataset_name = read_json(os.path.join(model_folder, "plans.json"), "plans file").get("dataset_name")
    if not dataset_name:
        raise UserError(f"{os.path.join(model_folder, 'plans.json')} names no dataset_name")
    ending = read_json(os.path.join(model_folder, "dataset.json"), "dataset.json").get("file_ending", ".nii.gz")
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    cases = _validation_cases(preprocessed, fold, fold_folder, ending)

    import numpy as np
    import torch
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(model_folder, use_folds=(fold,), checkpoint_name=CHECKPOINT)
    except Exception as e:  # a trainer nnU-Net cannot find or a broken checkpoint: one line, not a traceback
        if "Could not find requested nnunet trainer" in str(e):
            raise UserError(f"nnU-Net cannot find the trainer that trained {fold_folder} (run `nnunet-mcc doctor`)"
                            ) from None
        raise UserError(f"cannot load {os.path.join(fold_folder, CHECKPOINT)} with nnU-Net's predictor "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
    configuration = predictor.configuration_manager
    if configuration.previous_stage_name is not None:
        raise UserError(f"{fold_folder}: a cascade stage ({configuration.previous_stage_name} first) needs the "
                        f"previous stage's predictions; not supported here")
    data_folder = os.path.join(preprocessed, configuration.data_identifier)
    if not os.path.isdir(data_folder):
        raise UserError(f"the preprocessed data {data_folder} does not exist (run nnUNetv2_plan_and_preprocess)")
    dataset = infer_dataset_class(data_folder)(data_folder, cases)
    with atomic_folder(target, "validation without mirroring") as tmp, torch.no_grad():
        for case in dataset.identifiers:
            data, _, _, properties = dataset.load_case(case)
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.ascontiguousarray(data[:])))
            export_prediction_from_logits(logits.cpu(), properties, configuration, predictor.plans_manager,
                                          predictor.dataset_json, os.path.join(tmp, case), False)

    labels = predictor.label_manager
    unverified = os.path.join(target, ".summary.unverified.json")
    compute_metrics_on_folder(os.path.join(preprocessed, "gt_segmentations"), target, unverified,
                              predictor.plans_manager.image_reader_writer_class(), ending,
                              labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                              labels.ignore_label, num_processes=max(1, num_processes), chill=True)
    summary = os.path.join(target, "summary.json")
    try:
        with open(unverified, "rb") as f:
            content = f.read()
        write_bytes(summary, content, "validation summary", check=lambda data: _check_summary(
            data, cases, ending))
    finally:
        if os.path.exists(unverified):
            os.remove(unverified)
    return summary


def _fold_of(fold_folder: str) -> int:
    name = os.path.basename(fold_folder)
    if not name.startswith("fold_") or not name[5:].isdigit():
        raise UserError(f"{fold_folder} is not a fold folder fold_<number> of an nnU-Net results folder"
                        + (" (fold_all has no held-out validation cases)" if name == "fold_all" else ""))
    return int(name[5:])


def _device(device: str):
    import torch

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no MPS device")
    return torch_device


def _validation_cases(preprocessed: str, fold: int, fold_folder: str, ending: str) -> List[str]:
    """The fold's ``val`` cases in ``splits_final.json``; when nnU-Net's ``validation/summary.json`` exists, they
    must be the cases it scored (otherwise the two summaries would not describe the same cases)."""
    path = os.path.join(preprocessed, "splits_final.json")
    splits = read_json(path, "nnU-Net split file")
    try:
        cases = [str(c) for c in splits[fold]["val"]]
    except (IndexError, KeyError, TypeError):
        raise UserError(f"nnU-Net split file {path} has no 'val' list for fold {fold} (it has "
                        f"{len(splits) if isinstance(splits, list) else 'no list of'} splits)") from None
    if not cases:
        raise UserError(f"nnU-Net split file {path}: fold {fold} has no validation case")
    validated = _validated_cases(fold_folder, ending)
    if validated is not None and set(validated) != set(cases):
        differ = sorted(set(cases) ^ set(validated))
        raise UserError(f"{fold_folder}: validation/summary.json scored {len(validated)} cases and fold {fold} of "
                        f"{path} lists {len(cases)}; {len(differ)} are in only one of them ({' '.join(differ[:5])}"
                        f"{' ...' if len(differ) > 5 else ''}): the split changed since the fold was validated")
    return cases


def _validated_cases(fold_folder: str, ending: str) -> Optional[List[str]]:
    path = os.path.join(fold_folder, "validation", "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        return [results.case_id(e, ending) for e in read_json(path, "validation summary")["metric_per_case"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"validation summary {path} is not nnU-Net's format ({type(e).__name__} {e})") from None


def _check_summary(data: bytes, cases: List[str], ending: str) -> None:
    """The summary read back: nnU-Net's format with per-case counts, one entry per validation case."""
    try:
        content = json.loads(data.decode("utf-8"))
        scored = [results.case_id(e, ending) for e in content["metric_per_case"]]
        for entry in content["metric_per_case"]:
            for metrics in entry["metrics"].values():
                for count in results.COUNTS:
                    float(metrics[count])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an nnU-Net summary with per-case TP, FP, FN, TN ({type(e).__name__} {e})") from None
    if sorted(scored) != sorted(cases):
        raise ValueError(f"{len(scored)} cases scored, {len(cases)} validation cases expected")

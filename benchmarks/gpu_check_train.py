"""The GPU check's trainings and predictions through nnU-Net's own commands (``benchmarks/gpu_check.py``).

Each trainer trains ``epochs`` x ``iterations`` with ``nnUNetv2_train`` (nnU-Net's defaults for the device: on
CUDA autocast, GradScaler and torch.compile), one after the other on CUDA (a shared GPU would distort the
times). Its epoch time is the median of the epochs after the first (the first compiles): ``timed_epochs`` of
them. Then ``nnUNetv2_predict -f 0`` with the trainer's final checkpoint on the test case, timed, and every
predicted file read back: its shape against the input image, its labels among the dataset's.
"""

import math
import os
import shutil
import statistics
from typing import Dict, List, Optional

from gpu_check_data import BIN, DATASET_ID, dataset_name, device_env
from gpu_check_proc import BUDGET_EXHAUSTED, Budget, StageFailed, run_one

from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json


def training_env(env: Dict[str, str], size: dict, device: str, jobs: int) -> Dict[str, str]:
    from nnunet_mcc.budget import SCHEDULE_VARIABLES, SEED_VARIABLE, TORCH_THREADS_VARIABLE, run_environment

    env = {**device_env(env, device, training=True),
           **run_environment({"epochs": size["epochs"], "iterations": size["iterations"],
                              "val_iterations": size["val_iterations"]}),
           SCHEDULE_VARIABLES["plot_every"]: "1000000", SEED_VARIABLE: "0"}
    if device == "cpu" and jobs > 1:  # one thread per run: two runs on two cores
        env.update({TORCH_THREADS_VARIABLE: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def train_command(name: str, configuration: str, device: str) -> List[str]:
    return [os.path.join(BIN, "nnUNetv2_train"), str(DATASET_ID), configuration, "0", "-tr", name, "-device", device]


def fold_folder(env: Dict[str, str], trainer: str, configuration: str) -> str:
    return os.path.join(env["nnUNet_results"], dataset_name(), f"{trainer}__nnUNetPlans__{configuration}", "fold_0")


def finite_numbers(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def run_record(name: str, outcome: Optional[dict], folder: str, log: str, epochs: int) -> dict:
    """One training run: its status, losses, epoch times, timed epochs and cost, from its exit status and log."""
    if outcome is None:
        return {"trainer": name, "status": "skipped", "message": BUDGET_EXHAUSTED, "log": log}
    record = {"trainer": name, "returncode": outcome["returncode"], "wall_seconds": round(outcome["wall_seconds"], 3),
              "log": log}
    if outcome["stopped"]:
        return {**record, "status": "failed", "message": f"stopped: {BUDGET_EXHAUSTED}"}
    if outcome["returncode"] != 0:
        return {**record, "status": "failed", "message": f"nnUNetv2_train exited with status {outcome['returncode']}"}
    try:
        training_log = read_json(os.path.join(folder, "nnunet_mcc_log.json"), "training log")
    except UserError as e:
        return {**record, "status": "failed", "message": str(e)}
    series = training_log.get("series", {})
    seconds = [round(e - s, 3) for s, e in zip(series.get("epoch_start_timestamps", []),
                                                series.get("epoch_end_timestamps", []))]
    timed = seconds[1:] if len(seconds) > 1 else seconds
    record.update(train_losses=series.get("train_losses"), val_losses=series.get("val_losses"),
                  epoch_seconds=seconds, timed_epochs=len(timed) if len(seconds) > 1 else 0,
                  epoch_median_seconds=statistics.median(timed) if timed else None, cost=training_log.get("cost"))
    return {**record, **_loss_check(record, epochs, folder)}


def _loss_check(record: dict, epochs: int, folder: str) -> dict:
    for key in ("train_losses", "val_losses"):
        values = record[key] or []
        if len(values) != epochs:
            return {"status": "failed", "message": f"{key}: {len(values)} epochs logged, expected {epochs}"}
        if not finite_numbers(values):
            return {"status": "failed", "message": f"non-finite loss in {key}: {values}"}
    if not os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        return {"status": "failed", "message": "no checkpoint_final.pth"}
    return {"status": "ok", "message": ""}


def predict(name: str, configuration: str, device: str, env: Dict[str, str], work: str, output: str,
            budget: Budget) -> dict:
    """``nnUNetv2_predict`` with the trainer's fold 0 on the test images: ``{seconds, command, read_back}``."""
    env = device_env(env, device, training=False)
    images = os.path.join(env["nnUNet_raw"], dataset_name(), "imagesTs")
    predicted = os.path.join(work, "prediction", name)
    command = [os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", predicted, "-d", str(DATASET_ID), "-c",
               configuration, "-f", "0", "-tr", name, "-device", device,
               "--disable_progress_bar"] + (["-npp", "0", "-nps", "0"] if device == "cpu" else [])
    record = {"command": " ".join([os.path.basename(command[0])] + command[1:])}
    try:
        record["seconds"] = round(run_one(command, env, os.path.join(output, "logs", f"predict_{name}.log"), budget,
                                          f"nnUNetv2_predict -tr {name}"), 3)
    except StageFailed as e:
        return {**record, "seconds": None, "read_back": None, "status": "failed", "message": str(e)}
    labels = dataset_labels(env)
    kept = os.path.join(output, "prediction", name)
    cases = [read_back(predicted, images, image, kept, labels) for image in sorted(os.listdir(images))
             if image.endswith("_0000.nii.gz")]  # one file per case (its first channel)
    problems = [f"{c['case']}: {c['message']}" for c in cases if c["message"]] or ([] if cases else ["no test case"])
    record["read_back"] = {"ok": not problems, "cases": cases}
    return {**record, "status": "failed" if problems else "ok", "message": "; ".join(problems)}


def dataset_labels(env: Dict[str, str]) -> List[int]:
    """The label values of the dataset (dataset.json), the ignore label left out (its voxels are never predicted)."""
    labels = read_json(os.path.join(env["nnUNet_raw"], dataset_name(), "dataset.json"), "dataset.json")["labels"]
    return sorted(int(v) for k, v in labels.items() if k != "ignore" and not isinstance(v, list))


def read_back(output: str, images: str, image_name: str, kept: str, allowed: List[int]) -> dict:
    """The predicted file of one case read back: its shape against the input image, its labels; the file is
    copied to ``kept`` (the output folder outlives the work folder)."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_mcc.dataset_conversion.image_io import read_sitk

    case = image_name[:-len("_0000.nii.gz")]
    path = os.path.join(output, f"{case}.nii.gz")
    if not os.path.isfile(path):
        return {"case": case, "message": f"no prediction {path}"}
    prediction = sitk.GetArrayFromImage(read_sitk(path))
    expected = list(sitk.GetArrayFromImage(read_sitk(os.path.join(images, image_name))).shape)
    labels = sorted(int(v) for v in np.unique(prediction))
    message = ""
    if list(prediction.shape) != expected:
        message = f"shape {list(prediction.shape)}, expected {expected}"
    elif not set(labels) <= set(allowed):
        message = f"labels {labels}, not all among the dataset's {allowed}"
    os.makedirs(kept, exist_ok=True)
    shutil.copyfile(path, os.path.join(kept, os.path.basename(path)))
    return {"case": case, "file": os.path.join(kept, os.path.basename(path)), "shape": list(prediction.shape),
            "expected_shape": expected, "labels": labels, "message": message}

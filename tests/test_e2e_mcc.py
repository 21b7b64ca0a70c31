"""The MCC trainers through nnU-Net's real, unmodified command-line tools."""

import glob
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_e2e import predict, run, train, trainer_output
from nnunet_mcc.metrics import mcc_from_counts

pytestmark = pytest.mark.e2e


def test_installed_package_makes_nnunet_find_every_trainer(nnunet_env):
    """In a fresh interpreter with only nnU-Net's path variables, nnU-Net's own lookup returns our classes."""
    code = ("from nnunet_mcc.trainers import __all__ as names\n"
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    found = {n: find(n).__module__ for n in names}\n"
            "print(len(found), sorted(set(found.values())))\n")
    env = dict(nnunet_env)
    assert "nnUNet_extTrainer" not in env
    out = run([sys.executable, "-c", code], env).stdout.split("\n")[-2]
    count, modules = out.split(" ", 1)
    assert int(count) >= 40
    assert all(m.startswith("nnunet_mcc.trainers.") for m in eval(modules))


def test_user_value_of_ext_trainer_is_kept(nnunet_env, tmp_path):
    env = dict(nnunet_env, nnUNet_extTrainer=str(tmp_path))
    value = run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env).stdout.strip()
    parts = value.split(os.pathsep)
    assert parts[0] == str(tmp_path) and parts[-1].endswith(os.path.join("nnunet_mcc", "nnunet_ext"))
    assert len(parts) == 2


def test_names_never_collide_with_nnunet_trainers():
    import importlib
    import pkgutil

    import nnunetv2.training.nnUNetTrainer as stock

    from nnunet_mcc.trainers import __all__ as ours

    taken = set()
    for info in pkgutil.walk_packages(stock.__path__, stock.__name__ + "."):
        taken.update(dir(importlib.import_module(info.name)))
    assert not set(ours) & taken


def _foreground_mcc(fold_folder: str, labels_folder: str) -> float:
    counts = np.zeros(4)
    predictions = sorted(glob.glob(os.path.join(fold_folder, "validation", "*.nii.gz")))
    assert predictions, "nnU-Net wrote no validation predictions"
    for path in predictions:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(path)) > 0
        ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels_folder, os.path.basename(path)))) > 0
        counts += [(pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum(), (~pred & ~ref).sum()]
    return float(mcc_from_counts(*counts))


def test_train_resume_predict_mcc(prepared, nnunet_env, tmp_path, monkeypatch):
    dataset = prepared("3d_multiclass")
    env = dict(nnunet_env, NNUNET_MCC_EPOCHS="4", NNUNET_MCC_ITERATIONS="12")
    first = train(env, dataset, "3d_fullres_small", "nnUNetTrainerMCC")
    assert "Using trainer 'nnUNetTrainerMCC'" in first.stdout  # found through nnUNet_extTrainer
    fold = trainer_output(env["nnUNet_results"], dataset, "nnUNetTrainerMCC", "3d_fullres_small")
    for name in ("checkpoint_final.pth", "progress.png", "validation/summary.json"):
        assert os.path.isfile(os.path.join(fold, name)), name
    logging = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=False)["logging"]
    assert len(logging["mean_fg_mcc"]) == 4 and len(logging["mcc_per_class_or_region"][0]) == 2
    assert np.isfinite(logging["train_losses"]).all() and 0 <= min(logging["train_losses"]) <= 2

    # --c keeps the schedule the run was started with: asking for another number of epochs is refused
    refused = run(["nnUNetv2_train", dataset, "3d_fullres_small", "0", "-tr", "nnUNetTrainerMCC", "-device", "cpu",
                   "--c"], dict(env, NNUNET_MCC_EPOCHS="5"), check=False)
    assert refused.returncode == 2 and "NNUNET_MCC_EPOCHS=5 would change its schedule" in refused.stderr
    logging = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=False)["logging"]
    assert len(logging["mean_fg_mcc"]) == 4

    # better than chance on the held-out validation cases (MCC 0 is chance level)
    labels = os.path.join(env["nnUNet_raw"], dataset, "labelsTr")
    assert _foreground_mcc(fold, labels) > 0.2

    # the stock predictor reads trainer_name from the checkpoint and finds the class again
    out = predict(env, dataset, "3d_fullres_small", "nnUNetTrainerMCC",
                  os.path.join(env["nnUNet_raw"], dataset, "imagesTs"), str(tmp_path / "pred"))
    prediction = [f for f in out if f.endswith(".nii.gz")]
    assert len(prediction) == 1
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / prediction[0])))
    assert seg.shape == (32, 32, 32) and set(np.unique(seg)) <= {0, 1, 2}

    _check_validation_without_mirroring(fold, env, tmp_path, monkeypatch)


def _summary_counts(path: str) -> dict:
    with open(path) as f:
        summary = json.load(f)
    return {(os.path.basename(e["reference_file"]), label): tuple(m[c] for c in ("TP", "FP", "FN", "TN"))
            for e in summary["metric_per_case"] for label, m in e["metrics"].items()}


def _check_validation_without_mirroring(fold: str, env: dict, tmp_path, monkeypatch) -> None:
    """The trained fold validated again in this process: with mirroring, the steps reproduce nnU-Net's own
    validation/summary.json count for count (so they are nnU-Net's final validation); without it, the summary lands
    in validation_nomirror/ with the same cases, in nnU-Net's format, beside the predicted segmentations."""
    from nnunet_mcc.experiments import mirroring

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("nnUNet_compile", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training process validated (OMP_NUM_THREADS=1)
    try:
        mirrored = mirroring._validate(fold, "cpu", 0, use_mirroring=True, target=str(tmp_path / "mirrored"))
        path = mirroring.validate_without_mirroring(fold)
    finally:
        torch.set_num_threads(threads)
    nnunet_own = _summary_counts(os.path.join(fold, "validation", "summary.json"))
    assert _summary_counts(mirrored) == nnunet_own
    assert path == os.path.join(fold, "validation_nomirror", "summary.json")
    unmirrored = _summary_counts(path)
    assert sorted(unmirrored) == sorted(nnunet_own)
    with open(path) as f:
        summary = json.load(f)
    assert set(summary["mean"]) == {"1", "2"} and "foreground_mean" in summary
    cases = sorted({case for case, _ in unmirrored})
    assert sorted(f for f in os.listdir(os.path.dirname(path)) if f.endswith(".nii.gz")) == cases


@pytest.mark.parametrize("key, trainer", [("3d_regions", "nnUNetTrainerMCC_CE"), ("3d_ignore", "nnUNetTrainerMCC")])
def test_regions_and_ignore_label_train(prepared, nnunet_env, key, trainer):
    dataset = prepared(key)
    train(nnunet_env, dataset, "3d_fullres_small", trainer)
    fold = trainer_output(nnunet_env["nnUNet_results"], dataset, trainer, "3d_fullres_small")
    logging = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=False)["logging"]
    assert np.isfinite(logging["train_losses"]).all()
    assert len(logging["mcc_per_class_or_region"][-1]) == (3 if key == "3d_regions" else 2)
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

"""``nnunet-mcc compare --ensemble``: two hand-built trainers whose saved validation probabilities (nnU-Net's
``--npz`` files) are chosen so that the ensemble's Dice is worked out by hand.

Every case is a 4 x 8 image whose lesion is the band of columns 2-5. Probabilities of the lesion:

============  ====================  ===================  ===================  ===================
              left background 0-1   left lesion 2-3      right lesion 4-5     right background 6-7
============  ====================  ===================  ===================  ===================
TrainerA      0.1 (right)           0.9 (right)          0.3 (missed)         0.7 (false positive)
TrainerB      0.6 (false positive)  0.4 (missed)         0.8 (right)          0.4 (right)
average       0.35 -> background    0.65 -> lesion       0.55 -> lesion       0.55 -> lesion
============  ====================  ===================  ===================  ===================

Each trainer: TP 8, FP 8, FN 8, Dice 16 / 32 = 0.5; the ensemble: TP 16, FP 8 (right background), FN 0,
Dice 32 / 40 = 0.8.
"""

import csv
import json
import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import torch

sitk = pytest.importorskip("SimpleITK")

from nnunet_mcc.cli import main as cli_main  # noqa: E402
from nnunet_mcc.errors import UserError  # noqa: E402
from nnunet_mcc.experiments import ensemble as ensemble_module  # noqa: E402
from nnunet_mcc.experiments.compare import compare  # noqa: E402
from test_compare import nnunet_roots  # noqa: E402

DATASET = "Dataset792_Ens"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1}
FOLDS = {0: ["case_0", "case_1"], 1: ["case_2", "case_3"]}
ENSEMBLE = "TrainerA+TrainerB"
# lesion probability per column group: left background, left lesion, right lesion, right background
P_LESION = {"TrainerA": (0.1, 0.9, 0.3, 0.7), "TrainerB": (0.6, 0.4, 0.8, 0.4)}
SPACING = (0.5, 2.0)


def reference() -> np.ndarray:
    seg = np.zeros((4, 8), dtype=np.uint8)
    seg[:, 2:6] = 1
    return seg


def lesion_probability(trainer: str) -> np.ndarray:
    return np.repeat(np.array(P_LESION[trainer], dtype=np.float32), 2)[None, :].repeat(4, axis=0)


def write_image(path: str, seg: np.ndarray) -> None:
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, path)


def counts(pred: np.ndarray, ref: np.ndarray) -> dict:
    p, r = pred == 1, ref == 1
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    return {"TP": tp, "FP": fp, "FN": fn, "TN": int(p.size - tp - fp - fn), "n_pred": tp + fp, "n_ref": tp + fn,
            "Dice": 2 * tp / (2 * tp + fp + fn), "IoU": tp / (tp + fp + fn)}


def write_run(results_root: str, pre: str, run: str, trainer: str, fold: int, epochs: int = 3) -> str:
    """One finished fold as nnU-Net's final validation with --npz leaves it: exported predictions, <case>.npz
    (probabilities, channels first, a leading 1 for 2D as nnU-Net's SimpleITKIO reads) and <case>.pkl (the
    reader's properties), summary.json; nnU-Net's debug.json budget and a checkpoint with its log."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = os.path.join(results_root, DATASET, f"{run}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
    validation = os.path.join(folder, "validation")
    os.makedirs(validation)
    torch.save({"logging": {"mean_fg_dice": [0.5] * epochs, "train_losses": [1.0] * epochs,
                            "val_losses": [1.0] * epochs}}, os.path.join(folder, "checkpoint_final.pth"))
    with open(os.path.join(folder, "debug.json"), "w") as f:
        json.dump({"num_epochs": str(epochs), "num_iterations_per_epoch": "5", "num_val_iterations_per_epoch": "1"}, f)
    per_case = []
    lesion = lesion_probability(trainer)
    for case in FOLDS[fold]:
        gt = os.path.join(pre, "gt_segmentations", f"{case}.nii.gz")
        _, properties = SimpleITKIO().read_seg(gt)
        probabilities = np.stack([1 - lesion, lesion])[:, None]  # (classes, 1, y, x)
        np.savez_compressed(os.path.join(validation, f"{case}.npz"), probabilities=probabilities)
        with open(os.path.join(validation, f"{case}.pkl"), "wb") as f:
            pickle.dump(properties, f)
        prediction = (lesion > 0.5).astype(np.uint8)
        write_image(os.path.join(validation, f"{case}.nii.gz"), prediction)
        per_case.append({"reference_file": gt, "prediction_file": os.path.join(validation, f"{case}.nii.gz"),
                         "metrics": {"1": counts(prediction, reference())}})
    with open(os.path.join(validation, "summary.json"), "w") as f:
        json.dump({"metric_per_case": per_case, "mean": {}, "foreground_mean": {}}, f)
    return folder


@pytest.fixture
def ensemble_results(tmp_path, monkeypatch):
    roots = nnunet_roots(tmp_path, monkeypatch, dataset=DATASET, labels=LABELS)
    pre = os.path.join(roots["preprocessed"], DATASET)
    with open(os.path.join(pre, "nnUNetPlans.json"), "w") as f:  # what nnU-Net's planner writes, as far as used
        json.dump({"configurations": {CONFIG: {}}, "image_reader_writer": "SimpleITKIO",
                   "label_manager": "LabelManager"}, f)
    os.makedirs(os.path.join(pre, "gt_segmentations"))
    for case in sum(FOLDS.values(), []):
        write_image(os.path.join(pre, "gt_segmentations", f"{case}.nii.gz"), reference())
    roots["pre"] = pre
    return roots


def write_trainers(roots, runs=(("TrainerA", "TrainerA"), ("TrainerB", "TrainerB"))):
    for run, trainer in runs:
        for fold in FOLDS:
            write_run(roots["results"], roots["pre"], run, trainer, fold)


def tree(root: str) -> dict:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(root)
            for f in files}


def test_ensemble_dice_tables_tests_and_reuse(ensemble_results, tmp_path):
    write_trainers(ensemble_results)
    before = tree(ensemble_results["results"])
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, ["TrainerA", "TrainerB"], folds=[0, 1], output=out, bootstrap=50,
                     plots=False, snapshots=False, boundary=False, ensemble=[ENSEMBLE], ensemble_processes=0)
    assert tree(ensemble_results["results"]) == before  # compare wrote nothing into nnUNet_results

    per_case = result["frames"]["counts"].set_index(["trainer", "case"])
    for case in sum(FOLDS.values(), []):
        assert per_case.loc[("TrainerA", case), "Dice"] == pytest.approx(0.5)
        assert per_case.loc[("TrainerB", case), "Dice"] == pytest.approx(0.5)
        row = per_case.loc[(ENSEMBLE, case)]
        assert (row["TP"], row["FP"], row["FN"], row["Dice"]) == (16, 8, 0, pytest.approx(0.8))
        if "Brier" in per_case.columns:  # calibration from the averaged probabilities the ensemble keeps
            assert per_case.loc[(ENSEMBLE, case), "Brier"] == pytest.approx(
                np.mean((((lesion_probability("TrainerA") + lesion_probability("TrainerB")) / 2) - reference()) ** 2))
    folder = os.path.join(out, "ensembles", ENSEMBLE, "fold_1", "validation")
    exported = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "case_2.nii.gz")))
    expected = reference()
    expected[:, 6:] = 1  # the right background: 0.55 after averaging
    assert np.array_equal(exported, expected)
    averaged = np.load(os.path.join(folder, "case_2.npz"))["probabilities"][1, 0]
    assert np.allclose(averaged, (lesion_probability("TrainerA") + lesion_probability("TrainerB")) / 2)
    summary = json.load(open(os.path.join(folder, "summary.json")))  # nnU-Net's summary form
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.8) and set(summary["mean"]) == {"1"}
    assert summary["metric_per_case"][0]["prediction_file"] == os.path.join(folder, "case_2.nii.gz")

    table = {(e["metric"], e["trainer"]): e for e in result["table"]}
    assert table[("Dice", ENSEMBLE)]["mean"] == pytest.approx(0.8) and table[("Dice", ENSEMBLE)]["best"]
    tests = {(t["metric"], t["trainer"]): t for t in result["tests"]}
    assert tests[("Dice", ENSEMBLE)]["mean_difference"] == pytest.approx(0.3)
    assert tests[("Dice", ENSEMBLE)]["n_pairs"] == 4 and tests[("Dice", ENSEMBLE)]["baseline"] == "TrainerA"
    ranks = {(r["metric"], r["trainer"]): r for r in result["ranks"]}
    assert ranks[("Dice", ENSEMBLE)]["rank"] == 1
    runs = [r for r in result["runs"] if r["trainer"] == ENSEMBLE]
    assert len(runs) == 2 and runs[0]["budget"] == "3 x 5 (val 1)"
    assert runs[0]["loss"].startswith("ensemble of TrainerA (") and " and TrainerB (" in runs[0]["loss"]
    with open(os.path.join(out, "runs.csv")) as f:  # whole numbers stay whole beside an ensemble's empty cells
        written = {(r["trainer"], r["fold"]): r for r in csv.DictReader(f)}
    assert written[("TrainerA", "0")]["epochs_logged"] == "3" and written[(ENSEMBLE, "0")]["epochs_logged"] == ""
    assert written[(ENSEMBLE, "1")]["num_epochs"] == "3"
    page = open(os.path.join(out, "report.md")).read()
    assert f"**{ENSEMBLE}** is an ensemble, not a trained network" in page
    assert not [n for n in result["notes"] if ENSEMBLE in n]  # no "no learning curve" or snapshot notes for it
    assert [e["reused"] for e in result["ensembles"]] == [False, False]

    summary_path = os.path.join(folder, "summary.json")
    stamp = os.stat(summary_path).st_mtime_ns
    again = compare(DATASET, CONFIG, ["TrainerA", "TrainerB"], folds=[0, 1], output=out, bootstrap=50,
                    plots=False, snapshots=False, boundary=False, ensemble=[ENSEMBLE], ensemble_processes=0)
    assert [e["reused"] for e in again["ensembles"]] == [True, True]
    assert os.stat(summary_path).st_mtime_ns == stamp  # not rewritten, and carried into the new report folder
    pd.testing.assert_frame_equal(pd.DataFrame(again["table"]), pd.DataFrame(result["table"]))

    npz = os.path.join(ensemble_results["results"], DATASET, f"TrainerB__nnUNetPlans__{CONFIG}", "fold_0",
                       "validation", "case_0.npz")
    os.utime(npz, ns=(os.stat(npz).st_atime_ns, os.stat(npz).st_mtime_ns + 10**9))  # a member validated again
    third = compare(DATASET, CONFIG, ["TrainerA", "TrainerB"], folds=[0, 1], output=out, bootstrap=50,
                    plots=False, snapshots=False, boundary=False, calibration=False, ensemble=["all"],
                    ensemble_processes=0)
    assert [(e["fold"], e["reused"]) for e in third["ensembles"]] == [(0, False), (1, True)]


@pytest.mark.e2e  # starts nnU-Net's worker pools (fresh interpreters): seconds each on a small CPU
def test_nnunet_worker_pool_gives_the_same_summary(ensemble_results, tmp_path):
    """``--ensemble-processes 1``: nnU-Net's ensemble_folders and compute_metrics_on_folder themselves (worker
    pools) give what their per-case steps give in this process."""
    write_trainers(ensemble_results)
    specs = ensemble_module.parse([ENSEMBLE], ["TrainerA", "TrainerB"])
    built = {}
    for processes in (0, 1):
        out = str(tmp_path / f"report_{processes}")
        runs, _ = ensemble_module.plan(specs, ensemble_results["results"], DATASET, "nnUNetPlans", CONFIG, [0], out,
                                       ".nii.gz")
        ensemble_module.build_all(runs, DATASET, "nnUNetPlans", processes)
        folder = os.path.join(out, "ensembles", ENSEMBLE, "fold_0", "validation")
        built[processes] = json.load(open(os.path.join(folder, "summary.json")))
        for entry in built[processes]["metric_per_case"]:
            assert entry.pop("prediction_file").startswith(folder)
        assert sorted(os.listdir(folder)) == ["case_0.nii.gz", "case_0.npz", "case_0.pkl", "case_1.nii.gz",
                                              "case_1.npz", "case_1.pkl", "dataset.json", "summary.json"]
    assert built[0] == built[1] and built[0]["foreground_mean"]["Dice"] == pytest.approx(0.8)


def test_missing_probabilities_a_note_or_an_error(ensemble_results, tmp_path, capsys):
    write_trainers(ensemble_results)
    validation = os.path.join(ensemble_results["results"], DATASET, f"TrainerB__nnUNetPlans__{CONFIG}", "fold_1",
                              "validation")
    for case in FOLDS[1]:
        os.remove(os.path.join(validation, f"{case}.npz"))
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, ["TrainerA", "TrainerB"], folds=[0, 1], output=out, bootstrap=10,
                     plots=False, snapshots=False, boundary=False, calibration=False, ensemble=["all"],
                     ensemble_processes=0)
    assert result["ensembles"] == [] and {t["trainer"] for t in result["table"]} == {"TrainerA", "TrainerB"}
    note = [n for n in result["notes"] if n.startswith(f"ensemble {ENSEMBLE} left out")]
    assert len(note) == 1 and validation in note[0] and "--npz" in note[0]
    with pytest.raises(UserError, match=re.escape(f"--ensemble {ENSEMBLE}: no validation probabilities (") + ".*"
                       + re.escape(validation)):
        compare(DATASET, CONFIG, ["TrainerA", "TrainerB"], folds=[0, 1], output=out, ensemble=[ENSEMBLE],
                ensemble_processes=0)
    assert cli_main(["compare", "-d", DATASET, "-c", CONFIG, "-tr", "TrainerA", "TrainerB", "-f", "0", "1",
                     "-o", out, "--ensemble", "TrainerA+TrainerC"]) == 2
    assert "TrainerC is not among the compared trainers" in capsys.readouterr().err


def test_seeds_paired_and_budgets_checked(ensemble_results, tmp_path):
    write_trainers(ensemble_results, (("TrainerA_seed0", "TrainerA"), ("TrainerA_seed1", "TrainerA"),
                                      ("TrainerB_seed0", "TrainerB")))
    specs = ensemble_module.parse(["all"], ["TrainerA", "TrainerB"])
    args = (ensemble_results["results"], DATASET, "nnUNetPlans", CONFIG, [0, 1], str(tmp_path / "out"), ".nii.gz")
    runs, notes = ensemble_module.plan(specs, *args)
    assert [(r.run, r.seed, r.fold, [m.run for m in r.members]) for r in runs] == [
        ("TrainerA+TrainerB_seed0", 0, f, ["TrainerA_seed0", "TrainerB_seed0"]) for f in (0, 1)]
    assert notes == ["ensemble TrainerA+TrainerB: its members' seeds differ (TrainerA: 0 1; TrainerB: 0): built for "
                     "the seeds they share, 0"]
    debug = os.path.join(ensemble_results["results"], DATASET, f"TrainerB_seed0__nnUNetPlans__{CONFIG}", "fold_1",
                         "debug.json")
    with open(debug, "w") as f:
        json.dump({"num_epochs": "6", "num_iterations_per_epoch": "5", "num_val_iterations_per_epoch": "1"}, f)
    runs, notes = ensemble_module.plan(specs, *args)
    assert runs == [] and "different budgets" in notes[0] and "TrainerB_seed0 fold 1: 6 x 5 (val 1)" in notes[0]
    with pytest.raises(UserError, match="--ensemble TrainerA\\+TrainerB: its members were trained with different"):
        ensemble_module.plan(ensemble_module.parse([ENSEMBLE], ["TrainerA", "TrainerB"]), *args)
    with pytest.raises(UserError, match="at least two different trainers"):
        ensemble_module.parse(["TrainerA+TrainerA"], ["TrainerA", "TrainerB"])


FBC_DATASET = "Dataset793_Fbc"


def crossval_tree(roots, runs) -> None:
    """Five folds x two 16 x 16 cases per seeded trainer, as crossval --npz leaves them: the trainer folder with the
    plans.json and dataset.json nnU-Net's training copies there, each fold's validation/ with the exported
    segmentations, <case>.npz/.pkl and summary.json, and nnU-Net's debug.json."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pre = os.path.join(roots["preprocessed"], FBC_DATASET)
    dataset_json = {"labels": LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "x"}, "numTraining": 10}
    plans = {"dataset_name": FBC_DATASET, "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
             "label_manager": "LabelManager", "configurations": {CONFIG: {"architecture": {
                 "network_class_name": "PlainConvUNet", "arch_kwargs": {}, "_kw_requires_import": []}}}}
    for folder in [pre] + [os.path.join(roots["results"], FBC_DATASET, f"{run}__nnUNetPlans__{CONFIG}")
                           for run in runs]:
        os.makedirs(folder, exist_ok=True)
        json.dump(dataset_json, open(os.path.join(folder, "dataset.json"), "w"))
        json.dump(plans, open(os.path.join(folder, "nnUNetPlans.json" if folder == pre else "plans.json"), "w"))
    os.makedirs(os.path.join(pre, "gt_segmentations"))
    rng = np.random.default_rng(7)
    for i in range(10):
        ref = np.zeros((16, 16), np.uint8)
        ref[3 + i % 3:11 + i % 3, 4:12] = 1
        gt = os.path.join(pre, "gt_segmentations", f"case_{i}.nii.gz")
        write_image(gt, ref)
        _, properties = SimpleITKIO().read_seg(gt)
        for run, noise in runs.items():
            folder = os.path.join(roots["results"], FBC_DATASET, f"{run}__nnUNetPlans__{CONFIG}", f"fold_{i // 2}")
            validation = os.path.join(folder, "validation")
            os.makedirs(validation, exist_ok=True)
            with open(os.path.join(folder, "debug.json"), "w") as f:
                json.dump({"num_epochs": "3", "num_iterations_per_epoch": "5", "num_val_iterations_per_epoch": "1"}, f)
            lesion = np.clip(0.1 + 0.8 * ref + rng.normal(0, noise, ref.shape), 0, 1).astype(np.float32)
            np.savez_compressed(os.path.join(validation, f"case_{i}.npz"),
                                probabilities=np.stack([1 - lesion, lesion])[:, None])
            with open(os.path.join(validation, f"case_{i}.pkl"), "wb") as f:
                pickle.dump(properties, f)
            prediction = (lesion > 0.5).astype(np.uint8)
            write_image(os.path.join(validation, f"case_{i}.nii.gz"), prediction)
            path = os.path.join(validation, "summary.json")
            summary = json.load(open(path)) if os.path.isfile(path) else {"metric_per_case": []}
            summary["metric_per_case"].append({"reference_file": gt, "prediction_file": os.path.join(
                validation, f"case_{i}.nii.gz"), "metrics": {"1": counts(prediction, ref)}})
            json.dump(summary, open(path, "w"))


@pytest.mark.e2e  # nnUNetv2_find_best_configuration in its own process, with its worker pools: ~20 s on 2 busy cores
def test_find_best_configuration_runs_on_crossval_folders_and_agrees(tmp_path, monkeypatch):
    """nnU-Net's own ``nnUNetv2_find_best_configuration -c 2d -tr A_seed0 B_seed0`` runs on result folders laid out as
    crossval leaves them (seed folders named as trainers), names a best configuration, and its ensemble of the two
    scores every case as compare's ensemble does."""
    from nnunet_e2e import CPU_ENV, run

    roots = nnunet_roots(tmp_path, monkeypatch, dataset=FBC_DATASET, labels=LABELS)
    crossval_tree(roots, {"TrainerA_seed0": 0.3, "TrainerB_seed0": 0.45})
    result = compare(FBC_DATASET, CONFIG, ["TrainerA", "TrainerB"], output=str(tmp_path / "report"), bootstrap=10,
                     plots=False, snapshots=False, boundary=False, calibration=False, ensemble=["all"],
                     ensemble_processes=0)
    ours = {(r["case"]): (r["TP"], r["FP"], r["FN"]) for r in result["frames"]["counts"].to_dict("records")
            if r["trainer"] == ENSEMBLE}
    assert len(ours) == 10 and {e["run"] for e in result["ensembles"]} == {f"{ENSEMBLE}_seed0"}
    proc = run(["nnUNetv2_find_best_configuration", FBC_DATASET, "-c", CONFIG, "-tr", "TrainerA_seed0",
                "TrainerB_seed0", "-np", "1"], env={**os.environ, **CPU_ENV}, timeout=300)
    identifier = f"ensemble___TrainerA_seed0__nnUNetPlans__{CONFIG}___TrainerB_seed0__nnUNetPlans__{CONFIG}___0_1_2_3_4"
    information = json.load(open(os.path.join(roots["results"], FBC_DATASET, "inference_information.json")))
    assert "*Best*:" in proc.stdout and set(information["all_results"]) == {
        f"TrainerA_seed0__nnUNetPlans__{CONFIG}", f"TrainerB_seed0__nnUNetPlans__{CONFIG}", identifier}
    theirs = json.load(open(os.path.join(roots["results"], FBC_DATASET, "ensembles", identifier, "summary.json")))
    assert {os.path.basename(e["prediction_file"])[:-len(".nii.gz")]: (e["metrics"]["1"]["TP"], e["metrics"]["1"]["FP"],
                                                                       e["metrics"]["1"]["FN"])
            for e in theirs["metric_per_case"]} == ours

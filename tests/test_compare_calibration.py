"""Calibration (ECE, Brier) and the pictures of where the trainers disagree: the metric functions on tiny arrays
worked out by hand, and ``nnunet-mcc compare`` end to end on fold folders holding nnU-Net's exported predictions, the
probabilities its ``--npz`` saves and the dataset's raw images and gt_segmentations, written with SimpleITK/numpy."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from nnunet_mcc import metrics

sitk = pytest.importorskip("SimpleITK")


# ---- the metric functions -----------------------------------------------------------------------
def test_ece_is_zero_for_a_calibrated_prediction_and_0_4_for_a_0_9_right_half_the_time():
    # 0.25 right in 1 of 4, 0.75 in 3 of 4: every bin's frequency is its probability
    assert metrics.expected_calibration_error([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]) == pytest.approx(0)
    # all at 0.9, right half of the time: one bin (ties share a bin), |0.9 - 0.5|
    assert metrics.expected_calibration_error([0.9] * 10, [1, 0] * 5) == pytest.approx(0.4)
    # two bins of 0.2 / 0.8, each right 50 %: 0.5 |0.2 - 0.5| + 0.5 |0.8 - 0.5|
    assert metrics.expected_calibration_error([0.2] * 4 + [0.8] * 4, [1, 0] * 4, n_bins=2) == pytest.approx(0.3)
    assert np.isnan(metrics.expected_calibration_error([], []))


def test_brier_score_of_one_hot_predictions_and_of_an_empty_population():
    assert metrics.brier_score([1, 0, 0, 1], [1, 0, 0, 1]) == 0
    assert metrics.brier_score([1, 0, 0, 1], [0, 1, 1, 0]) == 1
    assert metrics.brier_score([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.25)
    assert np.isnan(metrics.brier_score([], []))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.brier_score([1.5], [1])


def test_equal_mass_bins_keep_ties_together():
    assert metrics.equal_mass_bins(np.arange(6) / 6, n_bins=3).tolist() == [0, 0, 1, 1, 2, 2]
    # the cut at position 2 falls inside the tie of 0.1 and is dropped: two bins
    assert metrics.equal_mass_bins([0.1, 0.1, 0.1, 0.1, 0.7, 0.9], n_bins=3).tolist() == [0, 0, 0, 0, 1, 1]
    assert metrics.equal_mass_bins([0.3] * 5, n_bins=15).tolist() == [0] * 5
    mean_p, frequency, count = metrics.reliability_bins(np.arange(6) / 6, [0, 0, 1, 0, 1, 1], n_bins=3)
    assert count.tolist() == [2, 2, 2] and frequency.tolist() == [0, 0.5, 1]
    pooled = metrics.reliability_curve(*metrics.reliability_histogram(np.arange(6) / 6, [0, 0, 1, 0, 1, 1]), 3)
    for got, expected in zip(pooled, (mean_p, frequency, count)):
        assert got.tolist() == pytest.approx(expected.tolist())


def test_population_foreground_plus_an_equal_seeded_sample_ignore_label_left_out():
    reference = np.zeros(20, bool)
    reference[:3] = True
    predicted = np.zeros(20, bool)
    predicted[2:5] = True
    valid = np.ones(20, bool)
    valid[10:] = False  # the ignore label
    population = metrics.calibration_population(reference, predicted, valid, seed=7)
    assert population[:5].tolist() == [0, 1, 2, 3, 4] and len(population) == 10  # 5 + 5 of the 5 others
    assert set(population[5:]) == set(range(5, 10))
    small = metrics.calibration_population(reference, predicted, seed=7)
    assert len(small) == 10 and set(small[5:]) <= set(range(5, 20))
    assert small.tolist() == metrics.calibration_population(reference, predicted, seed=7).tolist()  # seeded
    # empty reference and prediction: no population, undefined (as Dice)
    empty = np.zeros((1, 20), bool)
    scores = metrics.calibration_scores(np.zeros((1, 20)), empty, empty)
    assert np.isnan(scores["ECE"][0]) and np.isnan(scores["Brier"][0])
    # empty reference, class predicted with certainty on 2 voxels: they are all wrong, the 2 sampled right
    predicted = np.zeros((1, 20), bool)
    predicted[0, :2] = True
    scores = metrics.calibration_scores(predicted.astype(float), empty, predicted)
    assert scores["ECE"][0] == pytest.approx(0.5) and scores["Brier"][0] == pytest.approx(0.5)


def test_disagreement_slice_is_where_the_masks_differ_most():
    from nnunet_mcc.experiments.compare_figures import disagreement_slice

    reference = np.zeros((4, 5, 5), bool)
    reference[1:3, 1:4, 1:4] = True
    a, b = reference.copy(), reference.copy()
    b[2, 0, :] = True  # slice 2: 5 voxels differ
    b[1, 0, 0] = True  # slice 1: 1
    assert disagreement_slice(reference, [a, b]) == 2
    assert disagreement_slice(reference, [a, a]) == 1  # no disagreement: the most reference voxels, lowest index
    assert disagreement_slice(reference[:1], [a[:1], b[:1]]) == 0  # a 2D image is one slice


def test_disagreement_cases_take_the_lowest_seed_and_count_an_undefined_dice_as_1():
    from nnunet_mcc.experiments.compare_figures import disagreement_cases

    rows = []
    for trainer, seed, case, dice in [("A", "1", "c1", 0.0), ("A", "0", "c1", 0.9), ("B", "0", "c1", 0.8),
                                      ("B", "1", "c1", 0.8),
                                      ("A", "0", "c2", float("nan")), ("B", "0", "c2", 0.0),  # B invents it
                                      ("A", "0", "c3", 0.5), ("B", "0", "c3", 0.5),  # no spread: never drawn
                                      ("A", "1", "c2", 0.0), ("B", "1", "c2", 0.0),
                                      ("A", "1", "c3", 0.0), ("B", "1", "c3", 0.9)]:
        rows.append({"trainer": trainer, "run": f"{trainer}_seed{seed}", "seed": seed, "fold": 0, "case": case,
                     "class_or_region": "lesion", "kind": "label", "metric": "Dice", "value": dice})
    chosen = disagreement_cases(pd.DataFrame(rows), ["A", "B"], ["lesion"], n_cases=3)
    assert chosen["case"].tolist() == ["c2", "c1"]  # spreads 1 (NaN counts as 1) and 0.1 on seed 0; c3 none
    assert chosen["spread"].tolist() == pytest.approx([1.0, 0.1])
    assert chosen.iloc[1]["runs"] == {"A": "A_seed0", "B": "B_seed0"} and chosen.iloc[1]["dice"]["A"] == 0.9
    assert disagreement_cases(pd.DataFrame(rows), ["A", "B"], ["lesion"], n_cases=0).empty


# ---- end to end ---------------------------------------------------------------------------------
from nnunet_mcc.cli import main as cli_main  # noqa: E402
from nnunet_mcc.experiments.compare import compare  # noqa: E402
from test_compare import nnunet_roots  # noqa: E402

DATASET = "Dataset782_Calib"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
FOLDS = {0: [0, 1, 2], 1: [3, 4, 5]}
SIDE = 32
TRAINERS = ("TrainerA", "TrainerB")  # A: the reference moved along x, one-hot; B: the reference, probability 0.6
CONFIDENCE_B = 0.6


def reference(case: int) -> np.ndarray:
    seg = np.zeros((SIDE, SIDE), dtype=np.uint8)
    top, left = 6 + case, 8 + case
    seg[top:top + 10, left:left + 10] = 1
    seg[top + 3:top + 7, left + 3:left + 7] = 2
    return seg


def prediction(trainer: str, case: int) -> np.ndarray:
    if trainer == "TrainerB":
        return reference(case)
    return np.roll(reference(case), 3 if case == 5 else 1, axis=1)  # case_5: A's largest miss


def probabilities(trainer: str, case: int) -> np.ndarray:
    """(C, 1, y, x) as nnU-Net saves a 2D case: one-hot of A's prediction; B: 0.6 on its class, 0.4 background."""
    seg = prediction(trainer, case)
    p = np.stack([(seg == k).astype(np.float32) for k in range(3)])
    if trainer == "TrainerB":
        p[1:] *= CONFIDENCE_B
        p[0] = 1 - p[1:].sum(axis=0)
    return p[:, None]


def write_image(path: str, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 2.0))
    sitk.WriteImage(image, path)


def counts(pred: np.ndarray, ref: np.ndarray, values) -> dict:
    p, r = np.isin(pred, values), np.isin(ref, values)
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    return {"TP": tp, "FP": fp, "FN": fn, "TN": int(p.size - tp - fp - fn), "n_pred": tp + fp, "n_ref": tp + fn}


@pytest.fixture
def calibration_results(tmp_path, monkeypatch):
    roots = nnunet_roots(tmp_path, monkeypatch, dataset=DATASET, labels=LABELS)
    pre = os.path.join(roots["preprocessed"], DATASET)
    with open(os.path.join(pre, "dataset.json"), "w") as f:
        json.dump({"labels": LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "x"},
                   "evaluation_regions": {"whole": [1, 2]}}, f)
    os.makedirs(os.path.join(pre, "gt_segmentations"))
    os.makedirs(os.path.join(roots["raw"], DATASET, "imagesTr"))
    for case in range(6):
        write_image(os.path.join(pre, "gt_segmentations", f"case_{case}.nii.gz"), reference(case))
        if case != 5:  # case_5's raw image is missing: drawn on the reference alone
            write_image(os.path.join(roots["raw"], DATASET, "imagesTr", f"case_{case}_0000.nii.gz"),
                        (reference(case) * 100.0 + np.arange(SIDE)[None, :]).astype(np.float32))
    for trainer in TRAINERS:
        for fold, cases in FOLDS.items():
            folder = os.path.join(roots["results"], DATASET, f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
            os.makedirs(os.path.join(folder, "validation"))
            with open(os.path.join(folder, "debug.json"), "w") as f:
                json.dump({"num_epochs": "3", "num_iterations_per_epoch": "5", "num_val_iterations_per_epoch": "1"}, f)
            per_case = []
            for case in cases:
                path = os.path.join(folder, "validation", f"case_{case}.nii.gz")
                write_image(path, prediction(trainer, case))
                np.savez_compressed(os.path.join(folder, "validation", f"case_{case}.npz"),
                                    probabilities=probabilities(trainer, case))
                per_case.append({"reference_file": f"{pre}/gt_segmentations/case_{case}.nii.gz",
                                 "prediction_file": path, "metrics": {
                                     str(v): counts(prediction(trainer, case), reference(case), [v]) for v in (1, 2)}})
            with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
                json.dump({"metric_per_case": per_case}, f)
    os.remove(os.path.join(roots["results"], DATASET, f"TrainerB__nnUNetPlans__{CONFIG}", "fold_1", "validation",
                           "case_4.npz"))  # probabilities not saved: a note, no ECE / Brier for that case
    return roots


def one_hot_ece(trainer: str, case: int, values) -> float:
    """A one-hot prediction on foreground + an equal sample of certain background: ECE = Brier = (FP + FN) / N."""
    c = counts(prediction(trainer, case), reference(case), values)
    return (c["FP"] + c["FN"]) / (2 * (c["TP"] + c["FP"] + c["FN"]))


def test_compare_reports_calibration_and_draws_where_the_trainers_disagree(calibration_results, tmp_path, capsys):
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, list(TRAINERS), folds=[0, 1], output=out, bootstrap=20, snapshots=False,
                     boundary=False, pictures=1)
    per_case = result["frames"]["counts"].set_index(["trainer", "case", "class_or_region"])
    for name, values in (("lesion", [1]), ("core", [2]), ("whole", [1, 2])):
        for case in range(6):
            a = per_case.loc[("TrainerA", f"case_{case}", name)]
            assert a["ECE"] == pytest.approx(one_hot_ece("TrainerA", case, values))
            assert a["Brier"] == pytest.approx(one_hot_ece("TrainerA", case, values))
            b = per_case.loc[("TrainerB", f"case_{case}", name)]
            if case == 4:
                assert np.isnan(b["ECE"]) and np.isnan(b["Brier"])
                continue
            # B: its class voxels at 0.6 (right) + as many others at 0 (right): |0.6 - 1| / 2, (0.4^2) / 2
            assert b["ECE"] == pytest.approx(0.2) and b["Brier"] == pytest.approx(0.08)
    table = pd.DataFrame(result["table"]).set_index(["metric", "class_or_region", "trainer"])
    assert table.loc[("ECE", "lesion", "TrainerB"), "mean"] == pytest.approx(0.2)
    assert table.loc[("ECE", "lesion", "TrainerB"), "n_cases"] == 5
    tests = pd.DataFrame(result["tests"]).set_index(["metric", "class_or_region"])
    assert not tests.loc[("Brier", "whole"), "higher_is_better"]
    assert {"ECE", "Brier"} <= set(pd.DataFrame(result["ranks"])["metric"])
    assert result["calibration"]["bins"] == 15 and result["calibration"]["runs_with_probabilities"] == 4
    reliability = pd.DataFrame(result["reliability"]).set_index(["trainer", "class_or_region", "bin"])
    assert reliability.loc[("TrainerB", "lesion", 1), ["mean_probability", "frequency"]].tolist() == \
        pytest.approx([CONFIDENCE_B, 1.0])
    assert reliability.loc[("TrainerB", "lesion", 0), "frequency"] == 0

    # pictures: per class, the case with the largest Dice spread (A's shift of 3 on case_5), its raw image missing
    pictures = result["pictures"]
    assert [(p["class_or_region"], p["case"]) for p in pictures] == [("lesion", "case_5"), ("core", "case_5"),
                                                                     ("whole", "case_5")]
    lesion = counts(prediction("TrainerA", 5), reference(5), [1])
    assert pictures[0]["dice"]["TrainerA"] == pytest.approx(2 * lesion["TP"] / (2 * lesion["TP"] + lesion["FP"]
                                                                                 + lesion["FN"]))
    assert pictures[0]["dice"]["TrainerB"] == 1.0 and pictures[0]["image_missing"].startswith("no raw image")
    page = open(os.path.join(out, "report.md")).read()
    assert "## Calibration" in page and "### ECE (lower is better)" in page and "15 bins, equal-mass" in page
    assert "plus a seeded uniform sample of the other voxels" in page
    assert "## Where the trainers disagree" in page and "drawn on the reference alone" in page
    assert "\n## ECE" not in page  # in the calibration section, not a section of its own
    for file in [p["file"] for p in pictures] + ["calibration/reliability_01_TrainerA.png",
                                                 "calibration/reliability_02_TrainerB.png"]:
        assert f"]({file})" in page
        with open(os.path.join(out, file), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "case(s) without saved probabilities" in page
    assert {"ECE", "Brier"} <= set(pd.read_csv(os.path.join(out, "per_case.csv")).columns)

    args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", *TRAINERS, "-f", "0", "1", "-o", out, "--no-boundary",
            "--bootstrap", "20"]
    assert cli_main(args + ["--calibration-bins", "0"]) == 2
    assert "--calibration-bins must be a whole number of at least 1" in capsys.readouterr().err
    broken = os.path.join(calibration_results["results"], DATASET, f"TrainerA__nnUNetPlans__{CONFIG}", "fold_0",
                          "validation", "case_0.npz")
    with open(broken, "wb") as f:
        f.write(b"not a zip file")
    assert cli_main(args + ["--no-plots"]) == 2
    err = capsys.readouterr().err
    assert broken in err and "not a readable .npz file" in err
    assert cli_main(args + ["--no-plots", "--no-calibration"]) == 0
    assert "## Calibration" not in open(os.path.join(out, "report.md")).read()

"""``nnunet-mcc compare`` on hand-built result folders with known per-case counts.

Every number checked here is recomputed in the test from the counts written into the folders
(Dice, IoU, MCC by their formulas; means and standard deviations by numpy; p-values by scipy on the
same pairs; Holm by hand).
"""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import stats
from nnunet_mcc.experiments.compare import compare

DATASET = "Dataset777_Hand"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
N_VOXELS = 1000


def counts_for(trainer: int, case: int, label: int):
    """Deterministic, varied TP/FP/FN (TN fills the image); trainer 0 is the weakest."""
    tp = 20 + 7 * case + 5 * trainer * label + (3 * case * trainer) % 11
    fp = 3 + (case * (label + 2) + trainer) % 9
    fn = 2 + (5 * case + 3 * label) % 7 + (2 - trainer)
    return tp, fp, fn, N_VOXELS - tp - fp - fn


def write_fold(results_root: str, trainer: str, trainer_index: int, fold: int, cases, finished=True,
               epochs: int = 3):
    folder = os.path.join(results_root, DATASET, f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
    os.makedirs(os.path.join(folder, "validation"), exist_ok=True)
    logging = {"mean_fg_dice": [0.1 * (e + 1) + 0.01 * trainer_index for e in range(epochs)],
               "mean_fg_mcc": [0.1 * (e + 1) for e in range(epochs)],
               "train_losses": [1.0] * epochs, "val_losses": [1.0] * epochs}
    if not finished:
        torch.save({"logging": logging}, os.path.join(folder, "checkpoint_latest.pth"))
        return folder
    torch.save({"logging": logging}, os.path.join(folder, "checkpoint_final.pth"))
    per_case = []
    for case in cases:
        metrics = {}
        for label in (1, 2):
            tp, fp, fn, tn = counts_for(trainer_index, case, label)
            metrics[str(label)] = {"TP": tp, "FP": fp, "FN": fn, "TN": tn, "Dice": 2 * tp / (2 * tp + fp + fn),
                                   "IoU": tp / (tp + fp + fn), "n_pred": tp + fp, "n_ref": tp + fn}
        per_case.append({"reference_file": f"/gt/case_{case:03d}.nii.gz",
                         "prediction_file": f"{folder}/validation/case_{case:03d}.nii.gz", "metrics": metrics})
    with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
        json.dump({"metric_per_case": per_case, "mean": {}, "foreground_mean": {}}, f)
    with open(os.path.join(folder, "debug.json"), "w") as f:  # nnU-Net writes every attribute as a string
        json.dump({"num_epochs": str(epochs), "num_iterations_per_epoch": "7", "num_val_iterations_per_epoch": "2"},
                  f)
    return folder


FOLD_CASES = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
TRAINERS = ["TrainerA", "TrainerB", "TrainerC"]


def nnunet_roots(tmp_path, monkeypatch, dataset=DATASET, labels=None, configuration=CONFIG):
    """nnU-Net's three folders under tmp_path (set in the environment) with a planned, empty dataset."""
    roots = {k: str(tmp_path / k) for k in ("raw", "preprocessed", "results")}
    for k, v in roots.items():
        monkeypatch.setenv(f"nnUNet_{k}", v)
        os.makedirs(v)
    pre = os.path.join(roots["preprocessed"], dataset)
    os.makedirs(pre)
    with open(os.path.join(pre, "nnUNetPlans.json"), "w") as f:
        json.dump({"configurations": {configuration: {}}}, f)
    with open(os.path.join(pre, "dataset.json"), "w") as f:
        json.dump({"labels": labels or LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "x"}}, f)
    return roots


@pytest.fixture
def hand_results(tmp_path, monkeypatch):
    roots = nnunet_roots(tmp_path, monkeypatch)
    for i, trainer in enumerate(TRAINERS):
        for fold, cases in FOLD_CASES.items():
            write_fold(roots["results"], trainer, i, fold, cases)
    return roots


def mcc(tp, fp, fn, tn):
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def expected_scores(trainer_index, cases, label, metric):
    out = []
    for case in cases:
        tp, fp, fn, tn = counts_for(trainer_index, case, label)
        out.append({"Dice": 2 * tp / (2 * tp + fp + fn), "IoU": tp / (tp + fp + fn),
                    "MCC": mcc(tp, fp, fn, tn)}[metric])
    return np.array(out)


def test_table_tests_and_ranks_match_independent_computation(hand_results, tmp_path):
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, TRAINERS, folds=[0, 1], baseline="TrainerA", output=out, bootstrap=100,
                     plots=True, snapshots=False)
    cases = FOLD_CASES[0] + FOLD_CASES[1]
    assert result["cases"] == [f"case_{c:03d}" for c in cases]
    assert result["classes"] == ["lesion", "core", "foreground mean"]
    table = {(e["metric"], e["class_or_region"], e["trainer"]): e for e in result["table"]}
    for metric in ("Dice", "IoU", "MCC"):
        for label, name in ((1, "lesion"), (2, "core")):
            means = {}
            for i, trainer in enumerate(TRAINERS):
                values = expected_scores(i, cases, label, metric)
                entry = table[(metric, name, trainer)]
                assert entry["n_cases"] == 8 and entry["n_folds"] == 2
                assert entry["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert entry["std_cases"] == pytest.approx(values.std(ddof=1), abs=1e-12)
                fold_means = [values[:4].mean(), values[4:].mean()]
                assert entry["std_folds"] == pytest.approx(np.std(fold_means, ddof=1), abs=1e-12)
                means[trainer] = values.mean()
            best = max(means, key=means.get)
            assert [t for t in TRAINERS if table[(metric, name, t)]["best"]] == [best]
        # foreground mean: per case mean over the two labels, then over cases
        fg = (expected_scores(2, cases, 1, metric) + expected_scores(2, cases, 2, metric)) / 2
        assert table[(metric, "foreground mean", "TrainerC")]["mean"] == pytest.approx(fg.mean(), abs=1e-12)

    # Wilcoxon against the baseline on the same 8 cases, Holm over the 2 trainers x 3 rows of a metric
    for metric in ("Dice", "MCC"):
        tests = [t for t in result["tests"] if t["metric"] == metric]
        assert len(tests) == 6
        raw = []
        for t in tests:
            i = TRAINERS.index(t["trainer"])
            if t["class_or_region"] == "foreground mean":
                x = (expected_scores(i, cases, 1, metric) + expected_scores(i, cases, 2, metric)) / 2
                y = (expected_scores(0, cases, 1, metric) + expected_scores(0, cases, 2, metric)) / 2
            else:
                label = 1 if t["class_or_region"] == "lesion" else 2
                x, y = expected_scores(i, cases, label, metric), expected_scores(0, cases, label, metric)
            assert t["n_pairs"] == 8
            assert t["p"] == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-12)
            assert t["median_difference"] == pytest.approx(np.median(x - y), abs=1e-12)
            raw.append(t["p"])
        order = np.argsort(raw)
        running, by_hand = 0.0, [0.0] * 6
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (6 - rank) * raw[index]))
            by_hand[index] = running
        assert [t["p_holm"] for t in tests] == pytest.approx(by_hand, rel=1e-12)

    # rank stability: full-data rank by mean, and rank frequencies summing to one
    fg_dice = {r["trainer"]: r for r in result["ranks"] if r["metric"] == "Dice" and
               r["class_or_region"] == "foreground mean"}
    means = {t: table[("Dice", "foreground mean", t)]["mean"] for t in TRAINERS}
    for t in TRAINERS:
        assert fg_dice[t]["rank"] == 1 + sum(m > means[t] for m in means.values())
        assert sum(float(v) for v in fg_dice[t]["rank_frequencies"].split()) == pytest.approx(1.0)

    # files: tidy CSV with MCC from the counts, tables in three formats, plots
    with open(os.path.join(out, "per_case.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 8 * 2
    row = next(r for r in rows if r["trainer"] == "TrainerB" and r["case"] == "case_005" and r["key"] == "2")
    assert float(row["MCC"]) == pytest.approx(mcc(*counts_for(1, 5, 2)), rel=1e-12)
    assert row["class_or_region"] == "core" and row["fold"] == "1"
    for name in ("summary_table.md", "summary_table.csv", "summary_table.tex", "wilcoxon.csv", "bootstrap_ranks.csv",
                 "report.md", "plots/per_case_dice.png", "plots/per_case_mcc.png", "plots/learning_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    best_dice_lesion = max(TRAINERS, key=lambda t: table[("Dice", "lesion", t)]["mean"])
    tex = open(os.path.join(out, "summary_table.tex")).read()
    assert r"\textbf{" + f"{table[('Dice', 'lesion', best_dice_lesion)]['mean']:.3f}" in tex
    assert "**" + f"{table[('MCC', 'core', max(TRAINERS, key=lambda t: table[('MCC', 'core', t)]['mean']))]['mean']:.3f}" \
        in result["markdown"]


def test_unfinished_and_missing_folds_are_said_and_not_paired(hand_results, tmp_path):
    results_root = hand_results["results"]
    # TrainerC's fold 1 was interrupted: only checkpoint_latest.pth; fold 2 was never started
    import shutil

    shutil.rmtree(os.path.join(results_root, DATASET, f"TrainerC__nnUNetPlans__{CONFIG}", "fold_1"))
    write_fold(results_root, "TrainerC", 2, 1, FOLD_CASES[1], finished=False)
    result = compare(DATASET, CONFIG, TRAINERS, folds=[0, 1, 2], output=str(tmp_path / "r"), bootstrap=50,
                     plots=False, snapshots=False)
    assert "TrainerC fold 1: unfinished" in result["notes"]
    assert "TrainerA fold 2: missing" in result["notes"]
    assert result["cases"] == [f"case_{c:03d}" for c in FOLD_CASES[0]]
    assert any("4 of 8 cases are left out" in n for n in result["notes"])
    entry = next(e for e in result["table"] if e["metric"] == "Dice" and e["class_or_region"] == "lesion"
                 and e["trainer"] == "TrainerA")
    assert entry["n_cases"] == 4 and entry["n_folds"] == 1
    assert entry["mean"] == pytest.approx(expected_scores(0, FOLD_CASES[0], 1, "Dice").mean())
    assert all(t["n_pairs"] == 4 for t in result["tests"])
    assert "unfinished" in result["markdown"]


def test_mcc_of_an_empty_prediction_counts_as_zero_not_missing(hand_results, tmp_path):
    from nnunet_mcc.experiments.results import scores_from_counts

    # a present class predicted nowhere; a class in neither; counts whose products overflow int64
    scores = scores_from_counts([0, 0, 3e9], [0, 0, 1e9], [50, 0, 2e9], [950, 1000, 9e9])
    assert scores["Dice"][0] == 0.0 and scores["MCC"][0] == 0.0
    assert math.isnan(scores["Dice"][1]) and math.isnan(scores["MCC"][1])
    assert scores["MCC"][2] == pytest.approx(mcc(3e9, 1e9, 2e9, 9e9))


def test_holm_and_wilcoxon_helpers():
    assert stats.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([0.5, float("nan")])[1])
    assert stats.wilcoxon_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])["p"] == 1.0
    assert math.isnan(stats.wilcoxon_paired([0.5], [0.4])["p"])
    ranks = stats.bootstrap_ranks(np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), n_samples=50)
    assert ranks["full_rank"].tolist() == [1, 2] and ranks["frequency"][0, 0] == 1.0


@pytest.mark.parametrize("case", ["no_dataset", "unknown_trainer", "corrupt_summary", "no_plans", "no_results"])
def test_bad_input_is_one_line_and_exit_2(hand_results, case, capsys):
    args = ["compare", "-d", "777", "-c", CONFIG, "-tr", "TrainerA", "TrainerB", "--no-plots"]
    if case == "no_dataset":
        args[2] = "778"
    elif case == "unknown_trainer":
        args[6] = "TrainerZ"
    elif case == "corrupt_summary":
        path = os.path.join(hand_results["results"], DATASET, f"TrainerB__nnUNetPlans__{CONFIG}", "fold_0",
                            "validation", "summary.json")
        with open(path, "w") as f:
            f.write('{"metric_per_case": [{"metrics": ')
    elif case == "no_plans":
        args[4] = "3d_fullres"
    elif case == "no_results":
        import shutil

        shutil.rmtree(os.path.join(hand_results["results"], DATASET))
        os.makedirs(os.path.join(hand_results["raw"], DATASET))
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    expected = {"no_dataset": "778", "unknown_trainer": "TrainerZ", "corrupt_summary": "summary.json",
                "no_plans": "3d_fullres", "no_results": "has no results"}[case]
    assert expected in err


def test_baseline_must_be_compared(hand_results, tmp_path):
    with pytest.raises(UserError, match="baseline"):
        compare(DATASET, CONFIG, ["TrainerA"], baseline="TrainerB", output=str(tmp_path / "x"))

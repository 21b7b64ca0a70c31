"""``nnunet-mcc compare`` on hand-built result trees: budgets, provenance, trees without checkpoints,
convergence verdicts and the banner, snapshots, and bad input (one line, exit 2, nothing written)."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence
from nnunet_mcc.experiments.compare import compare
from test_compare import nnunet_roots

DATASET = "Dataset778_Tree"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
CASES = {0: [0, 1, 2, 3, 4], 1: [5, 6, 7, 8, 9]}
N = 1000


def plateau(epochs, level=0.8, seed=0):
    """Rises over the first third, then flat with small noise (a converged run)."""
    rng = np.random.default_rng(seed)
    x = np.arange(epochs)
    return (level * np.minimum(1.0, (x + 1) / (epochs / 3)) + rng.normal(0, 0.005, epochs)).tolist()


def rising(epochs, seed=0):
    """Still climbing steeply at the end (an unconverged run)."""
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * np.arange(epochs) / epochs + rng.normal(0, 0.005, epochs)).tolist()


def write_run(root, trainer, fold, index, budget=(20, 10, 2), curve="plateau", provenance=None, debug="ok",
              snapshots=(), summary_counts=True):
    """A fold as a cluster copy leaves it: validation/summary.json, debug.json, our log; no checkpoint."""
    folder = os.path.join(root, DATASET, f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
    os.makedirs(os.path.join(folder, "validation"), exist_ok=True)

    def summary(shift):
        per_case = []
        for case in CASES[fold]:
            metrics = {}
            for label in (1, 2):
                tp = 40 + 5 * case + 4 * index + shift + label
                fp, fn = 3 + (case + label) % 4, 4 + (case * label) % 3
                entry = {"TP": tp, "FP": fp, "FN": fn, "TN": N - tp - fp - fn, "Dice": 0.0, "IoU": 0.0}
                if not summary_counts:
                    del entry["TP"]
                metrics[str(label)] = entry
            per_case.append({"reference_file": f"/gt/c{case:02d}.nii.gz", "prediction_file": f"/p/c{case:02d}.nii.gz",
                             "metrics": metrics})
        return {"metric_per_case": per_case}

    with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
        json.dump(summary(0), f)
    epochs, per_epoch, val = budget
    if debug == "ok":
        with open(os.path.join(folder, "debug.json"), "w") as f:
            json.dump({"num_epochs": str(epochs), "num_iterations_per_epoch": str(per_epoch),
                       "num_val_iterations_per_epoch": str(val), "loss": "DeepSupervisionWrapper(\n  (loss): "
                       "DC_and_CE_loss(\n  )\n)"}, f)
    elif debug == "missing" and os.path.exists(os.path.join(folder, "debug.json")):
        os.remove(os.path.join(folder, "debug.json"))
    elif debug == "corrupt":
        with open(os.path.join(folder, "debug.json"), "w") as f:
            f.write('{"num_epochs": ')
    if curve:
        dice = {"plateau": plateau, "rising": rising}[curve](epochs, seed=fold + 10 * index)
        series = {"mean_fg_dice": dice, "ema_fg_dice": dice, "mean_fg_mcc": dice, "train_losses": [0.0] * epochs,
                  "val_losses": [0.0] * epochs}
        with open(os.path.join(folder, "nnunet_mcc_log.json"), "w") as f:
            json.dump({"format": 1, "iterations_per_epoch": per_epoch, "epochs_completed": epochs, "series": series}, f)
    if provenance is not None:
        with open(os.path.join(folder, "nnunet_mcc_provenance.json"), "w") as f:
            json.dump({"format": 1, "trainer": trainer, "budget": dict(zip(
                ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"), budget)),
                "loss": provenance}, f)
    for epoch in snapshots:
        snap = os.path.join(folder, "snapshots", f"epoch_{epoch}")
        os.makedirs(snap)
        content = summary(-10 + epoch // 5)
        content.update(epoch=epoch, iterations=epoch * per_epoch)
        with open(os.path.join(snap, "summary.json"), "w") as f:
            json.dump(content, f)
    return folder


@pytest.fixture
def tree(tmp_path, monkeypatch):
    return nnunet_roots(tmp_path, monkeypatch, DATASET, LABELS, CONFIG)["results"]


def fill(root, trainers=("A", "B"), **kwargs):
    for i, t in enumerate(trainers):
        for fold in CASES:
            write_run(root, t, fold, i, **kwargs)


def test_results_without_checkpoints_compare_and_the_report_carries_provenance(tree, tmp_path):
    mcc = {"name": "soft MCC", "settings": {"batch": True, "include_background": False}}
    for fold in CASES:
        write_run(tree, "A", fold, 0)
        write_run(tree, "B", fold, 1, provenance=mcc)
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=out, bootstrap=20, plots=True)
    assert not any(name.endswith(".pth") for _, _, files in os.walk(tree) for name in files)
    assert result["cases"] == [f"c{c:02d}" for c in range(10)]
    runs = {(r["trainer"], r["fold"]): r for r in result["runs"]}
    assert runs[("A", 0)]["budget"] == "20 x 10 (val 2)" and runs[("A", 0)]["iterations"] == 200
    assert runs[("A", 0)]["loss"] == "DC_and_CE_loss"  # from nnU-Net's debug.json of a stock trainer
    assert runs[("B", 1)]["loss"] == "soft MCC" and json.loads(runs[("B", 1)]["loss_settings"])["batch"] is True
    page = open(os.path.join(out, "report.md")).read()
    assert "**Budget of every run:** 20 epochs x 10 iterations = 200 training iterations" in page
    assert "soft MCC" in page and "batch=True" in page
    assert "All 4 runs converged" in page and "Not converged" not in page
    # a converged curve is not the end of training: the banner says what the judge's calibration found
    assert "A converged curve can still gain from a longer schedule" in page and convergence.CALIBRATION in page
    # learning curves against iterations (epochs x iterations per epoch), from nnunet_mcc_log.json
    curves = result["frames"]["curves"]
    dice = curves[(curves["trainer"] == "B") & (curves["fold"] == 1) & (curves["series"] == "mean_fg_dice")]
    assert dice["iterations"].tolist() == [10 * e for e in range(1, 21)]
    for name in ("runs.csv", "learning_curves.csv", "plots/learning_curves.png", "summary_table.tex"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    tex = open(os.path.join(out, "summary_table.tex")).read()
    assert r"$\pm$" in tex and r"\textbackslash" not in tex and "Dataset778\\_Tree" in tex


def test_unconverged_runs_put_the_banner_first_and_mark_the_tests(tree, tmp_path):
    for fold in CASES:
        write_run(tree, "A", fold, 0, curve="plateau")
        write_run(tree, "B", fold, 3, curve="rising")
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    verdicts = {r["trainer"]: r["converged"] for r in result["trainer_runs"]}
    # the column says what it counts (it said "yes" / "no (0 of 2 folds)": issue 18's unambiguous label)
    assert verdicts == {"A": "2 of 2 folds converged", "B": "0 of 2 folds converged"}
    lines = result["full_markdown"].splitlines()
    assert lines[2].startswith("> **Not converged: 2 of 4 runs had not plateaued")
    assert "training speed" in lines[2] and "not the final quality" in lines[2]
    marked = [t for t in result["tests"] if t["significant_0.05"]]
    assert marked and all(t["caveat_not_converged"] for t in marked)
    assert "*†" in result["full_markdown"]


def test_logs_absent_are_said_and_leave_the_verdict_open(tree, tmp_path):
    fill(tree, curve=None)
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=True)
    assert any("A fold 0: no nnunet_mcc_log.json and no checkpoint: no learning curve" in n for n in result["notes"])
    assert {r["converged"] for r in result["trainer_runs"]} == {"not judged (no log)"}
    assert any(n.startswith("no snapshot validations") for n in result["notes"])
    assert "Not converged: 4 of 4" in result["full_markdown"]
    assert not os.path.exists(str(tmp_path / "r" / "plots" / "learning_curves.png"))


def test_mixed_budgets_are_refused_unless_asked_for(tree, tmp_path, capsys):
    fill(tree)
    write_run(tree, "B", 1, 1, budget=(40, 10, 2))  # one fold trained twice as long
    out = tmp_path / "r"
    args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "B", "-f", "0", "1", "-o", str(out), "--no-plots"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 different budgets" in err
    assert "20 x 10 (val 2)" in err and "40 x 10 (val 2)" in err and "B fold 1" in err
    assert not out.exists()
    assert cli_main(args + ["--allow-mixed-budgets", "--bootstrap", "20"]) == 0
    page = (out / "report.md").read_text()
    assert "**Mixed budgets (paired on request, --allow-mixed-budgets):**" in page
    assert "20 x 10 (val 2) / 40 x 10 (val 2)" in page


def test_loss_settings_that_differ_between_folds_are_flagged(tree, tmp_path):
    for fold in CASES:
        write_run(tree, "A", fold, 0)
        write_run(tree, "B", fold, 1, provenance={"name": "GWDL", "settings": {
            "distance_matrix": [[0, 1], [1, 0]], "matrix_source": "label names" if fold == 0 else "0/1"}})
    # issue 17: folds of one trainer trained with different settings are no longer paired silently (it was a note)
    with pytest.raises(UserError, match=r"B: 2 different settings \(matrix_source\) in B fold 0"):
        compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20, plots=False)
    assert not (tmp_path / "r").exists()
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False, allow_mixed_settings=True)
    assert any(n.startswith("B: loss settings differ between folds (matrix_source") for n in result["notes"])
    assert any(n.startswith("mixed settings (paired on request, --allow-mixed-settings): B:") for n in result["notes"])


def test_score_after_n_iterations_from_snapshot_summaries(tree, tmp_path):
    fill(tree, snapshots=(5, 10))
    shutil.rmtree(write_run(tree, "B", 1, 1, snapshots=()))
    write_run(tree, "B", 1, 1, snapshots=(5,))  # one fold lacks a snapshot the others have
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    snap = {(s["trainer"], int(s["iterations"])): s for s in result["snapshots"]}
    assert sorted(snap) == [("A", 50), ("A", 100), ("A", 200), ("B", 50), ("B", 100), ("B", 200)]
    assert snap[("A", 200)]["stage"] == "final" and snap[("A", 50)]["n_cases"] == 10
    assert snap[("B", 100)]["n_cases"] == 5
    tidy = result["frames"]["tidy"]
    expected = tidy[(tidy["trainer"] == "B") & (tidy["epoch"] == 5) & (tidy["metric"] == "Dice") &
                    (tidy["class_or_region"] == "foreground mean")]["value"].mean()
    assert snap[("B", 50)]["Dice"] == pytest.approx(expected)
    assert "## Score after N iterations" in result["markdown"] and "50 it." in result["markdown"]
    assert "B fold 1: no snapshot validation after epoch(s) 10" in result["notes"]


@pytest.mark.parametrize("case", ["debug_missing", "debug_corrupt", "no_counts"])
def test_bad_records_are_one_line_exit_2_and_nothing_written(tree, tmp_path, capsys, case):
    fill(tree)
    if case == "no_counts":
        write_run(tree, "B", 0, 1, summary_counts=False)
    else:
        write_run(tree, "B", 0, 1, debug={"debug_missing": "missing", "debug_corrupt": "corrupt"}[case])
    out = tmp_path / "r"
    code = cli_main(["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "B", "-f", "0", "1", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"debug_missing": "debug.json", "debug_corrupt": "not valid JSON", "no_counts": "TP, FP, FN, TN"}[case] in err
    assert "B__nnUNetPlans__2d/fold_0" in err
    assert not out.exists() and not any(p.name.startswith(".r") for p in tmp_path.iterdir())


# ---- the convergence criterion ----------------------------------------------------------------
def test_a_plateau_converges_whatever_the_lagging_ema_says():
    raw = plateau(30)
    ema = [raw[0]]
    for v in raw[1:]:
        ema.append(0.9 * ema[-1] + 0.1 * v)
    assert ema[-1] - ema[-8] > convergence.TOLERANCE  # nnU-Net's EMA is still rising ...
    verdict = convergence.judge({"mean_fg_dice": raw, "ema_fg_dice": ema}, 50)
    assert verdict.converged and verdict.window_epochs == 15  # ... the raw series has stopped (window: last half)


def test_rising_short_and_missing_curves_do_not_converge():
    rise = convergence.judge({"mean_fg_dice": rising(40)}, 50)
    assert rise.status == convergence.NO and rise.gains["mean_fg_dice"] > 0.1
    # the MCC series alone can withhold the verdict
    assert convergence.judge({"mean_fg_dice": plateau(40), "mean_fg_mcc": rising(40)}).status == convergence.NO
    assert convergence.judge({"mean_fg_dice": plateau(9)}).status == convergence.TOO_SHORT
    assert convergence.judge(None).status == convergence.NO_LOG
    assert convergence.judge({"mean_fg_dice": [float("nan")] * 30}).status == convergence.NO_LOG
    # a falling curve has stopped improving; a few outlying epochs do not move the robust trend
    assert convergence.judge({"mean_fg_dice": list(np.linspace(0.9, 0.7, 30))}).converged
    spiky = plateau(40)
    spiky[-3] = spiky[-6] = 0.2
    assert convergence.judge({"mean_fg_dice": spiky}).converged
    assert math.isnan(convergence.projected_gain(np.array([0.5, np.nan])))

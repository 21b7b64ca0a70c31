"""The main job end to end on a small budget, snapshot validation, and ``benchmarks/run_all.py``."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_e2e import BIN, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e
def test_demo_small_end_to_end(tmp_path):
    import SimpleITK as sitk

    work = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(MPLBACKEND="agg", PYTHONUNBUFFERED="1")
    cmd = [os.path.join(BIN, "nnunet-mcc"), "demo", "--work-dir", str(work), "-tr", "nnUNetTrainerBaseline",
           "nnUNetTrainerMCC_CE", "-f", "0", "1", "--cases", "10", "--epochs", "2", "--iterations", "4",
           "--val-iterations", "1", "--bootstrap", "50", "-j", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"work folder {work}" in proc.stdout
    report = work / "report"
    assert f"Report folder: {report}" in proc.stdout
    assert "| whole_tumor |" in proc.stdout and "## Paired Wilcoxon" in proc.stdout

    rows = read_csv(report / "per_case.csv")
    # 2 trainers x 4 validation cases (folds 0 and 1 of 10 cases) x (3 labels + 2 evaluation regions)
    assert len(rows) == 2 * 4 * 5
    assert {r["class_or_region"] for r in rows} == {"edema", "non_enhancing_tumor", "enhancing_tumor",
                                                    "whole_tumor", "tumor_core"}
    # the whole-tumour region recomputed from the exported prediction and nnU-Net's reference segmentation
    row = next(r for r in rows if r["class_or_region"] == "whole_tumor" and r["trainer"] == "nnUNetTrainerMCC_CE")
    dataset = "Dataset990_ImbalancedDemo"
    prediction = work / "nnUNet_results" / dataset / "nnUNetTrainerMCC_CE__nnUNetPlans__2d_small" / \
        f"fold_{row['fold']}" / "validation" / f"{row['case']}.nii.gz"
    reference = work / "nnUNet_preprocessed" / dataset / "gt_segmentations" / f"{row['case']}.nii.gz"
    pred = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))), [1, 2, 3])
    ref = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(reference))), [1, 2, 3])
    tp, fp, fn = float((pred & ref).sum()), float((pred & ~ref).sum()), float((~pred & ref).sum())
    tn = float(pred.size) - tp - fp - fn
    assert float(row["TP"]) == tp and float(row["FP"]) == fp and float(row["FN"]) == fn and float(row["TN"]) == tn
    if tp + fp + fn:
        assert float(row["Dice"]) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # the printed table is the mean of the per-case CSV
    table = read_csv(report / "summary_table.csv")
    entry = next(e for e in table if e["metric"] == "MCC" and e["class_or_region"] == "edema"
                 and e["trainer"] == "nnUNetTrainerBaseline")
    values = [float(r["MCC"]) for r in rows if r["class_or_region"] == "edema" and r["trainer"] == "nnUNetTrainerBaseline"]
    assert float(entry["mean"]) == pytest.approx(np.nanmean(values))
    for name in ("summary_table.md", "summary_table.tex", "wilcoxon.csv", "plots/learning_curves.png",
                 "plots/per_case_dice.png"):
        assert (report / name).stat().st_size > 0
    settings = json.loads((work / "demo_settings.json").read_text())
    assert settings["budget"] == {"epochs": 2, "iterations": 4, "val_iterations": 1}


@pytest.mark.e2e
def test_snapshot_checkpoints_are_validated_for_the_score_after_n_epochs_table(prepared, nnunet_env, tmp_path):
    dataset = prepared("2d_multiclass")
    trainer, config = "nnUNetTrainerMCC_CE", "2d_small"
    run(["nnunet-mcc", "crossval", "-d", dataset, "-c", config, "-tr", trainer, "-f", "0", "-device", "cpu",
         "--epochs", "2", "--iterations", "3", "--snapshot-epochs", "1"], nnunet_env)
    fold = os.path.join(nnunet_env["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__{config}", "fold_0")
    assert os.path.isfile(os.path.join(fold, "checkpoint_epoch_1.pth"))
    out = str(tmp_path / "report")
    proc = run(["nnunet-mcc", "compare", "-d", dataset, "-c", config, "-tr", trainer, "-f", "0", "-o", out,
                "-device", "cpu", "--no-plots", "--bootstrap", "20"], nnunet_env)
    assert "Score after N epochs" in proc.stdout
    snapshots = read_csv(os.path.join(out, "snapshots.csv"))
    assert [int(s["epoch"]) for s in snapshots] == [1, 2]
    assert [int(s["iterations"]) for s in snapshots] == [3, 6]
    # epoch 1 from nnU-Net's own validation of the snapshot: recompute its mean foreground Dice
    summary_path = os.path.join(fold, "snapshot_validation", "epoch_1", dataset,
                                f"{trainer}__nnUNetPlans__{config}", "fold_0", "validation", "summary.json")
    with open(summary_path) as f:
        summary = json.load(f)
    per_case = []
    for entry in summary["metric_per_case"]:
        dice = [2 * m["TP"] / (2 * m["TP"] + m["FP"] + m["FN"]) if m["TP"] + m["FP"] + m["FN"] else np.nan
                for m in entry["metrics"].values()]
        per_case.append(np.nanmean(dice) if np.isfinite(dice).any() else np.nan)
    assert float(snapshots[0]["Dice"]) == pytest.approx(np.nanmean(per_case))
    assert int(snapshots[0]["n_cases"]) == len(summary["metric_per_case"])


def test_run_all_reports_broken_benchmarks_as_rows(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "run_all.py").write_text(open(os.path.join(REPO, "benchmarks", "run_all.py")).read())
    (bench / "bench_good.py").write_text(
        "def run(quick=False):\n"
        "    return [{'benchmark': 'good', 'case': 'quick' if quick else 'full', 'measure': 'time', 'ours': 2.0,\n"
        "             'reference_name': 'ref', 'reference': 4.0, 'ratio': 0.5, 'target': '<= 1.0x', 'ok': True}]\n")
    (bench / "bench_broken.py").write_text("import no_such_module_here\n")
    (bench / "bench_raises.py").write_text("def run(quick=False):\n    raise RuntimeError('boom')\n")
    proc = subprocess.run([sys.executable, str(bench / "run_all.py"), "--quick", "--csv", str(tmp_path / "b.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    rows = {r["benchmark"]: r for r in read_csv(tmp_path / "b.csv")}
    assert rows["good"]["case"] == "quick" and rows["good"]["ok"] == "True" and rows["good"]["ratio"] == "0.5"
    assert "import failed" in rows["bench_broken"]["error"] and "boom" in rows["bench_raises"]["error"]
    assert "2 of 3 rows ok" not in proc.stdout and "1 of 3 rows ok" in proc.stdout

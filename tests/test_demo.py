"""The main job end to end on a small budget, snapshot validation, and ``benchmarks/run_all.py``."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_e2e import BIN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _demo_args(*argv):
    import argparse

    from nnunet_mcc.experiments import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(list(argv))
    demo._check_args(args)
    return args


def test_demo_profiles_set_budget_seeds_shape_and_width_unless_given():
    default = _demo_args()
    assert (default.epochs, default.seeds, default.shape, default.base_features) == (50, None, [64, 64], 8)
    converge = _demo_args("--converge")
    assert (converge.epochs, converge.iterations, converge.val_iterations, converge.seeds) == (64, 20, 3, [0, 1, 2])
    assert (converge.shape, converge.base_features, converge.snapshot_epochs) == ([48, 48], 16, [16, 32])
    given = _demo_args("--converge", "--shape", "64", "64", "--base-features", "8", "--seeds", "3",
                       "--val-iterations", "12")
    assert (given.shape, given.base_features, given.seeds, given.epochs) == ([64, 64], 8, [3], 64)
    assert given.val_iterations == 12


@pytest.mark.parametrize("argv, message", [(("--base-features", "0"), "--base-features must be 1-32"),
                                           (("--base-features", "64"), "--base-features must be 1-32"),
                                           (("--shape", "8", "8"), "--shape needs 2 or 3 sizes of at least 16"),
                                           (("--full-network", "--base-features", "16"), "give one of them")])
def test_demo_refuses_bad_network_and_shape(argv, message):
    from nnunet_mcc.errors import UserError

    with pytest.raises(UserError, match=message):
        _demo_args(*argv)


@pytest.mark.e2e
def test_demo_small_end_to_end(tmp_path):
    """The main job on a reduced budget with two seeds: provenance, seeds, convergence verdict, snapshots and
    regions in the report."""
    import SimpleITK as sitk

    work = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_MCC_"))}
    env.update(MPLBACKEND="agg", PYTHONUNBUFFERED="1")
    cmd = [os.path.join(BIN, "nnunet-mcc"), "demo", "--work-dir", str(work), "-tr", "nnUNetTrainerBaseline",
           "nnUNetTrainerMCC", "-f", "0", "--cases", "10", "--epochs", "3", "--iterations", "4",
           "--val-iterations", "1", "--snapshot-epochs", "2", "--bootstrap", "50", "-j", "2", "--seeds", "0", "1",
           "--shape", "48", "48", "--base-features", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"work folder {work}" in proc.stdout
    report = work / "report"
    assert f"Report folder: {report}" in proc.stdout
    assert "| whole_tumor " in proc.stdout and "## Paired Wilcoxon" in proc.stdout
    assert " s in all, " in proc.stdout and "CPU-s" in proc.stdout  # the time split
    # three epochs are too few to judge: the verdict and the banner come first, with the budget
    page = (report / "report.md").read_text()
    lines = page.splitlines()
    assert lines[2].startswith("> **Not converged: 4 of 4 runs had not plateaued")
    # two seeds: the spread between them is reported, and called a rough estimate
    assert "**Training noise** measured over 2 seeds per trainer (two seeds: the spread is a rough estimate)" in page
    assert "nnUNetTrainerMCC vs nnUNetTrainerBaseline (foreground mean Dice): difference" in page
    assert "**Budget of every run:** 3 epochs x 4 iterations = 12 training iterations, 1 validation iteration per epoch" in page
    assert "too short to judge (3 epochs logged, needs 10)" in page
    # provenance of every run: budget and where it came from, the loss, the versions
    runs = [r for r in read_csv(report / "runs.csv") if "+" not in r["trainer"]]
    assert len(runs) == 4 and {r["budget"] for r in runs} == {"3 x 4 (val 1)"}
    assert sorted((r["trainer"], r["run"], r["fold"]) for r in runs) == sorted(
        (t, f"{t}_seed{s}", "0") for t in ("nnUNetTrainerBaseline", "nnUNetTrainerMCC") for s in (0, 1))
    assert {r["seed"] for r in runs} == {"0", "1"} and {r["deterministic"] for r in runs} == {"True"}
    # what each run cost, recorded by the trainer and reported per trainer beside the baseline
    assert all(float(r["cost_wall_seconds"]) > 0 and float(r["cost_train_iterations"]) == 12 for r in runs)
    cost = {r["trainer"]: r for r in read_csv(report / "cost.csv")}
    assert set(cost) == {"nnUNetTrainerBaseline", "nnUNetTrainerMCC", "nnUNetTrainerMCC+nnUNetTrainerBaseline"}
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| nnUNet")]
    cost_rows = {c[0]: c for c in cells if len(c) == 9 and c[1] in ("cpu", "n/a")}  # the report's cost table
    assert cost_rows["nnUNetTrainerMCC"][-1] == "2 x 1"  # jobs x threads
    assert cost_rows["nnUNetTrainerMCC+nnUNetTrainerBaseline"][-1] == "n/a"  # an ensemble has no cost of its own
    mcc_run = next(r for r in runs if r["trainer"] == "nnUNetTrainerMCC")
    assert mcc_run["loss"] != "unknown" and mcc_run["loss_settings"] not in ("", "{}")
    assert "NNUNET_MCC_EPOCHS" in mcc_run["budget_sources"] and "nnunetv2" in mcc_run["versions"]
    assert mcc_run["log_source"] == "nnunet_mcc_log.json"
    curves = read_csv(report / "learning_curves.csv")
    assert sorted({int(c["iterations"]) for c in curves}) == [4, 8, 12]

    rows = read_csv(report / "per_case.csv")
    final = [r for r in rows if r["stage"] == "final"]
    # (2 trainers + the ensemble of the two) x 2 seeds x 2 validation cases (fold 0 of 10 cases) x (3 labels + 2
    # evaluation regions)
    assert len(final) == 3 * 2 * 2 * 5
    assert {r["trainer"] for r in final} == {"nnUNetTrainerBaseline", "nnUNetTrainerMCC",
                                             "nnUNetTrainerMCC+nnUNetTrainerBaseline"}
    assert {r["class_or_region"] for r in final} == {"edema", "non_enhancing_tumor", "enhancing_tumor",
                                                     "whole_tumor", "tumor_core"}
    # the whole-tumour region recomputed from the exported prediction and nnU-Net's reference segmentation
    row = next(r for r in final if r["class_or_region"] == "whole_tumor" and r["trainer"] == "nnUNetTrainerMCC")
    dataset = "Dataset990_ImbalancedDemo"
    fold = work / "nnUNet_results" / dataset / f"{row['run']}__nnUNetPlans__2d_small" / f"fold_{row['fold']}"
    reference = work / "nnUNet_preprocessed" / dataset / "gt_segmentations" / f"{row['case']}.nii.gz"
    pred = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(fold / "validation" / f"{row['case']}.nii.gz"))),
                   [1, 2, 3])
    ref = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(reference))), [1, 2, 3])
    tp, fp, fn = float((pred & ref).sum()), float((pred & ~ref).sum()), float((~pred & ref).sum())
    tn = float(pred.size) - tp - fp - fn
    assert float(row["TP"]) == tp and float(row["FP"]) == fp and float(row["FN"]) == fn and float(row["TN"]) == tn
    # the printed table is the mean of the per-case CSV
    table = read_csv(report / "summary_table.csv")
    entry = next(e for e in table if e["metric"] == "MCC" and e["class_or_region"] == "edema"
                 and e["trainer"] == "nnUNetTrainerBaseline")
    values = [float(r["MCC"]) for r in final if r["class_or_region"] == "edema" and r["trainer"] == "nnUNetTrainerBaseline"]
    assert float(entry["mean"]) == pytest.approx(np.nanmean(values))
    # score after N iterations: the snapshot at epoch 2 (8 iterations), validated during training
    snapshots = read_csv(report / "snapshots.csv")
    assert sorted({int(s["iterations"]) for s in snapshots}) == [8, 12]
    summary = json.loads((fold / "snapshots" / "epoch_2" / "summary.json").read_text())
    assert summary["iterations"] == 8
    for name in ("summary_table.md", "summary_table.tex", "wilcoxon.csv", "plots/learning_curves.png",
                 "plots/per_case_dice.png"):
        assert (report / name).stat().st_size > 0
    # beyond overlap: boundary distances, calibration from the saved probabilities, pictures, the ensemble of losses
    assert "## HD95 (mm, lower is better)" in page and "## NSD" in page and "## Calibration" in page
    calibration = page[page.index("## Calibration"):]
    assert "From 6 of 6 runs" in calibration  # 4 trained runs and 2 ensemble runs, every one with probabilities
    assert all(t in calibration for t in ("nnUNetTrainerBaseline", "nnUNetTrainerMCC"))
    assert "## Where the trainers disagree" in page
    pictures = sorted((report / "disagreement").glob("*.png"))
    assert len(pictures) >= 2 and all(p.name in page for p in pictures)
    ensemble = report / "ensembles" / "nnUNetTrainerMCC+nnUNetTrainerBaseline_seed0" / "fold_0" / "validation"
    assert (ensemble / "summary.json").is_file()
    assert any(n.endswith(".npz") for n in os.listdir(fold / "validation"))
    settings = json.loads((work / "demo_settings.json").read_text())
    assert settings["budget"] == {"epochs": 3, "iterations": 4, "val_iterations": 1}
    assert (settings["plans"], settings["planner"]) == ("nnUNetPlans", "ExperimentPlanner")
    # the network's width and the images' shape as asked, recorded and planned
    assert settings["network"]["base_features"] == 4 and settings["spec"]["shape"] == [48, 48]
    plans = json.loads((work / "nnUNet_preprocessed" / dataset / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d_small"]["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    # two trainings at a time on the CPU: each its share of the cores (crossval's rule), recorded
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    allocation = json.loads((fold / "nnunet_mcc_provenance.json").read_text())["allocation"]
    assert (allocation["NNUNET_MCC_TORCH_THREADS"], allocation["OMP_NUM_THREADS"]) == (share, share)
    assert {float(r["cost_torch_threads"]) for r in runs} == {float(share)}
    assert {float(r["cost_jobs"]) for r in runs} == {2.0}


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

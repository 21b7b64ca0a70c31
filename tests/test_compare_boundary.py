"""``nnunet-mcc compare`` with boundary metrics, end to end: fold folders holding nnU-Net's exported validation
predictions and the dataset's gt_segmentations, written with SimpleITK; every expected distance worked out by hand."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("monai")
sitk = pytest.importorskip("SimpleITK")

from nnunet_mcc.cli import main as cli_main  # noqa: E402
from nnunet_mcc.experiments.compare import compare  # noqa: E402
from test_compare import nnunet_roots  # noqa: E402

DATASET = "Dataset781_Bound"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
FOLDS = {0: [0, 1, 2], 1: [3, 4, 5]}
SPACING_XY = (0.5, 2.0)  # mm along x (columns) and y (rows), as SimpleITK spells it
SHIFT = {"TrainerA": 1, "TrainerB": 2}  # each trainer's prediction: the reference moved this many columns (x)
SIDE = 32


def reference(case: int) -> np.ndarray:
    seg = np.zeros((SIDE, SIDE), dtype=np.uint8)
    top, left = 6 + case, 8 + case
    seg[top:top + 10, left:left + 10] = 1
    seg[top + 3:top + 7, left + 3:left + 7] = 2
    return seg


def prediction(trainer: str, case: int) -> np.ndarray:
    seg = np.roll(reference(case), SHIFT[trainer], axis=1)
    if trainer == "TrainerB" and case == 0:
        seg[seg == 2] = 1  # the core missed: empty prediction, present reference
    return seg


def write_image(path: str, seg: np.ndarray) -> None:
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(SPACING_XY)
    sitk.WriteImage(image, path)


def counts(pred: np.ndarray, ref: np.ndarray, values) -> dict:
    p, r = np.isin(pred, values), np.isin(ref, values)
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    return {"TP": tp, "FP": fp, "FN": fn, "TN": int(p.size - tp - fp - fn), "n_pred": tp + fp, "n_ref": tp + fn}


@pytest.fixture
def boundary_results(tmp_path, monkeypatch):
    roots = nnunet_roots(tmp_path, monkeypatch, dataset=DATASET, labels=LABELS)
    pre = os.path.join(roots["preprocessed"], DATASET)
    with open(os.path.join(pre, "dataset.json"), "w") as f:
        json.dump({"labels": LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "x"},
                   "evaluation_regions": {"whole": [1, 2]}}, f)
    os.makedirs(os.path.join(pre, "gt_segmentations"))
    for case in sum(FOLDS.values(), []):
        write_image(os.path.join(pre, "gt_segmentations", f"case_{case}.nii.gz"), reference(case))
    for trainer in SHIFT:
        for fold, cases in FOLDS.items():
            folder = os.path.join(roots["results"], DATASET, f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
            os.makedirs(os.path.join(folder, "validation"))
            torch.save({"logging": {"mean_fg_dice": [0.5] * 3, "train_losses": [1.0] * 3, "val_losses": [1.0] * 3}},
                       os.path.join(folder, "checkpoint_final.pth"))
            with open(os.path.join(folder, "debug.json"), "w") as f:
                json.dump({"num_epochs": "3", "num_iterations_per_epoch": "5", "num_val_iterations_per_epoch": "1"}, f)
            per_case = []
            for case in cases:
                path = os.path.join(folder, "validation", f"case_{case}.nii.gz")
                write_image(path, prediction(trainer, case))
                per_case.append({"reference_file": f"{pre}/gt_segmentations/case_{case}.nii.gz",
                                 "prediction_file": path, "metrics": {
                                     str(v): counts(prediction(trainer, case), reference(case), [v]) for v in (1, 2)}})
            with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
                json.dump({"metric_per_case": per_case}, f)
    os.remove(os.path.join(roots["results"], DATASET, f"TrainerB__nnUNetPlans__{CONFIG}", "fold_1", "validation",
                           "case_5.nii.gz"))  # a prediction not kept: a note, and no boundary metrics for it
    return roots


def test_compare_reports_hd95_and_nsd_from_the_exported_predictions(boundary_results, tmp_path, capsys):
    out = str(tmp_path / "report")
    result = compare(DATASET, CONFIG, list(SHIFT), folds=[0, 1], output=out, bootstrap=50, plots=False,
                     snapshots=False, nsd_tolerance=0.5)
    per_case = result["frames"]["counts"].set_index(["trainer", "case", "class_or_region"])
    diagonal = math.hypot(31 * SPACING_XY[0], 31 * SPACING_XY[1])
    for trainer, shift in SHIFT.items():
        for case in range(6):
            if trainer == "TrainerB" and case == 5:
                assert per_case.loc[(trainer, "case_5", "core"), ["HD95", "NSD"]].isna().all()
                continue
            for name in ("core", "whole"):  # a square moved along x: HD95 = shift x spacing along x
                row = per_case.loc[(trainer, f"case_{case}", name)]
                missed = trainer == "TrainerB" and case == 0 and name == "core"
                assert row["HD95"] == pytest.approx(diagonal if missed else shift * SPACING_XY[0])
                # within 0.5 mm: all of A's boundaries; none of a missed core
                if trainer == "TrainerA" or missed:
                    assert row["NSD"] == pytest.approx(0.0 if missed else 1.0)
                else:
                    assert 0 < row["NSD"] < 1
    table = pd.DataFrame(result["table"]).set_index(["metric", "class_or_region", "trainer"])
    assert table.loc[("HD95", "whole", "TrainerA"), "mean"] == pytest.approx(0.5)
    assert table.loc[("HD95", "whole", "TrainerB"), "n_cases"] == 5  # case_5 has no prediction: left out
    for metric in ("HD95", "NSD"):  # lower HD95 / higher NSD: TrainerA best and ranked first
        assert table.loc[(metric, "whole", "TrainerA"), "best"] and not table.loc[(metric, "whole", "TrainerB"), "best"]
    ranks = pd.DataFrame(result["ranks"]).set_index(["metric", "class_or_region", "trainer"])
    assert ranks.loc[("HD95", "whole", "TrainerA"), "rank"] == 1
    assert ranks.loc[("NSD", "whole", "TrainerA"), "rank"] == 1
    tests = pd.DataFrame(result["tests"]).set_index(["metric", "class_or_region"])
    hd = tests.loc[("HD95", "whole")]
    assert hd["mean_difference"] == pytest.approx(1.0 - 0.5) and not hd["higher_is_better"]  # B - A, B worse
    assert tests.loc[("NSD", "whole"), "higher_is_better"]
    assert result["boundary"]["nsd_tolerance_mm"] == 0.5 and result["boundary"]["implementation"].startswith("MONAI")
    page = open(os.path.join(out, "report.md")).read()
    assert "## HD95 (mm, lower is better)" in page and "tolerance of 0.5 mm" in page
    assert "case(s) without an exported prediction" in page
    assert {"HD95", "NSD"} <= set(pd.read_csv(os.path.join(out, "per_case.csv")).columns)
    assert cli_main(["compare", "-d", DATASET, "-c", CONFIG, "-tr", *SHIFT, "-f", "0", "1", "-o", out,
                     "--nsd-tolerance", "0"]) == 2
    assert "--nsd-tolerance must be a positive number of mm" in capsys.readouterr().err

"""The judge's calibration benchmark (``benchmarks/judge_calibration.py``): its rules on recorded-like curves and its
confusion table by hand; the training itself is the benchmark's, not the suite's."""

import json
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import judge_calibration as calibration  # noqa: E402

EPOCHS, PER_EPOCH = 40, 20


def log(dice, per_class=None, val_losses=None, ema=None) -> dict:
    dice = list(map(float, dice))
    series = {"mean_fg_dice": dice, "ema_fg_dice": list(map(float, ema if ema is not None else dice)),
              "val_losses": list(map(float, val_losses if val_losses is not None else [0.5] * len(dice)))}
    if per_class is not None:
        series["dice_per_class_or_region"] = per_class
    return {"iterations_per_epoch": PER_EPOCH, "series": series}


def noise(seed=0, scale=0.004):
    return np.random.default_rng(seed).normal(0, scale, EPOCHS)


def test_confusion_counts_by_hand():
    calls = {"a": True, "b": True, "c": False, "d": False, "e": False, "only_called": True}
    truth = {"a": True, "b": False, "c": False, "d": True, "e": True}
    assert calibration.confusion(calls, truth) == {"true rising": 1, "false rising": 1, "true converged": 1,
                                                   "false converged": 2, "runs": 5}


def test_a_flat_curve_with_a_class_at_zero_is_rising_for_the_class_rules_only():
    flat = 0.6 + noise(1)
    per_class = [[0.9, 0.9, 0.0] for _ in range(EPOCHS)]
    run = log(flat, per_class)
    rules = calibration.rules()
    assert rules["current"](run) and rules["class only"](run) and rules["linear on the EMA"](run)
    assert not rules["linear, no class rule"](run)
    healthy = log(flat, [[0.9, 0.9, 0.5] for _ in range(EPOCHS)])
    assert not any(rule(healthy) for name, rule in rules.items()), "a quiet plateau with every class is converged"


def test_a_steady_climb_is_rising_and_a_log_curve_is_caught_by_the_log_fit():
    rules = calibration.rules()
    climb = 0.5 + 0.0002 * PER_EPOCH * np.arange(EPOCHS) + noise(2)  # 0.004 per epoch: +0.08 over the last half
    assert rules["current"](log(climb)) and rules["linear, no class rule"](log(climb))
    assert rules["log fit, pseudo Dice alone"](log(climb))
    # y = a + b log(t): the log fit's gain of a doubled schedule is b log 2, rising from b = 0.03 (0.021) on, not at
    # b = 0.025 (0.017)
    t = (np.arange(EPOCHS) + 1) * PER_EPOCH
    for name in ("current", "log fit, pseudo Dice alone"):
        assert rules[name](log(0.5 + 0.03 * np.log(t)))
        assert not rules[name](log(0.5 + 0.025 * np.log(t)))
    assert 0.03 * math.log(2) > calibration.GAIN > 0.025 * math.log(2)
    # a falling validation loss alone calls the run rising for that rule only
    falling = log(0.6 + noise(3), val_losses=1.0 - 0.01 * np.arange(EPOCHS))
    assert rules["validation loss"](falling) and not rules["linear, no class rule"](falling)


def test_fold_results_read_the_final_validation_and_the_log(tmp_path):
    entry = calibration.study.DATASETS["rare"]
    name = f"Dataset{entry['dataset_id']:03d}_{entry['name']}"
    folder = tmp_path / "nnUNet_results" / name / "T_seed3__nnUNetPlans__2d_small" / "fold_1"
    (folder / "validation").mkdir(parents=True)
    (folder / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.75}}))
    (folder / "nnunet_mcc_log.json").write_text(json.dumps(log([0.5] * 12)))
    found = calibration.fold_results(str(tmp_path), "rare", ["T"], [3, 4], [0, 1])
    assert list(found) == [("T", 3, 1)] and found[("T", 3, 1)]["dice"] == 0.75

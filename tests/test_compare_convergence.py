"""What compare's report says about convergence beyond the verdict, on hand-built result trees (no training): the
runs with a class at zero over the judged window (not converged, whatever the flat foreground mean says), and, for
a trainer whose runs are still rising, the projected gain of a longer budget in the report's first lines."""

import numpy as np

from nnunet_mcc.experiments import convergence
from nnunet_mcc.experiments.compare import compare
from test_compare import nnunet_roots
import test_compare_provenance as provenance_tree
import test_compare_seeds as seed_tree


def test_the_first_lines_give_the_projected_gain_of_the_still_rising_trainer(tmp_path, monkeypatch):
    root = nnunet_roots(tmp_path, monkeypatch, provenance_tree.DATASET, provenance_tree.LABELS,
                        provenance_tree.CONFIG)["results"]
    for fold in provenance_tree.CASES:
        provenance_tree.write_run(root, "A", fold, 0, curve="plateau")
        provenance_tree.write_run(root, "B", fold, 3, curve="rising")
    result = compare(provenance_tree.DATASET, provenance_tree.CONFIG, ["A", "B"], folds=[0, 1],
                     output=str(tmp_path / "r"), bootstrap=20, plots=False)
    gains = {name: sorted(r[f"projected_gain_{name}"] for r in result["runs"] if r["trainer"] == "B")
             for name in convergence.SERIES}
    assert all(r["still_rising"] == "mean_fg_dice, mean_fg_mcc" for r in result["runs"] if r["trainer"] == "B")
    assert all(r["still_rising"] == "" for r in result["runs"] if r["trainer"] == "A")
    (row,) = result["projections"]
    assert (row["trainer"], row["runs"], row["rising_runs"], row["runs_with_class_at_zero"]) == ("B", 2, 2, 0)
    dice = gains["mean_fg_dice"]
    assert (row["gain_mean_fg_dice_min"], row["gain_mean_fg_dice_max"]) == (dice[0], dice[-1])
    assert row["gain_mean_fg_dice_median"] == float(np.median(dice)) and 0.25 < dice[0] < 0.35  # 0.6/20 x 10
    lines = result["markdown"].splitlines()
    assert lines[2].startswith("> **Not converged: 2 of 4 runs")
    assert lines[4].startswith("> **What a schedule twice as long would add** (a projection, not a measurement")
    # what the projection rests on: the judge's calibration against runs trained at twice the budget
    assert convergence.CALIBRATION in lines[4] and "log(iterations)" in lines[4]
    assert "checked against the same runs trained at twice the budget" in convergence.CALIBRATION
    mcc = gains["mean_fg_mcc"]
    assert lines[5] == (f"> - B, 2 of 2 runs still rising: pseudo Dice {np.median(dice):+.3f} (median; {dice[0]:+.3f} "
                        f"to {dice[-1]:+.3f}), pseudo MCC {np.median(mcc):+.3f} (median; {mcc[0]:+.3f} to "
                        f"{mcc[-1]:+.3f})")
    assert lines[6] == ""


def test_a_run_with_a_class_at_zero_is_not_converged_and_the_report_says_why(tmp_path, monkeypatch):
    """Flat curves, judged converged before; one run of B never learned 'core' (pseudo Dice 0.0005 throughout) and
    one lost it after epoch 5: both not converged, named, and in the first lines with no gain projected."""
    root = nnunet_roots(tmp_path, monkeypatch, seed_tree.DATASET, seed_tree.LABELS, seed_tree.CONFIG)["results"]
    healthy = [[0.5, 0.4] for _ in range(seed_tree.EPOCHS)]
    never = [[0.5, 0.0005] for _ in range(seed_tree.EPOCHS)]
    lost = [[0.5, 0.3 if e < 5 else 0.0] for e in range(seed_tree.EPOCHS)]
    for fold in seed_tree.CASES:
        seed_tree.write_seed_run(root, "A_seed0", fold, seed=0, per_class=healthy)
        seed_tree.write_seed_run(root, "B_seed0", fold, seed=0, per_class=never if fold == 0 else lost)
    result = compare(seed_tree.DATASET, seed_tree.CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"),
                     bootstrap=20, plots=False)
    runs = {(r["trainer"], r["fold"]): r for r in result["runs"]}
    assert runs[("A", 0)]["converged"] == convergence.YES and runs[("A", 0)]["classes_at_zero"] == ""
    assert runs[("B", 0)]["converged"] == convergence.NO and runs[("B", 0)]["still_rising"] == ""
    assert runs[("B", 0)]["classes_at_zero"] == "core never learned"
    assert runs[("B", 1)]["classes_at_zero"] == "core lost"
    assert "core never learned: per-epoch pseudo Dice below 0.05 over the whole window, and a flat curve with a " \
           "class at zero is not convergence" in runs[("B", 0)]["convergence"]
    verdicts = {r["trainer"]: r["converged"] for r in result["trainer_runs"]}
    assert verdicts == {"A": "2 of 2 folds converged", "B": "0 of 2 folds converged"}
    head = result["markdown"].splitlines()[:8]
    assert head[2].startswith("> **Not converged: 2 of 4 runs")
    assert "> - B, 2 of 2 runs with a class at zero (core never learned in 1, core lost in 1): flat curves that " \
           "project no gain; only training longer tells whether the class is learned later" in head
    assert not any("What a schedule twice as long would add" in line for line in head)
    assert "class at zero is not convergence" in result["full_markdown"]  # the criterion and the runs' verdicts

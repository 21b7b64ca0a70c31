"""``nnunet-mcc compare`` over training seeds, settings identity, collapsed classes and cost, on hand-built
result trees (no training): every number is recomputed here from the counts written into the folders."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import stats
from nnunet_mcc.experiments.compare import compare
from test_compare import nnunet_roots

DATASET = "Dataset779_Seeds"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
CASES = {0: [0, 1, 2, 3, 4], 1: [5, 6, 7, 8, 9]}
N = 1000
EPOCHS, PER_EPOCH = 20, 10


def fp_fn(case, label):
    return 3 + (case + label) % 4, 4 + (case * label) % 3


def tp_of(case, label, gain=0, shift=0):
    return 40 + 5 * case + 3 * label + gain + shift


FLOOD_TP, FLOOD_FP = 5, 900  # a class predicted over most of the image: Dice about 0.01


def write_seed_run(root, name, fold, gain=0, shift=0, zero=(), identity=None, seed=None, cost=None,
                   per_class=None, loss=None, flood=()):
    """A finished fold of trainer folder ``name`` (e.g. ``A_seed1``): summary.json with TP from ``tp_of`` (0 for
    the labels in ``zero``; ``FLOOD_TP`` and ``FLOOD_FP`` for those in ``flood``), debug.json, nnunet_mcc_log.json (plateau curves, optional cost and per-class pseudo
    Dice) and nnunet_mcc_provenance.json (optional identity and seed)."""
    folder = os.path.join(root, DATASET, f"{name}__nnUNetPlans__{CONFIG}", f"fold_{fold}")
    os.makedirs(os.path.join(folder, "validation"), exist_ok=True)
    per_case = []
    for case in CASES[fold]:
        metrics = {}
        for label in (1, 2):
            tp = 0 if label in zero else tp_of(case, label, gain, shift)
            fp, fn = fp_fn(case, label)
            if label in flood:
                tp, fp = FLOOD_TP, FLOOD_FP
            metrics[str(label)] = {"TP": tp, "FP": fp, "FN": fn, "TN": N - tp - fp - fn}
        per_case.append({"reference_file": f"/gt/c{case:02d}.nii.gz", "metrics": metrics})
    with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
        json.dump({"metric_per_case": per_case}, f)
    with open(os.path.join(folder, "debug.json"), "w") as f:
        json.dump({"num_epochs": str(EPOCHS), "num_iterations_per_epoch": str(PER_EPOCH),
                   "num_val_iterations_per_epoch": "2"}, f)
    flat = [0.8 + 0.002 * ((e * 7) % 5 - 2) for e in range(EPOCHS)]
    series = {"mean_fg_dice": flat, "ema_fg_dice": flat, "mean_fg_mcc": flat, "train_losses": [0.0] * EPOCHS,
              "val_losses": [0.0] * EPOCHS}
    if per_class is not None:
        series["dice_per_class_or_region"] = per_class
    log = {"format": 1, "iterations_per_epoch": PER_EPOCH, "epochs_completed": EPOCHS, "series": series}
    if cost is not None:
        log["cost"] = cost
    with open(os.path.join(folder, "nnunet_mcc_log.json"), "w") as f:
        json.dump(log, f)
    record = {"format": 1, "trainer": name, "budget": {"num_epochs": EPOCHS, "num_iterations_per_epoch": PER_EPOCH,
                                                       "num_val_iterations_per_epoch": 2},
              "training": {"seed": seed, "seed_source": "crossval" if seed is not None else None},
              "loss": loss or {"name": "soft MCC", "settings": {"batch": True}}}
    if identity is not None:
        record["identity"] = identity
    with open(os.path.join(folder, "nnunet_mcc_provenance.json"), "w") as f:
        json.dump(record, f)
    return folder


@pytest.fixture
def tree(tmp_path, monkeypatch):
    return nnunet_roots(tmp_path, monkeypatch, DATASET, LABELS, CONFIG)["results"]


def dice(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn)


def dice_by_hand(label, gain, shift, cases=range(10)):
    return np.array([dice(tp_of(c, label, gain, shift), *fp_fn(c, label)) for c in cases])


SHIFTS = {0: 0, 1: 20}  # seed 1 of every trainer segments better: the seed spread is large
RATE = ("**Class-loss rate** (runs that lost a class: Dice 0 on every validation case that has it, or a flood: mean "
        "Dice below 0.1 with 2 times the reference's voxels predicted or more; a run is one fold and seed): ")


def fill(tree, gains=None, seeds=(0, 1), **kwargs):
    for trainer, gain in (gains or {"A": 0, "B": 2}).items():
        for seed in seeds:
            for fold in CASES:
                write_seed_run(tree, f"{trainer}_seed{seed}", fold, gain=gain, shift=SHIFTS.get(seed, 5 * seed),
                               seed=seed, **kwargs)


def test_seed_averaging_spread_and_the_noise_rule_by_hand(tree, tmp_path):
    # B is better than A on every case by 2 TP (significant), but the seeds differ by 20 TP: within noise;
    # C is better by 60 TP: above it
    fill(tree, {"A": 0, "B": 2, "C": 60})
    for fold in CASES:  # an old unsuffixed A folder beside the seed folders: not used
        write_seed_run(tree, "A", fold, gain=500)
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B", "C"], folds=[0, 1], output=str(out), bootstrap=50, plots=False)
    assert any(n == "A: its seed folders (A_seed0, A_seed1) are its runs; the unsuffixed folder "
               "A__nnUNetPlans__2d is not used" for n in result["notes"])
    table = {(e["metric"], e["class_or_region"], e["trainer"]): e for e in result["table"]}
    gains = {"A": 0, "B": 2, "C": 60}
    seed_means = {}
    for trainer, gain in gains.items():
        per_seed = {s: (dice_by_hand(1, gain, SHIFTS[s]) + dice_by_hand(2, gain, SHIFTS[s])) / 2 for s in (0, 1)}
        averaged = (per_seed[0] + per_seed[1]) / 2  # each case averaged over the seeds
        entry = table[("Dice", "foreground mean", trainer)]
        assert entry["n_seeds"] == 2 and entry["n_cases"] == 10
        assert entry["mean"] == pytest.approx(averaged.mean(), abs=1e-12)
        assert entry["std_cases"] == pytest.approx(averaged.std(ddof=1), abs=1e-12)
        assert entry["std_folds"] == pytest.approx(np.std([averaged[:5].mean(), averaged[5:].mean()], ddof=1))
        spread = np.std([per_seed[0].mean(), per_seed[1].mean()], ddof=1)
        assert entry["std_seeds"] == pytest.approx(spread, abs=1e-12)
        seed_means[trainer] = (averaged, spread)
        lesion = (dice_by_hand(1, gain, 0) + dice_by_hand(1, gain, 20)) / 2
        assert table[("Dice", "lesion", trainer)]["mean"] == pytest.approx(lesion.mean(), abs=1e-12)

    tests = {(t["metric"], t["class_or_region"], t["trainer"]): t for t in result["tests"]}
    (a, s_a) = seed_means["A"]
    for trainer in ("B", "C"):
        (x, s_x) = seed_means[trainer]
        t = tests[("Dice", "foreground mean", trainer)]
        assert t["p"] == pytest.approx(wilcoxon(x, a).pvalue, rel=1e-12)  # on the seed-averaged case scores
        assert t["mean_difference"] == pytest.approx(x.mean() - a.mean(), abs=1e-12)
        assert t["noise_threshold"] == pytest.approx(2 * math.sqrt((s_a ** 2 + s_x ** 2) / 2), rel=1e-12)
        assert t["significant_0.05"]
    b, c = tests[("Dice", "foreground mean", "B")], tests[("Dice", "foreground mean", "C")]
    assert abs(b["mean_difference"]) < b["noise_threshold"] and b["above_training_noise"] is False
    assert c["mean_difference"] > c["noise_threshold"] and c["above_training_noise"] is True

    lines = result["full_markdown"].splitlines()
    head = "\n".join(lines[:12])
    assert "**Training noise** measured over 2 seeds per trainer (two seeds: the spread is a rough estimate)" in head
    assert "2 sqrt((s_A^2 + s_B^2) / n_seeds)" in head
    assert "- B vs A (foreground mean Dice):" in head and "significant but within training noise" in head
    assert "- C vs A (foreground mean Dice):" in head and "**above training noise**" in head
    assert "seeds)" in result["full_markdown"]  # the seed spread beside the fold spread in the cells
    assert "bootstrap over cases and each trainer's seeds" in result["full_markdown"]
    runs = result["trainer_runs"]
    assert [r["seeds"] for r in runs] == ["0 1"] * 3 and runs[0]["converged"] == "4 of 4 runs (folds x seeds) converged"
    wilcoxon_csv = (out / "wilcoxon.csv").read_text()
    assert "above_training_noise" in wilcoxon_csv and "noise_threshold" in wilcoxon_csv


def test_one_seed_says_training_noise_was_not_measured(tree, tmp_path):
    fill(tree, seeds=(3,))
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    assert all(t["above_training_noise"] is None for t in result["tests"])
    head = "\n".join(result["full_markdown"].splitlines()[:8])
    assert "**Training noise not measured:** every trainer was trained with one seed" in head
    assert "training noise not measured" in head  # per pair


def test_bootstrap_over_seeds():
    cases = np.linspace(0.5, 0.9, 12)
    one = stats.bootstrap_ranks_over_seeds([cases[None], cases[None] + 0.01], n_samples=30)
    assert np.array_equal(one["frequency"], stats.bootstrap_ranks(np.stack([cases, cases + 0.01], 1),
                                                                  n_samples=30)["frequency"])
    # B is better on average, but one of its two seeds is far worse than A: resampling seeds unsettles the rank
    shaky = stats.bootstrap_ranks_over_seeds([np.stack([cases, cases]), np.stack([cases + 0.2, cases - 0.15])],
                                             n_samples=400)
    assert shaky["full_rank"].tolist() == [2, 1]
    assert 0.1 < shaky["frequency"][0, 0] < 0.5
    steady = stats.bootstrap_ranks_over_seeds([np.stack([cases, cases]), np.stack([cases + 0.02, cases + 0.03])],
                                              n_samples=100)
    assert steady["frequency"][1, 0] == 1.0


def test_mixed_seeds_are_refused_unless_asked_for(tree, tmp_path, capsys):
    fill(tree, {"A": 0}, seeds=(0, 1))
    fill(tree, {"B": 2}, seeds=(0, 2))
    out = tmp_path / "r"
    args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "B", "-f", "0", "1", "-o", str(out), "--no-plots",
            "--bootstrap", "20"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different seeds (A: 0 1; B: 0 2)" in err and "--allow-mixed-seeds" in err
    assert not out.exists()
    assert cli_main(args + ["--allow-mixed-seeds"]) == 0
    assert "mixed seeds (paired on request, --allow-mixed-seeds): A: 0 1; B: 0 2" in (out / "report.md").read_text()


def test_a_single_run_with_an_unrecorded_seed_pairs_with_one_seed_but_not_with_several(tree, tmp_path):
    for fold in CASES:
        write_seed_run(tree, "A", fold)  # unsuffixed, no seed recorded
        write_seed_run(tree, "B", fold, gain=2, seed=2026)
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    assert {r["trainer"]: r["seeds"] for r in result["trainer_runs"]} == {"A": "unrecorded", "B": "2026"}
    fill(tree, {"C": 1}, seeds=(0, 1))
    with pytest.raises(UserError, match=r"different seeds \(A: unrecorded; C: 0 1\)"):
        compare(DATASET, CONFIG, ["A", "C"], folds=[0, 1], output=str(tmp_path / "s"), bootstrap=20, plots=False)


def test_mixed_settings_identity_is_refused_unless_asked_for(tree, tmp_path, capsys):
    identity = {"loss": "GWDL", "weighting": "volume", "distance_matrix": [[0, 1], [1, 0]]}
    fill(tree, {"A": 0, "B": 2}, identity=identity)
    write_seed_run(tree, "B_seed1", 1, gain=2, shift=20, seed=1, identity=dict(identity, weighting="uniform"))
    out = tmp_path / "r"
    args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "B", "-f", "0", "1", "-o", str(out), "--no-plots",
            "--bootstrap", "20"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "B: 2 different settings (weighting)" in err and "B_seed1 fold 1 (weighting=\"uniform\")" in err
    assert "B_seed0 fold 0" in err and "--allow-mixed-settings" in err and "A:" not in err
    assert not out.exists()
    assert cli_main(args + ["--allow-mixed-settings"]) == 0
    assert "--allow-mixed-settings): B: 2 different settings (weighting)" in (out / "report.md").read_text()


def test_per_fold_class_weights_are_no_settings_difference(tree, tmp_path):
    """Without a recorded identity the loss settings stand in for it, less weighted CE's per-fold class weights."""
    for fold in CASES:
        for name, gain in (("A", 0), ("B", 2)):
            write_seed_run(tree, name, fold, gain=gain, loss={"name": "weighted CE", "settings": {
                "class_weights": [1.0, 2.0 + fold, 5.0 - fold], "ce": True}})
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    assert {r["identity_source"] for r in result["runs"]} == {"loss settings"}
    assert any(n.startswith("B: loss settings differ between folds (class_weights") for n in result["notes"])
    write_seed_run(tree, "B", 1, gain=2, loss={"name": "weighted CE", "settings": {"class_weights": [1, 1, 1],
                                                                                   "ce": False}})
    with pytest.raises(UserError, match=r"B: 2 different settings \(settings.ce|B: 2 different settings \(ce\)"):
        compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "s"), bootstrap=20, plots=False)


def test_collapsed_classes_are_marked_with_when(tree, tmp_path):
    rising_then_zero = [[0.1 * e, 0.05 * e if e <= 5 else 0.0] for e in range(1, EPOCHS + 1)]
    never = [[0.5, 0.0005] for _ in range(EPOCHS)]
    healthy = [[0.5, 0.4] for _ in range(EPOCHS)]
    for seed in (0, 1):
        for fold in CASES:
            write_seed_run(tree, f"A_seed{seed}", fold, seed=seed, shift=SHIFTS[seed], per_class=healthy)
            collapsed = (seed, fold) in ((1, 0), (1, 1))
            write_seed_run(tree, f"B_seed{seed}", fold, seed=seed, shift=SHIFTS[seed], zero=(2,) if collapsed else (),
                           per_class=(rising_then_zero if fold == 0 else never) if collapsed else healthy)
    # a case without 'core' in its reference but with false positives (Dice 0 there) does not make A collapse;
    # neither does one case at Dice 0 among cases that have it
    path = os.path.join(tree, DATASET, f"A_seed0__nnUNetPlans__{CONFIG}", "fold_0", "validation", "summary.json")
    summary = json.load(open(path))
    summary["metric_per_case"][0]["metrics"]["2"].update(TP=0, FN=0, FP=7)
    summary["metric_per_case"][1]["metrics"]["2"].update(TP=0, FN=9)
    json.dump(summary, open(path, "w"))
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(out), bootstrap=20, plots=False)
    collapsed = {(c["run"], c["fold"], c["class_or_region"]): c for c in result["collapsed"]}
    assert sorted(collapsed) == [("B_seed1", 0, "core"), ("B_seed1", 1, "core")]
    assert collapsed[("B_seed1", 0, "core")]["when"] == "collapsed after epoch 5 (50 it.)"
    assert collapsed[("B_seed1", 0, "core")]["cases_present"] == 5
    assert collapsed[("B_seed1", 1, "core")]["when"] == "never learned"
    runs = {(r["run"], r["fold"]): r["collapsed"] for r in result["runs"]}
    assert runs[("B_seed1", 0)] == "core (collapsed after epoch 5 (50 it.))" and runs[("A_seed0", 0)] == ""
    per_trainer = {r["trainer"]: r["collapsed"] for r in result["trainer_runs"]}
    assert per_trainer == {"A": "", "B": "core in 2 of 4 runs"}
    head = "\n".join(result["full_markdown"].splitlines()[:14])
    assert "**Collapsed classes** (lost: Dice 0 on every validation case that has the class; or flooded): B_seed1 " \
           "fold 0: core (collapsed after epoch 5 (50 it.)); B_seed1 fold 1: core (never learned)." in head
    assert "| collapsed" in result["full_markdown"] and "core in 2 of 4 runs" in result["full_markdown"]
    assert (out / "collapsed.csv").exists() and "collapsed" in (out / "runs.csv").read_text().splitlines()[0]


def test_recorded_cost_per_trainer_and_against_the_baseline(tree, tmp_path):
    def cost(wall, ips, mem, device="cuda:0"):
        return {"device": device, "wall_seconds": wall, "train_iterations": 200, "iterations_per_second": ips,
                "jobs": 2, "torch_threads": 4, "peak_memory_mb": mem, "peak_memory_kind": "cuda max allocated"}

    for seed in (0, 1):
        for fold in CASES:
            write_seed_run(tree, f"A_seed{seed}", fold, seed=seed, cost=cost(100 + 10 * fold + seed, 2.0, 1000))
            write_seed_run(tree, f"B_seed{seed}", fold, seed=seed, gain=2,
                           cost=cost(300 + 20 * seed, 0.5 + fold, None if fold else 1500))
            write_seed_run(tree, f"C_seed{seed}", fold, seed=seed, gain=1)  # no cost record (an older log)
    result = compare(DATASET, CONFIG, ["A", "B", "C"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    table = {c["trainer"]: c for c in result["cost"]}
    assert table["A"]["wall_seconds"] == pytest.approx(np.mean([100, 101, 110, 111]))
    assert table["B"]["wall_seconds"] == pytest.approx(310.0)
    assert table["B"]["wall_seconds_vs_baseline"] == pytest.approx(310.0 / 105.5)
    assert table["B"]["iterations_per_second"] == pytest.approx(1.0)
    assert table["B"]["peak_memory_mb"] == pytest.approx(1500) and table["B"]["runs_with_peak_memory_mb"] == 2
    assert table["B"]["peak_memory_mb_vs_baseline"] == pytest.approx(1.5)
    assert table["A"]["device"] == "cuda:0" and table["A"]["jobs"] == "2"
    assert math.isnan(table["C"]["wall_seconds"]) and pd.isna(table["C"]["device"])
    page = result["full_markdown"]
    section = page[page.index("## Cost"):page.index("## Dice")]
    assert "| B " in section and "2.94x" in section and "1500 (cuda max allocated)" in section
    c_row = next(line for line in section.splitlines() if line.startswith("| C "))
    assert c_row.count("n/a") >= 6


def write_unmirrored(root, name, fold, zero=(), shift=0, flood=()):
    """``validation_nomirror/summary.json`` of a fold: the counts of ``write_seed_run`` (TP 0 for ``zero``, a flood
    for ``flood``)."""
    folder = os.path.join(root, DATASET, f"{name}__nnUNetPlans__{CONFIG}", f"fold_{fold}", "validation_nomirror")
    os.makedirs(folder, exist_ok=True)
    per_case = []
    for case in CASES[fold]:
        metrics = {}
        for label in (1, 2):
            tp = 0 if label in zero else tp_of(case, label, 0, shift)
            fp, fn = fp_fn(case, label)
            if label in flood:
                tp, fp = FLOOD_TP, FLOOD_FP
            metrics[str(label)] = {"TP": tp, "FP": fp, "FN": fn, "TN": N - tp - fp - fn}
        per_case.append({"reference_file": f"/gt/c{case:02d}.nii.gz", "metrics": metrics})
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump({"metric_per_case": per_case}, f)
    return folder


# B loses a class in 3 of its 4 runs: core (seed 1, both folds), lesion (seed 1 fold 1, seed 0 fold 0);
# A and C in none; C is better than A by 60 TP on every case; B equals A wherever it keeps its classes
LOST = {(1, 0): (2,), (1, 1): (1, 2), (0, 0): (1,)}


@pytest.fixture
def lossy(tree):
    fill(tree, {"A": 0, "C": 60})
    for seed in (0, 1):
        for fold in CASES:
            write_seed_run(tree, f"B_seed{seed}", fold, seed=seed, shift=SHIFTS[seed], zero=LOST.get((seed, fold), ()))
    # without mirroring, B_seed1 fold 0 finds core (lost by mirroring), B_seed1 fold 1 loses core again (lost in
    # training) and finds lesion; B_seed0 fold 0 has no validation without mirroring
    write_unmirrored(tree, "B_seed1", 0, shift=SHIFTS[1])
    write_unmirrored(tree, "B_seed1", 1, zero=(2,), shift=SHIFTS[1])
    return tree


def fg_dice(seed, gain, cases, zero=()):
    return np.array([np.mean([0.0 if label in zero else dice(tp_of(c, label, gain, SHIFTS[seed]), *fp_fn(c, label))
                              for label in (1, 2)]) for c in cases])


def test_class_loss_rate_leads_the_report_and_class_loss_csv(lossy, tmp_path):
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B", "C"], folds=[0, 1], output=str(out), bootstrap=20, plots=False)
    rates = {r["trainer"]: r for r in result["class_loss"]}
    assert rates["A"]["runs"] == 4 and rates["A"]["runs_with_lost_class"] == 0 and rates["A"]["class_loss_rate"] == 0
    assert rates["B"]["runs_with_lost_class"] == 3 and rates["B"]["class_loss_rate"] == pytest.approx(0.75)
    assert rates["B"]["lost_classes"] == "lesion 2, core 2" and rates["A"]["lost_classes"] == ""
    assert (rates["B"]["runs_lost_in_training"], rates["B"]["runs_lost_by_mirroring"],
            rates["B"]["runs_lost_cause_unknown"]) == (1, 1, 1)
    head = result["full_markdown"].splitlines()[:6]
    assert head[4] == (RATE + "A lost a class in 0 of 4 runs; B lost a class in 3 of 4 runs "
                       "(lesion 2, core 2; 1 in training, 1 by mirroring only, 1 cause unknown); C lost a class in "
                       "0 of 4 runs.")
    csv_rows = pd.read_csv(out / "class_loss.csv")
    assert list(csv_rows["trainer"]) == ["A", "B", "C"] and list(csv_rows["runs_with_lost_class"]) == [0, 3, 0]


def test_a_flooded_class_counts_in_the_class_loss_rate(tree, tmp_path):
    # B_seed0 fold 1 predicts core over most of the image (Dice about 0.01, not 0): a flood, in training (the
    # validation without mirroring floods too); B_seed1 fold 0 floods lesion by mirroring only; a weak class (Dice
    # below 0.1 but predicted on fewer voxels than twice the reference) is not a flood
    fill(tree, {"A": 0}, seeds=(0, 1))
    floods = {(0, 1): (2,), (1, 0): (1,)}
    for seed in (0, 1):
        for fold in CASES:
            write_seed_run(tree, f"B_seed{seed}", fold, seed=seed, shift=SHIFTS[seed],
                           flood=floods.get((seed, fold), ()))
    write_unmirrored(tree, "B_seed0", 1, shift=SHIFTS[0], flood=(2,))
    write_unmirrored(tree, "B_seed1", 0, shift=SHIFTS[1])
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(out), bootstrap=20, plots=False)
    rates = {r["trainer"]: r for r in result["class_loss"]}
    assert (rates["B"]["runs_with_lost_class"], rates["B"]["runs_with_flood"]) == (2, 2)
    assert (rates["A"]["runs_with_lost_class"], rates["A"]["runs_with_flood"]) == (0, 0)
    assert (rates["B"]["runs_lost_in_training"], rates["B"]["runs_lost_by_mirroring"]) == (1, 1)
    failed = {(c["run"], c["fold"], c["class_or_region"]): c for c in result["collapsed"]}
    assert sorted(failed) == [("B_seed0", 1, "core"), ("B_seed1", 0, "lesion")]
    core = failed[("B_seed0", 1, "core")]
    reference = sum(FLOOD_TP + fp_fn(c, 2)[1] for c in CASES[1])
    assert core["failure"] == "flooded" and core["lost_in"] == "training"
    assert (core["predicted_voxels"], core["reference_voxels"]) == ((FLOOD_TP + FLOOD_FP) * 5, reference)
    assert core["when"] == f"flooded: predicted on {(FLOOD_TP + FLOOD_FP) * 5} voxels for {reference} in the reference"
    assert core["dice_unmirrored"] == pytest.approx(np.mean([dice(FLOOD_TP, FLOOD_FP, fp_fn(c, 2)[1])
                                                             for c in CASES[1]]))
    assert failed[("B_seed1", 0, "lesion")]["lost_in"] == "mirroring"
    head = result["full_markdown"].splitlines()[:6]
    assert head[4] == (RATE + "A lost a class in 0 of 4 runs; B lost a class in 2 of 4 runs (lesion 1, core 1; 2 of "
                       "them flooded: a class predicted over much of the image; 1 in training, 1 by mirroring only).")
    assert list(pd.read_csv(out / "class_loss.csv")["runs_with_flood"]) == [0, 2]


def test_a_weak_class_is_neither_lost_nor_flooded():
    from nnunet_mcc.experiments.collect_collapse import FLOODED, LOST, _failure

    weak = pd.Series([0.05, 0.0, 0.08])
    assert _failure(weak, predicted=30, referenced=100) is None       # under-predicted: weak, not a flood
    assert _failure(weak, predicted=200, referenced=100) == FLOODED    # twice the reference's voxels: a flood
    assert _failure(weak, predicted=199, referenced=100) is None
    assert _failure(pd.Series([0.0, 0.0]), predicted=500, referenced=100) == LOST  # Dice 0 everywhere: lost first
    assert _failure(pd.Series([0.1, 0.1]), predicted=900, referenced=100) is None  # at the threshold: kept


def test_no_lost_class_says_zero_of_n_for_every_trainer(tree, tmp_path):
    fill(tree, seeds=(3,))
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(out), bootstrap=20, plots=False)
    assert RATE + "A lost a class in 0 of 2 runs; B lost a class in 0 of 2 runs." \
           in result["full_markdown"].splitlines()[:6]
    assert "of which" not in result["full_markdown"]
    assert all(math.isnan(t["difference_due_to_lost_runs"]) for t in result["tests"])
    assert list(pd.read_csv(out / "class_loss.csv")["class_loss_rate"]) == [0, 0]


def test_pair_difference_split_into_lost_runs_and_the_rest(lossy, tmp_path):
    result = compare(DATASET, CONFIG, ["A", "B", "C"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    tests = {(t["metric"], t["class_or_region"], t["trainer"]): t for t in result["tests"]}
    b = tests[("Dice", "foreground mean", "B")]
    # all runs: each case averaged over both seeds; B's lost classes score 0
    cases = {f: CASES[f] for f in CASES}
    a_all = np.concatenate([(fg_dice(0, 0, cases[f]) + fg_dice(1, 0, cases[f])) / 2 for f in CASES])
    b_all = np.concatenate([(fg_dice(0, 0, cases[f], LOST.get((0, f), ())) +
                             fg_dice(1, 0, cases[f], LOST.get((1, f), ()))) / 2 for f in CASES])
    assert b["mean_difference"] == pytest.approx(b_all.mean() - a_all.mean(), abs=1e-12)
    # without the (fold, seed) runs in which B lost a class, for both trainers: only seed 0 of fold 1 is left,
    # where B equals A
    assert b["n_cases_without_lost_runs"] == 5
    assert b["mean_difference_without_lost_runs"] == pytest.approx(0.0, abs=1e-12)
    assert b["difference_due_to_lost_runs"] == pytest.approx(b["mean_difference"], abs=1e-12)
    line = next(x for x in result["full_markdown"].splitlines() if x.startswith("- B vs A (foreground mean Dice)"))
    assert f"**of which {b['mean_difference']:+.3f} is due to the runs that lost a class** (B lost a class in 3 of " \
           f"4 runs, A in 0 of 4; without those runs the difference is +0.000 on 5 of 10 cases, not tested): " \
           f"driven by lost classes, not a uniform gain" in line
    # C lost nothing and neither did A: no split, no note
    c = tests[("Dice", "foreground mean", "C")]
    assert math.isnan(c["difference_due_to_lost_runs"]) and math.isnan(c["n_cases_without_lost_runs"])
    line = next(x for x in result["full_markdown"].splitlines() if x.startswith("- C vs A (foreground mean Dice)"))
    assert "lost" not in line


def test_a_uniform_gain_hidden_by_a_lost_class_is_kept_apart(tree, tmp_path):
    fill(tree, {"A": 0})
    for seed in (0, 1):
        for fold in CASES:  # C: 60 TP better on every case, and loses core in seed 1 fold 1
            write_seed_run(tree, f"C_seed{seed}", fold, gain=60, seed=seed, shift=SHIFTS[seed],
                           zero=(2,) if (seed, fold) == (1, 1) else ())
    result = compare(DATASET, CONFIG, ["A", "C"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    c = next(t for t in result["tests"] if t["metric"] == "Dice" and t["class_or_region"] == "foreground mean")
    kept = {0: (0, 1), 1: (0,)}  # the seeds left in each fold once seed 1 of fold 1 is left out for both
    gain = np.concatenate([np.mean([fg_dice(s, 60, CASES[f]) - fg_dice(s, 0, CASES[f]) for s in kept[f]], axis=0)
                           for f in CASES])
    assert c["n_cases_without_lost_runs"] == 10
    assert c["mean_difference_without_lost_runs"] == pytest.approx(gain.mean(), abs=1e-12)
    assert c["difference_due_to_lost_runs"] == pytest.approx(c["mean_difference"] - gain.mean(), abs=1e-12)
    assert c["difference_due_to_lost_runs"] < 0 < c["mean_difference_without_lost_runs"]
    line = next(x for x in result["full_markdown"].splitlines() if x.startswith("- C vs A (foreground mean Dice)"))
    # C's gain (+0.029 without the lost run) is turned into a loss (-0.094) by one run that lost core
    assert f"difference {c['mean_difference']:+.3f}" in line and c["mean_difference"] < 0
    assert f"of which {c['difference_due_to_lost_runs']:+.3f} is due to the runs that lost a class" in line
    assert f"without those runs the difference is {gain.mean():+.3f} on 10 of 10 cases" in line
    assert line.endswith("driven by lost classes, not a uniform gain")


def test_the_lost_class_note_says_what_it_rests_on():
    from types import SimpleNamespace

    from nnunet_mcc.experiments.report import Page

    rates = pd.DataFrame({"trainer": ["A", "B"], "runs": [9, 9], "runs_with_lost_class": [0, 7]})
    page = SimpleNamespace(class_loss=rates)
    row = {"trainer": "B", "baseline": "A", "n_pairs": 25, "mean_difference": 0.150,
           "mean_difference_without_lost_runs": 0.004, "n_cases_without_lost_runs": 11,
           "difference_due_to_lost_runs": 0.146}
    assert Page.lost_class_note(page, row) == (
        "; **of which +0.146 is due to the runs that lost a class** (B lost a class in 7 of 9 runs, A in 0 of 9; "
        "without those runs the difference is +0.004 on 11 of 25 cases, not tested): driven by lost classes, not a "
        "uniform gain")
    # most of the difference stands without the lost runs: no "driven"
    uniform = dict(row, mean_difference_without_lost_runs=0.120, difference_due_to_lost_runs=0.030)
    assert Page.lost_class_note(page, uniform).endswith("on 11 of 25 cases, not tested)")
    assert "of which +0.030" in Page.lost_class_note(page, uniform)
    # no case without a lost run: nothing to split
    assert Page.lost_class_note(page, dict(row, n_cases_without_lost_runs=0)) == (
        "; lost classes: B lost a class in 7 of 9 runs, A in 0 of 9, and every compared case has such a run in one "
        "of the two, so the difference cannot be told from them")
    # neither lost a class: no note
    assert Page.lost_class_note(page, dict(row, n_cases_without_lost_runs=float("nan"))) == ""


def test_collapsed_csv_says_lost_in_training_or_by_mirroring(lossy, tmp_path):
    out = tmp_path / "r"
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(out), bootstrap=20, plots=False)
    lost = {(c["run"], c["fold"], c["class_or_region"]): c for c in result["collapsed"]}
    assert sorted(lost) == [("B_seed0", 0, "lesion"), ("B_seed1", 0, "core"), ("B_seed1", 1, "core"),
                            ("B_seed1", 1, "lesion")]
    assert lost[("B_seed1", 0, "core")]["lost_in"] == "mirroring"
    assert lost[("B_seed1", 0, "core")]["dice_unmirrored"] == pytest.approx(
        np.mean([dice(tp_of(c, 2, 0, SHIFTS[1]), *fp_fn(c, 2)) for c in CASES[0]]), abs=1e-12)
    assert lost[("B_seed1", 1, "core")]["lost_in"] == "training"
    assert lost[("B_seed1", 1, "core")]["dice_unmirrored"] == 0
    assert lost[("B_seed1", 1, "lesion")]["lost_in"] == "mirroring"
    assert lost[("B_seed0", 0, "lesion")]["lost_in"] == "unknown (no unmirrored validation)"
    assert math.isnan(lost[("B_seed0", 0, "lesion")]["dice_unmirrored"])
    written = pd.read_csv(out / "collapsed.csv").set_index(["run", "fold", "class_or_region"])
    assert written.loc[("B_seed1", 0, "core"), "lost_in"] == "mirroring"
    assert written.loc[("B_seed1", 1, "core"), "lost_in"] == "training"
    assert written.loc[("B_seed0", 0, "lesion"), "lost_in"] == "unknown (no unmirrored validation)"
    page = result["full_markdown"]
    assert "B_seed1 fold 0: core (no per-class curve, lost by mirroring); B_seed1 fold 1: lesion (no per-class " \
           "curve, lost by mirroring); B_seed1 fold 1: core (no per-class curve, lost in training)" in page
    assert "| lost in" in page[page.index("## Collapsed classes"):]


def test_an_unreadable_unmirrored_summary_is_said_not_fatal(lossy, tmp_path):
    path = os.path.join(lossy, DATASET, f"B_seed1__nnUNetPlans__{CONFIG}", "fold_0", "validation_nomirror",
                        "summary.json")
    with open(path, "w") as f:
        f.write("{not json")
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                     plots=False)
    lost = {(c["run"], c["fold"], c["class_or_region"]): c["lost_in"] for c in result["collapsed"]}
    assert lost[("B_seed1", 0, "core")] == "unknown (unmirrored validation unreadable)"
    assert any(n.startswith("B_seed1 fold 0: unmirrored validation summary") and "is not valid JSON" in n
               for n in result["notes"])

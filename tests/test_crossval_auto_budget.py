"""``crossval --auto-budget`` and ``compare --auto-budget``, with a fake train command (no training).

The fake takes nnUNetv2_train's arguments and writes what a finished fold holds: ``debug.json`` with the budget the
run would get (``NNUNET_MCC_EPOCHS``, else the ``_<N>epochs`` of its name, else 1000; iterations likewise), a
``validation/summary.json`` with per-case counts, and ``nnunet_mcc_log.json`` with per-epoch curves that compare's
judge calls converged (a flat, noisy plateau) or not (a steady climb, or a class whose pseudo Dice stays at zero),
as ``FAKE_CONVERGE`` says: ``{"<trainer>": E}``, the runs of that trainer (its name without seed and length)
converge from E epochs on; ``FAKE_ZERO``: trainers whose runs below their E have a flat curve with a class at zero
instead of a climb. ``FAKE_FAIL``: runs (``<name>:<fold>``) that exit 3.
"""

import json
import os
import subprocess
import sys

import pytest

from nnunet_mcc.budget import epochs_variant_name, split_epochs, split_seed
from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import auto_budget as auto
from nnunet_mcc.experiments import convergence
from nnunet_mcc.experiments.compare import compare
from nnunet_mcc.experiments.crossval import crossval
from nnunet_mcc.trainers.base import ComparisonTrainer

DATASET = "Dataset561_Auto"
CONFIG = "2d"
LABELS = {"background": 0, "lesion": 1, "core": 2}
BUDGET = {"epochs": 10, "iterations": 5, "val_iterations": 2}

FAKE_TRAIN = r'''
import json, os, sys
from nnunet_mcc.budget import split_epochs, split_seed
args = sys.argv[1:]
dataset, config, fold = args[0], args[1], int(args[2])
trainer = args[args.index("-tr") + 1]
plans = args[args.index("-p") + 1]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"trainer": trainer, "fold": fold, "epochs_variable": os.environ.get("NNUNET_MCC_EPOCHS"),
                        "flags": [a for a in args if a in ("--c", "--val")]}) + "\n")
folder = os.path.join(os.environ["nnUNet_results"], dataset, f"{trainer}__{plans}__{config}", f"fold_{fold}")
os.makedirs(os.path.join(folder, "validation"), exist_ok=True)
if f"{trainer}:{fold}" in json.loads(os.environ.get("FAKE_FAIL", "[]")):
    sys.exit(3)
unseeded, seed = split_seed(trainer)
base, named = split_epochs(unseeded)
epochs = int(os.environ.get("NNUNET_MCC_EPOCHS") or named or 1000)
per_epoch = int(os.environ.get("NNUNET_MCC_ITERATIONS") or 250)
val = int(os.environ.get("NNUNET_MCC_VAL_ITERATIONS") or 50)
with open(os.path.join(folder, "debug.json"), "w") as f:
    json.dump({"num_epochs": str(epochs), "num_iterations_per_epoch": str(per_epoch),
               "num_val_iterations_per_epoch": str(val)}, f)
converge_at = json.loads(os.environ.get("FAKE_CONVERGE", "{}")).get(base, 0)
converged = epochs >= converge_at
zero = base in json.loads(os.environ.get("FAKE_ZERO", "[]"))
if converged or zero:
    dice = [0.8 + 0.002 * ((e * 7) % 5 - 2) for e in range(epochs)]
else:
    dice = [0.3 + 0.5 * e / (epochs - 1) for e in range(epochs)]
per_class = [[d, 0.0005 if zero and not converged else d] for d in dice]
series = {"mean_fg_dice": dice, "ema_fg_dice": dice, "mean_fg_mcc": dice, "train_losses": [0.0] * epochs,
          "val_losses": [0.0] * epochs, "dice_per_class_or_region": per_class}
with open(os.path.join(folder, "nnunet_mcc_log.json"), "w") as f:
    json.dump({"format": 1, "iterations_per_epoch": per_epoch, "epochs_completed": epochs, "series": series}, f)
cases = []
for case in (2 * fold, 2 * fold + 1):
    metrics = {}
    for label in (1, 2):
        tp = 40 + 5 * case + 3 * label + epochs // 10 + len(base)
        fp, fn = 3 + (case + label) % 4, 4 + (case * label) % 3
        metrics[str(label)] = {"TP": tp, "FP": fp, "FN": fn, "TN": 1000 - tp - fp - fn}
    cases.append({"reference_file": f"/gt/c{case:02d}.nii.gz", "metrics": metrics})
with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
    json.dump({"metric_per_case": cases}, f)
open(os.path.join(folder, "checkpoint_final.pth"), "w").close()
'''


class PackageLike:
    """Stands in for this package's trainers: the real budget rule (class epochs, then NNUNET_MCC_*) and seed rule."""

    trainer_seed = None
    budget_epochs = None
    seed_with_source = classmethod(ComparisonTrainer.seed_with_source.__func__)
    _budget_with_sources = classmethod(ComparisonTrainer._budget_with_sources.__func__)
    planned_budget = classmethod(ComparisonTrainer.planned_budget.__func__)


class StockLike:
    """Stands in for nnU-Net's own trainers: no planned budget."""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    roots = {k: str(tmp_path / k) for k in ("raw", "preprocessed", "results")}
    for k, v in roots.items():
        monkeypatch.setenv(f"nnUNet_{k}", v)
    pre = os.path.join(roots["preprocessed"], DATASET)
    os.makedirs(pre)
    with open(os.path.join(pre, "nnUNetPlans.json"), "w") as f:
        json.dump({"configurations": {CONFIG: {}}}, f)
    with open(os.path.join(pre, "dataset.json"), "w") as f:
        json.dump({"labels": LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "x"}}, f)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for name in ("NNUNET_MCC_TRAIN_COMMAND", "NNUNET_MCC_EPOCHS", "NNUNET_MCC_ITERATIONS", "NNUNET_MCC_SEED",
                 "NNUNET_MCC_VAL_ITERATIONS", "FAKE_FAIL", "FAKE_ZERO"):
        monkeypatch.delenv(name, raising=False)

    def read_calls():
        if not calls.exists():
            return []
        lines = calls.read_text().splitlines()
        calls.unlink()
        return [json.loads(line) for line in lines]

    def trainer_folder(run):
        return os.path.join(roots["results"], DATASET, f"{run}__nnUNetPlans__{CONFIG}")

    return {"command": f"{sys.executable} {script}", "calls": read_calls, "roots": roots, "folder": trainer_folder,
            "record": os.path.join(roots["results"], DATASET, f"nnunet_mcc_auto_budget_nnUNetPlans_{CONFIG}.json")}


@pytest.fixture
def classes(monkeypatch):
    """Trainer lookup without nnU-Net: ``Stock*`` is a stock trainer, anything else this package's (any length and
    seed suffix, as the variants are built)."""
    from nnunet_mcc.experiments import crossval as module

    def stand_in(name):
        unseeded, seed = split_seed(name)
        base, epochs = split_epochs(unseeded)
        if base.startswith("Stock"):
            return StockLike
        return type(name, (PackageLike,), {"trainer_seed": seed, "budget_epochs": epochs})

    monkeypatch.setattr(module, "trainer_classes", lambda trainers, required: {t: stand_in(t) for t in trainers})


def run_auto(fake, trainers, folds=(0, 1), **kwargs):
    kwargs.setdefault("budget", BUDGET)
    return crossval(DATASET, CONFIG, trainers, folds=list(folds), device="cuda", train_command=fake["command"],
                    auto_budget=True, **kwargs)


def calls_by_round(calls):
    return sorted((c["trainer"], c["fold"], c["epochs_variable"]) for c in calls)


# ---- names ------------------------------------------------------------------------------------------
def test_the_longer_run_is_the_short_variant_spelled_as_nnunet_and_the_trainers_build_it():
    from nnunet_mcc.trainers import variants

    assert epochs_variant_name("nnUNetTrainerMCC", 100) == "nnUNetTrainerMCC_100epochs"
    assert epochs_variant_name("nnUNetTrainerMCC_50epochs", 100) == "nnUNetTrainerMCC_100epochs"
    assert epochs_variant_name("nnUNetTrainerMCC_seed1", 100) == "nnUNetTrainerMCC_100epochs_seed1"
    assert epochs_variant_name("nnUNetTrainerMCC_50epochs_seed0", 1) == "nnUNetTrainerMCC_1epoch_seed0"
    assert split_epochs("nnUNetTrainerGWDL_CE_20epochs") == ("nnUNetTrainerGWDL_CE", 20)
    assert split_epochs("nnUNetTrainerGWDL_CE") == ("nnUNetTrainerGWDL_CE", None)
    assert split_epochs("A_1epochs") == ("A_1epochs", None) and split_epochs("A_5epoch") == ("A_5epoch", None)
    for n in (1, 2, 37, 100):  # one spelling: the one the trainers build
        assert epochs_variant_name("nnUNetTrainerMCC", n) == variants.variant_name("nnUNetTrainerMCC", n)


def test_the_real_variant_plans_twice_the_epochs_with_the_same_iterations_from_its_class():
    """nnUNetTrainerMCC_20epochs under the longer round's environment (NNUNET_MCC_EPOCHS removed: it would override
    the class) plans 20 epochs with the first round's iterations, the epochs from the trainer class."""
    from nnunet_mcc.trainers import nnUNetTrainerMCC, nnUNetTrainerMCC_20epochs

    first = {"NNUNET_MCC_EPOCHS": "10", "NNUNET_MCC_ITERATIONS": "5", "NNUNET_MCC_VAL_ITERATIONS": "2"}
    longer = {k: v for k, v in first.items() if k != "NNUNET_MCC_EPOCHS"}
    assert nnUNetTrainerMCC.planned_budget(environ=first) == {"num_epochs": 10, "num_iterations_per_epoch": 5,
                                                              "num_val_iterations_per_epoch": 2}
    budget, sources = nnUNetTrainerMCC_20epochs._budget_with_sources(longer)
    assert budget == {"num_epochs": 20, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2}
    assert sources["num_epochs"] == "trainer class"
    assert nnUNetTrainerMCC_20epochs.planned_budget(environ=first)["num_epochs"] == 10  # why it is removed


def test_the_rounds_find_the_real_variant_with_nnunets_lookup(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"nnUNetTrainerMCC": 20}))
    assert run_auto(fake, ["nnUNetTrainerMCC"], folds=[0]) == 0
    assert calls_by_round(fake["calls"]()) == [("nnUNetTrainerMCC", 0, "10"), ("nnUNetTrainerMCC_20epochs", 0, None)]
    entry = json.load(open(fake["record"]))["trainers"]["nnUNetTrainerMCC"]
    assert entry["chosen"] == {"epochs": 20, "trainer": "nnUNetTrainerMCC_20epochs"}


# ---- the rounds -------------------------------------------------------------------------------------
def test_only_the_trainer_with_a_run_not_converged_is_trained_again_at_twice_the_epochs(fake, classes, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))  # A rises at 10 epochs, B has converged
    assert run_auto(fake, ["A", "B"]) == 0
    assert calls_by_round(fake["calls"]()) == [("A", 0, "10"), ("A", 1, "10"), ("A_20epochs", 0, None),
                                               ("A_20epochs", 1, None), ("B", 0, "10"), ("B", 1, "10")]
    debug = json.load(open(os.path.join(fake["folder"]("A_20epochs"), "fold_0", "debug.json")))
    assert (debug["num_epochs"], debug["num_iterations_per_epoch"]) == ("20", "5")  # 2N epochs, same iterations
    out = capsys.readouterr().out
    assert "round 1: A: 0 of 2 runs converged at 10 epochs: trained again at 20 epochs as A_20epochs" in out
    assert "auto budget, round 1: B: 2 of 2 runs converged at 10 epochs: converged" in out
    assert "auto budget: A converged at 20 epochs; B converged at 10 epochs" in out
    # the old run is kept, marked superseded; the converged one is not
    assert os.path.isfile(os.path.join(fake["folder"]("A"), "fold_0", "validation", "summary.json"))
    mark = json.load(open(os.path.join(fake["folder"]("A"), auto.SUPERSEDED_FILE)))
    assert mark["superseded_by"] == "A_20epochs" and mark["folds"] == [0, 1] and mark["by_epochs"] == 20
    assert "2 of 2 runs of A had not converged at 10 epochs" in mark["reason"]
    assert not os.path.exists(os.path.join(fake["folder"]("B"), auto.SUPERSEDED_FILE))
    record = json.load(open(fake["record"]))["trainers"]
    a, b = record["A"], record["B"]
    assert (a["status"], a["converged_epochs"]) == ("converged", 20)
    assert a["chosen"] == {"epochs": 20, "trainer": "A_20epochs"}
    assert [(r["epochs"], r["trainer"], r["outcome"], r["superseded_by"]) for r in a["rounds"]] == [
        (10, "A", "not converged", "A_20epochs"), (20, "A_20epochs", "converged", None)]
    assert a["rounds"][0]["verdicts"][0]["converged"] == convergence.NO
    assert "pseudo Dice projected gain" in a["rounds"][0]["verdicts"][0]["verdict"]
    assert a["rounds"][1]["budget"] == {"num_epochs": 20, "num_iterations_per_epoch": 5,
                                        "num_val_iterations_per_epoch": 2}
    assert (b["status"], b["chosen"], len(b["rounds"])) == ("converged", {"epochs": 10, "trainer": "B"}, 1)
    assert a["max_epochs"] == b["max_epochs"] == 40  # the default cap: 4 x the first budget

    # run again: everything is finished, nothing is trained, the same record
    assert run_auto(fake, ["A", "B"]) == 0
    assert fake["calls"]() == []
    assert json.load(open(fake["record"]))["trainers"] == record


def test_the_cap_stops_a_trainer_still_rising_and_a_class_at_zero_is_not_converged(fake, classes, monkeypatch,
                                                                                   capsys):
    # C never converges (cap 40: 10, 20, 40); D's curve is flat with a class at zero until 20 epochs
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"C": 10 ** 6, "D": 20}))
    monkeypatch.setenv("FAKE_ZERO", json.dumps(["D"]))
    assert run_auto(fake, ["C", "D"], folds=[0], max_epochs=50) == 0
    assert calls_by_round(fake["calls"]()) == [("C", 0, "10"), ("C_20epochs", 0, None), ("C_40epochs", 0, None),
                                               ("D", 0, "10"), ("D_20epochs", 0, None)]
    record = json.load(open(fake["record"]))["trainers"]
    c, d = record["C"], record["D"]
    assert (c["status"], c["converged_epochs"], c["chosen"]["trainer"], c["max_epochs"]) == (
        "cap reached", None, "C_40epochs", 50)
    assert [r["superseded_by"] for r in c["rounds"]] == ["C_20epochs", "C_40epochs", None]
    assert "core never learned" in d["rounds"][0]["verdicts"][0]["verdict"]
    assert (d["status"], d["chosen"]["trainer"]) == ("converged", "D_20epochs")
    out = capsys.readouterr().out
    assert "C: 0 of 1 runs converged at 40 epochs: cap reached (--max-epochs 50), still not converged" in out
    assert "C reached the cap (50 epochs) still not converged" in out


def test_an_interrupted_auto_run_picks_up_where_its_runs_stand(fake, classes, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    monkeypatch.setenv("FAKE_FAIL", json.dumps(["A_20epochs:1"]))
    assert run_auto(fake, ["A"]) == 1
    assert calls_by_round(fake["calls"]()) == [("A", 0, "10"), ("A", 1, "10"), ("A_20epochs", 0, None),
                                               ("A_20epochs", 1, None)]
    out = capsys.readouterr().out
    assert "round 2 did not finish, so it is not judged; run the same command again" in out
    entry = json.load(open(fake["record"]))["trainers"]["A"]
    assert (entry["status"], entry["training"], len(entry["rounds"])) == (
        "in progress", {"epochs": 20, "trainer": "A_20epochs"}, 1)
    # the comparison so far (what the SLURM judge job prints between rounds): A at its last judged budget
    interim = compare(DATASET, CONFIG, ["A"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20, plots=False,
                      auto_budget="")
    assert interim["markdown"].splitlines()[3].endswith(": 2 of 2 runs not converged at 10 epochs; being trained at 20 "
                                                        "epochs (`crossval --auto-budget` has not finished)")
    monkeypatch.delenv("FAKE_FAIL")
    assert run_auto(fake, ["A"]) == 0
    assert calls_by_round(fake["calls"]()) == [("A_20epochs", 1, None)]  # round 1 and fold 0 were finished
    entry = json.load(open(fake["record"]))["trainers"]["A"]
    assert (entry["status"], entry["chosen"]["trainer"], entry["training"]) == ("converged", "A_20epochs", None)


def test_with_seeds_every_seed_of_the_trainer_is_trained_again(fake, classes, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    assert run_auto(fake, ["A", "B"], folds=[0], seeds=[0, 1]) == 0
    assert calls_by_round(fake["calls"]()) == [("A_20epochs_seed0", 0, None), ("A_20epochs_seed1", 0, None),
                                               ("A_seed0", 0, "10"), ("A_seed1", 0, "10"), ("B_seed0", 0, "10"),
                                               ("B_seed1", 0, "10")]
    for seed in (0, 1):
        mark = json.load(open(os.path.join(fake["folder"](f"A_seed{seed}"), auto.SUPERSEDED_FILE)))
        assert mark["superseded_by"] == f"A_20epochs_seed{seed}"
    a = json.load(open(fake["record"]))["trainers"]["A"]
    assert a["seeds"] == [0, 1] and a["rounds"][0]["runs"] == ["A_seed0", "A_seed1"]
    assert a["chosen"]["trainer"] == "A_20epochs"
    result = compare(DATASET, CONFIG, ["A", "B"], folds=[0], output=str(tmp_path / "r"), bootstrap=20, plots=False,
                     auto_budget="")  # finds A's seed folders A_20epochs_seed<S>
    assert sorted(r["run"] for r in result["runs"]) == ["A_20epochs_seed0", "A_20epochs_seed1", "B_seed0", "B_seed1"]


def test_the_dry_run_judges_finished_rounds_and_shows_the_first_with_runs_left(fake, classes, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    assert run_auto(fake, ["A", "B"], folds=[0], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "auto budget, round 1: A (10 x 5 (val 2)), B (10 x 5 (val 2))" in out and "A fold 0: train" in out
    assert "a dry run shows the rounds up to the first one with runs left to train" in out
    assert fake["calls"]() == [] and not os.path.exists(fake["record"])
    # round 1 trained by plain crossval (the same folders); the dry run then judges it and shows round 2
    assert crossval(DATASET, CONFIG, ["A", "B"], folds=[0], device="cuda", train_command=fake["command"],
                    budget=BUDGET) == 0
    fake["calls"]()
    assert run_auto(fake, ["A", "B"], folds=[0], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "round 1: A: 0 of 1 runs converged at 10 epochs: trained again at 20 epochs as A_20epochs" in out
    assert "auto budget, round 2: A_20epochs (20 x 5 (val 2))" in out and "A_20epochs fold 0: train" in out
    assert "NNUNET_MCC_EPOCHS unset" in out and "NNUNET_MCC_ITERATIONS=5" in out
    assert fake["calls"]() == [] and not os.path.exists(fake["record"])
    assert not os.path.exists(os.path.join(fake["folder"]("A"), auto.SUPERSEDED_FILE))


def test_same_budget_trains_every_trainer_to_the_largest_budget(fake, classes, monkeypatch):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    assert run_auto(fake, ["A", "B"], folds=[0], same_budget=True) == 0
    assert calls_by_round(fake["calls"]()) == [("A", 0, "10"), ("A_20epochs", 0, None), ("B", 0, "10"),
                                               ("B_20epochs", 0, None)]
    record = json.load(open(fake["record"]))["trainers"]
    assert (record["B"]["converged_epochs"], record["B"]["chosen"]["trainer"]) == (10, "B")  # converged first at 10
    assert [r["superseded_by"] for r in record["B"]["rounds"]] == [None, None]  # trained on for equal budgets only
    assert not os.path.exists(os.path.join(fake["folder"]("B"), auto.SUPERSEDED_FILE))
    assert os.path.exists(os.path.join(fake["folder"]("A"), auto.SUPERSEDED_FILE))


def test_slurm_writes_one_round_and_a_judge_job_that_submits_the_next(fake, classes, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    slurm = str(tmp_path / "runs.sbatch")
    judge = str(tmp_path / "runs_compare.sh")
    assert run_auto(fake, ["A", "B"], folds=[0], slurm=slurm, slurm_options=["--time=1:00:00"]) == 0
    text, job = open(slurm).read(), open(judge).read()
    assert "#SBATCH --array=0-1" in text and "NNUNET_MCC_EPOCHS=10" in text and "unset NNUNET_MCC_EPOCHS" not in text
    assert "--auto-budget" in job and f"--slurm={slurm}" in job and "--after-round=1 --submit" in job
    assert "--epochs=10" in job and "--train-command=" in job
    assert job.strip().splitlines()[-1].endswith("--auto-budget")  # then compare with the record
    assert job.strip().splitlines()[-1].startswith("nnunet-mcc compare -d")
    for task in ("0", "1"):  # the array's tasks
        proc = subprocess.run(["bash", slurm], capture_output=True, text=True,
                              env=dict(os.environ, SLURM_ARRAY_TASK_ID=task))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    fake["calls"]()
    # the judge job's crossval: judges round 1, writes round 2 (A only) with the epochs from the trainer's name, and
    # submits it with the judge job after it (a fake sbatch records its arguments)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "sbatch").write_text('#!/bin/bash\necho "$*" >> "$FAKE_SBATCH"\necho "$(wc -l < "$FAKE_SBATCH")"\n')
    os.chmod(bin_folder / "sbatch", 0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH", str(tmp_path / "sbatch.txt"))
    assert run_auto(fake, ["A", "B"], folds=[0], slurm=slurm, slurm_options=["--time=1:00:00"], after_round=1,
                    submit=True) == 0
    assert (tmp_path / "sbatch.txt").read_text().splitlines() == [f"--parsable {slurm}",
                                                                  f"--parsable --dependency=afterany:1 {judge}"]
    text = open(slurm).read()
    assert "#SBATCH --array=0-0" in text and "-tr A_20epochs" in text and "unset NNUNET_MCC_EPOCHS" in text
    assert "--after-round=2" in open(judge).read()
    shell = dict(os.environ, SLURM_ARRAY_TASK_ID="0", NNUNET_MCC_EPOCHS="10", FAKE_FAIL='["A_20epochs:0"]')
    proc = subprocess.run(["bash", slurm], capture_output=True, text=True, env=shell)
    assert proc.returncode == 3
    assert fake["calls"]() == [{"trainer": "A_20epochs", "fold": 0, "epochs_variable": None, "flags": []}]
    # round 2's run failed: its judge job does not submit it again
    assert run_auto(fake, ["A", "B"], folds=[0], slurm=slurm, after_round=2) == 1
    assert "round 2 still has 1 unfinished run(s) after its array ended (A_20epochs fold 0): not submitting it " \
           "again" in capsys.readouterr().out
    proc = subprocess.run(["bash", slurm], capture_output=True, text=True,
                          env=dict(os.environ, SLURM_ARRAY_TASK_ID="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every round finished: nothing more to write, the record is complete (the judge job then compares)
    os.remove(slurm)
    assert run_auto(fake, ["A", "B"], folds=[0], slurm=slurm, after_round=2) == 0
    assert not os.path.exists(slurm)
    assert json.load(open(fake["record"]))["trainers"]["A"]["status"] == "converged"


# ---- compare with the record ------------------------------------------------------------------------
def test_compare_takes_each_trainer_at_its_converged_budget_and_says_so_first(fake, classes, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    assert run_auto(fake, ["A", "B"]) == 0
    result = compare(DATASET, CONFIG, ["B", "A"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20, plots=False,
                     auto_budget="")
    assert result["auto_budget"]["compared"] == {"B": "B", "A": "A_20epochs"}
    assert result["auto_budget"]["budgets_differ"] is True
    assert {r["run"]: r["num_epochs"] for r in result["runs"]} == {"B": 10, "A_20epochs": 20}
    lines = result["markdown"].splitlines()
    assert lines[2].startswith("**Budgets from `crossval --auto-budget`:** each trainer is compared at the budget at "
                               "which all its runs converged")
    assert lines[3] == ("- B: 10 epochs x 5 iterations (50 iterations, 2 validation iterations per epoch): every run "
                        "converged (2 of 2)")
    assert lines[4] == ("- A: 20 epochs x 5 iterations (100 iterations, 2 validation iterations per epoch), runs "
                        "`A_20epochs`: every run converged (2 of 2); at 10 epochs 2 of 2 had not")
    assert lines[5] == ""
    assert lines[6].startswith("**The budgets differ between trainers:** each loss is compared trained until its runs "
                               "converged (which loss wins when trained enough; at the cap when they had not), not at "
                               "equal cost; `--same-budget` compares every trainer at 20 epochs.")
    assert "**Budgets differ between trainers** (chosen by `crossval --auto-budget`" in result["markdown"]
    assert "--allow-mixed-budgets" not in result["markdown"]

    # without the record the budgets are checked as always: A (10 epochs, superseded) and A_20epochs do not pair
    with pytest.raises(UserError, match="different budgets"):
        compare(DATASET, CONFIG, ["B", "A_20epochs"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20,
                plots=False)
    plain = compare(DATASET, CONFIG, ["B", "A"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20, plots=False)
    assert any(n.startswith("A: superseded by A_20epochs (2 of 2 runs of A had not converged at 10 epochs") and
               "`compare --auto-budget`" in n for n in plain["notes"])

    # --same-budget needs every trainer at the largest budget: refused, then trained with crossval --same-budget
    code = cli_main(["compare", "-d", DATASET, "-c", CONFIG, "-tr", "B", "A", "-f", "0", "1", "--auto-budget",
                     "--same-budget", "--no-plots", "-o", str(tmp_path / "r")])
    assert code == 2
    assert run_auto(fake, ["A", "B"], same_budget=True) == 0
    assert calls_by_round(fake["calls"]())[-2:] == [("B_20epochs", 0, None), ("B_20epochs", 1, None)]
    same = compare(DATASET, CONFIG, ["B", "A"], folds=[0, 1], output=str(tmp_path / "r"), bootstrap=20, plots=False,
                   auto_budget=fake["record"], same_budget=True)
    assert same["auto_budget"]["compared"] == {"B": "B_20epochs", "A": "A_20epochs"}
    assert same["auto_budget"]["budgets_differ"] is False
    lines = same["markdown"].splitlines()
    assert lines[2].startswith("**Budgets from `crossval --auto-budget`, compared at the same budget "
                               "(--same-budget):** every trainer at 20 epochs")
    assert lines[3].endswith("runs `B_20epochs`: its runs converged at 10 epochs")
    assert lines[6] == "Every trainer is compared at the same budget."
    assert "**Budget of every run:** 20 epochs x 5 iterations" in same["markdown"]


def test_compare_refuses_a_record_that_no_longer_matches_the_folds(fake, classes, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FAKE_CONVERGE", json.dumps({"A": 20}))
    assert run_auto(fake, ["A", "B"], folds=[0]) == 0
    debug = os.path.join(fake["folder"]("A_20epochs"), "fold_0", "debug.json")
    budget = json.load(open(debug))
    json.dump(dict(budget, num_epochs="30"), open(debug, "w"))
    args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "B", "-f", "0", "--auto-budget", "--no-plots", "-o",
            str(tmp_path / "r")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "A_20epochs fold 0 was trained with 30 x 5 (val 2), but the auto-budget record" in err
    assert "says 20 x 5 (val 2) for A: the record is out of date" in err
    assert cli_main(args[:6] + ["C", "-f", "0", "--auto-budget"]) == 2
    assert "has no judged round of C" in capsys.readouterr().err


# ---- bad arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["cap_too_small", "without_auto", "script", "stock", "same_budget_compare",
                                  "record_missing"])
def test_bad_auto_budget_arguments_are_one_line_exit_2_and_nothing_run(fake, classes, case, capsys, tmp_path):
    args = ["crossval", "-d", DATASET, "-c", CONFIG, "-tr", "A", "-f", "0", "--epochs", "10", "--train-command",
            fake["command"], "--auto-budget"]
    expected = {"cap_too_small": "--max-epochs 15 leaves no room to double the first budget of A (10 epochs): give "
                                 "at least 20",
                "without_auto": "--max-epochs and --same-budget belong(s) to --auto-budget: add --auto-budget",
                "script": "--auto-budget judges each round's runs before it trains the next one",
                "stock": "StockT keep(s) the budget of the class (nnU-Net's own trainers)",
                "same_budget_compare": "--same-budget chooses among the budgets crossval --auto-budget tried: add "
                                       "--auto-budget",
                "record_missing": "no auto-budget record"}[case]
    if case == "cap_too_small":
        args += ["--max-epochs", "15"]
    elif case == "without_auto":
        args = args[:-1] + ["--max-epochs", "40", "--same-budget"]
    elif case == "script":
        args += ["--write-script", str(tmp_path / "runs.sh")]
    elif case == "stock":
        args[6] = "StockT"
    elif case == "same_budget_compare":
        args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "--same-budget"]
    elif case == "record_missing":
        args = ["compare", "-d", DATASET, "-c", CONFIG, "-tr", "A", "--auto-budget"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err, err
    assert fake["calls"]() == [] and not os.path.exists(fake["record"])

"""``nnunet-mcc crossval``: skip / resume / validate / failure logic and scripts, with a fake train command.

The fake command takes nnUNetv2_train's arguments, records them, and behaves as told per (trainer, fold):
finish (checkpoint_final.pth + validation/summary.json), fail (exit 3) or be interrupted
(checkpoint_latest.pth, exit 1).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.crossval import crossval
from nnunet_mcc.budget import split_seed
from nnunet_mcc.trainers.base import ComparisonTrainer

DATASET = "Dataset555_Fake"
CONFIG = "2d"

FAKE_TRAIN = r'''
import json, os, sys
args = sys.argv[1:]
dataset, config, fold = args[0], args[1], args[2]
trainer = args[args.index("-tr") + 1]
plans = args[args.index("-p") + 1]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"trainer": trainer, "fold": fold, "flags": [a for a in args if a in ("--c", "--val")],
                        "epochs": os.environ.get("NNUNET_MCC_EPOCHS"),
                        "jobs": os.environ.get("NNUNET_MCC_JOBS"),
                        "env": {k: os.environ.get(k) for k in json.loads(os.environ.get("FAKE_SHOW", "[]"))}}) + "\n")
behaviour = json.loads(os.environ.get("FAKE_BEHAVIOUR", "{}")).get(f"{trainer}:{fold}", "finish")
folder = os.path.join(os.environ["nnUNet_results"], dataset, f"{trainer}__{plans}__{config}", f"fold_{fold}")
os.makedirs(folder, exist_ok=True)
if behaviour == "fail":
    sys.exit(3)
if behaviour == "interrupt":
    open(os.path.join(folder, "checkpoint_latest.pth"), "w").close()
    sys.exit(1)
open(os.path.join(folder, "checkpoint_final.pth"), "w").close()
os.makedirs(os.path.join(folder, "validation"), exist_ok=True)
with open(os.path.join(folder, "validation", "summary.json"), "w") as f:
    json.dump({"metric_per_case": []}, f)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    roots = {k: str(tmp_path / k) for k in ("raw", "preprocessed", "results")}
    for k, v in roots.items():
        monkeypatch.setenv(f"nnUNet_{k}", v)
    os.makedirs(os.path.join(roots["preprocessed"], DATASET))
    with open(os.path.join(roots["preprocessed"], DATASET, "nnUNetPlans.json"), "w") as f:
        json.dump({"configurations": {CONFIG: {}}}, f)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.delenv("NNUNET_MCC_TRAIN_COMMAND", raising=False)

    def fold_folder(trainer, fold):
        return os.path.join(roots["results"], DATASET, f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")

    def read_calls():
        if not calls.exists():
            return []
        lines = calls.read_text().splitlines()
        calls.unlink()
        return [json.loads(line) for line in lines]

    return {"command": f"{sys.executable} {script}", "folder": fold_folder, "calls": read_calls,
            "roots": roots, "script": str(script)}


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_skip_resume_validate_and_failures(fake, monkeypatch, capsys):
    # A fold 0 finished, A fold 1 interrupted, B fold 0 trained but not validated, B fold 1 fresh (will fail)
    touch(os.path.join(fake["folder"]("A", 0), "checkpoint_final.pth"))
    touch(os.path.join(fake["folder"]("A", 0), "validation", "summary.json"))
    touch(os.path.join(fake["folder"]("A", 1), "checkpoint_latest.pth"))
    touch(os.path.join(fake["folder"]("B", 0), "checkpoint_final.pth"))
    monkeypatch.setenv("FAKE_BEHAVIOUR", json.dumps({"B:1": "fail"}))
    code = crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3})
    assert code == 1
    calls = sorted((c["trainer"], c["fold"], tuple(c["flags"]), c["epochs"]) for c in fake["calls"]())
    assert calls == [("A", "1", ("--c",), "3"), ("B", "0", ("--val",), "3"), ("B", "1", (), "3")]
    out = capsys.readouterr().out
    assert "A fold 0: skip" in out
    assert "1 run(s) failed" in out and "B fold 1: exit status 3" in out
    assert os.path.isfile(os.path.join(fake["roots"]["results"], DATASET, "nnunet_mcc_crossval_logs",
                                       f"B__nnUNetPlans__{CONFIG}_fold_1.log"))

    # the rerun trains only what failed; an interrupted run is resumed the next time
    monkeypatch.setenv("FAKE_BEHAVIOUR", json.dumps({"B:1": "interrupt"}))
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"]) == 1
    assert [(c["trainer"], c["fold"], c["flags"]) for c in fake["calls"]()] == [("B", "1", [])]
    monkeypatch.setenv("FAKE_BEHAVIOUR", "{}")
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    jobs=2) == 0
    assert [(c["trainer"], c["fold"], c["flags"]) for c in fake["calls"]()] == [("B", "1", ["--c"])]
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"]) == 0
    assert fake["calls"]() == []
    assert "all 4 runs finished already" in capsys.readouterr().out


def test_a_run_that_exits_0_without_summary_is_a_failure(fake, monkeypatch, capsys):
    command = f"{sys.executable} -c pass"  # exits 0, writes nothing
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=command) == 1
    assert "no validation/summary.json afterwards" in capsys.readouterr().out


def test_dry_run_trains_nothing(fake, capsys):
    touch(os.path.join(fake["folder"]("A", 1), "checkpoint_latest.pth"))
    assert crossval("555", CONFIG, ["A"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    dry_run=True, snapshot_epochs=[5, 2]) == 0
    out = capsys.readouterr().out
    assert fake["calls"]() == []
    assert "A fold 0: train" in out and "A fold 1: resume" in out and "--c" in out
    assert "NNUNET_MCC_SNAPSHOT_EPOCHS=2,5" in out


def test_shell_script_applies_the_same_state_logic(fake, monkeypatch, tmp_path):
    touch(os.path.join(fake["folder"]("A", 0), "checkpoint_final.pth"))
    touch(os.path.join(fake["folder"]("A", 0), "validation", "summary.json"))
    touch(os.path.join(fake["folder"]("A", 1), "checkpoint_latest.pth"))
    script, slurm = str(tmp_path / "runs.sh"), str(tmp_path / "runs.sbatch")
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cuda", train_command=fake["command"],
                    script=script, slurm=slurm, slurm_options=["--gres=gpu:1"], budget={"iterations": 9}) == 0
    assert fake["calls"]() == []
    text = open(slurm).read()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --gres=gpu:1" in text and "NNUNET_MCC_ITERATIONS=9" in text
    assert text.count("fold_") == 4
    # the plain script: run it with bash (finished skipped, interrupted resumed, failures reported)
    monkeypatch.setenv("FAKE_BEHAVIOUR", json.dumps({"B:0": "fail"}))
    proc = subprocess.run(["bash", script], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    calls = sorted((c["trainer"], c["fold"], tuple(c["flags"])) for c in fake["calls"]())
    assert calls == [("A", "1", ("--c",)), ("B", "0", ()), ("B", "1", ())]
    assert "finished already" in proc.stdout and "FAILED" in proc.stdout
    # one SLURM array task runs one entry, with the same checks
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2")
    assert subprocess.run(["bash", slurm], capture_output=True, text=True, env=env).returncode == 3
    assert [(c["trainer"], c["fold"]) for c in fake["calls"]()] == [("B", "0")]


@pytest.mark.parametrize("case", ["unknown_dataset", "missing_configuration", "bad_fold", "unknown_trainer"])
def test_bad_input_is_one_line_and_exit_2(fake, case, capsys):
    args = ["crossval", "-d", "555", "-c", CONFIG, "-tr", "A", "-device", "cpu", "--dry-run"]
    if case == "unknown_dataset":
        args[2] = "556"
    elif case == "missing_configuration":
        args[4] = "3d_fullres"
    elif case == "bad_fold":
        args += ["-f", "0", "0"]
    if case != "unknown_trainer":
        args += ["--train-command", fake["command"]]
    else:
        args[6] = "nnUNetTrainerDoesNotExist"  # checked by nnU-Net's own lookup with the default command
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"unknown_dataset": "556", "missing_configuration": "3d_fullres", "bad_fold": "-f",
            "unknown_trainer": "nnUNetTrainerDoesNotExist"}[case] in err
    assert fake["calls"]() == []


# ---- budgets: a fold trained with another budget is never skipped or resumed silently -------------------
class PackageLikeTrainer:
    """Stands in for this package's trainers: a planned budget from the NNUNET_MCC_* variables, the seed rule."""

    trainer_seed = None
    seed_with_source = classmethod(ComparisonTrainer.seed_with_source.__func__)

    @classmethod
    def planned_budget(cls, environ=os.environ):
        return {"num_epochs": int(environ.get("NNUNET_MCC_EPOCHS", 1000)),
                "num_iterations_per_epoch": int(environ.get("NNUNET_MCC_ITERATIONS", 250)),
                "num_val_iterations_per_epoch": int(environ.get("NNUNET_MCC_VAL_ITERATIONS", 50))}


class StockLikeTrainer:
    """Stands in for nnU-Net's own trainers: the budget is fixed in the class, no planned_budget."""


@pytest.fixture
def classes(monkeypatch):
    from nnunet_mcc.experiments import crossval as module

    def stand_in(name):
        if name.startswith("Stock"):
            return StockLikeTrainer
        return type(name, (PackageLikeTrainer,), {"trainer_seed": split_seed(name)[1]})

    monkeypatch.setattr(module, "trainer_classes", lambda trainers, required: {t: stand_in(t) for t in trainers})


def trained(folder, budget=(2, 10, 2), final=True, checkpoint=False, debug=True):
    """A fold as training leaves it (summary.json, optionally no checkpoint: results copied back from a cluster)."""
    if final:
        touch(os.path.join(folder, "validation", "summary.json"))
    if checkpoint:
        touch(os.path.join(folder, "checkpoint_final.pth" if final else "checkpoint_latest.pth"))
    if debug:
        with open(os.path.join(folder, "debug.json"), "w") as f:
            json.dump(dict(zip(("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"),
                               map(str, budget))), f)


def test_a_fold_of_another_budget_is_refused_then_moved_aside_on_request(fake, classes, capsys):
    trained(fake["folder"]("A", 0))                                   # finished, no checkpoint, 2 epochs
    trained(fake["folder"]("A", 1), final=False, checkpoint=True)      # interrupted, 2 epochs
    budget = {"epochs": 4, "iterations": 10, "val_iterations": 2}
    code = cli_main(["crossval", "-d", "555", "-c", CONFIG, "-tr", "A", "-f", "0", "1", "-device", "cpu",
                     "--epochs", "4", "--iterations", "10", "--val-iterations", "2",
                     "--train-command", fake["command"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "A fold 0 trained with 2 x 10 (val 2), asked for 4 x 10 (val 2)" in err
    assert "A fold 1 trained with 2 x 10 (val 2)" in err and "--retrain-mismatched" in err
    assert fake["calls"]() == [] and os.path.isfile(os.path.join(fake["folder"]("A", 0), "validation", "summary.json"))

    assert crossval("555", CONFIG, ["A"], folds=[0, 1], device="cpu", train_command=fake["command"], budget=budget,
                    retrain_mismatched=True) == 0
    out = capsys.readouterr().out
    assert "A fold 0: trained with 2 x 10 (val 2), asked for 4 x 10 (val 2)" in out and "moved aside" in out
    aside = fake["folder"]("A", 0) + ".budget_2x10x2"
    assert os.path.isfile(os.path.join(aside, "validation", "summary.json"))  # nothing lost
    assert os.path.isfile(os.path.join(fake["folder"]("A", 1) + ".budget_2x10x2", "checkpoint_latest.pth"))
    # both trained from the start (not resumed), with the asked budget
    assert sorted((c["fold"], tuple(c["flags"]), c["epochs"]) for c in fake["calls"]()) == [("0", (), "4"),
                                                                                           ("1", (), "4")]


def test_results_without_checkpoints_count_as_done_and_are_never_trained_over(fake, classes, capsys):
    trained(fake["folder"]("A", 0), budget=(3, 10, 2))
    trained(fake["folder"]("A", 1), budget=(3, 10, 2), checkpoint=True)
    assert crossval("555", CONFIG, ["A"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3, "iterations": 10, "val_iterations": 2}, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "A fold 0: skip, trained 3 x 10 (val 2)" in out and "A fold 1: skip" in out
    assert crossval("555", CONFIG, ["A"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3, "iterations": 10, "val_iterations": 2}) == 0
    assert fake["calls"]() == []


def test_an_unknown_budget_is_not_skipped_silently(fake, classes, capsys):
    trained(fake["folder"]("A", 0), debug=False)
    with pytest.raises(UserError, match=r"A fold 0 budget unknown .*debug.json does not exist"):
        crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=fake["command"],
                 budget={"epochs": 3})
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3}, retrain_mismatched=True, dry_run=True) == 0
    assert "would be moved aside to fold_0.budget_unknown" in capsys.readouterr().out
    assert os.path.isdir(fake["folder"]("A", 0))  # a dry run moves nothing


def test_stock_trainers_keep_their_budget_and_the_options_say_so(fake, classes, capsys):
    trained(fake["folder"]("StockT", 0), budget=(1000, 250, 50))
    assert crossval("555", CONFIG, ["StockT"], folds=[0], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3}) == 0
    out = capsys.readouterr().out
    assert "StockT: budget fixed by the trainer class" in out and "StockT fold 0: skip" in out


def test_scripts_skip_folds_that_have_validation_results_only(fake, classes, tmp_path):
    trained(fake["folder"]("A", 0), budget=(1000, 250, 50))
    script = str(tmp_path / "runs.sh")
    assert crossval("555", CONFIG, ["A"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    script=script) == 0
    proc = subprocess.run(["bash", script], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished already" in proc.stdout
    assert [(c["fold"], c["flags"]) for c in fake["calls"]()] == [("1", [])]


def test_the_package_trainers_plan_their_budget_and_nnunet_trainers_keep_theirs(fake, capsys):
    """Without stand-ins: nnU-Net's lookup finds nnUNetTrainerMCC (planned_budget) and nnUNetTrainer (none)."""
    trained(fake["folder"]("nnUNetTrainerMCC", 0), budget=(2, 10, 2))
    trained(fake["folder"]("nnUNetTrainer", 0), budget=(1000, 250, 50))
    with pytest.raises(UserError, match=r"nnUNetTrainerMCC fold 0 trained with 2 x 10 \(val 2\), asked for "
                                        r"3 x 10 \(val 2\)"):
        crossval("555", CONFIG, ["nnUNetTrainerMCC", "nnUNetTrainer"], folds=[0], device="cpu",
                 train_command=fake["command"], budget={"epochs": 3, "iterations": 10, "val_iterations": 2})
    assert "nnUNetTrainer: budget fixed by the trainer class" in capsys.readouterr().out
    assert crossval("555", CONFIG, ["nnUNetTrainerMCC", "nnUNetTrainer"], folds=[0], device="cpu",
                    train_command=fake["command"], budget={"epochs": 2, "iterations": 10, "val_iterations": 2}) == 0
    assert fake["calls"]() == []


# ---- seeds: each (trainer, fold) once per seed, as <Trainer>_seed<S> ------------------------------------
def test_seeds_dry_run_lists_every_trainer_seed_and_fold(fake, classes, capsys):
    trained(fake["folder"]("A_seed1", 0), budget=(3, 10, 2))
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    budget={"epochs": 3, "iterations": 10, "val_iterations": 2}, seeds=[0, 1], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "8 runs: 2 trainer(s) x 2 seed(s) (0 1) x 2 fold(s)" in out
    for trainer in ("A_seed0", "A_seed1", "B_seed0", "B_seed1"):
        for fold in (0, 1):
            state = "skip, trained 3 x 10 (val 2)" if (trainer, fold) == ("A_seed1", 0) else "train"
            assert f"{trainer} fold {fold}: {state}" in out
    assert "-tr B_seed1" in out and "-tr A " not in out
    assert fake["calls"]() == [] and not os.path.exists(os.path.join(fake["roots"]["results"], DATASET,
                                                                     "nnunet_mcc_crossval_logs"))


def test_seeded_runs_train_in_their_own_folders_with_one_line_each(fake, classes, capsys):
    assert crossval("555", CONFIG, ["A"], folds=[0], device="cpu", train_command=fake["command"], seeds=[2, 0],
                    jobs=2) == 0
    calls = fake["calls"]()
    assert sorted((c["trainer"], c["fold"], c["jobs"]) for c in calls) == [("A_seed0", "0", "2"), ("A_seed2", "0", "2")]
    assert all(os.path.isfile(os.path.join(fake["folder"](t, 0), "validation", "summary.json"))
               for t in ("A_seed0", "A_seed2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert sorted(line.split(" fold")[0] for line in lines) == ["[1/2] A_seed0", "[2/2] A_seed2"] or \
        sorted(line.split(" fold")[0] for line in lines) == ["[1/2] A_seed2", "[2/2] A_seed0"]
    assert all(re.fullmatch(r"\[\d/2\] A_seed[02] fold 0: trained in \d+ s", line) for line in lines), lines


def test_scripts_with_seeds_have_one_task_per_trainer_seed_and_fold(fake, classes, tmp_path):
    script, slurm = str(tmp_path / "runs.sh"), str(tmp_path / "runs.sbatch")
    assert crossval("555", CONFIG, ["A", "B"], folds=[0, 1], device="cpu", train_command=fake["command"],
                    seeds=[0, 1, 2], script=script, slurm=slurm, budget={"epochs": 3}) == 0
    text = open(slurm).read()
    assert "#SBATCH --array=0-11" in text and len(re.findall(r"-tr [AB]_seed[012] ", text)) == 12 and "NNUNET_MCC_EPOCHS=3" in text
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="4")  # A, seed 2, fold 0 (trainer, seed, fold order)
    proc = subprocess.run(["bash", slurm], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(c["trainer"], c["fold"], c["epochs"]) for c in fake["calls"]()] == [("A_seed2", "0", "3")]
    assert os.path.isfile(os.path.join(fake["folder"]("A_seed2", 0), "validation", "summary.json"))
    proc = subprocess.run(["bash", script], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = fake["calls"]()
    assert len(calls) == 11 and {c["jobs"] for c in calls} == {"1"} and "finished already" in proc.stdout


@pytest.mark.parametrize("case", ["seed_twice", "negative_seed", "stock_trainer", "seeded_name", "env_seed",
                                  "class_seed_conflict", "bad_knob"])
def test_bad_seed_input_is_one_line_exit_2_and_nothing_written(fake, classes, case, capsys, monkeypatch, tmp_path):
    script = str(tmp_path / "runs.sh")
    trainers, seeds = ["A"], ["0", "1"]
    if case == "seed_twice":
        seeds = ["0", "1", "0"]
    elif case == "negative_seed":
        seeds = ["-1"]
    elif case == "stock_trainer":
        trainers = ["A", "StockT"]
    elif case == "seeded_name":
        trainers = ["A_seed1"]
    elif case == "env_seed":
        monkeypatch.setenv("NNUNET_MCC_SEED", "1")
    elif case == "class_seed_conflict":
        trainers, seeds = ["A_seed2"], []
        monkeypatch.setenv("NNUNET_MCC_SEED", "3")
    elif case == "bad_knob":
        monkeypatch.setenv("NNUNET_MCC_SAVE_EVERY", "0")
    args = ["crossval", "-d", "555", "-c", CONFIG, "-tr", *trainers, "-device", "cpu", "--train-command",
            fake["command"], "--write-script", script] + (["--seeds", *seeds] if seeds else [])
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    expected = {"seed_twice": "lists seed 0 twice", "negative_seed": "integers >= 0, got -1",
                "stock_trainer": "StockT ignore(s) the seed; for nnU-Net's Dice+CE with the seed and the budget "
                                 "knobs use nnUNetTrainerBaseline",
                "seeded_name": "-tr A_seed1 carries a seed already",
                "env_seed": "--seeds 0 1 with NNUNET_MCC_SEED=1",
                "class_seed_conflict": "A_seed2 trains with seed 2, but NNUNET_MCC_SEED=3",
                "bad_knob": "NNUNET_MCC_SAVE_EVERY='0' must be a positive integer"}[case]
    assert expected in err, err
    assert fake["calls"]() == [] and not os.path.exists(script) and not os.path.exists(fake["roots"]["results"])


def test_a_bad_budget_variable_names_the_trainer():
    """The trainers' parser raises UserError (not ValueError): the message still names the trainer."""
    from nnunet_mcc.experiments.crossval import planned_budgets
    from nnunet_mcc.trainers import nnUNetTrainerMCC

    with pytest.raises(UserError, match=r"^nnUNetTrainerMCC: environment variable NNUNET_MCC_ITERATIONS='x' must be"):
        planned_budgets({"nnUNetTrainerMCC": nnUNetTrainerMCC, "Stock": StockLikeTrainer},
                        {"NNUNET_MCC_ITERATIONS": "x"})


# ---- each run's share of the cores on the CPU --------------------------------------------------------
SHARE_VARIABLES = ("NNUNET_MCC_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "nnUNet_n_proc_DA",
                   "nnUNet_def_n_proc", "NNUNET_MCC_PLOT_EVERY")


def test_each_run_on_the_cpu_gets_its_share_of_the_cores_and_draws_progress_now_and_then(fake, monkeypatch, capsys):
    """nnUNetv2_train gives a CPU run every core: crossval -j N sets the SLURM task's rule for max(1, cores // N)
    cores (4 cores, -j 2: 2 threads each) and progress.png every 50 epochs, keeping what the user set."""
    import nnunet_mcc.budget
    import nnunet_mcc.experiments.crossval

    for module in (nnunet_mcc.budget, nnunet_mcc.experiments.crossval):
        monkeypatch.setattr(module, "available_cores", lambda: 4)
    for name in SHARE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_SHOW", json.dumps(SHARE_VARIABLES))
    assert crossval("555", CONFIG, ["A", "B"], folds=[0], device="cpu", train_command=fake["command"], jobs=2) == 0
    calls = fake["calls"]()
    assert len(calls) == 2 and all(c["jobs"] == "2" for c in calls)
    expected = {"NNUNET_MCC_TORCH_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "2", "NNUNET_MCC_PLOT_EVERY": "50"}
    assert all(c["env"] == expected for c in calls), calls
    assert "each run on the CPU (2 at a time on 4 cores: 2 per run" in capsys.readouterr().out

    # three at a time on 4 cores: one core each, augmentation in the training process; the user's values are kept
    monkeypatch.setenv("NNUNET_MCC_TORCH_THREADS", "3")
    monkeypatch.setenv("NNUNET_MCC_PLOT_EVERY", "1")
    assert crossval("555", CONFIG, ["A", "B", "C"], folds=[1], device="cpu", train_command=fake["command"],
                    jobs=3) == 0
    assert [c["env"] for c in fake["calls"]()] == [{
        "NNUNET_MCC_TORCH_THREADS": "3", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1", "NNUNET_MCC_PLOT_EVERY": "1"}] * 3
    # the dry run says it; on a GPU nothing is set
    assert crossval("555", CONFIG, ["D"], folds=[0], device="cpu", train_command=fake["command"], jobs=2,
                    dry_run=True) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("each run on the CPU (1 at a time on 4 cores: 4 per run; variables already set are kept)")
    assert "OMP_NUM_THREADS=4" in line and "nnUNet_n_proc_DA=3" in line and "NNUNET_MCC_TORCH_THREADS" not in line
    monkeypatch.delenv("NNUNET_MCC_TORCH_THREADS")
    monkeypatch.delenv("NNUNET_MCC_PLOT_EVERY")
    assert crossval("555", CONFIG, ["D"], folds=[0], device="cuda", train_command=fake["command"], jobs=2) == 0
    assert [c["env"] for c in fake["calls"]()] == [dict.fromkeys(SHARE_VARIABLES)]
    assert "each run on the CPU" not in capsys.readouterr().out


# ---- progress ---------------------------------------------------------------------------------------
def test_progress_lines_are_whole_and_numbered_when_runs_finish_together():
    import threading

    from nnunet_mcc.experiments.runner import Progress, Run

    lines = []
    progress = Progress(40, log=lines.append, interactive=False)
    runs = [Run(f"T_seed{i % 4}", i // 4, "/nonexistent", "train", []) for i in range(40)]

    def finish(r):
        progress.started(r)
        progress.finished(r, f"{r.trainer} fold {r.fold}: trained in 1 s")

    threads = [threading.Thread(target=finish, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [line.split("]")[0] for line in lines] == [f"[{i}/40" for i in range(1, 41)]
    assert all(re.fullmatch(r"\[\d+/40\] T_seed\d fold \d+: trained in 1 s", line) for line in lines)


def test_the_progress_display_shows_the_epochs_of_running_runs(tmp_path, capsys):
    import time

    from nnunet_mcc.experiments.runner import Progress, Run

    folder = tmp_path / "fold_2"
    folder.mkdir()
    r = Run("nnUNetTrainerMCC_seed1", 2, str(folder), "train", [])
    other = Run("nnUNetTrainer", 0, str(tmp_path / "none"), "train", [])
    lines = []
    progress = Progress(2, log=lines.append, epochs={"nnUNetTrainerMCC_seed1": 10}, interactive=True,
                        poll_seconds=0.05)
    progress.started(r)
    progress.started(other)
    assert progress.running_text() == "MCC_seed1 f2 starting, nnUNetTrainer f0 starting"
    (folder / "nnunet_mcc_log.json").write_text(json.dumps({"epochs_completed": 3}))
    assert progress.running_text() == "MCC_seed1 f2 3/10, nnUNetTrainer f0 starting"
    time.sleep(0.2)
    progress.finished(r, "nnUNetTrainerMCC_seed1 fold 2: trained in 5 s")
    progress.close()
    assert lines == ["[1/2] nnUNetTrainerMCC_seed1 fold 2: trained in 5 s"]
    assert "MCC_seed1 f2 3/10" in capsys.readouterr().err  # the bar, on stderr
